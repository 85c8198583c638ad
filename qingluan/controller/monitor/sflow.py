"""Decoding sFlow v5 datagrams as Open vSwitch sends them.

The datagram, its samples and the records os-ken knows (raw packet header,
extended switch, generic interface counters) are decoded by
``os_ken.lib.xflow.sflow``; on top of that this module reads the OpenFlow port
(counter record 1004), port name (1005) and VNI (flow records 1029 and 1030)
records, and the sampled Ethernet header with ``os_ken.lib.packet``. Anything
malformed (too short, not version 5, lengths that do not add up, truncated
records) raises ``SflowDecodeError``; no other exception leaves
``decode_datagram`` for bad bytes.

What Open vSwitch 3.1 (userspace datapath, ovs-vswitchd in its own network
namespace) put in the datagrams captured in ``tests/data/sflow``:

- The agent address is the IPv4 address of the device named in the ``agent``
  column (here a veth with 10.77.9.1). Each bridge with sFlow is a sub-agent
  of its own (0 and 1 with two bridges) with its own datagram sequence
  numbers; uptime is in milliseconds and advances in steps of one second (OVS
  sends a datagram when it is full, and at least once a second).
- Flow samples are compact (tag 1) and come from one sampler per bridge, data
  source ``2:1000`` (class 2, index 1000), not from per-port samplers, so the
  sample sequence numbers run over the whole bridge. ``sampling_rate`` is the
  configured rate (64), ``sample_pool`` grows by the rate per sample, drops 0.
- ``input_if`` and ``output_if`` of flow samples, and the ifIndex of counter
  samples, are the kernel ifindex of the port's device in the namespace
  ovs-vswitchd runs in (``ip link`` there: the veths were 5 and 7, the same as
  OVSDB ``Interface.ifindex``); the bridge's internal port, a tap device on
  the userspace datapath, had the tap's ifindex (3). The values are kept as
  sent; by the sFlow v5 spec an ``output_if`` with the top bit set
  (``IF_MULTIPLE``) means "several ports", the low bits giving how many, and
  one with bit 30 set (``IF_DISCARD``) a dropped packet (none of either in
  the capture, where every sample went from one veth to the other).
- Each raw packet header record has protocol 1 (Ethernet), ``stripped`` 4 and
  a ``frame_length`` that is the packet's length plus 4 for an FCS that is not
  in the header (1518 for a full 1514-byte TCP segment, 70 for a 66-byte
  ACK): ``PacketSample.frame_length`` has those 4 bytes taken off, so it is
  the length OpenFlow flow and port byte counters count. ``header_size`` is
  at most the configured ``header`` (128) and is the whole frame when it is
  shorter.
- Every flow sample has an extended switch record (1001); VLANs are 0 on
  untagged ports.
- Counter samples of a port have, in this order, Ethernet (2), OpenFlow port
  (1004: the bridge's datapath id and the port's OpenFlow number, 65534 for
  the bridge's own port), port name (1005) and generic interface (1)
  records. The ``2:1000`` counter sample carries only OVS datapath records
  (2203, 2207) and is skipped here.
- Counters OVS does not know are sent as all ones, as the sFlow spec says
  (ifInBroadcastPkts, ifOutMulticastPkts, ifOutBroadcastPkts, ifInUnknownProtos
  on these ports); they count as 0 here. ifInUcastPkts is every packet the
  port received, equal to the OpenFlow port statistics.

os-ken's parser cannot decode datagrams whose agent address is IPv6; they are
refused with ``SflowDecodeError``. Expanded samples (formats 3 and 4, which OVS
does not send) and records of other enterprises are skipped.
"""

from __future__ import annotations

import ipaddress
import logging
import struct
from dataclasses import dataclass
from typing import Any

from os_ken.lib.packet import ethernet, icmp, ipv4, tcp, udp, vlan
from os_ken.lib.xflow import sflow as oskflow

