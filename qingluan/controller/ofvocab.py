"""OpenFlow 1.3 vocabulary: the one module that speaks os-ken's parser.

Everything else in the controller speaks ``qingluan.controller.pipeline.flow``
values. This module turns those values into os-ken messages (``to_message``)
and parses what a switch reports (flow stats, group descriptions, ports,
errors) back into them, so that desired and actual state compare as plain
values: a flow parsed from the switch equals the flow the pipeline built, and
a reconcile against a bridge that is already right sends nothing.

What the switch reports is normalized the way the switch normalizes what it
is sent (``normalize_flow``, ``normalize_group``; the reconciler applies the
same to the desired state): a mask of all ones becomes an unmasked value, a
mask of zero drops the field, a masked value is stored as ``value & mask``,
MACs are lowercase, IPv4 addresses and masks dotted strings. Parts of a
switch's flow that the vocabulary cannot express (other instructions,
timeouts, actions such as ``NORMAL`` or partial register moves) are listed in
``SwitchFlow.unsupported``; such a flow never equals a desired one, so the
reconciler replaces or deletes it.

``render_flow``/``render_group`` write ovs-ofctl syntax (``ovs-ofctl
add-flow`` accepts the flow lines; groups read like ``dump-groups``).

os-ken has no type hints: its objects are ``Any`` here and nowhere else.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from os_ken.lib import type_desc
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from qingluan.controller.pipeline.flow import (
    OFPP_CONTROLLER,
    OFPP_IN_PORT,
    OFPP_LOCAL,
    Action,
    Conjunction,
    Ct,
    Flow,
    Group,
    GroupAction,
    MatchValue,
    Meter,
    Move,
    Output,
    PopVlan,
    PushVlan,
    SetField,
)

OFP_VERSION: int = ofp.OFP_VERSION
OFPP_ANY: int = ofp.OFPP_ANY
OFPG_ANY: int = ofp.OFPG_ANY
OFPCML_NO_BUFFER: int = ofp.OFPCML_NO_BUFFER
ALL_COOKIE_BITS = (1 << 64) - 1

Datapath = Any  # an os-ken Datapath (or ProtocolDesc): what message constructors need
Message = Any  # an os-ken OpenFlow message


class VocabError(ValueError):
    """A flow or group that OpenFlow 1.3 (as this module speaks it) cannot say."""


# ---- fields ----------------------------------------------------------------------

NX_CT_F_COMMIT = 1
NX_CT_RECIRC_NONE = 0xFF

# Fields whose OXM payload is wider than the field (OVS counts the real width).
_FIELD_BITS_OVERRIDE = {
    "vlan_vid": 13,
    "vlan_pcp": 3,
    "ip_dscp": 6,
    "ip_ecn": 2,
    "ipv6_flabel": 20,
    "mpls_label": 20,
    "mpls_tc": 3,
    "mpls_bos": 1,
    "pbb_isid": 24,
    "ipv6_exthdr": 9,
    "tcp_flags": 12,
}

# OXM name -> the name ovs-ofctl prints and parses, where they differ.
_OVS_NAMES = {
    "ipv4_src": "nw_src",
    "ipv4_dst": "nw_dst",
    "ip_proto": "nw_proto",
    "tunnel_id": "tun_id",
    "tun_ipv4_src": "tun_src",
    "tun_ipv4_dst": "tun_dst",
    "icmpv4_type": "icmp_type",
    "icmpv4_code": "icmp_code",
}

# How ovs-ofctl names the reserved ports.
_PORT_NAMES = {
    OFPP_IN_PORT: "IN_PORT",
    ofp.OFPP_TABLE: "TABLE",
    ofp.OFPP_NORMAL: "NORMAL",
    ofp.OFPP_FLOOD: "FLOOD",
    ofp.OFPP_ALL: "ALL",
    OFPP_CONTROLLER: "CONTROLLER",
    OFPP_LOCAL: "LOCAL",
    ofp.OFPP_ANY: "ANY",
}

# Match values printed in hex by ovs-ofctl.
_HEX_FIELDS = {
    "metadata",
    "eth_type",
    "tunnel_id",
    "pkt_mark",
    "ct_mark",
    "vlan_vid",
    "ct_state",
}


def _field_type(name: str) -> Any:
    try:
        return ofp.oxm_get_field_info_by_name(name)[1]
    except KeyError:
        raise VocabError(f"unknown OpenFlow field {name!r}") from None


def field_bits(name: str) -> int:
    """Width of a match/set-field/move field in bits, as OVS counts it."""
    if name in _FIELD_BITS_OVERRIDE:
        return _FIELD_BITS_OVERRIDE[name]
    size = getattr(_field_type(name), "size", None)
    if not isinstance(size, int):
        raise VocabError(f"field {name!r} has no fixed width")
    return size * 8


def _canonical_field(name: str) -> str:
    """OVS may name a field by its NXM header (``eth_src_nxm``): use the OXM name."""
    if name.endswith("_nxm"):
        oxm = name[: -len("_nxm")]
        try:
            if field_bits(oxm) == field_bits(name):
                return oxm
        except VocabError:
            pass
    return name


def _mac(value: str) -> str:
    digits = value.replace(":", "").replace("-", "").replace(".", "").lower()
    if len(digits) != 12 or any(c not in "0123456789abcdef" for c in digits):
        raise VocabError(f"{value!r} is not a MAC address")
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def _mac_int(value: str) -> int:
    return int(_mac(value).replace(":", ""), 16)


def _int_mac(value: int) -> str:
    return _mac(f"{value:012x}")


def normalize_value(name: str, value: MatchValue) -> MatchValue | None:
    """A match value as a switch stores it; None when the mask wildcards everything."""
    kind = _field_type(name)
    bits = field_bits(name)
    full = (1 << bits) - 1
    if kind is type_desc.MacAddr:
        if isinstance(value, tuple):
            v, m = _mac_int(str(value[0])), _mac_int(str(value[1]))
            if m == 0:
                return None
            if m == full:
                return _int_mac(v)
            return (_int_mac(v & m), _int_mac(m))
        return _mac(str(value))
    if kind is type_desc.IPv4Addr:
        if isinstance(value, tuple):
            v4 = int(ipaddress.IPv4Address(value[0]))
            m4 = int(ipaddress.IPv4Address(value[1]))
            if m4 == 0:
                return None
            if m4 == full:
                return str(ipaddress.IPv4Address(v4))
            return (str(ipaddress.IPv4Address(v4 & m4)), str(ipaddress.IPv4Address(m4)))
        return str(ipaddress.IPv4Address(value))
    if kind is type_desc.IPv6Addr:
        if isinstance(value, tuple):
            v6 = int(ipaddress.IPv6Address(value[0]))
            m6 = int(ipaddress.IPv6Address(value[1]))
            if m6 == 0:
                return None
            if m6 == full:
                return str(ipaddress.IPv6Address(v6))
            return (str(ipaddress.IPv6Address(v6 & m6)), str(ipaddress.IPv6Address(m6)))
        return str(ipaddress.IPv6Address(value))
    if not isinstance(kind, type_desc.IntDescr):
        raise VocabError(f"field {name!r} has a type this vocabulary does not handle")
    if isinstance(value, tuple):
        vi, mi = int(value[0]), int(value[1])
        if mi == 0:
            return None
        if mi & full == full:
            return vi & full
        return (vi & mi, mi)
    if isinstance(value, str):
        raise VocabError(f"field {name} takes an integer, not {value!r}")
    return int(value)


def _normalize_set_value(name: str, value: int | str) -> int | str:
    out = normalize_value(name, value)
    assert out is not None and not isinstance(out, tuple)
    return out


def normalize_action(action: Action) -> Action:
    if isinstance(action, SetField):
        return SetField(action.field, _normalize_set_value(action.field, action.value))
    return action


def normalize_flow(flow: Flow) -> Flow:
    """The flow as the switch will report it (see the module docstring)."""
    match: dict[str, MatchValue] = {}
    for name, value in flow.match:
        norm = normalize_value(name, value)
        if norm is not None:
            match[name] = norm
    wm = flow.write_metadata
    if wm is not None:
        wm = (wm[0] & wm[1], wm[1])
    return Flow.make(
        flow.table,
        flow.priority,
        match,
        tuple(normalize_action(a) for a in flow.actions),
        write_metadata=wm,
        goto=flow.goto,
        cookie=flow.cookie,
        meter=flow.meter,
    )


def normalize_group(group: Group) -> Group:
    return Group(
        group.group_id,
        tuple(tuple(normalize_action(a) for a in bucket) for bucket in group.buckets),
    )


# ---- requests: what the reconciler asks a switch ----------------------------------


@dataclass(frozen=True)
class FlowAdd:
    """OFPFC_ADD: installs the flow, replacing one with the same table+priority+match."""

    flow: Flow


@dataclass(frozen=True)
class FlowDelete:
    """OFPFC_DELETE_STRICT by table+priority+match, only if the cookie is the flow's."""

    flow: Flow


