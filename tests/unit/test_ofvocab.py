"""The OpenFlow vocabulary: exact messages, and values that survive the wire unchanged.

The round trips here go through os-ken's own encoder and decoder (a flow mod
is serialized, parsed back, and presented as a flow-stats entry), so a flow
the pipeline builds must come back *equal*. The same round trip through a
real Open vSwitch is in tests/integration/test_reconciler_ovs.py.
"""

from __future__ import annotations

import pytest
from os_ken.ofproto import ofproto_protocol
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from qingluan import names
from qingluan.controller import ofvocab
from qingluan.controller.ofvocab import (
    Barrier,
    FlowAdd,
    FlowDelete,
    FlowStatsRequest,
    GroupAdd,
    GroupDelete,
    GroupDescRequest,
    GroupModify,
    PortDescRequest,
    PortReason,
    VocabError,
)
from qingluan.controller.pipeline import compute_bridge
from qingluan.controller.pipeline.flow import (
    NETWORK_KEY_MASK,
    OFPP_CONTROLLER,
    OFPP_IN_PORT,
    OFPP_LOCAL,
    Conjunction,
    CookieKind,
    Ct,
    Flow,
    Group,
    GroupAction,
    Meter,
    Move,
    Output,
    PopVlan,
    PushVlan,
    SetField,
    cookie,
)
from qingluan.model import Endpoint, Network, NetworkModel

DP = ofproto_protocol.ProtocolDesc(version=ofp.OFP_VERSION)
GW_MAC = "02:00:00:00:00:09"

ARP_ANSWER = Flow.make(
    40,
    100,
    {"metadata": (5, NETWORK_KEY_MASK), "eth_type": 0x0806, "arp_op": 1, "arp_tpa": "10.0.0.1"},
    [
        Move("eth_src", "eth_dst"),
        SetField("eth_src", GW_MAC),
        SetField("arp_op", 2),
        Move("arp_sha", "arp_tha"),
        Move("arp_spa", "arp_tpa"),
        SetField("arp_sha", GW_MAC),
        SetField("arp_spa", "10.0.0.1"),
        Output(OFPP_IN_PORT),
    ],
    cookie=cookie(CookieKind.NETWORK, "net"),
)
CLASSIFY_IP = Flow.make(
    0,
    100,
    {"in_port": 3, "eth_src": "02:00:00:00:00:01", "eth_type": 0x0800, "ipv4_src": "10.0.0.2"},
    write_metadata=(5, NETWORK_KEY_MASK),
    goto=10,
    cookie=cookie(CookieKind.ENDPOINT, "ep"),
)
FLOOD = Flow.make(
    50,
    50,
    {"metadata": (5, NETWORK_KEY_MASK), "eth_dst": ("01:00:00:00:00:00", "01:00:00:00:00:00")},
    [GroupAction(5)],
)
MISC = [
    Flow.make(0, 0, {}),  # drop
    Flow.make(10, 0, {}, goto=20),
    Flow.make(
        20,
        5,
        {"eth_type": 0x0800, "ipv4_dst": ("10.1.0.0", "255.255.0.0"), "ip_proto": 6, "tcp_dst": 80},
        [Output(OFPP_CONTROLLER)],
    ),
    Flow.make(
        30,
        7,
        {"metadata": 7, "eth_src": ("02:00:00:00:00:00", "ff:ff:ff:ff:ff:00")},
        [
            SetField("tunnel_id", 99),
            SetField("tun_ipv4_dst", "192.168.1.2"),
            Move("metadata", "tunnel_id"),
            Move("reg0", "reg1"),
            Output(OFPP_LOCAL),
        ],
    ),
    Flow.make(
        0,
        100,
        {"in_port": 9, "vlan_vid": 0x1064},
        [PopVlan()],
        write_metadata=(0x1000005, 0x1FFFFFF),
        goto=10,
    ),
    Flow.make(0, 100, {"in_port": 9, "vlan_vid": 0}, write_metadata=(7, 0xFFFFFF), goto=10),
    Flow.make(50, 1, {"metadata": 5}, [PushVlan(), SetField("vlan_vid", 0x1064), Output(9)]),
    Flow.make(0, 100, {"in_port": 8, "tunnel_id": 5000}, write_metadata=(3, 0xFF), goto=10),
    Flow.make(30, 105, {"eth_type": 0x0800, "ipv4_dst": "10.0.0.9"}, goto=40, meter=5),
    Flow.make(20, 100, {"metadata": (5, 0xFFFFFF), "eth_type": 0x0800}, [Ct(zone=1, table=21)]),
    Flow.make(
        21,
        1000,
        {"eth_type": 0x0800, "ct_state": (0x21, 0x3F), "ipv4_src": "10.0.0.2"},
        [Conjunction(7, 1, 2)],
    ),
    Flow.make(
        22,
        1000,
        {"conj_id": 7, "eth_type": 0x0800, "ct_state": (0x21, 0x3F)},
        [Ct(commit=True, zone=1)],
        goto=30,
    ),
    Flow.make(
        21,
        900,
        {"eth_type": 0x0800, "ip_proto": 6, "tcp_dst": (0x1F40, 0xFFC0), "icmpv4_type": 0},
        [],
    ),
]
FLOOD_GROUP = Group(5, ((Output(1),), (Output(2),), (SetField("eth_dst", GW_MAC), Output(3))))