__all__ = [
    "IF_DISCARD",
    "IF_MULTIPLE",
    "Datagram",
    "InterfaceCounters",
    "PacketSample",
    "SflowDecodeError",
    "decode_datagram",
]

# os-ken logs every record format it does not decode at INFO, and OVS sends
# four of them in each counter sample.
logging.getLogger("os_ken.lib.xflow.sflow").setLevel(logging.WARNING)

SFLOW_VERSION = 5
IF_DISCARD = 0x40000000
IF_MULTIPLE = 0x80000000

_ADDR_IPV4 = 1
_ADDR_IPV6 = 2
_DATAGRAM_HEADER = 28  # version, address type, IPv4 agent, sub agent, seq, uptime, count
_SAMPLE_HEADER = 8
_RECORD_HEADER = 8
_FLOW_SAMPLE_FIXED = 32
_COUNTER_SAMPLE_FIXED = 12

_SAMPLE_FLOW = 1
_SAMPLE_COUNTERS = 2

_FLOW_RAW_HEADER = 1
_FLOW_EXTENDED_SWITCH = 1001
_FLOW_VNI_EGRESS = 1029
_FLOW_VNI_INGRESS = 1030
_HEADER_ETHERNET = 1
_RAW_HEADER_FIXED = 16
_EXTENDED_SWITCH_LEN = 16

_COUNTERS_GENERIC = 1
_COUNTERS_OPENFLOW_PORT = 1004
_COUNTERS_PORT_NAME = 1005
_GENERIC_COUNTERS_LEN = 88
_UNKNOWN32 = 0xFFFFFFFF
_UNKNOWN64 = 0xFFFFFFFFFFFFFFFF

_ETHERNET_FCS = 4
_ETH_TYPE_IPV4 = 0x0800
_VLAN_TYPES = (0x8100, 0x88A8)
_PROTO_ICMP = 1
_PROTO_TCP = 6
_PROTO_UDP = 17


class SflowDecodeError(ValueError):
    """A datagram that is not a well-formed sFlow v5 datagram."""


class _SourceId:
    """A sample's data source, sFlow's ``source_id``: class in the top 8 bits, index below."""

    __slots__ = ()
    source_id: int

    @property
    def source_id_type(self) -> int:
        return self.source_id >> 24

    @property
    def source_id_index(self) -> int:
        return self.source_id & 0xFFFFFF


@dataclass(frozen=True, slots=True)
class PacketSample(_SourceId):
    """One sampled packet: the flow sample's counters and the packet's header fields.

    ``source_id`` is the data source as sent: class in the top 8 bits, index in
    the low 24. ``frame_length`` excludes the Ethernet FCS. ``vlan`` is the
    outer 802.1Q/802.1ad tag of the sampled header, or else a non-zero source
    VLAN of the extended switch record. For ICMP, ``src_port`` is the ICMP type
    and ``dst_port`` the code (as in Open vSwitch's flow keys). IPv4 fields are
    None for other packets, and ports when the header was cut before them or
    the packet is a later fragment. ``vni`` is from the VNI ingress record, or
    else the egress record.
    """

    agent: str
    sequence: int
    source_id: int
    sampling_rate: int
    sample_pool: int
    drops: int
    input_if: int
    output_if: int
    frame_length: int
    eth_src: str
    eth_dst: str
    vlan: int | None
    eth_type: int
    ipv4_src: str | None
    ipv4_dst: str | None
    ip_proto: int | None
    src_port: int | None
    dst_port: int | None
    vni: int | None


@dataclass(frozen=True, slots=True)
class InterfaceCounters(_SourceId):
    """One counter sample of one interface (generic interface counters record).

    Packet counts add unicast, multicast and broadcast packets. ``dpid`` and
    ``of_port`` come from the OpenFlow port record, ``port_name`` from the port
    name record, None when the sample had none.
    """

    agent: str
    source_id: int
    if_index: int
    if_speed: int
    in_octets: int
    in_packets: int
    in_discards: int
    in_errors: int
    out_octets: int
    out_packets: int
    out_discards: int
    out_errors: int
    dpid: int | None
    of_port: int | None
    port_name: str | None
    sequence: int = 0