@dataclass(frozen=True)
class GroupAdd:
    group: Group


@dataclass(frozen=True)
class GroupModify:
    group: Group


@dataclass(frozen=True)
class GroupDelete:
    group_id: int


@dataclass(frozen=True)
class Barrier:
    pass


@dataclass(frozen=True)
class FlowStatsRequest:
    """Every flow of every table."""


@dataclass(frozen=True)
class GroupDescRequest:
    """Every group."""


@dataclass(frozen=True)
class PortDescRequest:
    """Every port."""


@dataclass(frozen=True)
class MeterAdd:
    meter: Meter


@dataclass(frozen=True)
class MeterModify:
    meter: Meter


@dataclass(frozen=True)
class MeterDelete:
    meter_id: int


@dataclass(frozen=True)
class MeterConfigRequest:
    """Every meter's configuration."""


@dataclass(frozen=True)
class PortStatsRequest:
    """Every port's counters."""


Request = (
    FlowAdd
    | FlowDelete
    | GroupAdd
    | GroupModify
    | GroupDelete
    | MeterAdd
    | MeterModify
    | MeterDelete
    | Barrier
    | FlowStatsRequest
    | GroupDescRequest
    | MeterConfigRequest
    | PortDescRequest
    | PortStatsRequest
)


def describe_request(request: Request) -> str:
    """A one-line description for logs and errors."""
    if isinstance(request, FlowAdd):
        return f"add flow {render_flow(request.flow)}"
    if isinstance(request, FlowDelete):
        return f"delete flow {render_flow(request.flow)}"
    if isinstance(request, GroupAdd):
        return f"add group {render_group(request.group)}"
    if isinstance(request, GroupModify):
        return f"modify group {render_group(request.group)}"
    if isinstance(request, GroupDelete):
        return f"delete group_id={request.group_id}"
    if isinstance(request, MeterAdd | MeterModify):
        verb = "add" if isinstance(request, MeterAdd) else "modify"
        return f"{verb} meter {render_meter(request.meter)}"
    if isinstance(request, MeterDelete):
        return f"delete meter={request.meter_id}"
    return type(request).__name__