def through_wire(flow: Flow, *, packets: int = 0) -> ofvocab.SwitchFlow:
    """Encode a FlowAdd, decode it with os-ken, present it as a flow-stats entry, parse that."""
    msg = ofvocab.to_message(DP, FlowAdd(flow))
    msg.set_xid(1)
    msg.serialize()
    back = parser.OFPFlowMod.parser(
        DP, ofp.OFP_VERSION, ofp.OFPT_FLOW_MOD, len(msg.buf), 1, msg.buf
    )
    stats = parser.OFPFlowStats(
        table_id=back.table_id,
        duration_sec=1,
        duration_nsec=0,
        priority=back.priority,
        idle_timeout=back.idle_timeout,
        hard_timeout=back.hard_timeout,
        flags=0,
        cookie=back.cookie,
        packet_count=packets,
        byte_count=packets * 60,
        match=back.match,
        instructions=back.instructions,
    )
    return ofvocab.parse_flow_stats(stats)


def group_through_wire(group: Group) -> ofvocab.SwitchGroup:
    msg = ofvocab.to_message(DP, GroupAdd(group))
    msg.set_xid(1)
    msg.serialize()
    offset = ofp.OFP_GROUP_MOD_SIZE
    buckets = []
    while offset < len(msg.buf):
        bucket = parser.OFPBucket.parser(msg.buf, offset)
        buckets.append(bucket)
        offset += bucket.len
    desc = parser.OFPGroupDescStats(type_=ofp.OFPGT_ALL, group_id=group.group_id, buckets=buckets)
    return ofvocab.parse_group_desc(desc)


# ---- exact messages -------------------------------------------------------------


def test_flow_add_message() -> None:
    msg = ofvocab.to_message(DP, FlowAdd(CLASSIFY_IP))
    assert msg.command == ofp.OFPFC_ADD
    assert (msg.table_id, msg.priority, msg.cookie, msg.cookie_mask) == (
        0,
        100,
        CLASSIFY_IP.cookie,
        0,
    )
    assert (msg.idle_timeout, msg.hard_timeout, msg.flags) == (0, 0, 0)
    assert msg.buffer_id == ofp.OFP_NO_BUFFER
    assert dict(msg.match.items()) == {
        "in_port": 3,
        "eth_src": "02:00:00:00:00:01",
        "eth_type": 0x0800,
        "ipv4_src": "10.0.0.2",
    }
    kinds = [type(i).__name__ for i in msg.instructions]
    assert kinds == ["OFPInstructionWriteMetadata", "OFPInstructionGotoTable"]
    assert (msg.instructions[0].metadata, msg.instructions[0].metadata_mask) == (5, 0xFFFFFF)
    assert msg.instructions[1].table_id == 10