@dataclass(frozen=True, slots=True)
class Datagram:
    """A decoded datagram: the flow samples with an Ethernet header, and the
    counter samples with generic interface counters, in the order sent."""

    agent: str
    sub_agent_id: int
    sequence: int
    uptime_ms: int
    packets: tuple[PacketSample, ...]
    counters: tuple[InterfaceCounters, ...]


def decode_datagram(data: bytes) -> Datagram:
    """Decode one sFlow v5 datagram; ``SflowDecodeError`` when it is malformed."""
    buf = bytes(data)
    if len(buf) < 8:
        raise SflowDecodeError(f"sFlow datagram too short: {len(buf)} bytes")
    version, address_type = struct.unpack_from("!II", buf)
    if version != SFLOW_VERSION:
        raise SflowDecodeError(f"not an sFlow v5 datagram: version {version}")
    if address_type == _ADDR_IPV6:
        raise SflowDecodeError("sFlow datagrams with an IPv6 agent address are not supported")
    if address_type != _ADDR_IPV4:
        raise SflowDecodeError(f"unknown sFlow agent address type {address_type}")
    if len(buf) < _DATAGRAM_HEADER:
        raise SflowDecodeError(f"sFlow datagram too short: {len(buf)} bytes")
    try:
        msg = oskflow.sFlow.parser(buf)
    except Exception as exc:
        raise SflowDecodeError(f"malformed sFlow datagram: {exc}") from exc
    if msg is None:
        raise SflowDecodeError("sFlow datagram not understood")
    _check_layout(msg, len(buf))
    agent = str(ipaddress.IPv4Address(msg.agent_address))
    packets: list[PacketSample] = []
    counters: list[InterfaceCounters] = []
    for sample in msg.samples:
        if sample.enterprise != 0:
            continue
        if sample.sample_format == _SAMPLE_FLOW:
            packet = _packet_sample(agent, sample.sample)
            if packet is not None:
                packets.append(packet)
        elif sample.sample_format == _SAMPLE_COUNTERS:
            counter = _interface_counters(agent, sample.sample)
            if counter is not None:
                counters.append(counter)
    return Datagram(
        agent=agent,
        sub_agent_id=msg.sub_agent_id,
        sequence=msg.sequence_number,
        uptime_ms=msg.uptime,
        packets=tuple(packets),
        counters=tuple(counters),
    )


def _check_layout(msg: Any, size: int) -> None:
    """The lengths in the datagram must add up: os-ken reads records from where
    the previous one ended and does not compare them with the sample length."""
    if len(msg.samples) != msg.samples_num:
        raise SflowDecodeError(
            f"sFlow datagram says {msg.samples_num} samples, holds {len(msg.samples)}"
        )
    end = _DATAGRAM_HEADER + sum(_SAMPLE_HEADER + s.sample_length for s in msg.samples)
    if end != size:
        raise SflowDecodeError(f"sFlow samples end at byte {end} of a {size}-byte datagram")
    for sample in msg.samples:
        if sample.enterprise != 0:
            continue
        if sample.sample_format == _SAMPLE_FLOW:
            fixed, records = _FLOW_SAMPLE_FIXED, sample.sample.flow_records
            lengths = [r.flow_data_length for r in records]
        elif sample.sample_format == _SAMPLE_COUNTERS:
            fixed, records = _COUNTER_SAMPLE_FIXED, sample.sample.counters_records
            lengths = [r.counter_data_length for r in records]
        else:
            continue
        used = fixed + sum(_RECORD_HEADER + n for n in lengths)
        if used != sample.sample_length:
            raise SflowDecodeError(
                f"sFlow sample of {sample.sample_length} bytes holds records of {used}"
            )


