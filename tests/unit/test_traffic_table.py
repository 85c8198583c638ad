"""The traffic table: estimates from the captured OVS datagrams against what OVS
counted (tests/data/sflow/README.txt), and scaling, windows, eviction, loss
counting and counter rates with an injected clock."""

from __future__ import annotations

import dataclasses
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from qingluan.controller.monitor.sflow import (
    Datagram,
    InterfaceCounters,
    PacketSample,
    decode_datagram,
)
from qingluan.controller.monitor.traffic import FlowEstimate, FlowKey, TrafficTable

DATA = Path(__file__).resolve().parents[1] / "data" / "sflow"
AGENT = "10.77.9.1"

# the truth of the capture (README.txt): OpenFlow flow statistics and iperf3 -J
DATA_DIRECTION = (13941, 20974628)
ACK_DIRECTION = (2079, 137542)
IPERF_PAYLOAD = 20054016
TOLERANCE = 0.20


def captured(skip: frozenset[str] = frozenset()) -> list[tuple[str, Datagram, float]]:
    out = []
    for line in (DATA / "index.txt").read_text().splitlines():
        name, _, at = line.split()
        if name not in skip:
            out.append((name, decode_datagram((DATA / name).read_bytes()), float(at)))
    return out


def replay(table: TrafficTable, until: str | None = None, skip: frozenset[str] = frozenset()):
    for name, gram, at in captured(skip):
        table.add(gram, at)
        if name == until:
            break


def sample(
    *,
    agent: str = "192.0.2.1",
    seq: int = 1,
    source: int = 1000,
    rate: int = 100,
    length: int = 1000,
    src: str = "10.0.0.1",
    dst: str = "10.0.0.2",
    sport: int = 1234,
    dport: int = 80,
    drops: int = 0,
    input_if: int = 1,
    output_if: int = 2,
) -> PacketSample:
    return PacketSample(
        agent=agent,
        sequence=seq,
        source_id=source,
        sampling_rate=rate,
        sample_pool=rate * seq,
        drops=drops,
        input_if=input_if,
        output_if=output_if,
        frame_length=length,
        eth_src="02:00:00:00:00:01",
        eth_dst="02:00:00:00:00:02",
        vlan=None,
        eth_type=0x0800,
        ipv4_src=src,
        ipv4_dst=dst,
        ip_proto=6,
        src_port=sport,
        dst_port=dport,
        vni=None,
    )


def gram(
    packets: Sequence[PacketSample] = (),
    counters: Sequence[InterfaceCounters] = (),
    *,
    agent: str = "192.0.2.1",
    seq: int = 1,
    sub_agent: int = 0,
) -> Datagram:
    return Datagram(
        agent=agent,
        sub_agent_id=sub_agent,
        sequence=seq,
        uptime_ms=1000 * seq,
        packets=tuple(packets),
        counters=tuple(counters),
    )


def counters(
    *,
    in_octets: int = 0,
    out_octets: int = 0,
    in_packets: int = 0,
    out_packets: int = 0,
    if_index: int = 5,
    seq: int = 1,
    name: str | None = "eth5",
    dpid: int | None = 0xABC,
    of_port: int | None = 3,
) -> InterfaceCounters:
    return InterfaceCounters(
        agent="192.0.2.1",
        source_id=if_index,
        if_index=if_index,
        if_speed=10**9,
        in_octets=in_octets,
        in_packets=in_packets,
        in_discards=0,
        in_errors=0,
        out_octets=out_octets,
        out_packets=out_packets,
        out_discards=0,
        out_errors=0,
        dpid=dpid,
        of_port=of_port,
        port_name=name,
        sequence=seq,
    )


def dst_ports(flows: Sequence[FlowEstimate]) -> list[int]:
    return sorted(f.key.dst_port or 0 for f in flows)


def within(estimate: float, truth: float) -> bool:
    return abs(estimate - truth) <= TOLERANCE * truth


# ---- the captured run ------------------------------------------------------------


