"""Run a packet through a ``BridgeState``: a small OpenFlow 1.3 evaluator.

Tests use it to assert what packets do rather than which flows exist, and a
trace tool can show the path a packet takes. It models what the pipeline
uses, close to what Open vSwitch does:

- A packet is a dict of OXM field names (``eth_src``, ``eth_type``,
  ``ipv4_dst``, ``arp_tpa``...) to ints or strings (MACs, dotted IPv4).
  It enters table 0 (``FIRST_TABLE``) with metadata 0.
- In each table the highest-priority matching flow wins; two matching flows
  of that priority are an error (OpenFlow leaves the choice undefined). A
  match field is exact, or a ``(value, mask)`` tuple of ints, MACs or IPv4
  addresses. There are no prerequisites: a flow that matches a field the
  packet lacks does not match. No matching flow drops the packet.
- Apply-actions run in order on the packet: ``SetField``, ``Move`` (the
  source must be present), ``Output`` (``OFPP_IN_PORT`` is the in_port; an
  explicit output to the in_port is skipped, as OVS does), ``GroupAction``
  (every bucket acts on its own copy; an ALL group drops the copy of a
  bucket that outputs to the in_port, as OpenFlow 1.3 says: OVS would still
  do the bucket's other outputs, which makes no difference to buckets of one
  output). Then ``write_metadata`` with its mask, then ``goto``.

A tagged packet carries ``vlan_vid`` (``OFPVID_PRESENT | vid``, as OpenFlow
1.3 matches it); an untagged one has no ``vlan_vid`` and matches
``vlan_vid=OFPVID_NONE``. ``PushVlan``/``PopVlan`` add and remove it.
Tunnel metadata (``tunnel_id``, ``tun_ipv4_dst``) are plain fields.

``SimulationError`` is raised for what a switch would reject or what would
loop: a backward goto, an unknown group, groups chained too deep, a Move
from an absent field.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from qingluan.controller.pipeline.flow import (
    OFPP_IN_PORT,
    OFPVID_NONE,
    OFPVID_PRESENT,
    Action,
    BridgeState,
    Conjunction,
    Ct,
    Flow,
    Group,
    GroupAction,
    MatchValue,
    Move,
    Output,
    PopVlan,
    PushVlan,
    SetField,
)
from qingluan.controller.pipeline.tables import FIRST_TABLE

PacketValue = int | str
Packet = dict[str, PacketValue]

# Fields that are pipeline state, not packet contents.
PIPELINE_FIELDS = frozenset({"in_port", "metadata"})
MAX_GROUP_DEPTH = 8

_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


class SimulationError(Exception):
    """The state cannot be evaluated for this packet (it loops or a switch would reject it)."""


@dataclass(frozen=True)
class Hop:
    """One table the packet visited and the flow that took it (None: dropped there)."""

    table: int
    flow: Flow | None


@dataclass
class Trace:
    """The path through the tables and every copy that left the bridge."""

    hops: list[Hop] = field(default_factory=list)
    outputs: list[tuple[int, Packet]] = field(default_factory=list)


# ---- matching ------------------------------------------------------------------------


def _scalar(value: PacketValue) -> int | str:
    """MACs and dotted IPv4 as ints, so that case and masks compare as on the wire."""
    if isinstance(value, int):
        return value
    if _MAC.match(value):
        return int(value.replace(":", ""), 16)
    try:
        return int(ipaddress.IPv4Address(value))
    except ValueError:
        return value


def _field_matches(actual: PacketValue, wanted: MatchValue) -> bool:
    if isinstance(wanted, tuple):
        value, mask = _scalar(wanted[0]), _scalar(wanted[1])
        have = _scalar(actual)
        if not (isinstance(value, int) and isinstance(mask, int) and isinstance(have, int)):
            raise SimulationError(f"cannot mask {actual!r} with {wanted!r}")
        return have & mask == value & mask
    return _scalar(actual) == _scalar(wanted)


def flow_matches(flow: Flow, fields: Mapping[str, PacketValue]) -> bool:
    """Whether every match field of ``flow`` is present in ``fields`` and agrees."""
    return all(name in fields and _field_matches(fields[name], v) for name, v in flow.match)


def lookup(flows: Sequence[Flow], fields: Mapping[str, PacketValue]) -> Flow | None:
    """The highest-priority flow that matches, or None."""
    matching = [f for f in flows if flow_matches(f, fields)]
    if not matching:
        return None
    top = max(f.priority for f in matching)
    best = [f for f in matching if f.priority == top]
    if len(best) > 1:
        raise SimulationError(f"{len(best)} flows of priority {top} match: {best}")
    return best[0]


# ---- actions -------------------------------------------------------------------------


class _Run:
    """One packet's walk through a state: what it needs to apply actions."""

    def __init__(self, state: BridgeState, in_port: int) -> None:
        self.in_port = in_port
        self.groups: dict[int, Group] = state.groups_by_id()
        self.outputs: list[tuple[int, Packet]] = []

    def output(self, port: int, packet: Packet) -> None:
        if port == OFPP_IN_PORT:
            port = self.in_port
        elif port == self.in_port:
            return  # OpenFlow sends to the ingress port only through OFPP_IN_PORT
        self.outputs.append((port, dict(packet)))

    def apply(self, actions: Sequence[Action], packet: Packet, depth: int = 0) -> None:
        for action in actions:
            if isinstance(action, Output):
                self.output(action.port, packet)
            elif isinstance(action, SetField):
                packet[action.field] = action.value
            elif isinstance(action, Move):
                if action.src not in packet:
                    raise SimulationError(f"move from {action.src}, absent in {packet}")
                packet[action.dst] = packet[action.src]
            elif isinstance(action, GroupAction):
                self.group(action.group_id, packet, depth + 1)
            elif isinstance(action, Ct | Conjunction):
                raise SimulationError(f"{action!r}: conntrack and conjunctions are not simulated")
            elif isinstance(action, PushVlan):
                if "vlan_vid" in packet:
                    raise SimulationError(f"push_vlan on a tagged packet {packet}: no QinQ here")
                packet["vlan_vid"] = OFPVID_PRESENT
            elif isinstance(action, PopVlan):
                if "vlan_vid" not in packet:
                    raise SimulationError(f"pop_vlan on an untagged packet {packet}")
                del packet["vlan_vid"]
            else:  # pragma: no cover - Action is a closed union
                raise SimulationError(f"unknown action {action!r}")

    def group(self, group_id: int, packet: Packet, depth: int) -> None:
        if depth > MAX_GROUP_DEPTH:
            raise SimulationError(f"groups chained deeper than {MAX_GROUP_DEPTH} (a loop?)")
        group = self.groups.get(group_id)
        if group is None:
            raise SimulationError(f"unknown group {group_id}")
        for bucket in group.buckets:
            if any(isinstance(a, Output) and a.port == self.in_port for a in bucket):
                continue  # an ALL group never sends a copy back out of the in_port
            self.apply(bucket, dict(packet), depth)


