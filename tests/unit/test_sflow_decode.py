"""Decoding sFlow v5: the datagrams a real Open vSwitch sent (tests/data/sflow,
see its README.txt), a few hand-built ones for records OVS only sends on VXLAN
or VLAN ports, and malformed input of every kind."""

from __future__ import annotations

import contextlib
import random
import struct
from pathlib import Path

import pytest
from os_ken.lib.packet import ethernet, ipv4, packet, udp, vlan
from os_ken.lib.xflow import sflow as oskflow

from qingluan.controller.monitor.sflow import (
    Datagram,
    SflowDecodeError,
    decode_datagram,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "sflow"
AGENT = "10.77.9.1"
MAC_A = "62:f2:b3:c0:bf:b5"
MAC_B = "92:7f:51:07:40:de"
BRIDGE_SAMPLER = (2 << 24) | 1000


def captured() -> list[tuple[str, bytes, float]]:
    out = []
    for line in (DATA / "index.txt").read_text().splitlines():
        name, size, at = line.split()
        data = (DATA / name).read_bytes()
        assert len(data) == int(size)
        out.append((name, data, float(at)))
    return out


def raw(name: str) -> bytes:
    return (DATA / name).read_bytes()


def decoded() -> list[Datagram]:
    return [decode_datagram(data) for _, data, _ in captured()]


# ---- a minimal encoder for hand-built datagrams ----------------------------------


def record(fmt: int, body: bytes, enterprise: int = 0) -> bytes:
    return struct.pack("!II", (enterprise << 12) | fmt, len(body)) + body


def raw_header(frame: bytes, frame_length: int | None = None) -> bytes:
    pad = b"\0" * (-len(frame) % 4)
    length = len(frame) + 4 if frame_length is None else frame_length
    return record(1, struct.pack("!iIII", 1, length, 4, len(frame)) + frame + pad)


def flow_sample(records: list[bytes], seq: int = 1, rate: int = 64, drops: int = 0) -> bytes:
    body = struct.pack(
        "!IIIIIIII", seq, BRIDGE_SAMPLER, rate, rate * seq, drops, 5, 7, len(records)
    )
    return record(1, body + b"".join(records))


def datagram(samples: list[bytes], seq: int = 1, agent: str = "192.0.2.7") -> bytes:
    addr = bytes(int(x) for x in agent.split("."))
    head = struct.pack("!II", 5, 1) + addr + struct.pack("!IIII", 3, seq, 5000, len(samples))
    return head + b"".join(samples)


def udp_frame(vid: int | None = None, payload: bytes = b"x" * 200) -> bytes:
    pkt = packet.Packet()
    if vid is None:
        pkt.add_protocol(ethernet.ethernet(dst=MAC_B, src=MAC_A, ethertype=0x0800))
    else:
        pkt.add_protocol(ethernet.ethernet(dst=MAC_B, src=MAC_A, ethertype=0x8100))
        pkt.add_protocol(vlan.vlan(pcp=0, cfi=0, vid=vid, ethertype=0x0800))
    pkt.add_protocol(ipv4.ipv4(src="10.77.0.1", dst="10.77.0.2", proto=17))
    pkt.add_protocol(udp.udp(src_port=4789, dst_port=53))
    pkt.add_protocol(payload)
    pkt.serialize()
    return bytes(pkt.data)


# ---- the captured datagrams ------------------------------------------------------


def test_every_captured_datagram_decodes_with_the_agent_and_its_sequence():
    grams = decoded()
    assert len(grams) == 54
    assert {g.agent for g in grams} == {AGENT}
    assert {g.sub_agent_id for g in grams} == {0}
    assert [g.sequence for g in grams] == list(range(1, 55))
    assert grams[0].uptime_ms == 1000 and grams[-1].uptime_ms == 12000
    assert sum(len(g.packets) for g in grams) == 266
    assert sum(len(g.counters) for g in grams) == 18


def test_packet_samples_run_over_one_bridge_sampler_without_gaps():
    samples = [p for g in decoded() for p in g.packets]
    assert [p.sequence for p in samples] == list(range(1, 267))
    assert {p.source_id for p in samples} == {BRIDGE_SAMPLER}
    assert samples[0].source_id_type == 2 and samples[0].source_id_index == 1000
    assert {p.sampling_rate for p in samples} == {64}
    assert [p.sample_pool for p in samples] == [64 * n for n in range(1, 267)]
    assert {p.drops for p in samples} == {0}
    assert {(p.input_if, p.output_if) for p in samples} == {(5, 7), (7, 5)}


def test_an_iperf3_data_sample_has_every_header_field():
    gram = decode_datagram(raw("ovs-08-flow.bin"))
    p = gram.packets[1]
    assert (p.agent, p.sequence, p.sample_pool) == (AGENT, 12, 768)
    assert (p.eth_src, p.eth_dst, p.eth_type, p.vlan) == (MAC_A, MAC_B, 0x0800, None)
    assert (p.ipv4_src, p.ipv4_dst, p.ip_proto) == ("10.77.0.1", "10.77.0.2", 6)
    assert (p.src_port, p.dst_port) == (50202, 5201)
    assert (p.input_if, p.output_if) == (5, 7)
    assert p.vni is None
    assert p.frame_length == 1514


def test_frame_length_leaves_out_the_fcs_ovs_counts():
    msg = oskflow.sFlow.parser(raw("ovs-08-flow.bin"))
    on_wire = [
        r.flow_data.frame_length
        for s in msg.samples
        for r in s.sample.flow_records
        if r.flow_data_format == 1
    ]
    ours = [p.frame_length for p in decode_datagram(raw("ovs-08-flow.bin")).packets]
    assert 1518 in on_wire
    assert ours == [n - 4 for n in on_wire]
    lengths = {
        (p.ip_proto, p.src_port, p.frame_length)
        for g in decoded()
        for p in g.packets
        if p.frame_length in (66, 98, 1514)
    }
    assert (6, 50202, 1514) in lengths  # full data segment
    assert (6, 5201, 66) in lengths  # bare ACK
    assert (1, 0, 98) in lengths  # echo reply


def test_icmp_samples_carry_type_and_code_in_the_ports():
    icmp = [p for g in decoded() for p in g.packets if p.ip_proto == 1]
    requests = [p for p in icmp if p.ipv4_src == "10.77.0.1"]
    replies = [p for p in icmp if p.ipv4_src == "10.77.0.2"]
    assert requests and replies
    assert {(p.src_port, p.dst_port) for p in requests} == {(8, 0)}
    assert {(p.src_port, p.dst_port) for p in replies} == {(0, 0)}


def test_counter_samples_map_ifindex_to_openflow_port_and_name():
    counters = [c for g in decoded() for c in g.counters]
    names = {(c.if_index, c.port_name, c.of_port, c.dpid) for c in counters}
    assert names == {
        (3, "br0", 65534, 0xA0B0C),
        (5, "qlhva", 1, 0xA0B0C),
        (7, "qlhvb", 2, 0xA0B0C),
    }
    assert {c.source_id for c in counters} == {3, 5, 7}
    assert {c.if_speed for c in counters} == {10_000_000_000}


def test_counters_grow_to_the_openflow_port_statistics():
    port1 = [c for g in decoded() for c in g.counters if c.if_index == 5]
    assert [c.sequence for c in port1] == [1, 2, 3, 4, 5, 6]
    octets = [c.in_octets for c in port1]
    assert octets == sorted(octets) and octets[0] < 1000
    last = port1[-1]
    # dump-ports after the run: port 1 rx 14249 pkts / 21004656 bytes, tx 2399 / 168562
    assert (last.in_packets, last.in_octets) == (14249, 21004656)
    assert (last.out_packets, last.out_octets) == (2399, 168562)
    assert (last.in_errors, last.in_discards, last.out_errors, last.out_discards) == (0, 0, 0, 0)


def test_unknown_all_ones_counters_count_as_zero():
    msg = oskflow.sFlow.parser(raw("ovs-52-counters.bin"))
    generic = [
        r.counter_data
        for s in msg.samples
        for r in s.sample.counters_records
        if r.counter_data_format == 1
    ]
    assert generic[0].ifInBroadcastPkts == 0xFFFFFFFF
    assert generic[0].ifOutMulticastPkts == 0xFFFFFFFF
    c = decode_datagram(raw("ovs-52-counters.bin")).counters[0]
    assert c.in_packets == generic[0].ifInUcastPkts + generic[0].ifInMulticastPkts
    assert c.out_packets == generic[0].ifOutUcastPkts


def test_counter_samples_without_interface_counters_are_left_out():
    msg = oskflow.sFlow.parser(raw("ovs-02-counters.bin"))
    assert len(msg.samples) == 3
    formats = {r.counter_data_format for r in msg.samples[0].sample.counters_records}
    assert formats == {2203, 2207}
    assert [c.if_index for c in decode_datagram(raw("ovs-02-counters.bin")).counters] == [7, 5]


# ---- records OVS sends on other ports --------------------------------------------


def test_vni_ingress_record_wins_over_egress():
    frame = udp_frame()
    both = [
        raw_header(frame),
        record(1030, struct.pack("!I", 5001)),
        record(1029, struct.pack("!I", 99)),
    ]
    egress = [raw_header(frame), record(1029, struct.pack("!I", 7001))]
    none = [raw_header(frame)]
    g = decode_datagram(
        datagram([flow_sample(both, 1), flow_sample(egress, 2), flow_sample(none, 3)])
    )
    assert [p.vni for p in g.packets] == [5001, 7001, None]
    assert g.agent == "192.0.2.7" and g.sub_agent_id == 3 and g.uptime_ms == 5000


def test_vlan_from_the_8021q_tag_then_from_the_extended_switch_record():
    switch = record(1001, struct.pack("!IIII", 30, 0, 30, 0))
    tagged = decode_datagram(datagram([flow_sample([raw_header(udp_frame(vid=42))])]))
    p = tagged.packets[0]
    assert (p.vlan, p.eth_type) == (42, 0x0800)
    assert (p.ipv4_src, p.ipv4_dst, p.ip_proto, p.src_port, p.dst_port) == (
        "10.77.0.1",
        "10.77.0.2",
        17,
        4789,
        53,
    )
    untagged = decode_datagram(datagram([flow_sample([switch, raw_header(udp_frame())])]))
    assert untagged.packets[0].vlan == 30
    plain = decode_datagram(datagram([flow_sample([raw_header(udp_frame())])]))
    assert plain.packets[0].vlan is None


def test_headers_cut_short_keep_what_they_have():
    frame = raw("ovs-08-flow.bin")
    full = decode_datagram(frame).packets[1]
    header = _first_header(frame)
    for cut in (14 + 20 + 24, 14 + 20 + 10):  # in the TCP options, in the fixed header
        short = header[:cut]
        p = decode_datagram(datagram([flow_sample([raw_header(short, 1518)])])).packets[0]
        assert (p.src_port, p.dst_port) == (full.src_port, full.dst_port) == (50202, 5201)
        assert p.frame_length == 1514
    cut_in_ports = header[: 14 + 20 + 2]
    p = decode_datagram(datagram([flow_sample([raw_header(cut_in_ports)])])).packets[0]
    assert (p.ipv4_src, p.ip_proto, p.src_port, p.dst_port) == ("10.77.0.1", 6, None, None)
    cut_in_ip = header[:20]
    p = decode_datagram(datagram([flow_sample([raw_header(cut_in_ip)])])).packets[0]
    assert (p.eth_src, p.eth_type) == (MAC_A, 0x0800)
    assert (p.ipv4_src, p.ip_proto, p.src_port) == (None, None, None)


def _first_header(data: bytes) -> bytes:
    msg = oskflow.sFlow.parser(data)
    for s in msg.samples:
        for r in s.sample.flow_records:
            if r.flow_data_format == 1 and r.flow_data.frame_length == 1518:
                return b"".join(r.flow_data.header)
    raise AssertionError("no full-size data sample")


def test_a_later_fragment_has_no_ports():
    pkt = packet.Packet()
    pkt.add_protocol(ethernet.ethernet(dst=MAC_B, src=MAC_A, ethertype=0x0800))
    pkt.add_protocol(ipv4.ipv4(src="10.77.0.1", dst="10.77.0.2", proto=17, offset=185))
    pkt.add_protocol(b"\x12\x34\x56\x78" * 10)
    pkt.serialize()
    p = decode_datagram(datagram([flow_sample([raw_header(bytes(pkt.data))])])).packets[0]
    assert (p.ip_proto, p.src_port, p.dst_port) == (17, None, None)


def test_samples_and_records_of_other_enterprises_are_skipped():
    foreign_sample = record(7, b"\0" * 12, enterprise=4300)
    # os-ken reads the format without the enterprise: this one parses as a flow sample
    compact = flow_sample([raw_header(udp_frame())], seq=9)
    foreign_flow = record(1, compact[8:], enterprise=4300)
    foreign_record = record(1030, struct.pack("!I", 5), enterprise=4300)
    g = decode_datagram(
        datagram(
            [
                foreign_sample,
                foreign_flow,
                flow_sample([foreign_record, raw_header(udp_frame())]),
            ]
        )
    )
    assert len(g.packets) == 1
    assert g.packets[0].sequence == 1 and g.packets[0].vni is None


def test_a_flow_sample_without_a_raw_header_is_left_out():
    switch = record(1001, struct.pack("!IIII", 0, 0, 0, 0))
    assert decode_datagram(datagram([flow_sample([switch])])).packets == ()


# ---- malformed input -------------------------------------------------------------


@pytest.mark.parametrize("name", ["ovs-02-counters.bin", "ovs-05-mixed.bin", "ovs-08-flow.bin"])
def test_every_truncation_of_a_real_datagram_is_refused(name):
    data = raw(name)
    for n in range(len(data)):
        with pytest.raises(SflowDecodeError):
            decode_datagram(data[:n])


def test_extra_bytes_after_the_samples_are_refused():
    for extra in (b"\0" * 4, b"\0" * 8, b"\0\0\0\1\0\0\0\0"):
        with pytest.raises(SflowDecodeError):
            decode_datagram(raw("ovs-08-flow.bin") + extra)


@pytest.mark.parametrize("version", [0, 2, 4, 6, 0xFFFFFFFF])
def test_another_version_is_refused(version):
    data = struct.pack("!I", version) + raw("ovs-08-flow.bin")[4:]
    with pytest.raises(SflowDecodeError, match="version"):
        decode_datagram(data)


def test_ipv6_or_unknown_agent_address_types_are_refused():
    data = raw("ovs-08-flow.bin")
    with pytest.raises(SflowDecodeError, match="IPv6"):
        decode_datagram(data[:4] + struct.pack("!I", 2) + data[8:])
    with pytest.raises(SflowDecodeError, match="address type"):
        decode_datagram(data[:4] + struct.pack("!I", 9) + data[8:])


def test_a_wrong_sample_count_is_refused():
    data = bytearray(raw("ovs-08-flow.bin"))
    struct.pack_into("!I", data, 24, 8)
    with pytest.raises(SflowDecodeError, match="samples"):
        decode_datagram(bytes(data))


def test_sample_and_record_lengths_that_do_not_add_up_are_refused():
    frame = udp_frame()
    good = datagram([flow_sample([raw_header(frame)]), flow_sample([raw_header(frame)], 2)])
    decode_datagram(good)
    sample_len_at = 28 + 4
    record_len_at = 28 + 8 + 32 + 4
    header_size_at = 28 + 8 + 32 + 8 + 12
    for offset, delta in ((sample_len_at, 4), (sample_len_at, -4), (record_len_at, -4)):
        bad = bytearray(good)
        (value,) = struct.unpack_from("!I", bad, offset)
        struct.pack_into("!I", bad, offset, value + delta)
        with pytest.raises(SflowDecodeError):
            decode_datagram(bytes(bad))
    bad = bytearray(good)
    struct.pack_into("!I", bad, header_size_at, len(frame) + 8)
    with pytest.raises(SflowDecodeError, match="raw header"):
        decode_datagram(bytes(bad))


def test_short_records_of_our_own_formats_are_refused():
    cases = [
        record(1030, b"\0\0"),
        record(1001, b"\0" * 8),
    ]
    for rec in cases:
        with pytest.raises(SflowDecodeError):
            decode_datagram(datagram([flow_sample([rec, raw_header(udp_frame())])]))
    with pytest.raises(SflowDecodeError, match="Ethernet"):
        decode_datagram(datagram([flow_sample([raw_header(b"\x01" * 10)])]))


def test_bad_port_name_and_openflow_port_records_are_refused():
    generic = record(1, struct.pack("!IIQIIQIIIIIIQIIIIII", 5, 6, 10, 1, 3, *([0] * 14)))

    def counters(*records: bytes) -> bytes:
        body = struct.pack("!III", 1, 5, len(records)) + b"".join(records)
        return record(2, body)

    ok = decode_datagram(
        datagram(
            [
                counters(
                    record(1004, struct.pack("!QI", 9, 4)),
                    record(1005, struct.pack("!I", 2) + b"p1\0\0"),
                    generic,
                )
            ]
        )
    )
    assert (ok.counters[0].dpid, ok.counters[0].of_port, ok.counters[0].port_name) == (9, 4, "p1")
    for bad in (
        record(1005, struct.pack("!I", 9) + b"p1\0\0"),
        record(1005, b"\0\0"),
        record(1004, struct.pack("!I", 9)),
    ):
        with pytest.raises(SflowDecodeError):
            decode_datagram(datagram([counters(bad, generic)]))
    short_generic = record(1, b"\0" * 40)
    with pytest.raises(SflowDecodeError):
        decode_datagram(datagram([counters(short_generic)]))


def test_random_bytes_only_ever_raise_sflow_decode_error():
    rng = random.Random(20240607)
    refused = 0
    for _ in range(3000):
        n = rng.randrange(0, 400)
        body = bytes(rng.getrandbits(8) for _ in range(n))
        for data in (body, struct.pack("!II", 5, 1) + body):
            try:
                decode_datagram(data)
            except SflowDecodeError:
                refused += 1
    assert refused >= 5990


def test_corrupted_real_datagrams_only_ever_raise_sflow_decode_error():
    rng = random.Random(7)
    for name in ("ovs-05-mixed.bin", "ovs-08-flow.bin", "ovs-52-counters.bin"):
        data = raw(name)
        for i in range(len(data)):
            for value in (0x00, 0xFF, rng.getrandbits(8)):
                bad = bytearray(data)
                bad[i] = value
                with contextlib.suppress(SflowDecodeError):
                    decode_datagram(bytes(bad))


def test_the_error_is_a_value_error():
    assert issubclass(SflowDecodeError, ValueError)
    with pytest.raises(ValueError, match="too short"):
        decode_datagram(b"\0\0\0\5")