def test_iperf3_flow_is_the_top_flow_and_its_estimate_is_near_the_truth():
    table = TrafficTable()
    replay(table)
    top = table.top_flows(12.0, limit=1)[0]
    assert (top.key.ipv4_src, top.key.ipv4_dst, top.key.ip_proto) == ("10.77.0.1", "10.77.0.2", 6)
    assert (top.key.src_port, top.key.dst_port) == (50202, 5201)
    assert (top.input_if, top.output_if) == (5, 7)
    assert (top.packets, top.bytes) == (221 * 64, 21145536)
    assert within(top.packets, DATA_DIRECTION[0]) and within(top.bytes, DATA_DIRECTION[1])
    # frames of 1514 bytes carry 1448 bytes of iperf3 payload
    assert within(top.bytes * 1448 / 1514, IPERF_PAYLOAD)
    assert top.first_seen == 5.960 and top.last_seen == 8.866


def test_both_tcp_directions_together_are_near_the_truth():
    table = TrafficTable()
    replay(table)
    tcp = table.top_flows(12.0, limit=100, predicate=lambda k: k.ip_proto == 6)
    assert len(tcp) == 2
    acks = next(f for f in tcp if f.key.src_port == 5201)
    assert acks.packets == 35 * 64 and acks.bytes == 35 * 64 * 66
    packets = sum(f.packets for f in tcp)
    size = sum(f.bytes for f in tcp)
    assert within(packets, DATA_DIRECTION[0] + ACK_DIRECTION[0])
    assert within(size, DATA_DIRECTION[1] + ACK_DIRECTION[1])


def test_capture_counts_and_learned_ports():
    table = TrafficTable()
    replay(table)
    assert table.stats() == {
        "datagrams": 54,
        "packet_samples": 266,
        "counter_samples": 18,
        "lost_samples": 0,
        "lost_datagrams": 0,
        "flows": 4,
        "evicted_flows": 0,
        "interfaces": 3,
        "agents": 1,
    }
    agent = table.agents()[AGENT]
    assert (agent.datagrams, agent.packet_samples, agent.counter_samples) == (54, 266, 18)
    assert table.port_names(AGENT) == {3: "br0", 5: "qlhva", 7: "qlhvb"}
    assert table.agent_dpid(AGENT) == 0xA0B0C
    assert table.agent_dpids(AGENT) == {0: 0xA0B0C}
    assert table.port_names("192.0.2.99") == {} and table.agent_dpid("192.0.2.99") is None


def test_a_missing_datagram_is_counted_as_lost_samples():
    skipped = "ovs-20-flow.bin"
    lost = len(decode_datagram((DATA / skipped).read_bytes()).packets)
    assert lost == 6
    table = TrafficTable()
    replay(table, skip=frozenset({skipped}))
    stats = table.stats()
    assert (stats["lost_samples"], stats["lost_datagrams"]) == (6, 1)
    assert table.agents()[AGENT].lost_samples == 6


def test_interface_rates_during_the_iperf3_run():
    table = TrafficTable()
    replay(table, until="ovs-49-counters.bin")
    rates = {r.if_index: r for r in table.interface_rates(7.9)}
    va = rates[5]
    assert (va.port_name, va.of_port, va.dpid) == ("qlhva", 1, 0xA0B0C)
    assert va.interval == pytest.approx(2.0)
    # ovs-07 (5.866 s): 30028 octets in; ovs-49 (7.866 s): 20181392
    assert va.in_bits_per_second == pytest.approx(8 * (20181392 - 30028) / 2.0)
    assert va.in_bits_per_second is not None
    assert 60e6 < va.in_bits_per_second < 100e6  # iperf3 -b 80M
    assert va.in_packets_per_second == pytest.approx((13695 - 308) / 2.0)
    assert rates[7].out_bits_per_second == pytest.approx(8 * (20182384 - 31020) / 2.0)
    assert va.counters.in_octets == 20181392 and va.updated == 7.866


# ---- scaling and windows ---------------------------------------------------------


def test_samples_are_scaled_by_their_sampling_rate():
    table = TrafficTable()
    table.add(gram([sample(rate=100, length=1000), sample(seq=2, rate=10, length=60)]), 100.0)
    (flow,) = table.top_flows(100.0)
    assert flow.packets == 110
    assert flow.bytes == 100 * 1000 + 10 * 60
    assert flow.key == FlowKey(
        "192.0.2.1", "02:00:00:00:00:01", "02:00:00:00:00:02", "10.0.0.1", "10.0.0.2", 6, 1234, 80
    )


