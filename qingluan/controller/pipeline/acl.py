"""ACL rules compiled into the flows of one bridge (tables ACL, ACL_EGRESS, ACL_INGRESS).

Pure: from the rules, the cluster's networks and endpoints and the host's own,
to flows. Only IPv4 of networks a rule applies to goes through conntrack;
everything else passes table ACL untouched, so a host without rules pays
nothing.

- ACL: IPv4 of such a network -> ``ct(zone=1, table=ACL_EGRESS)``.
- ACL_EGRESS: ``+inv`` drops; stateless egress rules; ``+est``/``+rel`` go on
  to ACL_INGRESS; stateful egress rules for ``+new`` (the selected side is this
  host's endpoints, as senders); the rest goes on to ACL_INGRESS.
- ACL_INGRESS: stateless ingress rules; ``+est``/``+rel`` pass; stateful
  ingress rules for ``+new`` (this host's endpoints, as receivers); then each
  network's default policy: allow (commit the connection) or deny.

So a connection is decided once per host by the sender's egress rules and the
receiver's ingress rules, and its replies pass as established. Where both
sides of a rule are sets of addresses, the rule is a conjunctive match: one
flow per address of each side plus one, so N x M pairs cost N + M + 1 flows.
A port range that is not one masked value is a third clause.
"""

from __future__ import annotations

import ipaddress
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from qingluan.controller.pipeline.flow import (
    CT_EST,
    CT_INV,
    CT_NEW,
    CT_REL,
    CT_TRK,
    NETWORK_KEY_MASK,
    Action,
    Conjunction,
    CookieKind,
    Ct,
    Flow,
    MatchValue,
    cookie,
)
from qingluan.controller.pipeline.tables import Table
from qingluan.model import (
    AclAction,
    AclDirection,
    AclProtocol,
    AclRule,
    AclSelector,
    Endpoint,
    Network,
    Quarantine,
    RawFlow,
    SteeringRule,
)

ETH_TYPE_IPV4 = 0x0800
IP_PROTO = {AclProtocol.TCP: 6, AclProtocol.UDP: 17, AclProtocol.ICMP: 1}
CT_ZONE = 1
DEFAULT_OPTION = "acl_default"  # Network.options: "allow" (default) or "deny"

# OpenFlow priorities: a rule's is its band's base plus its own priority (1-4000, one
# rule per priority), so a rule keeps its flows' identity when others come and go.
INVALID_PRIORITY = 65000
STATELESS_BASE = 60500  # stateless rules: before the established shortcut
ESTABLISHED_PRIORITY = 60000
STATEFUL_BASE = 1000  # stateful rules: new connections only
ENTRY_PRIORITY = 100  # table ACL, per network
DEFAULT_PRIORITY = 10  # table ACL_INGRESS, per network
RULE_PRIORITY_MAX = 4000

NEW = (CT_TRK | CT_NEW, CT_TRK | CT_NEW)
ESTABLISHED = (CT_TRK | CT_EST, CT_TRK | CT_EST)
RELATED = (CT_TRK | CT_REL, CT_TRK | CT_REL)
INVALID = (CT_TRK | CT_INV, CT_TRK | CT_INV)


@dataclass(frozen=True)
class Policy:
    """What the ACL compiler needs beyond the host: the rules and the whole cluster."""

    rules: tuple[AclRule, ...] = ()
    networks: tuple[Network, ...] = ()  # every host's
    endpoints: tuple[Endpoint, ...] = ()  # every host's
    steering: tuple[SteeringRule, ...] = ()
    raw: tuple[RawFlow, ...] = ()
    quarantines: tuple[Quarantine, ...] = ()


# ---- resolving selectors ----------------------------------------------------------------


def names_network(network: Network, ref: str) -> bool:
    """``ref`` names ``network``: its Docker name, its id, or an id prefix of 12 or more."""
    return (
        ref == network.name or ref == network.id or (len(ref) >= 12 and network.id.startswith(ref))
    )


def in_scope(rule: AclRule, network: Network) -> bool:
    return rule.scope is None or names_network(network, rule.scope)


def selects(selector: AclSelector | None, endpoint: Endpoint, networks: Sequence[Network]) -> bool:
    if selector is None:
        return True
    if selector.cidr is not None:
        return ipaddress.IPv4Address(endpoint.address) in ipaddress.IPv4Network(selector.cidr)
    if selector.network is not None:
        ref = selector.network
        return any(n.id == endpoint.network_id and names_network(n, ref) for n in networks)
    if selector.container is not None:
        return endpoint.container_name == selector.container
    assert selector.label is not None
    key, value = selector.label.split("=", 1)
    return endpoint.labels.get(key) == value