def test_flow_add_actions_are_applied_in_order() -> None:
    msg = ofvocab.to_message(DP, FlowAdd(ARP_ANSWER))
    (apply,) = msg.instructions
    assert apply.type == ofp.OFPIT_APPLY_ACTIONS
    move = apply.actions[0]
    assert isinstance(move, parser.NXActionRegMove)
    assert (move.src_field, move.dst_field, move.n_bits, move.src_ofs, move.dst_ofs) == (
        "eth_src",
        "eth_dst",
        48,
        0,
        0,
    )
    assert apply.actions[2].key == "arp_op" and apply.actions[2].value == 2
    assert apply.actions[4].n_bits == 32
    out = apply.actions[-1]
    assert (out.port, out.max_len) == (OFPP_IN_PORT, 0)


def test_output_to_controller_sends_whole_packets() -> None:
    msg = ofvocab.to_message(DP, FlowAdd(MISC[2]))
    assert msg.instructions[0].actions[0].max_len == ofp.OFPCML_NO_BUFFER


def test_flow_delete_is_strict_and_bound_to_the_cookie() -> None:
    msg = ofvocab.to_message(DP, FlowDelete(CLASSIFY_IP))
    assert msg.command == ofp.OFPFC_DELETE_STRICT
    assert (msg.table_id, msg.priority) == (0, 100)
    assert (msg.cookie, msg.cookie_mask) == (CLASSIFY_IP.cookie, 2**64 - 1)
    assert (msg.out_port, msg.out_group) == (ofp.OFPP_ANY, ofp.OFPG_ANY)
    assert dict(msg.match.items())["ipv4_src"] == "10.0.0.2"
    assert msg.instructions == []


def test_group_messages() -> None:
    add = ofvocab.to_message(DP, GroupAdd(FLOOD_GROUP))
    assert (add.command, add.type, add.group_id) == (ofp.OFPGC_ADD, ofp.OFPGT_ALL, 5)
    assert [len(b.actions) for b in add.buckets] == [1, 1, 2]
    assert all(b.watch_port == ofp.OFPP_ANY and b.watch_group == ofp.OFPG_ANY for b in add.buckets)
    modify = ofvocab.to_message(DP, GroupModify(FLOOD_GROUP))
    assert modify.command == ofp.OFPGC_MODIFY
    delete = ofvocab.to_message(DP, GroupDelete(5))
    assert (delete.command, delete.group_id, delete.buckets) == (ofp.OFPGC_DELETE, 5, [])


def test_requests() -> None:
    assert isinstance(ofvocab.to_message(DP, Barrier()), parser.OFPBarrierRequest)
    stats = ofvocab.to_message(DP, FlowStatsRequest())
    assert (stats.table_id, stats.out_port, stats.out_group) == (
        ofp.OFPTT_ALL,
        ofp.OFPP_ANY,
        ofp.OFPG_ANY,
    )
    assert (stats.cookie, stats.cookie_mask, dict(stats.match.items())) == (0, 0, {})
    assert isinstance(ofvocab.to_message(DP, GroupDescRequest()), parser.OFPGroupDescStatsRequest)
    assert isinstance(ofvocab.to_message(DP, PortDescRequest()), parser.OFPPortDescStatsRequest)


def test_every_message_serializes() -> None:
    requests: list[ofvocab.Request] = [FlowAdd(f) for f in [ARP_ANSWER, CLASSIFY_IP, FLOOD, *MISC]]
    requests += [FlowDelete(FLOOD), GroupAdd(FLOOD_GROUP), GroupAdd(Group(6, ())), GroupDelete(6)]
    for request in requests:
        msg = ofvocab.to_message(DP, request)
        msg.set_xid(7)
        msg.serialize()
        assert len(msg.buf) >= ofp.OFP_HEADER_SIZE