def _match(match: Iterable[tuple[str, MatchValue]]) -> Any:
    fields: dict[str, Any] = {}
    for name, value in match:
        _field_type(name)
        fields[name] = value
    try:
        return parser.OFPMatch(**fields)
    except (KeyError, ValueError, TypeError) as exc:  # pragma: no cover - os-ken's checks
        raise VocabError(f"bad match {dict(match)}: {exc}") from exc


def _action(action: Action) -> Any:
    if isinstance(action, Output):
        max_len = OFPCML_NO_BUFFER if action.port == OFPP_CONTROLLER else 0
        return parser.OFPActionOutput(action.port, max_len)
    if isinstance(action, GroupAction):
        return parser.OFPActionGroup(action.group_id)
    if isinstance(action, SetField):
        _field_type(action.field)
        return parser.OFPActionSetField(**{action.field: action.value})
    if isinstance(action, Move):
        bits = field_bits(action.src)
        if field_bits(action.dst) != bits:
            raise VocabError(
                f"move {action.src} -> {action.dst}: widths {bits} and "
                f"{field_bits(action.dst)} bits differ"
            )
        return parser.NXActionRegMove(
            src_field=action.src, dst_field=action.dst, n_bits=bits, src_ofs=0, dst_ofs=0
        )
    if isinstance(action, Ct):
        return parser.NXActionCT(
            flags=NX_CT_F_COMMIT if action.commit else 0,
            zone_src="",
            zone_ofs_nbits=action.zone,
            recirc_table=NX_CT_RECIRC_NONE if action.table is None else action.table,
            alg=0,
            actions=[],
        )
    if isinstance(action, Conjunction):
        if not 1 <= action.clause <= action.n_clauses <= 64:
            raise VocabError(f"conjunction clause {action.clause}/{action.n_clauses}")
        return parser.NXActionConjunction(
            clause=action.clause - 1, n_clauses=action.n_clauses, id_=action.id
        )
    if isinstance(action, PushVlan):
        return parser.OFPActionPushVlan(action.ethertype)
    if isinstance(action, PopVlan):
        return parser.OFPActionPopVlan()
    raise VocabError(f"unknown action {action!r}")  # pragma: no cover - Action is closed


