"""The evaluator itself, on small hand-made states."""

from __future__ import annotations

import pytest

from qingluan.controller.pipeline.flow import (
    OFPP_IN_PORT,
    BridgeState,
    Flow,
    Group,
    GroupAction,
    Move,
    Output,
    SetField,
)
from qingluan.controller.pipeline.sim import Packet, SimulationError, simulate, trace

PACKET: Packet = {"eth_src": "02:00:00:00:00:01", "eth_dst": "02:00:00:00:00:02", "eth_type": 1}


def state(*flows: Flow, groups: tuple[Group, ...] = ()) -> BridgeState:
    return BridgeState(flows=frozenset(flows), groups=frozenset(groups))


def test_highest_priority_matching_flow_wins() -> None:
    s = state(
        Flow.make(0, 10, {}, [Output(1)]),
        Flow.make(0, 20, {"eth_type": 1}, [Output(2)]),
        Flow.make(0, 30, {"eth_type": 2}, [Output(3)]),
    )
    assert simulate(s, 9, PACKET) == [(2, PACKET)]


def test_two_matching_flows_of_one_priority_are_an_error() -> None:
    s = state(Flow.make(0, 10, {}, [Output(1)]), Flow.make(0, 10, {"eth_type": 1}, [Output(2)]))
    with pytest.raises(SimulationError, match="priority 10"):
        simulate(s, 9, PACKET)


def test_no_matching_flow_drops_and_the_trace_says_where() -> None:
    s = state(Flow.make(0, 0, {}, goto=5), Flow.make(5, 1, {"eth_type": 2}, [Output(1)]))
    result = trace(s, 9, PACKET)
    assert result.outputs == []
    assert [(h.table, h.flow is None) for h in result.hops] == [(0, False), (5, True)]


def test_a_field_the_packet_lacks_does_not_match() -> None:
    s = state(Flow.make(0, 1, {"ipv4_src": "10.0.0.1"}, [Output(1)]))
    assert simulate(s, 9, PACKET) == []
    assert simulate(s, 9, {**PACKET, "ipv4_src": "10.0.0.1"}) != []


def test_macs_compare_regardless_of_case() -> None:
    s = state(Flow.make(0, 1, {"eth_src": "02:00:00:00:00:AB"}, [Output(1)]))
    assert simulate(s, 9, {**PACKET, "eth_src": "02:00:00:00:00:ab"}) != []


@pytest.mark.parametrize(
    ("dst", "hit"),
    [("ff:ff:ff:ff:ff:ff", True), ("01:00:5e:00:00:01", True), ("02:00:00:00:00:02", False)],
)
def test_masked_mac_match(dst: str, hit: bool) -> None:
    multicast = ("01:00:00:00:00:00", "01:00:00:00:00:00")
    s = state(Flow.make(0, 1, {"eth_dst": multicast}, [Output(1)]))
    assert bool(simulate(s, 9, {**PACKET, "eth_dst": dst})) is hit


def test_masked_ipv4_match() -> None:
    s = state(Flow.make(0, 1, {"ipv4_dst": ("10.1.0.0", "255.255.0.0")}, [Output(1)]))
    assert simulate(s, 9, {**PACKET, "ipv4_dst": "10.1.7.8"}) != []
    assert simulate(s, 9, {**PACKET, "ipv4_dst": "10.2.7.8"}) == []


def test_in_port_and_metadata_are_matched_and_metadata_is_written_with_its_mask() -> None:
    s = state(
        Flow.make(0, 1, {"in_port": 4}, write_metadata=(0xAB, 0xFF), goto=1),
        Flow.make(1, 1, {}, write_metadata=(0x100, 0xF00), goto=2),
        Flow.make(2, 1, {"metadata": (0x1AB, 0xFFF)}, [Output(7)]),
        Flow.make(2, 2, {"metadata": (0xAB, 0xFFF)}, [Output(8)]),
    )
    assert simulate(s, 4, PACKET) == [(7, PACKET)]
    assert simulate(s, 5, PACKET) == []


def test_actions_apply_in_order_and_each_output_is_a_snapshot() -> None:
    s = state(
        Flow.make(
            0,
            1,
            {},
            [Output(1), SetField("eth_type", 7), Move("eth_src", "eth_dst"), Output(2)],
        )
    )
    original = dict(PACKET)
    out = simulate(s, 9, PACKET)
    assert out == [
        (1, PACKET),
        (2, {**PACKET, "eth_type": 7, "eth_dst": PACKET["eth_src"]}),
    ]
    assert original == PACKET  # the caller's packet is not touched


def test_set_fields_carry_into_the_next_table() -> None:
    s = state(
        Flow.make(0, 1, {}, [SetField("eth_type", 2)], goto=3),
        Flow.make(3, 1, {"eth_type": 2}, [Output(5)]),
    )
    assert simulate(s, 9, PACKET) == [(5, {**PACKET, "eth_type": 2})]


def test_move_from_an_absent_field_is_an_error() -> None:
    s = state(Flow.make(0, 1, {}, [Move("arp_sha", "arp_tha"), Output(1)]))
    with pytest.raises(SimulationError, match="arp_sha"):
        simulate(s, 9, PACKET)


def test_in_port_output_and_explicit_output_to_the_in_port() -> None:
    s = state(Flow.make(0, 1, {}, [Output(OFPP_IN_PORT), Output(9), Output(3)]))
    assert simulate(s, 9, PACKET) == [(9, PACKET), (3, PACKET)]


def test_group_buckets_act_on_their_own_copies_and_skip_the_in_port() -> None:
    group = Group(
        1,
        (
            (SetField("eth_type", 5), Output(1)),
            (Output(2),),
            (Output(3),),
        ),
    )
    s = state(Flow.make(0, 1, {}, [GroupAction(1), Output(4)]), groups=(group,))
    assert simulate(s, 2, PACKET) == [
        (1, {**PACKET, "eth_type": 5}),
        (3, PACKET),
        (4, PACKET),
    ]


def test_a_bucket_that_outputs_to_the_in_port_is_dropped_whole() -> None:
    group = Group(1, ((Output(2), Output(3)), (Output(4),)))
    s = state(Flow.make(0, 1, {}, [GroupAction(1)]), groups=(group,))
    assert simulate(s, 2, PACKET) == [(4, PACKET)]


def test_unknown_group_is_an_error() -> None:
    s = state(Flow.make(0, 1, {}, [GroupAction(42)]))
    with pytest.raises(SimulationError, match="unknown group 42"):
        simulate(s, 9, PACKET)


def test_a_group_chained_to_itself_is_a_loop() -> None:
    s = state(Flow.make(0, 1, {}, [GroupAction(1)]), groups=(Group(1, ((GroupAction(1),),)),))
    with pytest.raises(SimulationError, match="loop"):
        simulate(s, 9, PACKET)


def test_a_backward_goto_is_a_loop() -> None:
    s = state(Flow.make(0, 1, {}, goto=3), Flow.make(3, 1, {}, goto=3))
    with pytest.raises(SimulationError, match="loops"):
        simulate(s, 9, PACKET)


@pytest.mark.parametrize("name", ["in_port", "metadata"])
def test_pipeline_state_is_not_a_packet_field(name: str) -> None:
    with pytest.raises(ValueError, match=name):
        simulate(state(), 9, {**PACKET, name: 1})
