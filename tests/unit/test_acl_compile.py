"""ACL rules to flows (pure): sizes, selectors, bands, conjunctions, port ranges."""

from __future__ import annotations

import pytest

from qingluan import names
from qingluan.controller import ofvocab
from qingluan.controller.pipeline import Policy, compute_bridge
from qingluan.controller.pipeline.acl import (
    NEW,
    STATEFUL_BASE,
    STATELESS_BASE,
    acl_flows,
    port_masks,
)
from qingluan.controller.pipeline.flow import Conjunction, CookieKind, Ct, cookie
from qingluan.controller.pipeline.tables import Table
from qingluan.model import (
    AclAction,
    AclDirection,
    AclProtocol,
    AclRule,
    AclSelector,
    Endpoint,
    Network,
    NetworkModel,
)


def net(key: int, host: str = "h1", name: str | None = None) -> Network:
    return Network(
        id=f"{key:02x}".ljust(64, "0"),
        key=key,
        host=host,
        model=NetworkModel.NAT,
        pool_id=f"nat_10.{key}.0.0_16",
        subnet=f"10.{key}.0.0/16",
        gateway=f"10.{key}.0.1",
        gateway_mac=names.gateway_mac(key),
        name=name or f"net{key}",
    )


def ep(network: Network, i: int, **extra: object) -> Endpoint:
    eid = f"e{network.key:02x}{i:05x}".ljust(64, "0")
    return Endpoint(
        id=eid,
        network_id=network.id,
        host=network.host,
        mac=names.endpoint_mac(eid),
        address=f"10.{network.key}.{i // 250}.{i % 250 + 2}",
        port_name=names.endpoint_port(eid),
        **extra,  # type: ignore[arg-type]
    )


def rule(**fields: object) -> AclRule:
    base: dict[str, object] = {
        "id": "r1",
        "priority": 100,
        "direction": AclDirection.INGRESS,
        "action": AclAction.DENY,
    }
    return AclRule.model_validate({**base, **fields})


N1 = net(1)


def flows_of(rules: list[AclRule], endpoints: list[Endpoint], networks: list[Network]) -> list:
    local = [e for e in endpoints if e.host == "h1"]
    host_nets = [n for n in networks if n.host == "h1"]
    return acl_flows(host_nets, local, Policy(tuple(rules), tuple(networks), tuple(endpoints)))


def test_no_rule_no_acl_flow_and_no_conntrack() -> None:
    a = ep(N1, 1)
    plain = compute_bridge([N1], [a], {a.port_name: 2})
    again = compute_bridge([N1], [a], {a.port_name: 2}, policy=Policy())
    assert plain == again
    assert not any(isinstance(x, Ct) for f in plain.flows for x in f.actions)


def test_sets_meet_sets_in_n_plus_m_flows() -> None:
    web = [ep(N1, i, labels={"tier": "web"}) for i in range(300)]
    db = [ep(N1, 300 + i, labels={"tier": "db"}) for i in range(300)]
    r = rule(
        direction=AclDirection.INGRESS,
        src=AclSelector(label="tier=web"),
        dst=AclSelector(label="tier=db"),
        protocol=AclProtocol.TCP,
        port_min=5432,
        port_max=5432,
        action=AclAction.ALLOW,
    )
    flows = [f for f in flows_of([r], web + db, [N1]) if f.cookie >> 56 == 0x04]
    assert len(flows) == 300 + 300 + 1
    conj = [f for f in flows if "conj_id" in f.match_dict()]
    assert len(conj) == 1 and conj[0].match_dict()["tcp_dst"] == 5432
    assert conj[0].match_dict()["ct_state"] == NEW
    clauses = {a.clause for f in flows for a in f.actions if isinstance(a, Conjunction)}
    assert clauses == {1, 2}


def test_egress_selects_only_this_hosts_senders() -> None:
    n2 = net(2, host="h2")
    here, there = ep(N1, 1, container_name="a"), ep(n2, 1, container_name="a")
    r = rule(direction=AclDirection.EGRESS, src=AclSelector(container="a"))
    flows = [f for f in flows_of([r], [here, there], [N1, n2]) if f.cookie >> 56 == 0x04]
    assert [f.match_dict().get("ipv4_src") for f in flows] == [here.address]
    assert flows[0].table == int(Table.ACL_EGRESS) and flows[0].actions == ()


def test_a_peer_that_names_nobody_matches_nothing() -> None:
    a = ep(N1, 1)
    r = rule(src=AclSelector(container="nobody"), dst=AclSelector(network="net1"))
    assert [f for f in flows_of([r], [a], [N1]) if f.cookie >> 56 == 0x04] == []


def test_network_and_cidr_peers_are_one_masked_match() -> None:
    a = ep(N1, 1)
    r = rule(src=AclSelector(cidr="192.168.0.0/16"))
    [f] = [f for f in flows_of([r], [a], [N1]) if f.cookie >> 56 == 0x04]
    assert f.match_dict()["ipv4_src"] == ("192.168.0.0", "255.255.0.0")
    assert f.match_dict()["ipv4_dst"] == a.address


def test_priority_orders_rules_and_stateless_rules_come_first() -> None:
    a = ep(N1, 1)
    low = rule(id="low", priority=1, action=AclAction.ALLOW)
    high = rule(id="high", priority=9, stateful=False)
    mid = rule(id="mid", priority=5)
    flows = flows_of([low, high, mid], [a], [N1])

    def prio(rule_id: str) -> int:
        [f] = [f for f in flows if f.cookie == cookie(CookieKind.ACL, rule_id)]
        return f.priority

    assert prio("high") == STATELESS_BASE + 9  # ahead of the established shortcut
    assert (prio("mid"), prio("low")) == (STATEFUL_BASE + 5, STATEFUL_BASE + 1)


@pytest.mark.parametrize(("low", "high"), [(80, 80), (8000, 8080), (1, 65535), (1023, 1025)])
def test_port_masks_cover_the_range_exactly(low: int, high: int) -> None:
    masks = port_masks(low, high)
    covered = {p for p in range(1, 65536) if any(p & m == v for v, m in masks)}
    assert covered == set(range(low, high + 1))


def test_acl_flows_are_valid_and_survive_the_wire() -> None:
    a, b = ep(N1, 1, container_name="a"), ep(N1, 2, labels={"k": "v"})
    rules = [
        rule(id="x", src=AclSelector(container="a"), dst=AclSelector(label="k=v"),
             protocol=AclProtocol.TCP, port_min=8000, port_max=8080, action=AclAction.ALLOW),
        rule(id="y", direction=AclDirection.EGRESS, protocol=AclProtocol.ICMP, icmp_type=8),
    ]  # fmt: skip
    state = compute_bridge([N1], [a, b], {a.port_name: 2, b.port_name: 3}, policy=Policy(
        tuple(rules), (N1,), (a, b)))  # fmt: skip
    assert any(f.table == int(Table.ACL_INGRESS) for f in state.flows)
    for flow in state.flows:
        assert ofvocab.normalize_flow(flow) == flow, ofvocab.render_flow(flow)


def test_default_deny_needs_no_rule() -> None:
    closed = N1.model_copy(update={"options": {"acl_default": "deny"}})
    a = ep(closed, 1)
    state = compute_bridge([closed], [a], {a.port_name: 2})
    default = [f for f in state.flows if f.table == int(Table.ACL_INGRESS) and f.priority == 10]
    assert len(default) == 1 and default[0].actions == () and default[0].goto is None