def _instructions(flow: Flow) -> list[Any]:
    out: list[Any] = []
    if flow.meter is not None:
        out.append(parser.OFPInstructionMeter(flow.meter))
    if flow.actions:
        out.append(
            parser.OFPInstructionActions(
                ofp.OFPIT_APPLY_ACTIONS, [_action(a) for a in flow.actions]
            )
        )
    if flow.write_metadata is not None:
        value, mask = flow.write_metadata
        out.append(parser.OFPInstructionWriteMetadata(value, mask))
    if flow.goto is not None:
        out.append(parser.OFPInstructionGotoTable(flow.goto))
    return out


def _buckets(group: Group) -> list[Any]:
    return [
        parser.OFPBucket(
            weight=0,
            watch_port=ofp.OFPP_ANY,
            watch_group=ofp.OFPG_ANY,
            actions=[_action(a) for a in bucket],
        )
        for bucket in group.buckets
    ]


def to_message(datapath: Datapath, request: Request) -> Message:
    """The os-ken message for one request (not serialized, no xid yet)."""
    if isinstance(request, FlowAdd):
        flow = request.flow
        return parser.OFPFlowMod(
            datapath,
            cookie=flow.cookie,
            cookie_mask=0,
            table_id=flow.table,
            command=ofp.OFPFC_ADD,
            idle_timeout=0,
            hard_timeout=0,
            priority=flow.priority,
            buffer_id=ofp.OFP_NO_BUFFER,
            out_port=ofp.OFPP_ANY,
            out_group=ofp.OFPG_ANY,
            flags=0,
            match=_match(flow.match),
            instructions=_instructions(flow),
        )
    if isinstance(request, FlowDelete):
        flow = request.flow
        return parser.OFPFlowMod(
            datapath,
            cookie=flow.cookie,
            cookie_mask=ALL_COOKIE_BITS,
            table_id=flow.table,
            command=ofp.OFPFC_DELETE_STRICT,
            priority=flow.priority,
            buffer_id=ofp.OFP_NO_BUFFER,
            out_port=ofp.OFPP_ANY,
            out_group=ofp.OFPG_ANY,
            match=_match(flow.match),
            instructions=[],
        )
    if isinstance(request, GroupAdd | GroupModify):
        command = ofp.OFPGC_ADD if isinstance(request, GroupAdd) else ofp.OFPGC_MODIFY
        return parser.OFPGroupMod(
            datapath, command, ofp.OFPGT_ALL, request.group.group_id, _buckets(request.group)
        )
    if isinstance(request, GroupDelete):
        return parser.OFPGroupMod(datapath, ofp.OFPGC_DELETE, ofp.OFPGT_ALL, request.group_id, [])
    if isinstance(request, MeterAdd | MeterModify):
        meter = request.meter
        command = ofp.OFPMC_ADD if isinstance(request, MeterAdd) else ofp.OFPMC_MODIFY
        return parser.OFPMeterMod(
            datapath,
            command=command,
            flags=ofp.OFPMF_KBPS | ofp.OFPMF_BURST,
            meter_id=meter.meter_id,
            bands=[parser.OFPMeterBandDrop(rate=meter.rate_kbps, burst_size=meter.burst_kbits)],
        )
    if isinstance(request, MeterDelete):
        return parser.OFPMeterMod(
            datapath, command=ofp.OFPMC_DELETE, flags=0, meter_id=request.meter_id, bands=[]
        )
    if isinstance(request, MeterConfigRequest):
        return parser.OFPMeterConfigStatsRequest(datapath, 0, ofp.OFPM_ALL)
    if isinstance(request, PortStatsRequest):
        return parser.OFPPortStatsRequest(datapath, 0, ofp.OFPP_ANY)
    if isinstance(request, Barrier):
        return parser.OFPBarrierRequest(datapath)
    if isinstance(request, FlowStatsRequest):
        return parser.OFPFlowStatsRequest(
            datapath,
            0,
            ofp.OFPTT_ALL,
            ofp.OFPP_ANY,
            ofp.OFPG_ANY,
            0,
            0,
            parser.OFPMatch(),
        )
    if isinstance(request, GroupDescRequest):
        return parser.OFPGroupDescStatsRequest(datapath, 0)
    if isinstance(request, PortDescRequest):
        return parser.OFPPortDescStatsRequest(datapath, 0)
    raise VocabError(f"unknown request {request!r}")  # pragma: no cover - Request is closed