def peer_addresses(selector: AclSelector | None, policy: Policy) -> list[MatchValue] | None:
    """Address matches of a rule's peer side; None: any address."""
    if selector is None:
        return None
    if selector.cidr is not None:
        net = ipaddress.IPv4Network(selector.cidr)
        return [_masked(net)]
    if selector.network is not None:
        ref = selector.network
        subnets = {n.subnet for n in policy.networks if names_network(n, ref)}
        return [_masked(ipaddress.IPv4Network(s)) for s in sorted(subnets)]
    found = {e.address for e in policy.endpoints if selects(selector, e, policy.networks)}
    return sorted(found, key=lambda a: int(ipaddress.IPv4Address(a)))


def _masked(net: ipaddress.IPv4Network) -> MatchValue:
    if net.prefixlen == 32:
        return str(net.network_address)
    return (str(net.network_address), str(net.netmask))


def port_masks(low: int, high: int) -> list[tuple[int, int]]:
    """The fewest (value, mask) pairs that cover ``low..high`` exactly."""
    out: list[tuple[int, int]] = []
    while low <= high:
        size = low & -low if low else 1 << 16
        while size > high - low + 1:
            size >>= 1
        out.append((low, 0xFFFF & ~(size - 1)))
        low += size
    return out


# ---- compiling ----------------------------------------------------------------------------


def _ordered(rules: Iterable[AclRule]) -> list[AclRule]:
    return sorted(rules, key=lambda r: (-r.priority, r.id))


def _port_value(mask: tuple[int, int]) -> MatchValue:
    return mask[0] if mask[1] == 0xFFFF else mask


def conjunction_id(owner: str) -> int:
    """A conjunction id of the rule's own (stable while other rules change)."""
    return zlib.crc32(owner.encode()) or 1


def rule_flows(
    rule: AclRule,
    local: Sequence[Endpoint],
    host_networks: Sequence[Network],
    policy: Policy,
) -> list[Flow]:
    """The flows of one rule on one bridge (none if it selects nothing here).

    Rules must have distinct priorities (the controller refuses a taken one): two
    overlapping flows of one priority would leave the choice to the switch."""
    egress = rule.direction is AclDirection.EGRESS
    selected_sel, peer_sel = (rule.src, rule.dst) if egress else (rule.dst, rule.src)
    scope_ids = {n.id for n in host_networks if in_scope(rule, n)}
    chosen = sorted(
        {
            e.address
            for e in local
            if e.network_id in scope_ids and selects(selected_sel, e, policy.networks)
        },
        key=lambda a: int(ipaddress.IPv4Address(a)),
    )
    if not chosen:
        return []
    peers = peer_addresses(peer_sel, policy)
    if peers is not None and not peers:
        return []  # the peer side names nobody (yet): the rule matches nothing
    mine, theirs = ("ipv4_src", "ipv4_dst") if egress else ("ipv4_dst", "ipv4_src")
    base = l4_base(rule.protocol, rule.icmp_type)
    clauses: list[Clause] = [[(mine, a) for a in chosen]]
    if peers is not None:
        clauses.append([(theirs, p) for p in peers])
    ports = port_clause(rule.protocol, rule.port_min, rule.port_max)
    if ports is not None:
        clauses.append(ports)
    if rule.stateful:
        base_final: dict[str, MatchValue] = {"ct_state": NEW}
        priority = STATEFUL_BASE + rule.priority
    else:
        base_final = {}
        priority = STATELESS_BASE + rule.priority
    table = int(Table.ACL_EGRESS if egress else Table.ACL_INGRESS)
    actions, goto = _verdict(rule, egress)
    return conjunctive(
        table,
        priority,
        base,
        clauses,
        actions,
        goto=goto,
        extra=base_final,
        owner=cookie(CookieKind.ACL, rule.id),
        conj_id=conjunction_id(rule.id),
    )


Clause = list[tuple[str, MatchValue]]


