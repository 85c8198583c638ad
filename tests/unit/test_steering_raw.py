"""Steering and raw-flow rules: validation and compiled flows (pure)."""

from __future__ import annotations

import pytest

from qingluan.api_schema import RawFlowCreate, SteeringCreate
from qingluan.controller.pipeline import Policy, compute_bridge
from qingluan.controller.pipeline.flow import (
    FROM_OUTSIDE,
    FROM_SERVICE,
    CookieKind,
    Output,
    SetField,
    cookie,
)
from qingluan.controller.pipeline.raw import parse_match
from qingluan.controller.pipeline.tables import Table
from qingluan.model import (
    AclProtocol,
    AclSelector,
    RawFlow,
    RawFlowAction,
    SteeringAction,
    SteeringRule,
)
from tests.unit.test_acl_compile import N1, ep


def state(*, steering: tuple[SteeringRule, ...] = (), raw: tuple[RawFlow, ...] = ()):  # type: ignore[no-untyped-def]
    a, b = ep(N1, 1, container_name="a"), ep(N1, 2, container_name="mon")
    ports = {a.port_name: 2, b.port_name: 3}
    policy = Policy((), (N1,), (a, b), steering, raw)
    return compute_bridge([N1], [a, b], ports, policy=policy), a, b


def test_a_mirror_copies_to_the_monitors_port_and_continues() -> None:
    rule = SteeringRule(id="m", priority=5, dst=AclSelector(container="a"),
                        action=SteeringAction.MIRROR, mirror_container="mon")  # fmt: skip
    st, a, _ = state(steering=(rule,))
    [flow] = [f for f in st.flows if f.cookie == cookie(CookieKind.STEERING, "m")]
    assert flow.table == int(Table.STEERING) and flow.actions == (Output(3),)
    assert flow.goto == int(Table.ARP) and flow.match_dict()["ipv4_dst"] == a.address


def test_a_mirror_whose_monitor_is_elsewhere_makes_no_flow_here() -> None:
    rule = SteeringRule(id="m", priority=5, action=SteeringAction.MIRROR,
                        mirror_host="other", mirror_port="eth9")  # fmt: skip
    st, _, _ = state(steering=(rule,))
    assert not [f for f in st.flows if f.cookie == cookie(CookieKind.STEERING, "m")]


def test_dscp_marks_and_drop_drops() -> None:
    mark = SteeringRule(id="d", priority=6, protocol=AclProtocol.UDP, port_min=5000,
                        port_max=5001, action=SteeringAction.DSCP, dscp=46)  # fmt: skip
    drop = SteeringRule(id="x", priority=7, src=AclSelector(cidr="10.1.0.0/24"),
                        action=SteeringAction.DROP)  # fmt: skip
    st, _, _ = state(steering=(mark, drop))
    [dscp] = [f for f in st.flows if f.cookie == cookie(CookieKind.STEERING, "d")]
    assert dscp.actions == (SetField("ip_dscp", 46),) and dscp.match_dict()["udp_dst"] == (
        5000,
        0xFFFE,
    )
    [stop] = [f for f in st.flows if f.cookie == cookie(CookieKind.STEERING, "x")]
    assert stop.actions == () and stop.goto is None


def test_a_raw_flow_lives_in_its_table_only() -> None:
    raw = RawFlow(id="r", priority=9, match={"ipv4_dst": "10.1.0.0/24", "tcp_dst": 22},
                  action=RawFlowAction.CONTINUE, set_dscp=10)  # fmt: skip
    st, _, _ = state(raw=(raw,))
    [flow] = [f for f in st.flows if f.cookie == cookie(CookieKind.EXPERT, "r")]
    assert flow.table == int(Table.EXPERT) and flow.goto == int(Table.ARP)
    assert flow.match_dict() == {
        "eth_type": 0x0800,
        "ip_proto": 6,
        "ipv4_dst": ("10.1.0.0", "255.255.255.0"),
        "tcp_dst": 22,
    }