# ---- replies: what a switch reports ---------------------------------------------


@dataclass(frozen=True)
class SwitchFlow:
    """A flow as a switch reported it.

    ``unsupported`` names what the switch's flow has that ``flow`` cannot
    express; when it is not empty, the flow is *not* what ``flow`` says and
    must never be taken for a desired flow.
    """

    flow: Flow
    unsupported: tuple[str, ...] = ()
    packets: int = 0
    bytes: int = 0
    match_understood: bool = True  # False: flow.match is not the switch's (never delete by it)

    @property
    def exact(self) -> bool:
        return not self.unsupported


@dataclass(frozen=True)
class SwitchGroup:
    group: Group
    unsupported: tuple[str, ...] = ()

    @property
    def exact(self) -> bool:
        return not self.unsupported


class PortReason(StrEnum):
    ADD = "add"
    DELETE = "delete"
    MODIFY = "modify"


def _parse_action(action: Any, unsupported: list[str]) -> Action | None:
    if isinstance(action, parser.OFPActionOutput):
        return Output(int(action.port))
    if isinstance(action, parser.OFPActionGroup):
        return GroupAction(int(action.group_id))
    if isinstance(action, parser.OFPActionSetField):
        name = _canonical_field(str(action.key))
        value = action.value
        if isinstance(value, tuple):
            unsupported.append(f"masked set_field {name}")
            return None
        try:
            return SetField(name, _normalize_set_value(name, value))
        except VocabError:
            unsupported.append(f"set_field {name}")
            return None
    if isinstance(action, parser.NXActionRegMove):
        src = _canonical_field(str(action.src_field))
        dst = _canonical_field(str(action.dst_field))
        try:
            whole = (
                action.src_ofs == 0
                and action.dst_ofs == 0
                and action.n_bits == field_bits(src) == field_bits(dst)
            )
        except VocabError:
            whole = False
        if not whole:
            unsupported.append(
                f"move {src}[{action.src_ofs}+{action.n_bits}]->{dst}[{action.dst_ofs}]"
            )
            return None
        return Move(src, dst)
    if isinstance(action, parser.NXActionCT):
        if action.zone_src or action.actions or action.alg or action.flags & ~NX_CT_F_COMMIT:
            unsupported.append("ct with a zone field, nested actions, an ALG or flags")
            return None
        table = int(action.recirc_table)
        return Ct(
            commit=bool(action.flags & NX_CT_F_COMMIT),
            zone=int(action.zone_ofs_nbits),
            table=None if table == NX_CT_RECIRC_NONE else table,
        )
    if isinstance(action, parser.NXActionConjunction):
        return Conjunction(int(action.id), int(action.clause) + 1, int(action.n_clauses))
    if isinstance(action, parser.OFPActionPushVlan):
        return PushVlan(int(action.ethertype))
    if isinstance(action, parser.OFPActionPopVlan):
        return PopVlan()
    unsupported.append(type(action).__name__)
    return None


