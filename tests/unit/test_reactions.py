"""The Reactor: threshold events in, automatic steering rules out (and away again).

``MemorySink`` stands for the controller's Services (it keeps rules by id and
refuses a taken id or priority with ``Conflict``, like ``create_steering``) and
can be told to fail; time is an injected clock. One test runs the reactor over
the real Services and SQLite store.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from qingluan.api_schema import AclSelectorBody, ReconcileResult, SteeringCreate
from qingluan.controller.monitor.reactions import (
    Reaction,
    Reactor,
    ThresholdEvent,
    flow_key,
)
from qingluan.controller.services import Services
from qingluan.controller.store import SqliteStore
from qingluan.errors import Conflict, NotFound, Unavailable
from qingluan.model import AclProtocol, AclSelector, SteeringAction, SteeringRule
from tests.support.clock import Clock

QUIET = 60.0


@dataclass
class MemorySink:
    rules: dict[str, SteeringRule] = field(default_factory=dict)
    bodies: list[SteeringCreate] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    create_failures: list[Exception] = field(default_factory=list)
    delete_failures: list[Exception] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def create_steering(self, body: SteeringCreate) -> SteeringRule:
        with self.lock:
            self.bodies.append(body)
            if self.create_failures:
                raise self.create_failures.pop(0)
            assert body.id is not None
            if body.id in self.rules:
                raise Conflict(f"steering rule {body.id} already exists")
            if any(r.priority == body.priority for r in self.rules.values()):
                raise Conflict(f"priority {body.priority} is taken")
            low, high = body.port_range()
            rule = SteeringRule(
                id=body.id,
                priority=body.priority,
                src=_selector(body.src),
                dst=_selector(body.dst),
                protocol=body.protocol,
                port_min=low,
                port_max=high,
                action=body.action,
                rate_kbps=body.rate_kbps,
                burst_kbits=body.burst_kbits,
                description=body.description,
            )
            self.rules[rule.id] = rule
            return rule

    def delete_steering(self, rule_id: str) -> None:
        with self.lock:
            self.deletes.append(rule_id)
            if self.delete_failures:
                raise self.delete_failures.pop(0)
            if rule_id not in self.rules:
                raise NotFound(f"steering rule {rule_id} does not exist")
            del self.rules[rule_id]

    def operator_rule(self, rule_id: str, priority: int) -> None:
        self.rules[rule_id] = SteeringRule(
            id=rule_id, priority=priority, action=SteeringAction.DSCP, dscp=10
        )


def _selector(body: AclSelectorBody | None) -> AclSelector | None:
    return None if body is None else AclSelector(**body.model_dump())


def udp_flood(
    event_id: str = "7", src: str | None = "203.0.113.9", port: int | None = 53, **kw: Any
) -> ThresholdEvent:
    ev = ThresholdEvent(
        source="sflow-rt",
        threshold="udp_flood",
        event_id=event_id,
        ipv4_src=src,
        ipv4_dst="10.128.0.3",
        protocol=AclProtocol.UDP,
        dst_port=port,
        value=48210.4,
        agent="10.77.9.2",
    )
    return replace(ev, **kw)


def elephant(event_id: str = "4", **kw: Any) -> ThresholdEvent:
    ev = ThresholdEvent(
        source="embedded",
        threshold="elephant",
        event_id=event_id,
        ipv4_src="10.128.0.2",
        ipv4_dst="10.128.0.3",
        protocol=AclProtocol.TCP,
        dst_port=5001,
        value=15311874.6,
    )
    return replace(ev, **kw)


DROP = Reaction(threshold="udp_flood", action="drop", quiet_seconds=QUIET)
LIMIT = Reaction(
    threshold="elephant",
    action="rate_limit",
    rate_kbps=10_000,
    burst_kbits=1_000,
    quiet_seconds=QUIET,
    priority_base=3800,
    priority_slots=50,
)


@pytest.fixture
def clock() -> Clock:
    return Clock(1000.0)


@pytest.fixture
def sink() -> MemorySink:
    return MemorySink()


@pytest.fixture
def reactor(sink: MemorySink, clock: Clock) -> Iterator[Reactor]:
    r = Reactor(sink, [DROP, LIMIT], clock=clock)
    yield r
    r.close()


# ---- the rules it asks for -----------------------------------------------------------


def test_a_drop_reaction_pins_both_addresses_protocol_and_port(reactor, sink):
    rule = reactor.on_event(udp_flood())

    assert rule is not None
    assert [b.model_dump(exclude_none=True) for b in sink.bodies] == [
        {
            "id": "auto-3900",
            "priority": 3900,
            "src": {"cidr": "203.0.113.9/32"},
            "dst": {"cidr": "10.128.0.3/32"},
            "protocol": AclProtocol.UDP,
            "ports": "53",
            "action": SteeringAction.DROP,
            "description": "automatic drop: sflow-rt threshold udp_flood event 7",
        }
    ]
    assert (rule.id, rule.priority, rule.action) == ("auto-3900", 3900, SteeringAction.DROP)
    assert rule.src == AclSelector(cidr="203.0.113.9/32")
    assert (rule.port_min, rule.port_max) == (53, 53)


def test_a_rate_limit_reaction_carries_its_meter(reactor, sink):
    rule = reactor.on_event(elephant())

    assert rule is not None
    assert rule.action is SteeringAction.RATE_LIMIT
    assert (rule.rate_kbps, rule.burst_kbits, rule.priority) == (10_000, 1_000, 3800)
    assert rule.protocol is AclProtocol.TCP
    assert "embedded" in rule.description and "elephant" in rule.description
    assert "event 4" in rule.description


def test_a_missing_side_matches_anything_but_no_address_at_all_is_refused(reactor, sink):
    rule = reactor.on_event(udp_flood(src=None))
    assert rule is not None and rule.src is None and rule.dst is not None

    assert reactor.on_event(udp_flood(src=None, ipv4_dst=None)) is None
    assert reactor.on_event(udp_flood(src="10.0.0.300")) is None
    assert len(sink.bodies) == 1


def test_a_port_only_counts_for_tcp_and_udp(reactor, sink):
    rule = reactor.on_event(udp_flood(protocol="icmp", port=53))

    assert rule is not None and rule.protocol is AclProtocol.ICMP
    assert rule.port_min is None and sink.bodies[0].ports is None
    assert flow_key(udp_flood(protocol="any", port=80)).dst_port is None


def test_events_without_a_reaction_change_nothing(reactor, sink):
    assert reactor.on_event(udp_flood(threshold="someone_elses")) is None
    assert sink.bodies == []
    assert reactor.thresholds == ["elephant", "udp_flood"]


# ---- one rule per flow ---------------------------------------------------------------


def test_a_repeated_event_only_refreshes_the_flow(reactor, sink, clock):
    first = reactor.on_event(udp_flood("7"))
    clock.now += 30
    again = reactor.on_event(udp_flood("8"))

    assert again == first
    assert len(sink.bodies) == 1
    [held] = reactor.active()
    assert (held.first_seen, held.last_seen, held.events) == (1000.0, 1030.0, 2)
    assert held.source == "sflow-rt"


def test_each_distinct_flow_and_threshold_gets_its_own_rule(reactor, sink):
    rules = [
        reactor.on_event(udp_flood()),
        reactor.on_event(udp_flood(port=123)),
        reactor.on_event(udp_flood(src="198.51.100.7")),
        reactor.on_event(udp_flood(protocol="tcp")),
        reactor.on_event(elephant()),
        reactor.on_event(elephant(threshold="udp_flood")),  # same flow, other threshold
    ]

    assert all(r is not None for r in rules)
    assert [r.priority for r in rules if r] == [3900, 3901, 3902, 3903, 3800, 3904]
    assert len({r.id for r in rules if r}) == 6
    assert [a.rule.priority for a in reactor.active()] == [3904, 3903, 3902, 3901, 3900, 3800]


def test_concurrent_events_for_one_flow_make_one_rule(sink, clock):
    reactor = Reactor(sink, [DROP], clock=clock)
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(lambda i: reactor.on_event(udp_flood(str(i))), range(64)))
        assert len(sink.bodies) == 1
        assert {r.id for r in results if r} == {"auto-3900"}
        [held] = reactor.active()
        assert held.events == 64
    finally:
        reactor.close()


# ---- priorities ----------------------------------------------------------------------


def test_priorities_taken_by_other_rules_are_skipped(reactor, sink):
    sink.operator_rule("mark-voip", 3900)
    sink.operator_rule("auto-3901", 120)  # a leftover holding the id

    rule = reactor.on_event(udp_flood())

    assert rule is not None and rule.priority == 3902
    assert [b.priority for b in sink.bodies] == [3900, 3901, 3902]


def test_a_full_band_means_no_reaction(sink, clock, caplog):
    narrow = Reaction(threshold="udp_flood", action="drop", priority_base=3998, priority_slots=2)
    reactor = Reactor(sink, [narrow], clock=clock)
    try:
        sink.operator_rule("a", 3998)
        assert reactor.on_event(udp_flood()) is not None  # 3999
        with caplog.at_level(logging.WARNING):
            assert reactor.on_event(udp_flood(port=123)) is None
        assert "no free steering priority in 3998-3999" in caplog.text
        assert len(reactor.active()) == 1
    finally:
        reactor.close()


# ---- going away ----------------------------------------------------------------------


def test_a_rule_goes_once_its_flow_is_quiet(reactor, sink, clock):
    rule = reactor.on_event(udp_flood())
    assert rule is not None

    clock.now += 50
    reactor.on_event(udp_flood("8"))
    clock.now += QUIET  # 60 s after the last event: not yet longer than quiet_seconds
    assert reactor.expire() == []
    assert rule.id in sink.rules

    assert reactor.expire(now=clock.now + 0.5) == [rule.id]
    assert rule.id not in sink.rules
    assert reactor.active() == []

    clock.now += 1
    again = reactor.on_event(udp_flood("9"))  # the flood is back: a new rule
    assert again is not None and again.priority == 3900


def test_only_the_quiet_flows_go(reactor, sink, clock):
    a = reactor.on_event(udp_flood())
    clock.now += 40
    b = reactor.on_event(elephant())
    clock.now += 30

    assert a is not None and b is not None
    assert reactor.expire() == [a.id]
    assert [x.rule.id for x in reactor.active()] == [b.id]


def test_a_rule_the_operator_deleted_is_forgotten_silently(reactor, sink, clock):
    rule = reactor.on_event(udp_flood())
    assert rule is not None
    del sink.rules[rule.id]

    clock.now += QUIET + 1
    assert reactor.expire() == [rule.id]
    assert reactor.active() == []
    assert reactor.expire() == []


def test_a_failed_delete_is_retried_at_the_next_expire(reactor, sink, clock, caplog):
    rule = reactor.on_event(udp_flood())
    assert rule is not None
    sink.delete_failures.append(Unavailable("bridge h1 is not connected"))

    clock.now += QUIET + 1
    with caplog.at_level(logging.WARNING):
        assert reactor.expire() == []
    assert "will retry" in caplog.text
    [held] = reactor.active()
    assert held.deleting

    assert reactor.expire() == [rule.id]
    assert sink.deletes == [rule.id, rule.id]
    assert sink.rules == {}


def test_an_event_while_a_delete_is_pending_keeps_the_rule(reactor, sink, clock):
    rule = reactor.on_event(udp_flood())
    sink.delete_failures.append(Unavailable("store busy"))
    clock.now += QUIET + 1
    assert reactor.expire() == []

    assert reactor.on_event(udp_flood("8")) == rule
    [held] = reactor.active()
    assert not held.deleting
    assert reactor.expire() == []
    assert len(sink.bodies) == 1


def test_a_failed_create_is_retried_by_the_next_event(reactor, sink):
    sink.create_failures.append(Unavailable("bridge h1 is not connected"))

    assert reactor.on_event(udp_flood("7")) is None
    assert reactor.active() == []
    rule = reactor.on_event(udp_flood("8"))
    assert rule is not None and "event 8" in rule.description


def test_close_removes_everything_it_made_and_nothing_else(sink, clock):
    reactor = Reactor(sink, [DROP, LIMIT], clock=clock)
    sink.operator_rule("mark-voip", 100)
    ids = {r.id for r in (reactor.on_event(udp_flood()), reactor.on_event(elephant())) if r}

    assert set(reactor.close()) == ids
    assert set(sink.rules) == {"mark-voip"}
    assert reactor.on_event(udp_flood("8")) is None
    assert reactor.active() == []


def test_close_keeps_listing_what_it_could_not_delete(sink, clock):
    reactor = Reactor(sink, [DROP], clock=clock)
    rule = reactor.on_event(udp_flood())
    assert rule is not None
    sink.delete_failures.append(Unavailable("store busy"))

    assert reactor.close() == []
    assert [a.rule.id for a in reactor.active()] == [rule.id]
    assert reactor.close() == [rule.id]


def test_sweep_removes_leftovers_of_an_earlier_run(reactor, sink):
    sink.operator_rule("auto-3950", 3950)
    sink.operator_rule("mark-voip", 100)
    mine = reactor.on_event(udp_flood())
    assert mine is not None

    assert reactor.sweep(list(sink.rules.values())) == ["auto-3950"]
    assert set(sink.rules) == {"mark-voip", mine.id}


# ---- configuration -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"action": "rate_limit"}, "rate_kbps"),
        ({"action": "drop", "rate_kbps": 100}, "only a rate_limit"),
        ({"action": "drop", "burst_kbits": 100}, "only a rate_limit"),
        ({"action": "rate_limit", "rate_kbps": 4}, "rate_kbps"),
        ({"action": "dscp"}, "action"),
        ({"action": "drop", "quiet_seconds": 0}, "quiet_seconds"),
        ({"action": "drop", "priority_base": 3990, "priority_slots": 20}, "priority_slots"),
        ({"action": "drop", "priority_base": 0}, "priority_base"),
        ({"action": "drop", "threshold": ""}, "threshold"),
    ],
)
def test_bad_reactions_are_refused(fields, message):
    with pytest.raises(ValidationError, match=message):
        Reaction(**{"threshold": "udp_flood", **fields})


def test_defaults_reserve_3900_to_3999():
    reaction = Reaction(threshold="t", action="drop")
    assert reaction.priorities() == range(3900, 4000)
    assert reaction.quiet_seconds == 60.0


def test_one_reaction_per_threshold(sink):
    with pytest.raises(ValueError, match="two reactions"):
        Reactor(sink, [DROP, DROP])


# ---- over the real Services ----------------------------------------------------------


class NoBridges:
    """A converger for a controller with no bridge connected."""

    def converge(self, host, *, timeout=5.0, require_ports=(), full=False):
        return ReconcileResult(
            host=host,
            flows_added=0,
            flows_deleted=0,
            groups_added=0,
            groups_modified=0,
            groups_deleted=0,
            seconds=0.0,
        )

    def is_connected(self, host):
        return False

    def ports(self, host):
        return {}

    def dump(self, host):
        raise NotImplementedError


def test_over_the_controller_services(tmp_path: Path, clock):
    store = SqliteStore.in_state_dir(tmp_path)
    try:
        services = Services(store, NoBridges())
        services.create_steering(
            SteeringCreate(priority=3900, action=SteeringAction.DSCP, dscp=46, description="voip")
        )
        reactor = Reactor(services, [DROP], clock=clock)
        try:
            rule = reactor.on_event(udp_flood())
            assert rule is not None and rule.priority == 3901
            assert rule in services.list_steering()

            services.delete_steering(rule.id)  # the operator removes it by hand
            clock.now += QUIET + 1
            assert reactor.expire() == [rule.id]

            rule = reactor.on_event(udp_flood("8"))
            assert rule is not None
        finally:
            reactor.close()
        assert [r.description for r in services.list_steering()] == ["voip"]
    finally:
        store.close()