def test_rates_over_the_window_with_an_injected_clock():
    table = TrafficTable(window=60)
    table.add(gram([sample(rate=10, length=100)]), 100.2)
    table.add(gram([sample(seq=2, rate=10, length=100)], seq=2), 104.7)
    (flow,) = table.top_flows(105.0, window=10)
    assert flow.bytes_per_second == pytest.approx(2000 / 10)
    assert flow.packets_per_second == pytest.approx(20 / 10)
    (flow,) = table.top_flows(105.0)
    assert flow.bytes_per_second == pytest.approx(2000 / 60)
    # the first sample's second [100, 101) leaves a 10 s window at 111
    (flow,) = table.top_flows(110.9, window=10)
    assert flow.bytes_per_second == pytest.approx(200)
    (flow,) = table.top_flows(111.0, window=10)
    assert flow.bytes_per_second == pytest.approx(100)
    (flow,) = table.top_flows(115.0, window=10)
    assert flow.bytes_per_second == 0.0
    assert (flow.bytes, flow.packets) == (2000, 20)
    assert (flow.first_seen, flow.last_seen) == (100.2, 104.7)


def test_top_flows_sorts_by_window_rate_of_bytes_or_packets_with_limit_and_predicate():
    table = TrafficTable()
    big = sample(dport=443, rate=10, length=1500)  # 15000 bytes, 10 packets
    small = sample(dport=53, seq=2, rate=100, length=64)  # 6400 bytes, 100 packets
    # an old flow with more total bytes than either but nothing in the last 5 s
    old = sample(dport=22, seq=3, rate=100, length=1500)
    table.add(gram([old]), 10.0)
    table.add(gram([big, small], seq=2), 20.0)
    by_bytes = [f.key.dst_port for f in table.top_flows(20.0, window=5)]
    assert by_bytes == [443, 53, 22]
    by_packets = [f.key.dst_port for f in table.top_flows(20.0, by="packets", window=5)]
    assert by_packets == [53, 443, 22]
    assert [f.key.dst_port for f in table.top_flows(20.0, limit=1, window=5)] == [443]
    only_dns = table.top_flows(20.0, predicate=lambda k: k.dst_port == 53)
    assert [f.key.dst_port for f in only_dns] == [53]
    assert table.top_flows(20.0, limit=0) == []


def test_last_sample_gives_the_interfaces():
    table = TrafficTable()
    table.add(gram([sample(input_if=1, output_if=2)]), 1.0)
    table.add(gram([sample(seq=2, input_if=1, output_if=0x80000002)], seq=2), 2.0)
    (flow,) = table.top_flows(2.0)
    assert (flow.input_if, flow.output_if) == (1, 0x80000002)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        TrafficTable(window=0)
    with pytest.raises(ValueError):
        TrafficTable(max_flows=0)
    table = TrafficTable(window=30)
    with pytest.raises(ValueError):
        table.top_flows(1.0, by="flows")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        table.top_flows(1.0, window=31)
    with pytest.raises(ValueError):
        table.top_flows(1.0, window=0)


# ---- eviction --------------------------------------------------------------------


def test_flows_idle_longer_than_the_window_are_evicted():
    table = TrafficTable(window=60)
    table.add(gram([sample(dport=1)]), 0.0)
    table.add(gram([sample(dport=2, seq=2)], seq=2), 30.0)
    # exactly one window idle: still there
    assert dst_ports(table.top_flows(60.0)) == [1, 2]
    assert table.flow_count() == 2
    table.add(gram([sample(dport=3, seq=3)], seq=3), 60.5)
    assert table.flow_count() == 2
    assert dst_ports(table.top_flows(60.5)) == [2, 3]
    # a query alone also expires
    assert [f.key.dst_port for f in table.top_flows(120.6)] == []
    assert table.stats()["evicted_flows"] == 3
    # seen again after eviction: a new flow, new totals and first_seen
    table.add(gram([sample(dport=1, seq=4)], seq=4), 130.0)
    (flow,) = table.top_flows(130.0)
    assert (flow.packets, flow.first_seen) == (100, 130.0)