def _parse_actions(actions: Iterable[Any], unsupported: list[str]) -> tuple[Action, ...]:
    out: list[Action] = []
    for raw in actions:
        action = _parse_action(raw, unsupported)
        if action is not None:
            out.append(action)
    return tuple(out)


def parse_match(match: Any) -> dict[str, MatchValue]:
    out: dict[str, MatchValue] = {}
    for name, value in match.items():
        canon = _canonical_field(str(name))
        norm = normalize_value(canon, value)
        if norm is not None:
            out[canon] = norm
    return out


def parse_flow_stats(stats: Any) -> SwitchFlow:
    """One ``OFPFlowStats`` entry of a flow-stats reply."""
    unsupported: list[str] = []
    actions: tuple[Action, ...] = ()
    write_metadata: tuple[int, int] | None = None
    goto: int | None = None
    meter: int | None = None
    for inst in stats.instructions:
        if isinstance(inst, parser.OFPInstructionActions) and inst.type == ofp.OFPIT_APPLY_ACTIONS:
            actions = _parse_actions(inst.actions, unsupported)
        elif isinstance(inst, parser.OFPInstructionWriteMetadata):
            write_metadata = (int(inst.metadata), int(inst.metadata_mask))
        elif isinstance(inst, parser.OFPInstructionGotoTable):
            goto = int(inst.table_id)
        elif isinstance(inst, parser.OFPInstructionMeter):
            meter = int(inst.meter_id)
        elif isinstance(inst, parser.OFPInstructionActions):
            kind = "write_actions" if inst.type == ofp.OFPIT_WRITE_ACTIONS else "clear_actions"
            unsupported.append(kind)
        else:
            unsupported.append(type(inst).__name__)
    if stats.idle_timeout:
        unsupported.append(f"idle_timeout={stats.idle_timeout}")
    if stats.hard_timeout:
        unsupported.append(f"hard_timeout={stats.hard_timeout}")
    match_understood = True
    try:
        match = parse_match(stats.match)
    except ValueError as exc:
        unsupported.append(f"match: {exc}")
        match, match_understood = {}, False
    flow = Flow.make(
        int(stats.table_id),
        int(stats.priority),
        match,
        actions,
        write_metadata=write_metadata,
        goto=goto,
        cookie=int(stats.cookie),
        meter=meter,
    )
    return SwitchFlow(
        flow,
        tuple(unsupported),
        packets=int(stats.packet_count),
        bytes=int(stats.byte_count),
        match_understood=match_understood,
    )


