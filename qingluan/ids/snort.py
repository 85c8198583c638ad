"""Snort's ``alert_unixsock`` datagrams (``Alertpkt``), parsed as x86-64 Snort sends them.

Snort 2.9 writes the C struct as it is in memory, in the host's byte order::

    uint8_t  alertmsg[256];
    struct pcap_pkthdr32 { struct sf_timeval32 ts; uint32_t caplen, len; } pkth;  // 16
    uint32_t dlthdr, nethdr, transhdr, data, val;   // offsets into pkt; val: which are set
    uint8_t  pkt[65535];
    // 1 byte of padding: Event is 4-byte aligned
    Event { uint32_t sig_generator, sig_id, sig_rev, classification, priority,
            event_id, event_reference; struct sf_timeval32 ref_time; } event;    // 36

65,864 bytes in all. ``os_ken.lib.alert`` reads it in network byte order and
without the padding byte (65,863 bytes), so every number after the message comes
out wrong on x86-64 (and the event is one byte off): this module replaces it.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, replace

ALERTMSG_LENGTH = 256
SNAPLEN = 65535
# little-endian (x86-64 host order), standard sizes, the pad byte before the event
_LAYOUT = struct.Struct(f"<{ALERTMSG_LENGTH}s IIII IIIII {SNAPLEN}s x IIIIIII II")
ALERTPKT_SIZE = _LAYOUT.size  # 65864

# Alertpkt.val bits: which header offsets are valid
NOPACKET_STRUCT = 0x1
NO_TRANSHDR = 0x2


class SnortFormatError(ValueError):
    """Not an ``Alertpkt`` datagram of x86-64 Snort."""


@dataclass(frozen=True)
class SnortAlert:
    message: str
    sig_generator: int
    sig_id: int
    sig_rev: int
    classification: int
    priority: int
    event_id: int
    seconds: float  # the packet's capture time
    packet: bytes  # the first caplen bytes of the packet, from its link header
    src_ip: str | None = None
    dst_ip: str | None = None
    protocol: int | None = None
    src_port: int | None = None
    dst_port: int | None = None


def parse_alertpkt(datagram: bytes) -> SnortAlert:
    """One ``alert_unixsock`` datagram; ``SnortFormatError`` names what is wrong."""
    if len(datagram) != ALERTPKT_SIZE:
        raise SnortFormatError(
            f"an Alertpkt of x86-64 Snort is {ALERTPKT_SIZE} bytes, not {len(datagram)}"
        )
    (
        msg,
        ts_sec,
        ts_usec,
        caplen,
        _length,
        _dlthdr,
        nethdr,
        transhdr,
        _data,
        val,
        pkt,
        sig_generator,
        sig_id,
        sig_rev,
        classification,
        priority,
        event_id,
        _event_reference,
        _ref_sec,
        _ref_usec,
    ) = _LAYOUT.unpack(datagram)
    if caplen > SNAPLEN:
        raise SnortFormatError(f"caplen {caplen} is more than the {SNAPLEN} bytes of pkt")
    packet = bytes(pkt[:caplen])
    message = msg.split(b"\0", 1)[0].decode("utf-8", "replace")
    alert = SnortAlert(
        message=message,
        sig_generator=sig_generator,
        sig_id=sig_id,
        sig_rev=sig_rev,
        classification=classification,
        priority=priority,
        event_id=event_id,
        seconds=ts_sec + ts_usec / 1e6,
        packet=packet,
    )
    if val & NOPACKET_STRUCT:
        return alert
    return _with_addresses(alert, packet, nethdr, None if val & NO_TRANSHDR else transhdr)


def _with_addresses(
    alert: SnortAlert, packet: bytes, nethdr: int, transhdr: int | None
) -> SnortAlert:
    """Source and destination of an IPv4 packet, and ports for TCP/UDP."""
    ip = packet[nethdr : nethdr + 20]
    if len(ip) < 20 or ip[0] >> 4 != 4:
        return alert
    alert = replace(
        alert,
        src_ip=str(ipaddress.IPv4Address(ip[12:16])),
        dst_ip=str(ipaddress.IPv4Address(ip[16:20])),
        protocol=ip[9],
    )
    if transhdr is not None and ip[9] in (6, 17) and len(packet) >= transhdr + 4:
        src_port, dst_port = struct.unpack_from("!HH", packet, transhdr)
        alert = replace(alert, src_port=src_port, dst_port=dst_port)
    return alert
