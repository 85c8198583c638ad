"""The monitoring service over the datagrams one real Open vSwitch sent (tests/data/sflow).

The capture (see its README.txt): one bridge, datapath id 0xa0b0c, agent 10.77.9.1;
container A (62:f2:b3:c0:bf:b5, port qlhva, ifIndex 5) pings B (92:7f:51:07:40:de,
port qlhvb, ifIndex 7), then sends B two seconds of iperf3 TCP to port 5201.
The datagrams are fed the way the collector feeds them (``table.add`` with the
arrival time of index.txt, then ``on_datagram``); the store is a real SQLite store
and automatic steering rules go to the real ``Services`` (with a recording stand-in
for the bridges).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from qingluan.api_schema import HostRegistration, ThresholdCreate
from qingluan.controller.metrics import Metrics
from qingluan.controller.monitor.sflow import Datagram, decode_datagram
from qingluan.controller.monitor.traffic import FlowEstimate, FlowKey
from qingluan.controller.monitoring import (
    SETTINGS_KEY,
    Cluster,
    MonitoringService,
    crossing,
    load_settings,
    save_settings,
)
from qingluan.controller.services import Services
from qingluan.controller.store import SqliteStore
from qingluan.errors import Conflict, InvalidRequest
from qingluan.model import (
    AclProtocol,
    DatapathType,
    Endpoint,
    Host,
    MonitoringSettings,
    Network,
    NetworkModel,
    SteeringAction,
    Threshold,
)
from tests.support.clock import Clock
from tests.unit.test_services import RecordingConverger

DATA = Path(__file__).resolve().parents[1] / "data" / "sflow"
DPID = 0x0A0B0C
AGENT = "10.77.9.1"
MAC_A = "62:f2:b3:c0:bf:b5"
MAC_B = "92:7f:51:07:40:de"
PORT = 6343
# what the README derives from the samples (sampling rate x frame length)
DATA_BYTES, DATA_PACKETS = 21_145_536, 14_144
ACK_BYTES, ACK_PACKETS = 147_840, 2_240
ICMP_REQUEST_PACKETS, ICMP_REPLY_PACKETS = 2 * 64, 8 * 64
# OpenFlow's count of the data direction (the data and control connections)
OPENFLOW_DATA_BYTES = 20_974_628


@functools.cache
def capture() -> tuple[tuple[str, float, Datagram], ...]:
    """(file name, arrival time, decoded datagram) in the order received."""
    out = []
    for line in (DATA / "index.txt").read_text().splitlines():
        if line.strip():
            name, _size, arrived = line.split()
            out.append((name, float(arrived), decode_datagram((DATA / name).read_bytes())))
    return tuple(out)


H1 = Host(name="h1", dpid=DPID, bridge="br0", datapath_type=DatapathType.NETDEV)
H2 = Host(name="h2", dpid=2, bridge="br0", datapath_type=DatapathType.NETDEV)
WEB = Network(
    id="f" * 64,
    key=1,
    host="h1",
    model=NetworkModel.NAT,
    pool_id="p1",
    subnet="10.77.0.0/24",
    gateway="10.77.0.254",
    gateway_mac="02:00:00:00:00:fe",
    name="web",
)
UNNAMED = WEB.model_copy(update={"id": "9" * 64, "key": 2, "name": None})
EP_A = Endpoint(
    id="a1" * 32,
    network_id=WEB.id,
    host="h1",
    mac=MAC_A,
    address="10.77.0.1",
    port_name="qlhva",
    container_name="client",
)
EP_B = Endpoint(
    id="b2" * 32,
    network_id=WEB.id,
    host="h1",
    mac=MAC_B,
    address="10.77.0.2",
    port_name="qlhvb",
    container_name="server",
)


class World:
    """A service whose cluster can be changed between calls (``cluster``)."""

    def __init__(self, store: SqliteStore, sink: Services, metrics: Metrics) -> None:
        self.clock = Clock()
        self.cluster = Cluster.of([H1, H2], [WEB, UNNAMED], [EP_A, EP_B])
        self.sink = sink
        self.metrics = metrics
        self.service = MonitoringService(
            store,
            lambda: self.cluster,
            sink,
            collector_port=PORT,
            observer=metrics,
            clock=self.clock,
        )

    def feed(self, datagrams: Iterable[tuple[float, Datagram]]) -> None:
        for arrived, datagram in datagrams:
            self.service.table.add(datagram, arrived)
            self.service.on_datagram(datagram)

    def replay(self, until: str | None = None) -> None:
        """Every datagram of the capture, up to and with the file ``until``."""
        for name, arrived, datagram in capture():
            self.feed([(arrived, datagram)])
            if name == until:
                return


@pytest.fixture
def world(store: SqliteStore, conv: RecordingConverger) -> World:
    services = Services(store, conv)
    services.register_host(
        "h1", HostRegistration(dpid=DPID, bridge="br0", datapath_type=DatapathType.NETDEV)
    )
    conv.calls.clear()
    return World(store, services, Metrics())


def readdressed(datagram: Datagram, agent: str, dpid: int | None = None) -> Datagram:
    """The same datagram as another agent (and bridge) would have sent it."""
    packets = tuple(dataclasses.replace(p, agent=agent) for p in datagram.packets)
    counters = tuple(
        dataclasses.replace(c, agent=agent, dpid=c.dpid if dpid is None else dpid)
        for c in datagram.counters
    )
    return dataclasses.replace(datagram, agent=agent, packets=packets, counters=counters)


# ---- settings ------------------------------------------------------------------------


def test_settings_of_an_empty_store_carry_the_controllers_collector_port(
    store: SqliteStore,
) -> None:
    settings = load_settings(store, 16343)
    assert settings.collector_port == 16343
    assert settings.model_copy(update={"collector_port": 6343}) == MonitoringSettings()


def test_a_different_collector_port_is_refused_and_nothing_is_stored(store: SqliteStore) -> None:
    wanted = MonitoringSettings.model_validate({"sflow": {"sampling": 64}, "collector_port": 7000})
    with pytest.raises(InvalidRequest, match=r"collector_port: .* listens on 16343"):
        save_settings(store, wanted, 16343)
    assert store.get(SETTINGS_KEY) is None
    assert load_settings(store, 16343).sflow.sampling == 400


def test_settings_without_a_collector_port_are_stored_with_the_controllers(
    store: SqliteStore,
) -> None:
    save_settings(store, MonitoringSettings.model_validate({"sflow": {"sampling": 64}}), 16343)
    doc = store.get(SETTINGS_KEY)
    assert doc is not None and doc["collector_port"] == 16343 and doc["sflow"]["sampling"] == 64
    # the same port, given explicitly, is fine (what the CLI sends back after a GET)
    same = MonitoringSettings.model_validate({"sflow": {"sampling": 32}, "collector_port": 16343})
    save_settings(store, same, 16343)
    assert load_settings(store, 16343).sflow.sampling == 32
    # the port is always the running controller's, whatever was stored
    assert load_settings(store, 7000).collector_port == 7000


def test_the_service_updates_and_reads_back_its_settings(world: World) -> None:
    body = MonitoringSettings.model_validate({"netflow": {"targets": ["10.0.0.9:2055"]}})
    got = world.service.update_settings(body)
    assert got.netflow.targets == ("10.0.0.9:2055",) and got.collector_port == PORT
    assert world.service.settings() == got
    with pytest.raises(InvalidRequest):
        world.service.update_settings(MonitoringSettings(collector_port=PORT + 1))


# ---- attribution ---------------------------------------------------------------------


def test_the_replay_attributes_each_flow_to_host_network_and_endpoints(world: World) -> None:
    world.replay()
    world.clock.now = 8.0
    flows = world.service.top_flows(window=5)
    assert [(f.ipv4_src, f.protocol, f.dst_port) for f in flows] == [
        ("10.77.0.1", "tcp", 5201),
        ("10.77.0.2", "tcp", 50202),
        ("10.77.0.2", "icmp", 0),  # replies (ICMP type 0)
        ("10.77.0.1", "icmp", 0),  # requests (type 8 in src_port)
    ]
    data, ack, reply, request = flows
    assert (data.host, data.agent, data.network, data.network_id) == ("h1", AGENT, "web", WEB.id)
    assert (data.endpoint_src, data.container_src) == (EP_A.id, "client")
    assert (data.endpoint_dst, data.container_dst) == (EP_B.id, "server")
    assert (data.eth_src, data.eth_dst, data.input_port) == (MAC_A, MAC_B, "qlhva")
    assert (data.bytes, data.packets) == (DATA_BYTES, DATA_PACKETS)
    assert abs(data.bytes / OPENFLOW_DATA_BYTES - 1) < 0.2
    assert (ack.container_src, ack.container_dst, ack.input_port) == ("server", "client", "qlhvb")
    assert (ack.bytes, ack.packets) == (ACK_BYTES, ACK_PACKETS)
    assert (reply.packets, request.packets, request.src_port) == (
        ICMP_REPLY_PACKETS,
        ICMP_REQUEST_PACKETS,
        8,
    )
    # the rate is what the last five seconds hold: all of the iperf3 run
    assert data.bytes_per_second == pytest.approx(DATA_BYTES / 5)
    assert [f.ipv4_src for f in world.service.top_flows(window=5, limit=1)] == ["10.77.0.1"]


def test_an_unknown_mac_is_attributed_by_its_input_port(world: World) -> None:
    other_mac = EP_A.model_copy(update={"mac": "02:00:00:00:00:aa"})
    world.cluster = Cluster.of([H1], [WEB], [other_mac, EP_B])
    world.replay()
    world.clock.now = 8.0
    data, ack = world.service.top_flows(window=5, limit=2)
    assert data.eth_src == MAC_A and data.input_port == "qlhva"
    assert (data.endpoint_src, data.container_src) == (other_mac.id, "client")
    assert data.network == "web"
    # the destination is only ever found by MAC
    assert (ack.endpoint_src, ack.endpoint_dst, ack.container_dst) == (EP_B.id, None, None)
    only_a = world.service.top_flows(endpoint=other_mac.id)
    assert [f.ipv4_src for f in only_a] == ["10.77.0.1", "10.77.0.1"]


def test_before_any_counter_sample_there_is_no_host_and_no_port(world: World) -> None:
    other_mac = EP_A.model_copy(update={"mac": "02:00:00:00:00:aa"})
    world.cluster = Cluster.of([H1], [WEB], [other_mac, EP_B])
    world.feed((t, d) for _, t, d in capture() if d.packets and not d.counters)
    world.clock.now = 8.0
    flows = world.service.top_flows(window=5)
    assert len(flows) == 4 and {f.host for f in flows} == {None}
    assert {f.input_port for f in flows} == {None}
    data = flows[0]
    assert data.eth_src == MAC_A and data.endpoint_src is None  # no host: no port to look up
    assert data.endpoint_dst == EP_B.id  # by MAC, host or not
    assert world.service.top_flows(host="h1") == []
    assert world.service.sent_by_endpoint() == {}  # whose samples they are is unknown
    assert world.service.datagrams_by_host() == {AGENT: 42}  # the 42 "flow" files


def test_top_flows_filter_by_host_network_and_endpoint(world: World) -> None:
    ep_b = EP_B.model_copy(update={"network_id": UNNAMED.id})
    world.cluster = Cluster.of([H1, H2], [WEB, UNNAMED], [EP_A, ep_b])
    world.replay()
    world.clock.now = 8.0
    svc = world.service

    def sources(**kw: Any) -> list[str | None]:
        return [f.ipv4_src for f in svc.top_flows(window=5, **kw)]

    assert sources(host="h1") == ["10.77.0.1", "10.77.0.2", "10.77.0.2", "10.77.0.1"]
    assert sources(host="h2") == []
    # a flow's network is its sender's (then its receiver's)
    assert sources(network="web") == sources(network=WEB.id) == ["10.77.0.1", "10.77.0.1"]
    assert sources(network=UNNAMED.id[:12]) == sources(network=UNNAMED.id)
    assert sources(network=UNNAMED.id) == ["10.77.0.2", "10.77.0.2"]
    assert sources(network="db") == []
    # an endpoint: its id, 12 characters of it or more, or its container's name
    everything = sources()
    assert len(everything) == 4
    assert sources(endpoint=EP_A.id) == sources(endpoint=EP_A.id[:12]) == everything
    assert sources(endpoint="client") == everything
    assert sources(endpoint=EP_A.id[:11]) == []
    assert sources(endpoint="clien") == []
    world.cluster = Cluster.of([H1], [WEB], [EP_A])  # B unknown: only flows with A in them
    assert sources(endpoint="server") == []
    assert sources(endpoint=EP_B.id) == []
    assert sources(endpoint="client") == everything


def test_a_window_longer_than_the_table_keeps_is_an_invalid_request(world: World) -> None:
    world.replay()
    world.clock.now = 8.0
    with pytest.raises(InvalidRequest, match="window: the collector keeps 60 seconds"):
        world.service.top_flows(window=120)
    assert len(world.service.top_flows(window=60)) == 4


def test_interfaces_are_rates_between_the_last_two_counter_samples(world: World) -> None:
    world.replay(until="ovs-49-counters.bin")  # the samples of 5.866 s and 7.866 s
    world.clock.now = 7.9
    views = world.service.interfaces()
    assert [(v.port_name, v.if_index, v.of_port) for v in views] == [
        ("br0", 3, 65534),
        ("qlhva", 5, 1),
        ("qlhvb", 7, 2),
    ]
    bridge, a, b = views
    assert (bridge.host, bridge.endpoint, bridge.container, bridge.network) == (
        "h1",
        None,
        None,
        None,
    )
    assert (a.host, a.agent, a.endpoint, a.container, a.network) == (
        "h1",
        AGENT,
        EP_A.id,
        "client",
        "web",
    )
    assert b.container == "server"
    # qlhva received 20,181,392 - 30,028 octets from A in the 2 s between the samples
    assert a.in_octets == 20_181_392 and a.out_octets == 160_796
    assert a.in_bps == pytest.approx(8 * (20_181_392 - 30_028) / 2.0)
    assert a.in_pps == pytest.approx((13_695 - 308) / 2.0)
    assert 70e6 < a.in_bps < 90e6  # iperf3 -b 80M
    assert b.out_bps == pytest.approx(8 * (20_182_384 - 31_020) / 2.0)


def test_interfaces_of_an_unregistered_bridge_have_no_host(world: World) -> None:
    world.cluster = Cluster.of([H2], [WEB], [EP_A, EP_B])
    world.replay()
    world.clock.now = 12.0
    views = world.service.interfaces()
    assert len(views) == 3
    assert {(v.host, v.endpoint) for v in views} == {(None, None)}
    assert {v.agent for v in views} == {AGENT}


def test_sent_by_endpoint_counts_only_the_senders_own_host(world: World) -> None:
    world.replay()
    own = world.service.sent_by_endpoint()
    assert own[EP_A.id].bytes == DATA_BYTES + ICMP_REQUEST_PACKETS * 98
    assert own[EP_A.id].packets == DATA_PACKETS + ICMP_REQUEST_PACKETS
    assert own[EP_B.id].packets == ACK_PACKETS + ICMP_REPLY_PACKETS
    # h2's bridge samples the same packets again where they arrive
    world.feed((t, readdressed(d, "10.77.9.2", dpid=H2.dpid)) for _, t, d in capture())
    again = world.service.sent_by_endpoint()
    assert {k: (v.bytes, v.packets) for k, v in again.items()} == {
        k: (v.bytes, v.packets) for k, v in own.items()
    }
    assert world.service.datagrams_by_host() == {"h1": 54, "h2": 54}
    # and once B lives on h2, only h2's samples count for it
    world.cluster = Cluster.of([H1, H2], [WEB], [EP_A, EP_B.model_copy(update={"host": "h2"})])
    moved = world.service.sent_by_endpoint()
    assert moved[EP_B.id].packets == own[EP_B.id].packets and EP_A.id in moved


def test_sent_by_endpoint_adds_up_every_agent_of_the_host(world: World) -> None:
    """Its agent address changed half-way (another --sflow-agent): a total that only grows."""
    whole = capture()
    half = len(whole) // 2
    world.feed((t, d) for _, t, d in whole[:half])
    world.feed((t, readdressed(d, "10.77.9.3")) for _, t, d in whole[half:])
    sent = world.service.sent_by_endpoint()
    assert sent[EP_A.id].packets == DATA_PACKETS + ICMP_REQUEST_PACKETS
    assert sent[EP_B.id].bytes == ACK_BYTES + ICMP_REPLY_PACKETS * 98
    assert world.service.datagrams_by_host() == {"h1": 54}


def test_datagrams_of_an_unknown_bridge_count_under_the_agent(world: World) -> None:
    world.cluster = Cluster.of([H2], [], [])
    world.replay()
    assert world.service.datagrams_by_host() == {AGENT: 54}
    assert world.service.sent_by_endpoint() == {}


# ---- thresholds ----------------------------------------------------------------------


def test_thresholds_are_stored_listed_and_deleted(world: World, store: SqliteStore) -> None:
    svc = world.service
    first = svc.create_threshold(ThresholdCreate(value=1000, action="drop"))
    second = svc.create_threshold(
        ThresholdCreate(id="slow", value=10, metric="packets", action="rate_limit", rate_kbps=800)
    )
    assert first.id == "threshold-1" and second.rate_kbps == 800
    assert [t.id for t in svc.list_thresholds()] == ["slow", "threshold-1"]
    assert svc.reactor.thresholds == ["slow", "threshold-1"]
    with pytest.raises(Conflict, match="threshold slow already exists"):
        svc.create_threshold(ThresholdCreate(id="slow", value=1, action="drop"))
    svc.delete_threshold("threshold-1")
    svc.delete_threshold("never-made")
    assert [t.id for t in svc.list_thresholds()] == ["slow"] and svc.reactor.thresholds == ["slow"]
    # a new service over the same store takes the stored thresholds
    again = MonitoringService(store, lambda: world.cluster, world.sink)
    assert again.reactor.thresholds == ["slow"]


def test_a_flow_over_a_threshold_gets_a_steering_rule_until_it_is_quiet(
    world: World, conv: RecordingConverger
) -> None:
    svc, sink, clock = world.service, world.sink, world.clock
    svc.create_threshold(
        ThresholdCreate(id="elephant", value=1_000_000, action="drop", quiet_seconds=10, window=5)
    )
    world.replay()
    clock.now = 8.0
    events = svc.evaluate()
    assert [
        (e.source, e.threshold, e.ipv4_src, e.ipv4_dst, e.protocol, e.dst_port, e.agent)
        for e in events
    ] == [("embedded", "elephant", "10.77.0.1", "10.77.0.2", AclProtocol.TCP, 5201, AGENT)]
    assert events[0].value == pytest.approx(DATA_BYTES / 5)
    (rule,) = sink.list_steering()
    assert (rule.id, rule.priority, rule.action) == ("auto-3900", 3900, SteeringAction.DROP)
    assert rule.src is not None and rule.src.cidr == "10.77.0.1/32"
    assert rule.dst is not None and rule.dst.cidr == "10.77.0.2/32"
    assert (rule.protocol, rule.port_min, rule.port_max) == (AclProtocol.TCP, 5201, 5201)
    assert [h for h, _ in conv.calls] == ["h1"]  # the rule went to the bridge
    reactions = svc.status()["reactions"]
    assert isinstance(reactions, list) and [r["rule"] for r in reactions] == ["auto-3900"]
    text = world.metrics.render().decode()
    assert 'qingluan_threshold_events_total{source="embedded",threshold="elephant"} 1.0' in text
    assert "qingluan_auto_steering_rules 1.0" in text

    clock.now = 8.5  # still over it: the same rule, nothing new
    assert len(svc.evaluate()) == 1 and [r.id for r in sink.list_steering()] == ["auto-3900"]
    clock.now = 15.0  # quiet for 6.5 s of the 10
    assert svc.evaluate() == [] and len(sink.list_steering()) == 1
    clock.now = 19.0  # quiet for 10.5 s: the rule goes
    assert svc.evaluate() == []
    assert sink.list_steering() == [] and svc.reactor.active() == []
    assert "qingluan_auto_steering_rules 0.0" in world.metrics.render().decode()
    assert [e.threshold for e in svc.recent_events] == ["elephant", "elephant"]


def test_a_deleted_threshold_no_longer_reacts(world: World) -> None:
    svc = world.service
    svc.create_threshold(ThresholdCreate(id="elephant", value=1_000_000, action="drop"))
    svc.delete_threshold("elephant")
    world.replay()
    world.clock.now = 8.0
    assert svc.evaluate() == [] and world.sink.list_steering() == []


def test_a_rate_limit_threshold_on_packets_of_one_protocol(world: World) -> None:
    svc = world.service
    svc.create_threshold(
        ThresholdCreate(
            id="pings",
            metric="packets",
            value=50,
            protocol=AclProtocol.ICMP,
            action="rate_limit",
            rate_kbps=64,
        )
    )
    world.replay()
    world.clock.now = 8.0  # replies: 102.4 packets/s, requests 25.6, TCP data 2828.8
    events = svc.evaluate()
    assert [(e.ipv4_src, e.protocol, e.dst_port) for e in events] == [
        ("10.77.0.2", AclProtocol.ICMP, 0)
    ]
    (rule,) = world.sink.list_steering()
    assert (rule.action, rule.rate_kbps, rule.protocol) == (
        SteeringAction.RATE_LIMIT,
        64,
        AclProtocol.ICMP,
    )
    assert (rule.port_min, rule.port_max) == (None, None)  # ICMP has no port


def test_crossing_looks_at_the_protocol_the_metric_and_the_value(world: World) -> None:
    world.replay()
    flows = world.service.table.top_flows(8.0, window=5)
    by_proto = {(f.key.ip_proto, f.key.ipv4_src): f for f in flows}
    data, reply = by_proto[(6, "10.77.0.1")], by_proto[(1, "10.77.0.2")]

    def threshold(**kw: object) -> Threshold:
        return Threshold.model_validate({"id": "t", "action": "drop", **kw})

    assert crossing(threshold(value=4_000_000), data)
    assert not crossing(threshold(value=5_000_000), data)
    assert not crossing(threshold(value=1, protocol="udp"), data)
    assert not crossing(threshold(value=1, protocol="icmp"), data)
    assert crossing(threshold(value=1, protocol="tcp"), data)
    assert crossing(threshold(value=100, metric="packets", protocol="icmp"), reply)
    assert not crossing(threshold(value=110, metric="packets", protocol="icmp"), reply)
    no_ip = dataclasses.replace(
        data, key=dataclasses.replace(data.key, ipv4_src=None, ipv4_dst=None)
    )
    assert not crossing(threshold(value=1), no_ip)  # a rule for it would match everything


def test_a_udp_flood_is_found_behind_many_bigger_tcp_flows(world: World) -> None:
    """The protocol is chosen before the 50 biggest flows are, not after."""
    svc = world.service
    svc.create_threshold(
        ThresholdCreate(id="flood", value=10_000, protocol=AclProtocol.UDP, action="drop")
    )
    base = next(p for _, _, d in capture() for p in d.packets if p.frame_length == 1514)
    tcp = [dataclasses.replace(base, src_port=40_000 + i) for i in range(60) for _ in range(10)]
    udp = [
        dataclasses.replace(
            base, ip_proto=17, ipv4_dst="10.77.0.3", src_port=5353, dst_port=53, frame_length=200
        )
    ] * 10
    datagram = dataclasses.replace(capture()[0][2], packets=(*tcp, *udp), counters=())
    world.feed([(100.0, datagram)])
    world.clock.now = 100.5
    assert len(svc.table.top_flows(100.5, limit=100)) == 61
    events = svc.evaluate()
    assert [(e.ipv4_dst, e.protocol, e.dst_port) for e in events] == [
        ("10.77.0.3", AclProtocol.UDP, 53)
    ]
    (rule,) = world.sink.list_steering()
    assert rule.dst is not None and rule.dst.cidr == "10.77.0.3/32"
    assert (rule.protocol, rule.port_min) == (AclProtocol.UDP, 53)


def test_sflow_rt_events_are_counted_and_listed(world: World) -> None:
    from qingluan.controller.monitor.reactions import ThresholdEvent

    event = ThresholdEvent(
        source="sflow-rt",
        threshold="qingluan_udp_flood",
        event_id="7",
        ipv4_src="10.77.0.1",
        protocol=AclProtocol.UDP,
    )
    world.service.on_rt_event(event)
    assert world.service.recent_events == [event]
    text = world.metrics.render().decode()
    assert (
        'qingluan_threshold_events_total{source="sflow-rt",threshold="qingluan_udp_flood"}' in text
    )


def test_a_udp_threshold_crosses_for_a_udp_flow() -> None:
    key = FlowKey(AGENT, MAC_A, MAC_B, "10.77.0.1", "10.77.0.2", 17, 1, 53)
    flow = FlowEstimate(key, 100, 1, 100.0, 1.0, 0.0, 0.0, 5, 7)
    t = Threshold(id="t", value=50, protocol=AclProtocol.UDP, action="drop")
    assert crossing(t, flow)