@dataclass(frozen=True)
class PortCounters:
    """One port's counters as the switch counts them (rx: what the port sent in)."""

    port_no: int
    rx_packets: int
    tx_packets: int
    rx_bytes: int
    tx_bytes: int
    rx_dropped: int
    tx_dropped: int


def parse_port_stats(stats: Any) -> PortCounters:
    return PortCounters(
        port_no=int(stats.port_no),
        rx_packets=int(stats.rx_packets),
        tx_packets=int(stats.tx_packets),
        rx_bytes=int(stats.rx_bytes),
        tx_bytes=int(stats.tx_bytes),
        rx_dropped=int(stats.rx_dropped),
        tx_dropped=int(stats.tx_dropped),
    )


@dataclass(frozen=True)
class SwitchMeter:
    meter: Meter
    unsupported: tuple[str, ...] = ()

    @property
    def exact(self) -> bool:
        return not self.unsupported


def parse_meter_config(stats: Any) -> SwitchMeter:
    """One ``OFPMeterConfigStats`` entry: qingluan's meters are kbps with one drop band."""
    unsupported: list[str] = []
    if stats.flags & ~(ofp.OFPMF_KBPS | ofp.OFPMF_BURST | ofp.OFPMF_STATS) or not (
        stats.flags & ofp.OFPMF_KBPS
    ):
        unsupported.append(f"flags {stats.flags:#x}")
    drops = [b for b in stats.bands if isinstance(b, parser.OFPMeterBandDrop)]
    if len(stats.bands) != 1 or len(drops) != 1:
        unsupported.append(f"{len(stats.bands)} bands")
    rate = int(drops[0].rate) if drops else 0
    burst = int(drops[0].burst_size) if drops else 0
    return SwitchMeter(Meter(int(stats.meter_id), rate, burst), tuple(unsupported))


def render_meter(meter: Meter) -> str:
    return (
        f"meter={meter.meter_id},kbps,burst,band=type=drop,rate={meter.rate_kbps},"
        f"burst_size={meter.burst_kbits}"
    )


def parse_group_desc(stats: Any) -> SwitchGroup:
    """One ``OFPGroupDescStats`` entry of a group-desc reply."""
    unsupported: list[str] = []
    if stats.type != ofp.OFPGT_ALL:
        unsupported.append(f"type {stats.type}")
    buckets = tuple(_parse_actions(b.actions, unsupported) for b in stats.buckets)
    return SwitchGroup(Group(int(stats.group_id), buckets), tuple(unsupported))


def parse_port(port: Any) -> tuple[str, int]:
    """``(name, OpenFlow port number)`` of one ``OFPPort``."""
    name = port.name
    if isinstance(name, bytes):
        name = name.rstrip(b"\0").decode("utf-8", "replace")
    return str(name), int(port.port_no)


def port_reason(msg: Any) -> PortReason | None:
    """What an ``OFPPortStatus`` says happened (None: a reason OpenFlow 1.3 does not name)."""
    return {
        ofp.OFPPR_ADD: PortReason.ADD,
        ofp.OFPPR_DELETE: PortReason.DELETE,
        ofp.OFPPR_MODIFY: PortReason.MODIFY,
    }.get(msg.reason)


def reply_has_more(msg: Any) -> bool:
    """A multipart reply with more parts to come."""
    return bool(msg.flags & ofp.OFPMPF_REPLY_MORE)


def describe_error(msg: Any) -> str:
    """An ``OFPErrorMsg`` in words, e.g. ``OFPET_BAD_ACTION/OFPBAC_BAD_OUT_GROUP``."""
    if msg.type == ofp.OFPET_EXPERIMENTER:
        return f"experimenter error 0x{msg.experimenter:x} type {msg.exp_type}"
    try:
        kind = ofp.ofp_error_type_to_str(msg.type)
        code = ofp.ofp_error_code_to_str(msg.type, msg.code)
    except (KeyError, ValueError):  # pragma: no cover - os-ken names every 1.3 error
        return f"error type {msg.type} code {msg.code}"
    return f"{kind.split('(')[0]}/{code.split('(')[0]}"


