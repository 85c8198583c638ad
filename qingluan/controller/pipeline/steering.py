"""Steering rules compiled into table STEERING: drop, DSCP marking, mirroring. Pure.

A rule matches IPv4 by source and destination (the ACL selectors, resolved
against the whole cluster: a network selector is its subnet), protocol and
destination ports, on every bridge the traffic passes; sets that meet sets are
conjunctive matches. Its OpenFlow priority is its own (1-4000, unique). A
mirror copies to a port of this bridge only (the target container's port on its
host, or the named port of the named host); the copy keeps the original
addresses and the packet goes on unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from qingluan.controller.pipeline.acl import (
    Clause,
    Policy,
    conjunction_id,
    conjunctive,
    l4_base,
    peer_addresses,
    port_clause,
)
from qingluan.controller.pipeline.flow import (
    FROM_OUTSIDE,
    FROM_SERVICE,
    Action,
    Conjunction,
    CookieKind,
    Flow,
    MatchValue,
    Meter,
    Output,
    SetField,
    cookie,
)
from qingluan.controller.pipeline.tables import Table
from qingluan.model import Endpoint, SteeringAction, SteeringRule

STEERING_BASE = 100  # table STEERING: a rule's priority is this plus its own
SERVICE_SHIFT = 32  # metadata bits 32-39: the service container a packet came from
SERVICE_MASK = 0xFF << SERVICE_SHIFT


def mirror_port(
    rule: SteeringRule, host: str, local: Sequence[Endpoint], ports: Mapping[str, int]
) -> int | None:
    """The OpenFlow port of ``host``'s bridge that gets the copies, if it is here."""
    if rule.mirror_container is not None:
        for endpoint in local:
            if endpoint.container_name == rule.mirror_container:
                return ports.get(endpoint.port_name)
        return None
    if rule.mirror_port is not None and rule.mirror_host in (None, host):
        return ports.get(rule.mirror_port)  # no host named: that port on every host
    return None


def rule_flows(
    rule: SteeringRule,
    host: str,
    local: Sequence[Endpoint],
    ports: Mapping[str, int],
    policy: Policy,
) -> list[Flow]:
    """The flows of one steering rule on ``host``'s bridge."""
    actions: tuple[Action, ...] = ()
    goto: int | None = int(Table.ARP)
    meter: Meter | None = None
    if rule.action is SteeringAction.DROP:
        goto = None
    elif rule.action is SteeringAction.RATE_LIMIT:
        meter = rule_meter(rule)
    elif rule.action is SteeringAction.DSCP:
        if rule.dscp is None:
            raise ValueError(f"steering rule {rule.id}: dscp without a value")
        actions = (SetField("ip_dscp", rule.dscp),)
    elif rule.action is SteeringAction.REDIRECT:
        return _redirect(rule, local, ports, policy)
    else:
        port = mirror_port(rule, host, local, ports)
        if port is None:
            return []
        actions = (Output(port),)
    clauses = rule_clauses(rule, policy)
    if clauses is None:
        return []
    flows = conjunctive(
        int(Table.STEERING),
        STEERING_BASE + rule.priority,
        l4_base(rule.protocol, None),
        clauses,
        actions,
        goto=goto,
        owner=cookie(CookieKind.STEERING, rule.id),
        conj_id=conjunction_id("steering:" + rule.id),
    )
    if meter is None:
        return flows
    # the verdict flow(s) go through the meter; conjunction clause flows only vote
    return [
        f if any(isinstance(a, Conjunction) for a in f.actions) else _metered(f, meter.meter_id)
        for f in flows
    ]


def rule_clauses(rule: SteeringRule, policy: Policy) -> list[Clause] | None:
    """The rule's address and port clauses; None when a side names nobody (yet)."""
    clauses: list[Clause] = []
    for name, selector in (("ipv4_src", rule.src), ("ipv4_dst", rule.dst)):
        found = peer_addresses(selector, policy)
        if found is None:
            continue
        if not found:
            return None
        clauses.append([(name, value) for value in found])
    ports_clause = port_clause(rule.protocol, rule.port_min, rule.port_max)
    if ports_clause is not None:
        clauses.append(ports_clause)
    return clauses