def conjunctive(
    table: int,
    priority: int,
    base: dict[str, MatchValue],
    clauses: Sequence[Clause],
    actions: tuple[Action, ...],
    *,
    goto: int | None,
    owner: int,
    conj_id: int,
    extra: dict[str, MatchValue] | None = None,
) -> list[Flow]:
    """Flows that act on ``base`` plus one alternative of every clause.

    A clause of one alternative joins the match; one clause of several becomes a
    flow per alternative; several such clauses become a conjunctive match (one flow
    per alternative plus the ``conj_id`` flow that acts, with ``extra`` on it)."""
    final = {**base, **(extra or {})}
    for clause in [c for c in clauses if len(c) == 1]:
        final.update(clause)
    sets = [c for c in clauses if len(c) > 1]
    if not sets:
        return [Flow.make(table, priority, final, actions, goto=goto, cookie=owner)]
    if len(sets) == 1:
        return [
            Flow.make(table, priority, {**final, name: value}, actions, goto=goto, cookie=owner)
            for name, value in sets[0]
        ]
    flows = [
        Flow.make(
            table,
            priority,
            {**base, name: value},
            (Conjunction(conj_id, i, len(sets)),),
            cookie=owner,
        )
        for i, clause in enumerate(sets, start=1)
        for name, value in clause
    ]
    flows.append(
        Flow.make(table, priority, {**final, "conj_id": conj_id}, actions, goto=goto, cookie=owner)
    )
    return flows


def l4_base(protocol: AclProtocol, icmp_type: int | None) -> dict[str, MatchValue]:
    base: dict[str, MatchValue] = {"eth_type": ETH_TYPE_IPV4}
    if protocol is not AclProtocol.ANY:
        base["ip_proto"] = IP_PROTO[protocol]
    if icmp_type is not None:
        base["icmpv4_type"] = icmp_type
    return base


def port_clause(protocol: AclProtocol, low: int | None, high: int | None) -> Clause | None:
    if low is None or high is None:
        return None
    field = "tcp_dst" if protocol is AclProtocol.TCP else "udp_dst"
    return [(field, _port_value(m)) for m in port_masks(low, high)]


def _verdict(rule: AclRule, egress: bool) -> tuple[tuple[Action, ...], int | None]:
    if rule.action is AclAction.DENY:
        return (), None
    if egress:
        return (), int(Table.ACL_INGRESS)  # the receiver's ingress rules still decide
    if rule.stateful:
        return (Ct(commit=True, zone=CT_ZONE),), int(Table.STEERING)
    return (), int(Table.STEERING)


def acl_networks(host_networks: Sequence[Network], rules: Sequence[AclRule]) -> list[Network]:
    """This host's networks whose IPv4 goes through the ACL tables."""
    return [
        n
        for n in sorted(host_networks, key=lambda n: n.key)
        if n.options.get(DEFAULT_OPTION) == "deny" or any(in_scope(r, n) for r in rules)
    ]


def acl_flows(
    host_networks: Sequence[Network], local: Sequence[Endpoint], policy: Policy
) -> list[Flow]:
    """Every ACL flow of the bridge of the host that has ``host_networks`` and ``local``."""
    nets = acl_networks(host_networks, policy.rules)
    if not nets:
        return []
    rules = _ordered(policy.rules)
    for rule in rules:
        if not 1 <= rule.priority <= RULE_PRIORITY_MAX:
            raise ValueError(f"ACL rule {rule.id}: priority {rule.priority} outside 1-4000")
    base = cookie(CookieKind.BASE, "acl")
    ip = {"eth_type": ETH_TYPE_IPV4}
    egress, ingress, steering = int(Table.ACL_EGRESS), int(Table.ACL_INGRESS), int(Table.STEERING)
    flows: list[Flow] = [
        Flow.make(egress, INVALID_PRIORITY, {**ip, "ct_state": INVALID}, cookie=base)
    ]
    for table, onward in ((egress, ingress), (ingress, steering)):
        for state in (ESTABLISHED, RELATED):
            flows.append(
                Flow.make(
                    table, ESTABLISHED_PRIORITY, {**ip, "ct_state": state}, goto=onward, cookie=base
                )
            )
    for network in nets:
        meta = (network.key, NETWORK_KEY_MASK)
        owner = cookie(CookieKind.NETWORK, network.id)
        flows.append(
            Flow.make(
                int(Table.ACL),
                ENTRY_PRIORITY,
                {"metadata": meta, **ip},
                (Ct(zone=CT_ZONE, table=egress),),
                cookie=owner,
            )
        )
        deny = network.options.get(DEFAULT_OPTION) == "deny"
        flows.append(
            Flow.make(
                ingress,
                DEFAULT_PRIORITY,
                {"metadata": meta, **ip},
                () if deny else (Ct(commit=True, zone=CT_ZONE),),
                goto=None if deny else steering,
                cookie=owner,
            )
        )
    for rule in rules:
        flows.extend(rule_flows(rule, local, host_networks, policy))
    return flows