@pytest.mark.parametrize(
    ("match", "message"),
    [
        ({"in_port": 1}, "'in_port' is not a field a raw flow may match"),
        ({"metadata": 1}, "'metadata' is not a field a raw flow may match"),
        ({"ipv4_dst": "10.1.0.0/33"}, "is not an IPv4 CIDR"),
        ({"eth_src": "nope"}, "eth_src='nope'"),
        ({"ip_proto": 17, "tcp_dst": 22}, "tcp_dst needs ip_proto=0x6"),
    ],
)
def test_raw_matches_are_checked(match: dict[str, int | str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_match(match)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"action": "dscp"}, "a dscp rule needs the value"),
        ({"action": "drop", "dscp": 4}, "only a dscp rule marks"),
        ({"action": "mirror"}, "give mirror_container, or mirror_port"),
        ({"action": "mirror", "mirror_host": "h1"}, "give mirror_container, or mirror_port"),
        (
            {"action": "mirror", "mirror_container": "m", "mirror_host": "h1"},
            "give mirror_container, or mirror_port",
        ),
        ({"action": "drop", "mirror_container": "m"}, "only a mirror rule has a mirror"),
        ({"action": "drop", "protocol": "icmp", "ports": "1"}, "only tcp and udp rules"),
        ({"action": "redirect"}, "a redirect rule names its service container"),
        ({"action": "drop", "via": "fw"}, "a redirect rule names its service container"),
        ({"action": "rate_limit"}, "a rate_limit rule needs the rate"),
    ],
)
def test_bad_steering_rules_name_the_problem(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SteeringCreate.model_validate(fields)


def test_bad_raw_flow_bodies() -> None:
    with pytest.raises(ValueError, match="only a flow that continues can mark"):
        RawFlowCreate.model_validate({"action": "drop", "set_dscp": 3})
    with pytest.raises(ValueError, match="less than or equal to 60000"):
        RawFlowCreate.model_validate({"action": "drop", "priority": 70000})


def test_a_redirect_goes_to_the_local_service_once_and_the_service_may_forward() -> None:
    rule = SteeringRule(id="via", priority=8, src=AclSelector(container="a"),
                        action=SteeringAction.REDIRECT, via="mon")  # fmt: skip
    st, a, svc = state(steering=(rule,))
    [flow] = [f for f in st.flows if f.cookie == cookie(CookieKind.STEERING, "via")]
    assert flow.actions == (SetField("eth_dst", svc.mac), Output(3)) and flow.goto is None
    # only traffic from local ports that did not come from a service
    assert flow.match_dict()["metadata"] == (0, FROM_OUTSIDE | FROM_SERVICE)
    relaxed = [
        f
        for f in st.flows
        if f.table == int(Table.CLASSIFY) and f.match_dict().get("in_port") == 3
        and "ipv4_src" not in f.match_dict() and f.match_dict().get("eth_type") == 0x0800
    ]  # fmt: skip
    assert len(relaxed) == 1 and relaxed[0].write_metadata is not None
    assert relaxed[0].write_metadata[0] & FROM_SERVICE
    assert a.port_name  # the sender keeps its port security


def test_a_redirect_without_a_local_service_lets_traffic_pass() -> None:
    rule = SteeringRule(id="via", priority=8, action=SteeringAction.REDIRECT, via="elsewhere")
    st, _, _ = state(steering=(rule,))
    assert not [f for f in st.flows if f.cookie == cookie(CookieKind.STEERING, "via")]


def test_hop_two_of_a_chain_takes_what_came_from_hop_one() -> None:
    from qingluan.controller.pipeline.steering import SERVICE_MASK, service_index, service_metadata

    rule = SteeringRule(id="c", priority=8, src=AclSelector(container="a"),
                        action=SteeringAction.REDIRECT, via="a,mon")  # fmt: skip
    st, _, _ = state(steering=(rule,))
    hops = sorted(
        (f for f in st.flows if f.cookie == cookie(CookieKind.STEERING, "c")),
        key=lambda f: f.match_dict()["metadata"],
    )
    assert [f.actions[-1] for f in hops] == [Output(2), Output(3)]
    index = service_index(Policy((), (), (), (rule,)))
    came = hops[1].match_dict()["metadata"]
    assert came == (
        service_metadata(index["a"]) | FROM_SERVICE,
        FROM_OUTSIDE | FROM_SERVICE | SERVICE_MASK,
    )


def test_a_mirror_port_without_a_host_is_every_hosts_port_of_that_name() -> None:
    rule = SteeringRule(id="ids", priority=4, action=SteeringAction.MIRROR, mirror_port="ids0")
    a = ep(N1, 1)
    policy = Policy((), (N1,), (a,), (rule,))
    st = compute_bridge([N1], [a], {a.port_name: 2, "ids0": 7}, policy=policy)
    [flow] = [f for f in st.flows if f.cookie == cookie(CookieKind.STEERING, "ids")]
    assert flow.actions == (Output(7),) and flow.goto == int(Table.ARP)
    bare = compute_bridge([N1], [a], {a.port_name: 2}, policy=policy)  # no such port here
    assert not [f for f in bare.flows if f.cookie == cookie(CookieKind.STEERING, "ids")]