# ---- rendering in ovs-ofctl's words ----------------------------------------------


def ovs_field_name(name: str) -> str:
    return _OVS_NAMES.get(name, name)


def _port_text(port: int) -> str:
    return _PORT_NAMES.get(port, str(port))


def _value_text(name: str, value: MatchValue) -> str:
    if isinstance(value, tuple):
        return f"{_value_text(name, value[0])}/{_value_text(name, value[1])}"
    if isinstance(value, str):
        return value
    if name == "in_port":
        return _port_text(value)
    if name in _HEX_FIELDS:
        return f"0x{value:04x}" if name == "eth_type" else f"0x{value:x}"
    return str(value)


def render_action(action: Action) -> str:
    if isinstance(action, Output):
        if action.port == OFPP_CONTROLLER:
            return f"CONTROLLER:{OFPCML_NO_BUFFER}"
        if action.port in _PORT_NAMES:
            return _PORT_NAMES[action.port]
        return f"output:{action.port}"
    if isinstance(action, GroupAction):
        return f"group:{action.group_id}"
    if isinstance(action, SetField):
        value = _value_text(action.field, action.value)
        return f"set_field:{value}->{ovs_field_name(action.field)}"
    if isinstance(action, Ct):
        parts = ["commit"] if action.commit else []
        parts.append(f"zone={action.zone}")
        if action.table is not None:
            parts.append(f"table={action.table}")
        return f"ct({','.join(parts)})"
    if isinstance(action, Conjunction):
        return f"conjunction({action.id},{action.clause}/{action.n_clauses})"
    if isinstance(action, PushVlan):
        return f"push_vlan:0x{action.ethertype:04x}"
    if isinstance(action, PopVlan):
        return "pop_vlan"
    return f"move:{ovs_field_name(action.src)}[]->{ovs_field_name(action.dst)}[]"


def render_actions(actions: Iterable[Action]) -> str:
    return ",".join(render_action(a) for a in actions) or "drop"


def render_flow(flow: Flow) -> str:
    """The flow in ``ovs-ofctl add-flow`` syntax (``ovs-ofctl diff-flows`` reads it)."""
    match = ",".join(f"{ovs_field_name(n)}={_value_text(n, v)}" for n, v in flow.match)
    parts = [f"meter:{flow.meter}"] if flow.meter is not None else []
    parts += [render_action(a) for a in flow.actions]
    if flow.write_metadata is not None:
        value, mask = flow.write_metadata
        parts.append(f"write_metadata:0x{value:x}/0x{mask:x}")
    if flow.goto is not None:
        parts.append(f"goto_table:{flow.goto}")
    head = f"cookie=0x{flow.cookie:x}, table={flow.table}, priority={flow.priority}"
    if match:
        head += f",{match}"
    return f"{head} actions={','.join(parts) or 'drop'}"


def render_group(group: Group) -> str:
    """The group as ``ovs-ofctl dump-groups`` prints it (and ``add-group`` reads it)."""
    buckets = "".join(f",bucket=actions={render_actions(b)}" for b in group.buckets)
    return f"group_id={group.group_id},type=all{buckets}"


def render_switch_flow(entry: SwitchFlow) -> str:
    text = render_flow(entry.flow)
    if entry.unsupported:
        text += f" [not understood: {'; '.join(entry.unsupported)}]"
    return text


def render_switch_group(entry: SwitchGroup) -> str:
    text = render_group(entry.group)
    if entry.unsupported:
        text += f" [not understood: {'; '.join(entry.unsupported)}]"
    return text


def ports_by_name(ports: Iterable[Any]) -> Mapping[str, int]:
    return dict(parse_port(p) for p in ports)