def test_the_least_recently_seen_flow_goes_when_over_max_flows():
    table = TrafficTable(max_flows=3)
    for i in range(1, 4):
        table.add(gram([sample(dport=i, seq=i)], seq=i), float(i))
    # flow 1 seen again: flow 2 is now the least recently seen
    table.add(gram([sample(dport=1, seq=4)], seq=4), 4.0)
    table.add(gram([sample(dport=5, seq=5)], seq=5), 5.0)
    assert dst_ports(table.top_flows(5.0)) == [1, 3, 5]
    table.add(gram([sample(dport=6, seq=6), sample(dport=7, seq=7)], seq=6), 6.0)
    # least recently seen first: 3 (at 3.0), then 1 (at 4.0)
    assert dst_ports(table.top_flows(6.0)) == [5, 6, 7]
    assert table.stats()["flows"] == 3 and table.stats()["evicted_flows"] == 3


# ---- losses ----------------------------------------------------------------------


def _lost_after(*steps: tuple[int, int, int], sub_agent: int = 0) -> int:
    """(datagram seq, sample seq, drops) steps on one source."""
    table = TrafficTable()
    for i, (dseq, seq, drops) in enumerate(steps):
        table.add(gram([sample(seq=seq, drops=drops)], seq=dseq, sub_agent=sub_agent), float(i))
    return table.stats()["lost_samples"]


def test_sequence_gaps_are_lost_samples():
    assert _lost_after((1, 1, 0), (2, 2, 0), (3, 3, 0)) == 0
    assert _lost_after((1, 1, 0), (2, 2, 0), (3, 5, 0)) == 2
    assert _lost_after((1, 10, 0), (2, 20, 0), (3, 21, 0)) == 9


def test_growth_of_drops_is_lost_samples():
    assert _lost_after((1, 1, 0), (2, 2, 3), (3, 3, 3), (4, 4, 5)) == 5
    # drops before the collector first heard of the source are not counted
    assert _lost_after((1, 1, 7), (2, 2, 7)) == 0
    # a gap and drops add up
    assert _lost_after((1, 1, 0), (2, 4, 1)) == 3


def test_a_sequence_going_back_is_a_restart_not_a_loss():
    assert _lost_after((1, 500, 4), (2, 1, 0), (3, 2, 0)) == 0
    # after the restart, drops count from zero again
    assert _lost_after((1, 500, 4), (2, 1, 2)) == 2
    # a duplicate
    assert _lost_after((1, 7, 0), (2, 7, 0), (3, 8, 0)) == 0


def test_sequence_numbers_wrap_at_32_bits():
    top = 2**32 - 1
    assert _lost_after((1, top - 1, 0), (2, top, 0), (3, 0, 0), (4, 1, 0)) == 0
    assert _lost_after((1, top - 1, 0), (2, 1, 0)) == 2


def test_sources_sub_agents_and_agents_have_their_own_sequences():
    table = TrafficTable()
    table.add(gram([sample(source=1000, seq=1), sample(source=1001, seq=50)]), 1.0)
    table.add(gram([sample(source=1000, seq=2), sample(source=1001, seq=51)], seq=2), 2.0)
    table.add(gram([sample(source=1000, seq=100)], sub_agent=1), 3.0)
    table.add(gram([sample(source=1000, seq=300, agent="192.0.2.2")], agent="192.0.2.2"), 4.0)
    assert table.stats()["lost_samples"] == 0
    assert table.stats()["lost_datagrams"] == 0
    table.add(gram([sample(source=1000, seq=5)], seq=5), 5.0)
    assert table.stats()["lost_samples"] == 2
    assert table.stats()["lost_datagrams"] == 2
    assert table.agents()["192.0.2.1"].lost_samples == 2
    assert table.agents()["192.0.2.2"].lost_samples == 0


def test_counter_sample_gaps_are_lost_samples_too():
    table = TrafficTable()
    table.add(gram(counters=[counters(seq=1)]), 1.0)
    table.add(gram(counters=[counters(seq=4)], seq=2), 2.0)
    assert table.stats()["lost_samples"] == 2
    assert table.stats()["counter_samples"] == 2


# ---- interface counters ----------------------------------------------------------


def test_one_counter_sample_has_no_rate_yet():
    table = TrafficTable()
    table.add(gram(counters=[counters(in_octets=1000)]), 1.0)
    (rate,) = table.interface_rates(1.0)
    assert rate.in_bits_per_second is None and rate.interval is None
    assert rate.counters.in_octets == 1000 and rate.port_name == "eth5"