def test_move_needs_equal_widths() -> None:
    bad = Flow.make(40, 1, {}, [Move("eth_src", "arp_spa")])
    with pytest.raises(VocabError, match="widths 48 and 32"):
        ofvocab.to_message(DP, FlowAdd(bad))


def test_unknown_field_is_refused() -> None:
    with pytest.raises(VocabError, match="unknown OpenFlow field 'dl_src'"):
        ofvocab.to_message(DP, FlowAdd(Flow.make(0, 1, {"dl_src": "02:00:00:00:00:01"})))


# ---- round trips ----------------------------------------------------------------


@pytest.mark.parametrize(
    "flow", [ARP_ANSWER, CLASSIFY_IP, FLOOD, *MISC], ids=lambda f: str(f.key[:2])
)
def test_flow_survives_the_wire_unchanged(flow: Flow) -> None:
    back = through_wire(flow, packets=3)
    assert back.exact
    assert back.flow == flow
    assert back.flow.key == flow.key
    assert (back.packets, back.bytes) == (3, 180)


def test_group_survives_the_wire_unchanged() -> None:
    for group in (FLOOD_GROUP, Group(6, ())):
        back = group_through_wire(group)
        assert back.exact and back.group == group


def lab() -> tuple[list[Network], list[Endpoint], dict[str, int]]:
    nets: list[Network] = []
    eps: list[Endpoint] = []
    ports: dict[str, int] = {}
    for key in (1, 2):
        net = Network(
            id=f"{key:02x}" * 32,
            key=key,
            host="h1",
            model=NetworkModel.NAT,
            pool_id=f"nat_10.128.{key}.0_24",
            subnet=f"10.128.{key}.0/24",
            gateway=f"10.128.{key}.1",
            gateway_mac=names.gateway_mac(key),
        )
        nets.append(net)
        ports[names.gateway_port(net.id)] = len(ports) + 1
        for part in (2, 3):
            ep_id = f"e{key:02x}{part:02x}".ljust(64, "0")
            ep = Endpoint(
                id=ep_id,
                network_id=net.id,
                host="h1",
                mac=names.endpoint_mac(ep_id),
                address=f"10.128.{key}.{part}",
                port_name=names.endpoint_port(ep_id),
            )
            eps.append(ep)
            ports[ep.port_name] = len(ports) + 1
    return nets, eps, ports


def test_the_pipeline_builds_values_the_switch_gives_back() -> None:
    """Every flow and group of a real bridge state is already normalized and round-trips."""
    state = compute_bridge(*lab())
    assert state.flows and state.groups
    for flow in state.flows:
        assert ofvocab.normalize_flow(flow) == flow
        back = through_wire(flow)
        assert back.exact and back.flow == flow, ofvocab.render_flow(flow)
    for group in state.groups:
        assert ofvocab.normalize_group(group) == group
        assert group_through_wire(group).group == group


# ---- normalization ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "given", "stored"),
    [
        ("metadata", (5, 2**64 - 1), 5),
        ("metadata", (0x105, 0xFF), (0x05, 0xFF)),
        ("metadata", (5, 0), None),
        ("in_port", 7, 7),
        ("eth_dst", "02:AB:CD:00:00:01", "02:ab:cd:00:00:01"),
        ("eth_dst", ("02:AB:CD:00:00:01", "FF:FF:FF:FF:FF:FF"), "02:ab:cd:00:00:01"),
        (
            "eth_dst",
            ("03:00:00:00:00:00", "01:00:00:00:00:00"),
            ("01:00:00:00:00:00", "01:00:00:00:00:00"),
        ),
        ("ipv4_src", ("10.0.0.7", "255.255.255.255"), "10.0.0.7"),
        ("ipv4_src", ("10.0.0.7", "255.255.255.0"), ("10.0.0.0", "255.255.255.0")),
        ("ipv4_src", ("10.0.0.7", "0.0.0.0"), None),
        ("vlan_vid", (0x1064, 0x1FFF), 0x1064),
    ],
)
def test_normalize_value(field: str, given: object, stored: object) -> None:
    assert ofvocab.normalize_value(field, given) == stored  # type: ignore[arg-type]


