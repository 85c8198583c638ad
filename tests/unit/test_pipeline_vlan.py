"""Vlan networks on one trunk NIC, beside a flat network (run through ``sim``)."""

from __future__ import annotations

from qingluan.controller.pipeline import compute_bridge
from qingluan.controller.pipeline.flow import OFPVID_PRESENT, BridgeState
from qingluan.controller.pipeline.sim import Packet, simulate
from qingluan.controller.pipeline.tables import check_flow
from qingluan.model import Endpoint, Network, NetworkModel
from tests.unit.test_pipeline import arp_request, endpoint, network, out_ports
from tests.unit.test_pipeline_flat import ipv4

TRUNK = 9
ROUTER_MAC = "02:00:00:00:01:01"
OPTIONS = {"physnet": "physnet1", "uplink": "eth1"}


def vlan(key: int, vid: int) -> Network:
    return network(key, NetworkModel.VLAN).model_copy(update={"vni": vid, "options": OPTIONS})


V100, V200 = vlan(5, 100), vlan(6, 200)
FLAT = network(7, NetworkModel.FLAT).model_copy(update={"options": OPTIONS})
A, B, C, F = endpoint(V100, 2), endpoint(V100, 3), endpoint(V200, 2), endpoint(FLAT, 2)
PORTS = {A.port_name: 2, B.port_name: 3, C.port_name: 4, F.port_name: 5, "eth1": TRUNK}


def state() -> BridgeState:
    return compute_bridge([V100, V200, FLAT], [A, B, C, F], PORTS)


def router_ip(net: Network) -> str:
    return net.subnet.rsplit(".", 1)[0] + ".254"


def tagged(packet: Packet, vid: int) -> Packet:
    return {**packet, "vlan_vid": OFPVID_PRESENT | vid}


def from_container(ep: Endpoint) -> Packet:
    net = {V100.id: V100, V200.id: V200, FLAT.id: FLAT}[ep.network_id]
    return ipv4(ep.mac, ep.address, ROUTER_MAC, router_ip(net))


def test_a_container_leaves_through_the_trunk_tagged_with_its_vlan() -> None:
    assert simulate(state(), 2, from_container(A)) == [(TRUNK, tagged(from_container(A), 100))]
    assert simulate(state(), 4, from_container(C)) == [(TRUNK, tagged(from_container(C), 200))]


def test_a_flat_container_on_the_same_nic_leaves_untagged() -> None:
    assert simulate(state(), 5, from_container(F)) == [(TRUNK, from_container(F))]


def test_a_tagged_frame_reaches_only_its_vlan_untagged() -> None:
    to_b = ipv4(ROUTER_MAC, router_ip(V100), B.mac, B.address)
    assert simulate(state(), TRUNK, tagged(to_b, 100)) == [(3, to_b)]
    # the same frame with another VLAN's tag (or none) does not reach the container
    assert simulate(state(), TRUNK, tagged(to_b, 200)) == []
    assert simulate(state(), TRUNK, tagged(to_b, 300)) == []
    assert simulate(state(), TRUNK, to_b) == []


def test_broadcast_floods_the_vlan_and_the_trunk_tagged_once() -> None:
    out = simulate(state(), 2, arp_request(A.mac, A.address, router_ip(V100)))
    assert out_ports(out) == [3, TRUNK]
    assert [p.get("vlan_vid") for _, p in out] == [None, OFPVID_PRESENT | 100]


def test_broadcast_from_the_trunk_reaches_the_vlan_and_never_goes_back() -> None:
    request = arp_request(ROUTER_MAC, router_ip(V200), "10.0.0.99")
    request = {**request, "arp_tpa": C.address.rsplit(".", 1)[0] + ".99"}
    out = simulate(state(), TRUNK, tagged(request, 200))
    assert out == [(4, request)]


def test_arp_from_the_trunk_is_left_to_the_container_to_answer() -> None:
    """An answer from the table would leave the trunk untagged: the container answers."""
    request = arp_request(ROUTER_MAC, router_ip(V100), A.address)
    out = simulate(state(), TRUNK, tagged(request, 100))
    assert out_ports(out) == [2, 3]
    assert all(p["arp_op"] == 1 and "vlan_vid" not in p for _, p in out)


def test_arp_between_local_containers_of_a_vlan_is_still_answered_locally() -> None:
    out = simulate(state(), 2, arp_request(A.mac, A.address, B.address))
    assert [port for port, _ in out] == [2]
    assert out[0][1]["arp_op"] == 2 and out[0][1]["arp_sha"] == B.mac


def test_containers_of_two_vlans_on_one_host_cannot_talk() -> None:
    packet = ipv4(A.mac, A.address, C.mac, C.address)
    assert simulate(state(), 2, packet) == [(TRUNK, tagged(packet, 100))]  # to the LAN's VLAN 100


def test_vlan_flows_fit_the_declared_tables_and_grow_by_a_fixed_number() -> None:
    st = state()
    for flow in st.flows:
        check_flow(flow)
    more = endpoint(V100, 9)
    bigger = compute_bridge([V100, V200, FLAT], [A, B, C, F, more], {**PORTS, more.port_name: 12})
    assert len(bigger.flows) - len(st.flows) == 5
