"""A flat network: containers on the host's NIC to the LAN (run through ``sim``)."""

from __future__ import annotations

import pytest

from qingluan.controller.pipeline import compute_bridge
from qingluan.controller.pipeline.flow import BridgeState
from qingluan.controller.pipeline.sim import Packet, simulate
from qingluan.controller.pipeline.tables import check_flow
from qingluan.model import Network, NetworkModel
from tests.unit.test_pipeline import arp_request, endpoint, network, out_ports

UPLINK, A, B = 9, 2, 3
ROUTER_MAC, ROUTER_IP = "02:00:00:00:01:01", "10.128.7.1"


def flat() -> Network:
    n = network(7, NetworkModel.FLAT)
    return n.model_copy(update={"options": {"physnet": "physnet1", "uplink": "eth1"}})


def state(ports: dict[str, int] | None = None) -> tuple[BridgeState, Network]:
    net = flat()
    a, b = endpoint(net, 2), endpoint(net, 3)
    default = {a.port_name: A, b.port_name: B, "eth1": UPLINK}
    return compute_bridge([net], [a, b], default if ports is None else ports), net


def ipv4(src_mac: str, src_ip: str, dst_mac: str, dst_ip: str) -> Packet:
    return {"eth_src": src_mac, "eth_dst": dst_mac, "eth_type": 0x0800,
            "ipv4_src": src_ip, "ipv4_dst": dst_ip, "ip_proto": 1}  # fmt: skip


def test_a_container_reaches_the_lan_router_through_the_uplink() -> None:
    st, net = state()
    a = endpoint(net, 2)
    packet = ipv4(a.mac, a.address, ROUTER_MAC, ROUTER_IP)
    assert simulate(st, A, packet) == [(UPLINK, packet)]


def test_the_lan_reaches_a_container() -> None:
    st, net = state()
    b = endpoint(net, 3)
    packet = ipv4(ROUTER_MAC, ROUTER_IP, b.mac, b.address)
    assert simulate(st, UPLINK, packet) == [(B, packet)]


def test_broadcast_goes_to_the_lan_and_local_ports_but_never_back() -> None:
    st, net = state()
    a = endpoint(net, 2)
    from_a = arp_request(a.mac, a.address, ROUTER_IP)  # the router is not a known address
    assert out_ports(simulate(st, A, from_a)) == [B, UPLINK]
    from_lan = arp_request(ROUTER_MAC, ROUTER_IP, "10.128.7.200")
    assert out_ports(simulate(st, UPLINK, from_lan)) == [A, B]


def test_unknown_unicast_from_the_lan_is_not_sent_back_to_it() -> None:
    st, _ = state()
    assert (
        simulate(st, UPLINK, ipv4(ROUTER_MAC, ROUTER_IP, "02:00:00:00:09:09", "10.128.7.9")) == []
    )


def test_arp_from_the_lan_for_a_container_is_answered_from_the_flow_table() -> None:
    st, net = state()
    a = endpoint(net, 2)
    out = simulate(st, UPLINK, arp_request(ROUTER_MAC, ROUTER_IP, a.address))
    assert [port for port, _ in out] == [UPLINK]
    reply = out[0][1]
    assert (reply["arp_op"], reply["arp_sha"], reply["arp_spa"]) == (2, a.mac, a.address)


def test_port_security_still_applies_to_containers_of_a_flat_network() -> None:
    st, net = state()
    a = endpoint(net, 2)
    assert simulate(st, A, ipv4(a.mac, "10.128.7.99", ROUTER_MAC, ROUTER_IP)) == []


def test_without_the_uplink_on_the_bridge_the_network_stays_local() -> None:
    net = flat()
    a, b = endpoint(net, 2), endpoint(net, 3)
    st = compute_bridge([net], [a, b], {a.port_name: A, b.port_name: B})
    assert simulate(st, A, ipv4(a.mac, a.address, ROUTER_MAC, ROUTER_IP)) == []
    assert out_ports(simulate(st, A, arp_request(a.mac, a.address, ROUTER_IP))) == [B]


@pytest.mark.parametrize("ports", [None, {"eth1": UPLINK}])
def test_flat_flows_fit_the_declared_tables(ports: dict[str, int] | None) -> None:
    st, _ = state(ports)
    for flow in st.flows:
        check_flow(flow)
