"""Experts' raw flows (table EXPERT): validated values, compiled into that table only.

A raw flow matches packet fields (``tables.RAW_MATCHES``) with the values
OpenFlow takes (a masked IPv4 as ``a.b.c.d/len``), and either drops or
continues to ARP and L2, optionally marking DSCP. It cannot match or change the
pipeline's own state (ports, metadata, tunnels) nor output anywhere, so it
cannot break isolation or forwarding, only stop or mark traffic.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence

from qingluan.controller.pipeline.flow import Action, CookieKind, Flow, MatchValue, SetField, cookie
from qingluan.controller.pipeline.tables import RAW_MATCHES, Table, check_flow
from qingluan.model import RawFlow, RawFlowAction

# which fields need which others (OpenFlow prerequisites), by value
_PREREQUISITES: dict[str, dict[str, int]] = {
    "ip_proto": {"eth_type": 0x0800},
    "ipv4_src": {"eth_type": 0x0800},
    "ipv4_dst": {"eth_type": 0x0800},
    "ip_dscp": {"eth_type": 0x0800},
    "tcp_src": {"eth_type": 0x0800, "ip_proto": 6},
    "tcp_dst": {"eth_type": 0x0800, "ip_proto": 6},
    "udp_src": {"eth_type": 0x0800, "ip_proto": 17},
    "udp_dst": {"eth_type": 0x0800, "ip_proto": 17},
    "icmpv4_type": {"eth_type": 0x0800, "ip_proto": 1},
    "icmpv4_code": {"eth_type": 0x0800, "ip_proto": 1},
}


def parse_match(raw: Mapping[str, int | str]) -> dict[str, MatchValue]:
    """The match of a raw flow as OpenFlow values; ``ValueError`` names the field."""
    # the field table comes from os-ken through ofvocab, which imports this package
    from qingluan.controller.ofvocab import VocabError, normalize_value

    out: dict[str, MatchValue] = {}
    for name, value in raw.items():
        if name not in RAW_MATCHES:
            raise ValueError(
                f"match: {name!r} is not a field a raw flow may match "
                f"(one of {', '.join(sorted(RAW_MATCHES))})"
            )
        parsed: MatchValue = value
        if name in ("ipv4_src", "ipv4_dst") and isinstance(value, str) and "/" in value:
            try:
                net = ipaddress.IPv4Network(value, strict=False)
            except ValueError:
                raise ValueError(f"match: {name}={value!r} is not an IPv4 CIDR") from None
            parsed = (str(net.network_address), str(net.netmask))
        try:
            norm = normalize_value(name, parsed)
        except (VocabError, ValueError) as exc:
            raise ValueError(f"match: {name}={value!r}: {exc}") from None
        if norm is not None:
            out[name] = norm
    for name in list(out):
        for need, wanted in _PREREQUISITES.get(name, {}).items():
            have = out.get(need)
            if have is None:
                out[need] = wanted
            elif have != wanted:
                raise ValueError(f"match: {name} needs {need}={wanted:#x}, not {have}")
    return out


def raw_flow(rule: RawFlow) -> Flow:
    actions: tuple[Action, ...] = ()
    if rule.set_dscp is not None:
        actions = (SetField("ip_dscp", rule.set_dscp),)
    goto = int(Table.ARP) if rule.action is RawFlowAction.CONTINUE else None
    flow = Flow.make(
        int(Table.EXPERT),
        rule.priority,
        parse_match(rule.match),
        actions if goto is not None else (),
        goto=goto,
        cookie=cookie(CookieKind.EXPERT, rule.id),
    )
    return check_flow(flow)


def raw_flows(host: str, rules: Sequence[RawFlow]) -> list[Flow]:
    return [raw_flow(r) for r in rules if r.host is None or r.host == host]