# ---- the walk ------------------------------------------------------------------------


def _flows_by_table(state: BridgeState) -> dict[int, list[Flow]]:
    tables: dict[int, list[Flow]] = {}
    for flow in state.flows:
        tables.setdefault(flow.table, []).append(flow)
    return tables


def trace(state: BridgeState, in_port: int, packet: Mapping[str, PacketValue]) -> Trace:
    """Run ``packet`` arriving on ``in_port`` through ``state``; record its path."""
    reserved = PIPELINE_FIELDS & packet.keys()
    if reserved:
        raise ValueError(f"{sorted(reserved)} are pipeline state, not packet fields")
    tables = _flows_by_table(state)
    run = _Run(state, in_port)
    result = Trace()
    current: Packet = dict(packet)
    metadata = 0
    table: int | None = int(FIRST_TABLE)
    while table is not None:
        fields: dict[str, PacketValue] = {
            "vlan_vid": OFPVID_NONE,  # an untagged packet matches vlan_vid=0 (OFPVID_NONE)
            **current,
            "in_port": in_port,
            "metadata": metadata,
        }
        flow = lookup(tables.get(table, []), fields)
        result.hops.append(Hop(table, flow))
        if flow is None:
            break
        run.apply(flow.actions, current)
        if flow.write_metadata is not None:
            value, mask = flow.write_metadata
            metadata = (metadata & ~mask) | (value & mask)
        if flow.goto is not None and flow.goto <= table:
            raise SimulationError(f"goto {flow.goto} from table {table} loops")
        table = flow.goto
    result.outputs = run.outputs
    return result


def simulate(
    state: BridgeState, in_port: int, packet: Mapping[str, PacketValue]
) -> list[tuple[int, Packet]]:
    """(output port, packet as it leaves) for every copy of ``packet`` that leaves."""
    return trace(state, in_port, packet).outputs
