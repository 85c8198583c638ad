"""IDS alerts -> policies -> quarantines, over a real SQLite store (the bridge is a stand-in)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qingluan.api_schema import AlertReport, IdsPolicyCreate, NetworkUpdate
from qingluan.controller.ids import IdsService, decide
from qingluan.controller.metrics import Metrics
from qingluan.controller.services import Services
from qingluan.controller.store import SqliteStore
from qingluan.errors import Conflict, NotFound, Unavailable
from qingluan.model import AclProtocol, IdsAction, IdsAlert, IdsPolicy, QuarantineScope
from tests.support.clock import Clock
from tests.unit.test_services import (
    NET1,
    NET2,
    RecordingConverger,
    make_network,
    reg,
    run_container,
)


@pytest.fixture
def world(tmp_path: Path):  # type: ignore[no-untyped-def]
    store = SqliteStore.in_state_dir(tmp_path)
    conv = RecordingConverger()
    svc = Services(store, conv)
    svc.register_host("h1", reg(1))
    svc.register_host("h2", reg(2))
    make_network(svc, NET1, "192.168.1.0/24", "192.168.1.1")
    make_network(svc, NET2, "192.168.2.0/24", "192.168.2.1", host="h2")
    svc.update_network(NET1, NetworkUpdate(ids=True))
    a = run_container(svc, "a" * 64, "02:00:00:00:00:0a", nid=NET1)
    b = run_container(svc, "b" * 64, "02:00:00:00:00:0b", nid=NET1)
    c = run_container(svc, "c" * 64, "02:00:00:00:00:0c", nid=NET2)  # not inspected
    clock = Clock(1_000_000.0)
    metrics = Metrics()
    ids = IdsService(store, conv, observer=metrics, wall_clock=clock)
    conv.calls.clear()
    yield ids, svc, conv, clock, metrics, (a, b, c)
    store.close()


def alert(src: str, dst: str, *, sid: int = 9000001, severity: int = 1, proto: str = "ICMP",
          host: str = "h1", sport: int | None = None,
          dport: int | None = None) -> AlertReport:  # fmt: skip
    return AlertReport(host=host, src_ip=src, dest_ip=dst, signature_id=sid, severity=severity,
                       proto=proto, src_port=sport, dest_port=dport, signature="test")  # fmt: skip


def test_no_policy_means_the_alert_is_only_logged(world) -> None:  # type: ignore[no-untyped-def]
    ids, _, conv, _, _, (a, b, _) = world
    outcome = ids.report(alert(a, b))
    assert outcome.action is IdsAction.LOG and outcome.quarantine is None
    assert "no policy" in outcome.reason and conv.calls == [] and ids.list_quarantines() == []
    assert ids.recent_alerts()[0] == outcome


def test_a_quarantine_policy_quarantines_the_sender_and_converges_its_host(world) -> None:  # type: ignore[no-untyped-def]
    ids, svc, conv, clock, metrics, (a, b, _) = world
    ids.create_policy(IdsPolicyCreate(max_severity=2, action=IdsAction.QUARANTINE, duration=60))
    outcome = ids.report(alert(a, b))
    q = outcome.quarantine
    assert outcome.action is IdsAction.QUARANTINE and q is not None
    assert (q.address, q.mac, q.host, q.scope) == (a, "02:00:00:00:00:0a", "h1",
                                                   QuarantineScope.ENDPOINT)  # fmt: skip
    assert q.expires_at == clock.now + 60 and outcome.confirm_seconds is not None
    assert [h for h, _ in conv.calls] == ["h1"]
    assert ids.list_quarantines()[0].confirm_seconds == outcome.confirm_seconds
    assert svc.policy().quarantines[0].id == q.id  # what the pipeline sees
    text = metrics.render().decode()
    assert 'qingluan_ids_alerts_total{action="quarantine",host="h1",severity="1"} 1.0' in text
    assert "qingluan_quarantines_active 1.0" in text
    assert "qingluan_quarantine_confirm_seconds_count 1.0" in text


def test_a_second_alert_refreshes_rather_than_converging_again(world) -> None:  # type: ignore[no-untyped-def]
    ids, _, conv, clock, _, (a, b, _) = world
    ids.create_policy(IdsPolicyCreate(action=IdsAction.QUARANTINE, duration=60))
    first = ids.report(alert(a, b)).quarantine
    clock.now += 30
    again = ids.report(alert(a, b, host="h2"))  # the other side saw it too
    assert again.quarantine is not None and first is not None
    assert again.quarantine.id == first.id and again.quarantine.alerts == 2
    assert again.quarantine.expires_at == clock.now + 60
    assert len(conv.calls) == 1 and "refreshed" in again.reason


def test_severity_and_signature_policies_in_priority_order(world) -> None:  # type: ignore[no-untyped-def]
    ids, _, _, _, _, (a, b, _) = world
    ids.create_policy(IdsPolicyCreate(id="sev", priority=10, max_severity=1,
                                      action=IdsAction.QUARANTINE))  # fmt: skip
    ids.create_policy(IdsPolicyCreate(id="quiet", priority=20, signature_id=42,
                                      action=IdsAction.LOG))  # fmt: skip
    assert ids.report(alert(a, b, sid=42, severity=1)).policy_id == "quiet"
    assert ids.report(alert(a, b, sid=43, severity=2)).action is IdsAction.LOG
    assert ids.report(alert(a, b, sid=43, severity=1)).action is IdsAction.QUARANTINE
    with pytest.raises(Conflict, match="priority 10 is already IDS policy sev"):
        ids.create_policy(IdsPolicyCreate(priority=10, action=IdsAction.LOG))


def test_decide_without_filters_matches_everything() -> None:
    catch_all = IdsPolicy(id="p", priority=1, action=IdsAction.QUARANTINE)
    seen = IdsAlert(host="h", src_ip="10.0.0.1", dest_ip="10.0.0.2", signature_id=1, severity=9)
    assert decide([catch_all], seen) == catch_all and decide([], seen) is None


def test_a_flow_quarantine_names_the_5_tuple(world) -> None:  # type: ignore[no-untyped-def]
    ids, _, _, _, _, (a, b, _) = world
    ids.create_policy(IdsPolicyCreate(action=IdsAction.QUARANTINE, scope=QuarantineScope.FLOW))
    q = ids.report(alert(a, b, proto="TCP", sport=40000, dport=80)).quarantine
    assert q is not None and q.scope is QuarantineScope.FLOW
    assert (q.protocol, q.ipv4_dst, q.src_port, q.dst_port) == (AclProtocol.TCP, b, 40000, 80)
    other = ids.report(alert(a, b, proto="TCP", sport=40001, dport=80)).quarantine
    assert other is not None and other.id != q.id and len(ids.list_quarantines()) == 2


def test_no_quarantine_without_an_inspected_endpoint_at_the_source(world) -> None:  # type: ignore[no-untyped-def]
    ids, _, conv, _, _, (a, _, c) = world
    ids.create_policy(IdsPolicyCreate(action=IdsAction.QUARANTINE))
    outside = ids.report(alert("203.0.113.9", a))
    assert outside.action is IdsAction.LOG and "no endpoint" in outside.reason
    uninspected = ids.report(alert(c, "192.168.2.1", host="h2"))
    assert uninspected.action is IdsAction.LOG and conv.calls == []


def test_quarantines_expire_on_time_and_with_their_endpoint(world) -> None:  # type: ignore[no-untyped-def]
    ids, svc, conv, clock, _, (a, b, _) = world
    ids.create_policy(IdsPolicyCreate(action=IdsAction.QUARANTINE, duration=10))
    qa = ids.report(alert(a, b)).quarantine
    qb = ids.report(alert(b, a)).quarantine
    assert qa is not None and qb is not None
    clock.now += 9
    assert ids.expire() == []
    svc.delete_endpoint("b" * 64)
    assert ids.expire() == [qb.id]
    clock.now += 1
    conv.calls.clear()
    assert ids.expire() == [qa.id] and [h for h, _ in conv.calls] == ["h1"]
    assert ids.list_quarantines() == [] and svc.policy().quarantines == ()


def test_lift_ends_a_quarantine_now_and_unknown_is_fine(world) -> None:  # type: ignore[no-untyped-def]
    ids, _, conv, _, _, (a, b, _) = world
    ids.create_policy(IdsPolicyCreate(action=IdsAction.QUARANTINE, duration=0))
    q = ids.report(alert(a, b)).quarantine
    assert q is not None and q.expires_at is None
    conv.calls.clear()
    ids.lift(q.id)
    assert ids.list_quarantines() == [] and [h for h, _ in conv.calls] == ["h1"]
    ids.lift(q.id)
    with pytest.raises(NotFound):
        ids.get_quarantine(q.id)


def test_a_disconnected_bridge_keeps_the_quarantine_for_its_connect(world) -> None:  # type: ignore[no-untyped-def]
    ids, _, conv, _, _, (a, b, _) = world
    ids.create_policy(IdsPolicyCreate(action=IdsAction.QUARANTINE))
    conv.fail = Unavailable("bridge of h1 is not connected")
    outcome = ids.report(alert(a, b))
    assert outcome.quarantine is not None and outcome.confirm_seconds is None
    assert [q.id for q in ids.list_quarantines()] == [outcome.quarantine.id]


def test_turning_inspection_on_and_off_converges_the_networks_host(world) -> None:  # type: ignore[no-untyped-def]
    _, svc, conv, _, _, _ = world
    net = svc.update_network(NET2, NetworkUpdate(ids=True))
    assert net.options["ids"] == "true" and [h for h, _ in conv.calls] == ["h2"]
    svc.update_network(NET2, NetworkUpdate(ids=True))
    assert len(conv.calls) == 1  # no change, no converge
    assert svc.update_network(NET2, NetworkUpdate(ids=False)).options["ids"] == "false"