def test_rates_from_the_last_two_counter_samples():
    table = TrafficTable()
    table.add(gram(counters=[counters(in_octets=1000, out_octets=0, in_packets=10)]), 10.0)
    table.add(
        gram(counters=[counters(in_octets=2000, out_octets=500, in_packets=30, seq=2)], seq=2), 20.0
    )
    table.add(
        gram(
            counters=[
                counters(in_octets=4000, out_octets=500, in_packets=40, out_packets=5, seq=3)
            ],
            seq=3,
        ),
        30.0,
    )
    (rate,) = table.interface_rates(30.0)
    assert rate.interval == 10.0
    assert rate.in_bits_per_second == pytest.approx(8 * 2000 / 10)
    assert rate.out_bits_per_second == 0.0
    assert rate.in_packets_per_second == pytest.approx(1.0)
    assert rate.out_packets_per_second == pytest.approx(0.5)
    assert (rate.dpid, rate.of_port, rate.counters.in_octets) == (0xABC, 3, 4000)


def test_a_counter_that_goes_down_is_a_reset_not_a_huge_rate():
    table = TrafficTable()
    table.add(gram(counters=[counters(in_octets=2**64 - 100, in_packets=2**32 - 10)]), 0.0)
    table.add(gram(counters=[counters(in_octets=50, in_packets=4, seq=2)], seq=2), 10.0)
    (rate,) = table.interface_rates(10.0)
    assert rate.in_bits_per_second == pytest.approx(8 * 50 / 10)
    assert rate.in_packets_per_second == pytest.approx(0.4)
    table.add(gram(counters=[counters(in_octets=1050, in_packets=14, seq=3)], seq=3), 20.0)
    (rate,) = table.interface_rates(20.0)
    assert rate.in_bits_per_second == pytest.approx(800)


def test_port_name_comes_from_earlier_samples_and_stale_interfaces_go():
    table = TrafficTable(interface_timeout=100)
    table.add(gram(counters=[counters(if_index=5), counters(if_index=6, name="eth6")]), 0.0)
    table.add(gram(counters=[counters(if_index=5, name=None, seq=2)], seq=2), 50.0)
    rates = {r.if_index: r for r in table.interface_rates(50.0)}
    assert rates[5].port_name == "eth5" and rates[6].port_name == "eth6"
    assert table.port_names("192.0.2.1") == {5: "eth5", 6: "eth6"}
    assert [r.if_index for r in table.interface_rates(120.0)] == [5]
    assert table.interface_rates(151.0) == []
    assert table.stats()["interfaces"] == 0


def test_agent_dpids_per_sub_agent():
    table = TrafficTable()
    table.add(gram(counters=[counters(dpid=0xA)]), 1.0)
    table.add(gram(counters=[counters(dpid=0xB, if_index=9)], sub_agent=1), 2.0)
    assert table.agent_dpids("192.0.2.1") == {0: 0xA, 1: 0xB}
    assert table.agent_dpid("192.0.2.1") == 0xB


# ---- threads ---------------------------------------------------------------------


def test_concurrent_adds_and_queries_lose_nothing():
    table = TrafficTable(max_flows=10_000)
    errors: list[BaseException] = []
    per_thread = 400

    def feed(worker: int) -> None:
        try:
            for i in range(per_thread):
                s = sample(seq=i + 1, source=worker, dport=i % 50, rate=3, length=10)
                table.add(gram([s], seq=i + 1, sub_agent=worker), float(i) / 100)
        except BaseException as exc:
            errors.append(exc)

    def query() -> None:
        try:
            for _ in range(200):
                table.top_flows(4.0, limit=5)
                table.interface_rates(4.0)
                table.stats()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=feed, args=(w,)) for w in range(4)]
    threads += [threading.Thread(target=query) for _ in range(2)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        sys.setswitchinterval(interval)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    flows = table.top_flows(4.0, limit=1000)
    assert sum(f.packets for f in flows) == 4 * per_thread * 3
    assert table.stats()["packet_samples"] == 4 * per_thread
    assert table.stats()["lost_samples"] == 0


def test_flow_estimates_are_frozen():
    table = TrafficTable()
    table.add(gram([sample()]), 1.0)
    (flow,) = table.top_flows(1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        flow.bytes = 0  # type: ignore[misc]