def _joined(data: Any, what: str) -> bytes:
    if not isinstance(data, tuple):
        raise SflowDecodeError(f"sFlow {what} record not understood")
    return b"".join(data)


def _packet_sample(agent: str, fs: Any) -> PacketSample | None:
    header: Any = None
    switch: Any = None
    vni_in: int | None = None
    vni_out: int | None = None
    for record in fs.flow_records:
        if record.enterprise != 0:
            continue
        fmt, length = record.flow_data_format, record.flow_data_length
        if fmt == _FLOW_RAW_HEADER:
            if length < _RAW_HEADER_FIXED + record.flow_data.header_size:
                raise SflowDecodeError(
                    f"sFlow raw header of {record.flow_data.header_size} bytes "
                    f"in a {length}-byte record"
                )
            header = record.flow_data
        elif fmt == _FLOW_EXTENDED_SWITCH:
            if length < _EXTENDED_SWITCH_LEN:
                raise SflowDecodeError(f"sFlow extended switch record of {length} bytes")
            switch = record.flow_data
        elif fmt in (_FLOW_VNI_EGRESS, _FLOW_VNI_INGRESS):
            raw = _joined(record.flow_data, "VNI")
            if len(raw) < 4:
                raise SflowDecodeError(f"sFlow VNI record of {len(raw)} bytes")
            (vni,) = struct.unpack_from("!I", raw)
            if fmt == _FLOW_VNI_INGRESS:
                vni_in = vni
            else:
                vni_out = vni
    if header is None or header.header_protocol != _HEADER_ETHERNET:
        return None
    fields = _parse_ethernet(b"".join(header.header))
    vlan_id = fields.vlan
    if vlan_id is None and switch is not None and switch.src_vlan:
        vlan_id = switch.src_vlan
    frame_length = header.frame_length
    if frame_length >= _ETHERNET_FCS:
        frame_length -= _ETHERNET_FCS
    return PacketSample(
        agent=agent,
        sequence=fs.sequence_number,
        source_id=(fs.source_id_type << 24) | fs.source_id_index,
        sampling_rate=fs.sampling_rate,
        sample_pool=fs.sample_pool,
        drops=fs.drops,
        input_if=fs.input_if,
        output_if=fs.output_if,
        frame_length=frame_length,
        eth_src=fields.eth_src,
        eth_dst=fields.eth_dst,
        vlan=vlan_id,
        eth_type=fields.eth_type,
        ipv4_src=fields.ipv4_src,
        ipv4_dst=fields.ipv4_dst,
        ip_proto=fields.ip_proto,
        src_port=fields.src_port,
        dst_port=fields.dst_port,
        vni=vni_in if vni_in is not None else vni_out,
    )


@dataclass(slots=True)
class _HeaderFields:
    eth_src: str
    eth_dst: str
    eth_type: int
    vlan: int | None = None
    ipv4_src: str | None = None
    ipv4_dst: str | None = None
    ip_proto: int | None = None
    src_port: int | None = None
    dst_port: int | None = None


def _parse_ethernet(frame: bytes) -> _HeaderFields:
    """Header fields of a sampled frame that may be cut anywhere after the
    Ethernet header."""
    try:
        eth, _, rest = ethernet.ethernet.parser(frame)
    except Exception as exc:
        raise SflowDecodeError(f"sampled Ethernet header of {len(frame)} bytes: {exc}") from exc
    fields = _HeaderFields(eth_src=eth.src, eth_dst=eth.dst, eth_type=eth.ethertype)
    while fields.eth_type in _VLAN_TYPES:
        try:
            tag, _, rest = vlan.vlan.parser(rest)
        except Exception:
            return fields
        if fields.vlan is None:
            fields.vlan = tag.vid
        fields.eth_type = tag.ethertype
    if fields.eth_type != _ETH_TYPE_IPV4:
        return fields
    try:
        ip, _, payload = ipv4.ipv4.parser(rest)
    except Exception:
        return fields
    if ip.version != 4 or ip.header_length < 5:
        return fields
    fields.ipv4_src, fields.ipv4_dst, fields.ip_proto = ip.src, ip.dst, ip.proto
    if ip.offset == 0:
        fields.src_port, fields.dst_port = _l4_ports(ip.proto, bytes(payload))
    return fields


