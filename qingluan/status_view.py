"""Plain-text rendering of controller state for a person at a terminal (pure)."""

from __future__ import annotations

from collections.abc import Sequence

from qingluan.api_schema import FlowDump, Status
from qingluan.controller.pipeline.flow import COOKIE_KIND_SHIFT, CookieKind
from qingluan.model import AclRule, AclSelector


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])


def render_status(status: Status) -> str:
    hosts = [
        (
            h.host.name,
            "connected" if h.connected else "DISCONNECTED",
            h.host.bridge,
            h.host.datapath_type.value,
            f"{h.host.dpid:016x}",
            str(len(h.ports)),
        )
        for h in sorted(status.hosts, key=lambda h: h.host.name)
    ]
    names = {n.id: (n.name or n.id[:12]) for n in status.networks}
    networks = [
        (
            n.name or "-",
            n.id[:12],
            n.model.value,
            n.subnet,
            n.gateway,
            "-" if n.vni is None else str(n.vni),
            n.host,
            str(sum(1 for e in status.endpoints if e.network_id == n.id)),
        )
        for n in sorted(status.networks, key=lambda n: (n.host, n.name or "", n.id))
    ]
    endpoints = [
        (
            e.container_name or "-",
            names.get(e.network_id, e.network_id[:12]),
            e.address,
            e.mac,
            e.host,
            e.port_name,
            ",".join(
                f"{m.host_ip or '*'}:{m.host_port}->{m.container_port}/{m.proto.value}"
                for m in e.port_mappings
            )
            or "-",
        )
        for e in sorted(status.endpoints, key=lambda e: (e.host, e.network_id, e.address))
    ]
    parts = [
        "HOSTS",
        table(("NAME", "STATE", "BRIDGE", "DATAPATH", "DPID", "PORTS"), hosts),
        "",
        "NETWORKS",
        table(("NAME", "ID", "MODEL", "SUBNET", "GATEWAY", "VNI", "HOST", "ENDPOINTS"), networks),
        "",
        "ENDPOINTS",
        table(("CONTAINER", "NETWORK", "ADDRESS", "MAC", "HOST", "PORT", "PUBLISHED"), endpoints),
    ]
    return "\n".join(parts)


_OWNER = {
    CookieKind.BASE: "pipeline",
    CookieKind.NETWORK: "network",
    CookieKind.ENDPOINT: "endpoint",
    CookieKind.ACL: "acl",
}


def render_flows(dump: FlowDump) -> str:
    """The switch's flows grouped by table, as ovs-ofctl prints them."""
    head = f"host {dump.host}: bridge {'connected' if dump.connected else 'DISCONNECTED'}"
    lines = [head, f"{len(dump.flows)} flows, {len(dump.groups)} groups", ""]
    lines.extend(dump.flows)
    if dump.groups:
        lines.append("")
        lines.extend(dump.groups)
    return "\n".join(lines)


def owner_of(cookie: int) -> str:
    try:
        return _OWNER[CookieKind(cookie >> COOKIE_KIND_SHIFT)]
    except ValueError:
        return "foreign"


def _selector(sel: AclSelector | None) -> str:
    return "*" if sel is None else sel.describe().replace(" ", "=", 1)


def render_acls(rules: Sequence[AclRule]) -> str:
    """The rules as a table, highest priority first."""
    rows = [
        (
            str(r.priority),
            r.id,
            r.scope or "*",
            r.direction.value,
            _selector(r.src),
            _selector(r.dst),
            r.protocol.value
            + (f"/{r.port_min}" if r.port_min is not None else "")
            + (f"-{r.port_max}" if r.port_max not in (None, r.port_min) else "")
            + (f"/type={r.icmp_type}" if r.icmp_type is not None else ""),
            r.action.value,
            "stateful" if r.stateful else "stateless",
            r.description,
        )
        for r in sorted(rules, key=lambda r: (-r.priority, r.id))
    ]
    head = ("PRIO", "ID", "SCOPE", "DIRECTION", "SRC", "DST", "PROTO", "ACTION", "STATE", "NOTE")
    return table(head, rows) if rows else "no ACL rules"