def chain(rule: SteeringRule) -> list[str]:
    """The service containers of a redirect, in order (``via`` is ``fw`` or ``fw,ids``)."""
    return [name.strip() for name in (rule.via or "").split(",") if name.strip()]


def service_index(policy: Policy) -> dict[str, int]:
    """A number (1-255) per service container name, carried in metadata bits 32-39."""
    names = sorted({n for r in policy.steering for n in chain(r)})
    if len(names) > 255:
        raise ValueError(f"{len(names)} service containers in redirects: at most 255")
    return {name: i for i, name in enumerate(names, start=1)}


def service_metadata(index: int) -> int:
    return index << SERVICE_SHIFT


def _redirect(
    rule: SteeringRule, local: Sequence[Endpoint], ports: Mapping[str, int], policy: Policy
) -> list[Flow]:
    """Hop k sends to service k what came from service k-1 (hop 0: from an ordinary
    local port). A hop whose service has no instance here is skipped on this host:
    after the previous one (or from the start) the traffic goes on as usual."""
    clauses = rule_clauses(rule, policy)
    if clauses is None:
        return []
    index = service_index(policy)
    flows: list[Flow] = []
    services = chain(rule)
    for hop, name in enumerate(services):
        service = next((e for e in local if e.container_name == name), None)
        port = ports.get(service.port_name) if service is not None else None
        if service is None or port is None:
            continue
        if hop == 0:
            came: MatchValue = (0, FROM_OUTSIDE | FROM_SERVICE)
        else:
            previous = service_metadata(index[services[hop - 1]]) | FROM_SERVICE
            came = (previous, FROM_OUTSIDE | FROM_SERVICE | SERVICE_MASK)
        flows += conjunctive(
            int(Table.STEERING),
            STEERING_BASE + rule.priority,
            {**l4_base(rule.protocol, None), "metadata": came},
            clauses,
            (SetField("eth_dst", service.mac.lower()), Output(port)),
            goto=None,
            owner=cookie(CookieKind.STEERING, rule.id),
            conj_id=conjunction_id(f"steering:{rule.id}:{hop}"),
        )
    return flows


def _metered(flow: Flow, meter_id: int) -> Flow:
    return Flow.make(
        flow.table,
        flow.priority,
        flow.match_dict(),
        flow.actions,
        goto=flow.goto,
        cookie=flow.cookie,
        meter=meter_id,
    )


def rule_meter(rule: SteeringRule) -> Meter:
    """A rate_limit rule's meter: its id is the rule's (unique) priority."""
    if rule.rate_kbps is None:
        raise ValueError(f"steering rule {rule.id}: rate_limit without a rate")
    burst = rule.burst_kbits or max(rule.rate_kbps // 10, 100)
    return Meter(meter_id=rule.priority, rate_kbps=rule.rate_kbps, burst_kbits=burst)


def steering_meters(flows: Sequence[Flow], policy: Policy) -> list[Meter]:
    """The meters of the rate_limit rules that have a flow on this bridge."""
    used = {f.meter for f in flows if f.meter is not None}
    return [
        rule_meter(r)
        for r in policy.steering
        if r.action is SteeringAction.RATE_LIMIT and r.priority in used
    ]


def steering_flows(
    host: str, local: Sequence[Endpoint], ports: Mapping[str, int], policy: Policy
) -> list[Flow]:
    flows: list[Flow] = []
    for rule in sorted(policy.steering, key=lambda r: -r.priority):
        flows.extend(rule_flows(rule, host, local, ports, policy))
    return flows


def service_names(policy: Policy) -> set[str]:
    """Containers that redirect rules send traffic through: they may forward others'."""
    return {n for r in policy.steering if r.action is SteeringAction.REDIRECT for n in chain(r)}