def test_normalize_flow_drops_wildcards_and_masks_write_metadata() -> None:
    flow = Flow.make(
        50,
        1,
        {"metadata": (5, 2**64 - 1), "eth_dst": ("02:00:00:00:00:01", "00:00:00:00:00:00")},
        [SetField("eth_src", "02:0A:00:00:00:01")],
        write_metadata=(0x1FF, 0xFF),
    )
    norm = ofvocab.normalize_flow(flow)
    assert norm.match == (("metadata", 5),)
    assert norm.actions == (SetField("eth_src", "02:0a:00:00:00:01"),)
    assert norm.write_metadata == (0xFF, 0xFF)
    assert through_wire(norm).flow == norm


def test_a_string_for_an_integer_field_is_refused() -> None:
    with pytest.raises(VocabError):
        ofvocab.normalize_value("in_port", "3")


# ---- what only a switch says ----------------------------------------------------


def stats(instructions: list[object], **kw: object) -> object:
    base = {
        "table_id": 50,
        "duration_sec": 0,
        "duration_nsec": 0,
        "priority": 10,
        "idle_timeout": 0,
        "hard_timeout": 0,
        "flags": 0,
        "cookie": 0x99,
        "packet_count": 0,
        "byte_count": 0,
        "match": parser.OFPMatch(metadata=(5, 0xFFFFFF)),
        "instructions": instructions,
    }
    base.update(kw)
    return parser.OFPFlowStats(**base)


def apply(*actions: object) -> object:
    return parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, list(actions))


def test_nxm_field_names_from_ovs_become_oxm_names() -> None:
    move = parser.NXActionRegMove(
        src_field="arp_sha_nxm", dst_field="arp_tha_nxm", n_bits=48, src_ofs=0, dst_ofs=0
    )
    entry = ofvocab.parse_flow_stats(stats([apply(move)]))
    assert entry.exact and entry.flow.actions == (Move("arp_sha", "arp_tha"),)


@pytest.mark.parametrize(
    ("instructions", "extra", "why"),
    [
        (
            [apply(parser.NXActionRegMove(src_field="reg0", dst_field="reg1", n_bits=8))],
            {},
            "move reg0",
        ),
        ([apply(parser.NXActionResubmitTable(in_port=0xFFF8, table_id=10))], {}, "Resubmit"),
        ([parser.OFPInstructionActions(ofp.OFPIT_WRITE_ACTIONS, [])], {}, "write_actions"),
        ([], {"idle_timeout": 10}, "idle_timeout=10"),
        ([], {"hard_timeout": 3}, "hard_timeout=3"),
    ],
)
def test_what_the_vocabulary_cannot_say_is_flagged(
    instructions: list[object], extra: dict[str, object], why: str
) -> None:
    entry = ofvocab.parse_flow_stats(stats(instructions, **extra))
    assert not entry.exact
    assert any(why in text for text in entry.unsupported), entry.unsupported
    assert entry.match_understood  # it can still be deleted by its match
    assert "not understood" in ofvocab.render_switch_flow(entry)


def test_output_normal_is_just_an_output() -> None:
    entry = ofvocab.parse_flow_stats(stats([apply(parser.OFPActionOutput(ofp.OFPP_NORMAL))]))
    assert entry.exact and entry.flow.actions == (Output(ofp.OFPP_NORMAL),)
    assert ofvocab.render_flow(entry.flow).endswith("actions=NORMAL")