def _l4_ports(proto: int, data: bytes) -> tuple[int | None, int | None]:
    parsers: dict[int, Any] = {_PROTO_TCP: tcp.tcp, _PROTO_UDP: udp.udp, _PROTO_ICMP: icmp.icmp}
    parser = parsers.get(proto)
    if parser is None:
        return None, None
    try:
        hdr = parser.parser(data)[0]
    except Exception:
        hdr = None
    if isinstance(hdr, tcp.tcp | udp.udp):
        return int(hdr.src_port), int(hdr.dst_port)
    if isinstance(hdr, icmp.icmp):
        return int(hdr.type), int(hdr.code)
    # a header cut inside the TCP options still has its ports
    if proto == _PROTO_ICMP and len(data) >= 2:
        return data[0], data[1]
    if proto != _PROTO_ICMP and len(data) >= 4:
        src, dst = struct.unpack_from("!HH", data)
        return int(src), int(dst)
    return None, None


def _interface_counters(agent: str, cs: Any) -> InterfaceCounters | None:
    generic: Any = None
    dpid: int | None = None
    of_port: int | None = None
    port_name: str | None = None
    for record in cs.counters_records:
        if record.enterprise != 0:
            continue
        fmt, length = record.counter_data_format, record.counter_data_length
        if fmt == _COUNTERS_GENERIC:
            if length < _GENERIC_COUNTERS_LEN:
                raise SflowDecodeError(f"sFlow generic interface counters of {length} bytes")
            generic = record.counter_data
        elif fmt == _COUNTERS_OPENFLOW_PORT:
            raw = _joined(record.counter_data, "OpenFlow port")
            if len(raw) < 12:
                raise SflowDecodeError(f"sFlow OpenFlow port record of {len(raw)} bytes")
            dpid, of_port = struct.unpack_from("!QI", raw)
        elif fmt == _COUNTERS_PORT_NAME:
            port_name = _port_name(_joined(record.counter_data, "port name"))
    if generic is None:
        return None
    g = generic
    return InterfaceCounters(
        agent=agent,
        source_id=(cs.source_id_type << 24) | cs.source_id_index,
        if_index=g.ifIndex,
        if_speed=_known64(g.ifSpeed),
        in_octets=_known64(g.ifInOctets),
        in_packets=_known(g.ifInUcastPkts)
        + _known(g.ifInMulticastPkts)
        + _known(g.ifInBroadcastPkts),
        in_discards=_known(g.ifInDiscards),
        in_errors=_known(g.ifInErrors),
        out_octets=_known64(g.ifOutOctets),
        out_packets=_known(g.ifOutUcastPkts)
        + _known(g.ifOutMulticastPkts)
        + _known(g.ifOutBroadcastPkts),
        out_discards=_known(g.ifOutDiscards),
        out_errors=_known(g.ifOutErrors),
        dpid=dpid,
        of_port=of_port,
        port_name=port_name,
        sequence=cs.sequence_number,
    )


def _known(value: int) -> int:
    """A 32-bit counter, 0 for the all-ones "unknown"."""
    return 0 if value == _UNKNOWN32 else int(value)


def _known64(value: int) -> int:
    return 0 if value == _UNKNOWN64 else int(value)


def _port_name(raw: bytes) -> str:
    if len(raw) < 4:
        raise SflowDecodeError(f"sFlow port name record of {len(raw)} bytes")
    (n,) = struct.unpack_from("!I", raw)
    if 4 + n > len(raw):
        raise SflowDecodeError(f"sFlow port name of {n} bytes in a {len(raw)}-byte record")
    return raw[4 : 4 + n].decode("utf-8", errors="replace")
