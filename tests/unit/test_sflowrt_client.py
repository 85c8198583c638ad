"""The sFlow-RT client and poller over real HTTP, against the recorded-response stand-in.

``tests/support/sflowrt_replay.py`` serves responses shaped like sFlow-RT 3.x's
(``tests/data/sflowrt``) and records each request, so these tests check both
what the client sends (path, query, body) and how it reads what comes back.
Every wait is bounded; servers, clients and pollers are closed by fixtures or
``finally`` even when an assertion fails.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from qingluan.controller.monitor.reactions import Reaction, Reactor, ThresholdEvent
from qingluan.controller.monitor.sflowrt import (
    ActiveFlow,
    FlowSpec,
    RtEvent,
    SflowRtClient,
    SflowRtError,
    SflowRtPoller,
    ThresholdSpec,
    threshold_event,
)
from qingluan.errors import Unavailable
from qingluan.model import AclProtocol, AclSelector, SteeringAction
from tests.support.sflowrt_replay import SflowRtReplay, recorded
from tests.unit.test_reactions import MemorySink

ELEPHANT_KEYS = ("ipsource", "ipdestination", "ipprotocol", "tcpdestinationport")
REFLECTION_KEYS = ("ipsource", "ipdestination", "ipprotocol", "udpsourceport")
FLOWS = [
    FlowSpec("elephant", ELEPHANT_KEYS, "bytes", t=2),
    FlowSpec("udp_reflection", REFLECTION_KEYS, "frames", filter="ipprotocol=17"),
]
THRESHOLDS = [
    ThresholdSpec("elephant", "elephant", 12_500_000, timeout=2),
    ThresholdSpec("udp_flood", "udp_reflection", 10_000),
]
REACTIONS = [
    Reaction(threshold="elephant", action="rate_limit", rate_kbps=10_000, quiet_seconds=30),
    Reaction(threshold="udp_flood", action="drop", quiet_seconds=30),
]


def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture
def replay() -> Iterator[SflowRtReplay]:
    with SflowRtReplay() as server:
        yield server


@pytest.fixture
def client(replay: SflowRtReplay) -> Iterator[SflowRtClient]:
    c = SflowRtClient(replay.url, timeout=2.0)
    yield c
    c.close()


@pytest.fixture
def sink() -> MemorySink:
    return MemorySink()


@pytest.fixture
def reactor(sink: MemorySink) -> Iterator[Reactor]:
    r = Reactor(sink, REACTIONS)
    yield r
    r.close()


def make_poller(client: SflowRtClient, reactor, **kw) -> SflowRtPoller:
    options: dict[str, Any] = {"check_every": 0.2, "backoff_initial": 0.05, "backoff_max": 0.2}
    options.update(kw)
    return SflowRtPoller(client, reactor, FLOWS, THRESHOLDS, **options)


# ---- what the client sends and reads -------------------------------------------------


def test_version_and_agents(client, replay):
    assert client.version() == "3.0-1712"
    agents = client.agents()

    assert set(agents) == {"10.77.9.1", "10.77.9.2"}
    assert agents["10.77.9.1"]["sFlowDatagramsReceived"] == 1204
    assert agents["10.77.9.1"]["sFlowDatagramSource"] == ["10.77.9.1"]
    assert [(r.method, r.path) for r in replay.requests()] == [
        ("GET", "/version"),
        ("GET", "/agents/json"),
    ]


def test_define_read_and_delete_a_flow(client, replay):
    client.define_flow("elephant", ELEPHANT_KEYS, "bytes", t=2)
    client.define_flow("udp_reflection", "ipsource,ipdestination", "frames", "ipprotocol=17", True)

    [first, second] = replay.requests("PUT")
    assert first.path == "/flow/elephant/json"
    assert first.body == {
        "keys": "ipsource,ipdestination,ipprotocol,tcpdestinationport",
        "value": "bytes",
        "log": False,
        "t": 2,
    }
    assert second.body == {
        "keys": "ipsource,ipdestination",
        "value": "frames",
        "filter": "ipprotocol=17",
        "log": True,
    }
    flow = client.flow("elephant")
    assert flow is not None
    assert flow["keys"] == "ipsource,ipdestination,ipprotocol,tcpdestinationport"
    assert flow["fs"] == ","

    client.delete_flow("elephant")
    assert replay.requests("DELETE")[0].path == "/flow/elephant/json"
    assert client.flow("elephant") is None
    client.delete_flow("elephant")  # gone already: fine
    with pytest.raises(SflowRtError, match="404") as err:
        client.delete_flow("elephant", missing_ok=False)
    assert err.value.http_status == 404
    assert set(replay.flows) == {"udp_reflection"}


def test_set_read_and_delete_a_threshold(client, replay):
    client.set_threshold("elephant", "elephant", 12_500_000, timeout=2)
    client.set_threshold("load", "load_one", 1.5, by_flow=False)

    first, second = replay.requests("PUT")
    assert first.path == "/threshold/elephant/json"
    assert first.body == {"metric": "elephant", "value": 12_500_000, "byFlow": True, "timeout": 2}
    assert second.body == {"metric": "load_one", "value": 1.5, "byFlow": False}
    assert client.threshold("elephant") == {
        "metric": "elephant",
        "value": 12_500_000,
        "byFlow": True,
        "timeout": 2,
    }

    client.delete_threshold("elephant")
    assert client.threshold("elephant") is None
    assert [r.path for r in replay.requests("DELETE")] == ["/threshold/elephant/json"]


def test_active_flows_query_and_parsing(client, replay):
    client.define_flow("elephant", ELEPHANT_KEYS, "bytes")
    replay.set_active_flows("elephant", "activeflows_elephant")

    flows = client.active_flows("elephant", max_flows=2, min_value=1000)

    [req] = replay.requests("GET")
    assert req.path == "/activeflows/ALL/elephant/json"
    assert req.query == {"maxFlows": ["2"], "minValue": ["1000"], "aggMode": ["max"]}
    assert flows == [
        ActiveFlow(
            key="10.128.0.2,10.128.0.3,6,5001",
            parts=("10.128.0.2", "10.128.0.3", "6", "5001"),
            value=15311874.6,
            agent="10.77.9.1",
            data_source="2",
            flow_n=1,
        ),
        ActiveFlow(
            key="10.128.0.4,10.128.0.3,6,443",
            parts=("10.128.0.4", "10.128.0.3", "6", "443"),
            value=4411029.2,
            agent="10.77.9.2",
            data_source="2",
            flow_n=2,
        ),
    ]

    one = client.active_flows("elephant", agent="10.77.9.2", agg_mode="sum")
    assert [f.key for f in one] == ["10.128.0.4,10.128.0.3,6,443"]
    last = replay.requests("GET")[-1]
    assert last.path == "/activeflows/10.77.9.2/elephant/json"
    assert last.param("aggMode") == "sum" and last.param("minValue") is None


def test_events_are_read_oldest_first_and_continue_after_the_last(client, replay):
    replay.queue_event("events_elephant")
    replay.queue_event("events_udp_flood")

    events = client.events(max_events=10)

    assert [r.query for r in replay.requests("GET", "/events/json")] == [
        {"maxEvents": ["10"], "eventID": ["-1"]}
    ]
    recorded_elephant = recorded("events_elephant")[0]
    assert events[0] == RtEvent(
        event_id=1,
        threshold_id="elephant",
        metric="elephant",
        value=15311874.6,
        threshold=12_500_000.0,
        flow_key="10.128.0.2,10.128.0.3,6,5001",
        agent="10.77.9.1",
        data_source="2",
        timestamp=events[0].timestamp,
    )
    assert events[0].flow_key == recorded_elephant["flowKey"]
    assert isinstance(events[0].timestamp, int)
    assert [(e.event_id, e.threshold_id) for e in events] == [(1, "elephant"), (2, "udp_flood")]
    assert client.last_event_id == 2

    started = time.monotonic()
    assert client.events(threshold_id="udp_flood", timeout=1) == []
    elapsed = time.monotonic() - started
    assert 0.8 <= elapsed < 3.0  # the server held the poll for its timeout
    last = replay.requests("GET", "/events/json")[-1]
    assert last.query == {
        "maxEvents": ["100"],
        "eventID": ["2"],
        "thresholdID": ["udp_flood"],
        "timeout": ["1"],
    }

    assert [e.event_id for e in client.events(event_id=-1, max_events=1)] == [2]


def test_a_long_poll_returns_when_an_event_arrives(client, replay):
    timer = threading.Timer(0.3, replay.queue_event, args=("events_udp_flood",))
    timer.start()
    try:
        started = time.monotonic()
        events = client.events(timeout=10)
        assert time.monotonic() - started < 5.0
        assert [e.threshold_id for e in events] == ["udp_flood"]
    finally:
        timer.cancel()


# ---- errors --------------------------------------------------------------------------


def test_http_errors_name_the_url_and_status(client, replay):
    replay.fail("/agents/json", 404, "Not Found")
    with pytest.raises(SflowRtError) as err:
        client.agents()
    assert err.value.http_status == 404
    assert f"{replay.url}/agents/json" in str(err.value) and "404" in str(err.value)

    replay.fail("/events/json", 500, "java.lang.NullPointerException")
    with pytest.raises(SflowRtError, match=r"answered 500 .*NullPointerException") as err:
        client.events()
    assert err.value.http_status == 500
    assert "/events/json?maxEvents=100&eventID=-1" in err.value.url
    assert isinstance(err.value, Unavailable)


def test_bad_json_and_wrong_shapes_are_errors(client, replay):
    replay.fail("/agents/json", 200, "{not json", "application/json")
    with pytest.raises(SflowRtError, match="not JSON"):
        client.agents()

    replay.fail("/events/json", 200, '{"eventID": 3}', "application/json")
    with pytest.raises(SflowRtError, match="expected a list of events"):
        client.events()

    replay.fail("/events/json", 200, '[{"eventID": "x"}]', "application/json")
    with pytest.raises(SflowRtError, match="unexpected event"):
        client.events()
    assert client.last_event_id == -1


def test_an_unreachable_server_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = SflowRtClient(f"http://127.0.0.1:{port}", timeout=1.0)
    try:
        with pytest.raises(SflowRtError, match=f"cannot reach sFlow-RT at http://127.0.0.1:{port}"):
            c.version()
    finally:
        c.close()


# ---- flowKey to ThresholdEvent -------------------------------------------------------


def rt_event(flow_key: str | None, threshold_id: str = "elephant") -> RtEvent:
    return RtEvent(1, threshold_id, "elephant", 2.0, 1.0, flow_key, "10.77.9.1", "2", 0)


def test_flow_keys_map_in_the_order_of_the_definition():
    ev = threshold_event(rt_event("10.128.0.2,10.128.0.3,6,5001"), ELEPHANT_KEYS)
    assert ev == ThresholdEvent(
        source="sflow-rt",
        threshold="elephant",
        event_id="1",
        ipv4_src="10.128.0.2",
        ipv4_dst="10.128.0.3",
        protocol=AclProtocol.TCP,
        dst_port=5001,
        value=2.0,
        agent="10.77.9.1",
    )

    reflected = threshold_event(rt_event("203.0.113.9,10.128.0.3,17,53"), REFLECTION_KEYS)
    assert reflected is not None
    assert (reflected.protocol, reflected.dst_port) == (AclProtocol.UDP, None)

    swapped = threshold_event(rt_event("5001,10.128.0.3"), ("udpdestinationport", "ipdestination"))
    assert swapped is not None
    assert (swapped.ipv4_src, swapped.ipv4_dst, swapped.protocol, swapped.dst_port) == (
        None,
        "10.128.0.3",
        AclProtocol.UDP,
        5001,
    )
    other = threshold_event(rt_event("10.0.0.1,10.0.0.2,47"), ELEPHANT_KEYS[:3])
    assert other is not None and other.protocol is AclProtocol.ANY


def test_flow_keys_that_do_not_fit_are_refused():
    assert threshold_event(rt_event("10.128.0.2,10.128.0.3"), ELEPHANT_KEYS) is None
    assert threshold_event(rt_event(None), ELEPHANT_KEYS) is None


# ---- the poller ----------------------------------------------------------------------


def test_the_poller_pushes_definitions_and_turns_events_into_rules(client, replay, reactor, sink):
    poller = make_poller(client, reactor)
    poller.start()
    try:
        assert replay.wait_for(lambda: len(replay.flows) == 2 and len(replay.thresholds) == 2)
        assert replay.flows["udp_reflection"] == {
            "keys": "ipsource,ipdestination,ipprotocol,udpsourceport",
            "value": "frames",
            "filter": "ipprotocol=17",
            "log": False,
        }
        assert replay.thresholds["udp_flood"] == {
            "metric": "udp_reflection",
            "value": 10_000,
            "byFlow": True,
        }
        replay.queue_event("events_elephant")
        replay.queue_event("events_udp_flood")
        replay.queue_event("events_udp_flood", thresholdID="someone_elses")
        replay.queue_event("events_elephant", flowKey="10.128.0.2,10.128.0.3")

        assert eventually(lambda: len(sink.rules) == 2 and poller.handled == 2)
    finally:
        poller.close()

    rules = {r.action: r for r in sink.rules.values()}
    limit = rules[SteeringAction.RATE_LIMIT]
    assert (limit.src, limit.dst) == (
        AclSelector(cidr="10.128.0.2/32"),
        AclSelector(cidr="10.128.0.3/32"),
    )
    assert (limit.protocol, limit.port_min, limit.rate_kbps) == (AclProtocol.TCP, 5001, 10_000)
    assert limit.description == "automatic rate_limit: sflow-rt threshold elephant event 1"
    drop = rules[SteeringAction.DROP]
    assert (drop.src, drop.protocol, drop.port_min) == (
        AclSelector(cidr="203.0.113.9/32"),
        AclProtocol.UDP,
        None,
    )
    assert "udp_flood event 2" in drop.description
    assert poller.pushes == 1


def test_the_poller_pushes_again_after_sflow_rt_restarts(client, replay, reactor, sink):
    poller = make_poller(client, reactor)
    poller.start()
    try:
        assert replay.wait_for(lambda: len(replay.thresholds) == 2)
        replay.queue_event("events_elephant")
        assert eventually(lambda: len(sink.rules) == 1)
        assert eventually(lambda: client.last_event_id == 1)

        replay.restart()
        assert replay.wait_for(lambda: len(replay.flows) == 2 and len(replay.thresholds) == 2)
        assert eventually(lambda: poller.pushes == 2)
        assert len(replay.requests("PUT", "/flow/elephant/json")) == 2
        assert len(replay.requests("PUT", "/threshold/udp_flood/json")) == 2

        replay.queue_event("events_udp_flood")  # eventID 1 again
        assert eventually(lambda: len(sink.rules) == 2)
    finally:
        poller.close()


def test_the_poller_pushes_again_when_the_version_changes(client, replay, reactor):
    poller = make_poller(client, reactor)
    poller.start()
    try:
        assert eventually(lambda: poller.pushes == 1)
        replay.wait_for(lambda: len(replay.requests("GET", "/version")) >= 2)
        assert poller.pushes == 1  # same version, definitions in place: nothing to do
        replay.set_version("3.1-1800")  # an upgrade, definitions kept
        assert eventually(lambda: poller.pushes == 2)
    finally:
        poller.close()


def test_the_poller_expires_quiet_rules_every_tick(client, replay, sink):
    quick = Reactor(sink, [Reaction(threshold="udp_flood", action="drop", quiet_seconds=0.3)])
    poller = make_poller(client, quick, expire_every=0.1)
    poller.start()
    try:
        assert replay.wait_for(lambda: len(replay.thresholds) == 2)
        replay.queue_event("events_udp_flood")
        assert eventually(lambda: len(sink.deletes) == 1)
        assert sink.rules == {} and quick.active() == []
    finally:
        poller.close()
        quick.close()


def test_the_poller_backs_off_and_recovers(client, replay, reactor, sink):
    replay.fail("/events/json", 500, times=3)
    replay.fail("/version", 503, "starting", times=1)
    poller = make_poller(client, reactor)
    poller.start()
    try:
        replay.queue_event("events_udp_flood")
        assert eventually(lambda: len(sink.rules) == 1)
        assert len(replay.requests("GET", "/events/json")) >= 4
        assert poller.pushes >= 1
    finally:
        poller.close()


def test_the_poller_survives_an_absent_server_and_closes_promptly(reactor):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = SflowRtClient(f"http://127.0.0.1:{port}", timeout=0.5)
    poller = make_poller(c, reactor)
    try:
        poller.start()
        time.sleep(0.5)
        assert poller.pushes == 0
    finally:
        started = time.monotonic()
        poller.close()
        assert time.monotonic() - started < 2.0
        c.close()


def test_close_interrupts_a_long_poll_within_two_seconds(client, replay, reactor):
    poller = make_poller(client, reactor, check_every=60)
    poller.start()
    try:
        assert replay.wait_for(lambda: len(replay.requests("GET", "/events/json")) >= 2)
    finally:
        started = time.monotonic()
        poller.close()
        elapsed = time.monotonic() - started
    assert elapsed < 2.0
    assert not any(t.is_alive() for t in poller._threads)


def test_poller_configuration_is_checked(client, reactor):
    with pytest.raises(ValueError, match="not one of the flows"):
        SflowRtPoller(client, reactor, FLOWS, [ThresholdSpec("x", "nope", 1)])
    with pytest.raises(ValueError, match="same name"):
        SflowRtPoller(client, reactor, FLOWS + FLOWS[:1], THRESHOLDS)
    poller = make_poller(client, reactor)
    poller.start()
    try:
        with pytest.raises(RuntimeError, match="already started"):
            poller.start()
    finally:
        poller.close()
