"""The pipeline, declared as data: every table, what it is for, what it may match.

Table ids have gaps so that later stages slot in without renumbering. Every
flow the pipeline builds is checked against its table's declaration
(``check_flow``), so a flow in the wrong table or matching a field its table
does not own is a bug caught by the unit tests, not a silent mis-forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from qingluan.controller.pipeline.flow import Flow


class Table(IntEnum):
    CLASSIFY = 0
    QUARANTINE = 10
    ACL = 20
    ACL_EGRESS = 21
    ACL_INGRESS = 22
    STEERING = 30
    EXPERT = 35
    ARP = 40
    L2 = 50


@dataclass(frozen=True)
class TableSpec:
    table: Table
    purpose: str
    matches: frozenset[str]
    # table-miss: None drops, a Table continues there
    miss_goto: Table | None


_L3 = frozenset({"eth_type", "ip_proto", "ipv4_src", "ipv4_dst", "tcp_dst", "udp_dst"})
_ACL = frozenset({"metadata", "ct_state", "conj_id", "icmpv4_type"}) | _L3
# what a raw flow may match: packet fields, nothing of the pipeline's own state
RAW_MATCHES = frozenset(
    {
        "eth_src",
        "eth_dst",
        "eth_type",
        "ip_proto",
        "ipv4_src",
        "ipv4_dst",
        "ip_dscp",
        "tcp_src",
        "tcp_dst",
        "udp_src",
        "udp_dst",
        "icmpv4_type",
        "icmpv4_code",
    }
)

PIPELINE: dict[Table, TableSpec] = {
    t.table: t
    for t in (
        TableSpec(
            Table.CLASSIFY,
            "in_port (uplink: + VLAN tag; tunnel: + VNI) -> network (metadata); port "
            "security: an endpoint may only send from its own MAC and IPv4 address; "
            "everything else is dropped",
            frozenset(
                {
                    "in_port",
                    "eth_src",
                    "eth_type",
                    "ipv4_src",
                    "arp_spa",
                    "arp_sha",
                    "vlan_vid",  # uplink: untagged -> flat network, tag -> vlan network
                    "tunnel_id",  # tunnel port: VNI -> vxlan network
                }
            ),
            None,
        ),
        TableSpec(
            Table.QUARANTINE,
            "drop what quarantined endpoints (or their flows) send; copy the packets of "
            "inspected networks (ids=true) to the IDS port",
            frozenset({"metadata", "eth_src", "tcp_src", "udp_src"}) | _L3,
            Table.ACL,
        ),
        TableSpec(
            Table.ACL,
            "IPv4 of networks with ACLs through conntrack (ct, on to ACL_EGRESS); the rest passes",
            frozenset({"metadata", "eth_src", "eth_dst"}) | _L3,
            Table.STEERING,
        ),
        TableSpec(
            Table.ACL_EGRESS,
            "invalid drops; stateless egress rules; established on to ACL_INGRESS; stateful "
            "egress rules for new connections (of this host's endpoints)",
            _ACL,
            Table.ACL_INGRESS,
        ),
        TableSpec(
            Table.ACL_INGRESS,
            "stateless ingress rules; established passes; stateful ingress rules (to this "
            "host's endpoints); the network's default policy, committing what it allows",
            _ACL,
            None,
        ),
        TableSpec(
            Table.STEERING,
            "traffic steering: drop, DSCP marking, mirroring to a port of this bridge",
            frozenset({"metadata", "eth_src", "eth_dst", "conj_id"}) | _L3,
            Table.EXPERT,
        ),
        TableSpec(
            Table.EXPERT,
            "experts' raw flows (REST /v1/rawflows): drop, or continue (maybe DSCP-marked)",
            RAW_MATCHES,
            Table.ARP,
        ),
        TableSpec(
            Table.ARP,
            "answer ARP requests for known addresses from the flow table",
            frozenset({"metadata", "eth_type", "arp_op", "arp_tpa"}),
            Table.L2,
        ),
        TableSpec(
            Table.L2,
            "(network, destination IPv4) -> port with its current MAC; (network, "
            "destination MAC) -> port; broadcast/multicast -> the network's flood "
            "group; unknown unicast is dropped",
            frozenset({"metadata", "eth_dst", "eth_type", "ipv4_dst"}),
            None,
        ),
    )
}

FIRST_TABLE = Table.CLASSIFY
PASS_THROUGH_PRIORITY = 0


class PipelineError(AssertionError):
    """A flow that its table's declaration does not allow."""


def check_flow(flow: Flow) -> Flow:
    """Return ``flow`` if its table declares it; raise PipelineError otherwise."""
    try:
        spec = PIPELINE[Table(flow.table)]
    except ValueError as exc:
        raise PipelineError(f"flow in undeclared table {flow.table}") from exc
    fields = {name for name, _ in flow.match}
    extra = fields - spec.matches
    if extra:
        raise PipelineError(f"table {spec.table.name} may not match {sorted(extra)}")
    if flow.goto is not None and flow.goto <= flow.table:
        raise PipelineError(f"goto {flow.goto} from table {flow.table} does not go forward")
    return flow