def test_a_select_group_is_flagged() -> None:
    desc = parser.OFPGroupDescStats(
        type_=ofp.OFPGT_SELECT,
        group_id=9,
        buckets=[parser.OFPBucket(actions=[parser.OFPActionOutput(1)])],
    )
    entry = ofvocab.parse_group_desc(desc)
    assert not entry.exact and entry.group == Group(9, ((Output(1),),))


def test_ports_errors_and_multipart_flags() -> None:
    port = parser.OFPPort(
        port_no=4,
        hw_addr="02:00:00:00:00:04",
        name=b"qlv0123456789ab",
        config=0,
        state=0,
        curr=0,
        advertised=0,
        supported=0,
        peer=0,
        curr_speed=0,
        max_speed=0,
    )
    assert ofvocab.parse_port(port) == ("qlv0123456789ab", 4)
    status = parser.OFPPortStatus(DP, reason=ofp.OFPPR_DELETE, desc=port)
    assert ofvocab.port_reason(status) is PortReason.DELETE
    error = parser.OFPErrorMsg(DP, type_=ofp.OFPET_BAD_ACTION, code=ofp.OFPBAC_BAD_OUT_GROUP)
    assert ofvocab.describe_error(error) == "OFPET_BAD_ACTION/OFPBAC_BAD_OUT_GROUP"
    reply = parser.OFPFlowStatsReply(DP)
    reply.flags = ofp.OFPMPF_REPLY_MORE
    assert ofvocab.reply_has_more(reply)
    reply.flags = 0
    assert not ofvocab.reply_has_more(reply)


# ---- rendering --------------------------------------------------------------------


def test_render_flow_in_ovs_ofctl_syntax() -> None:
    assert ofvocab.render_flow(CLASSIFY_IP) == (
        f"cookie=0x{CLASSIFY_IP.cookie:x}, table=0, priority=100,"
        "eth_src=02:00:00:00:00:01,eth_type=0x0800,in_port=3,nw_src=10.0.0.2"
        " actions=write_metadata:0x5/0xffffff,goto_table:10"
    )
    assert ofvocab.render_flow(ARP_ANSWER).endswith(
        " actions=move:eth_src[]->eth_dst[],set_field:02:00:00:00:00:09->eth_src,"
        "set_field:2->arp_op,move:arp_sha[]->arp_tha[],move:arp_spa[]->arp_tpa[],"
        "set_field:02:00:00:00:00:09->arp_sha,set_field:10.0.0.1->arp_spa,IN_PORT"
    )
    assert ofvocab.render_flow(MISC[0]) == "cookie=0x0, table=0, priority=0 actions=drop"
    assert "nw_dst=10.1.0.0/255.255.0.0" in ofvocab.render_flow(MISC[2])
    assert ofvocab.render_flow(MISC[2]).endswith("actions=CONTROLLER:65535")


def test_render_group_like_dump_groups() -> None:
    assert ofvocab.render_group(FLOOD_GROUP) == (
        "group_id=5,type=all,bucket=actions=output:1,bucket=actions=output:2,"
        "bucket=actions=set_field:02:00:00:00:00:09->eth_dst,output:3"
    )
    assert ofvocab.render_group(Group(6, ())) == "group_id=6,type=all"


def test_meters_survive_the_wire() -> None:
    meter = Meter(7, 10_000, 1_000)
    msg = ofvocab.to_message(DP, ofvocab.MeterAdd(meter))
    msg.set_xid(1)
    msg.serialize()  # os-ken can encode it
    assert (msg.command, msg.meter_id) == (ofp.OFPMC_ADD, 7)
    assert [(b.rate, b.burst_size) for b in msg.bands] == [(10_000, 1_000)]
    # what a switch reports back for it
    stats = parser.OFPMeterConfigStats(flags=msg.flags, meter_id=msg.meter_id, bands=msg.bands)
    parsed = ofvocab.parse_meter_config(stats)
    assert parsed.exact and parsed.meter == meter
    assert "rate=10000" in ofvocab.render_meter(meter)
