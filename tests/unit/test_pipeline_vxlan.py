"""A vxlan network on three hosts: tunnels, head-end replication, anycast gateway (``sim``)."""

from __future__ import annotations

from qingluan import names
from qingluan.controller.pipeline import Peer, compute_bridge
from qingluan.controller.pipeline.flow import BridgeState
from qingluan.controller.pipeline.sim import Packet, simulate
from qingluan.controller.pipeline.tables import check_flow
from qingluan.model import Endpoint, Network, NetworkModel
from tests.unit.test_pipeline import arp_request, ipv4, out_ports

VNI = 5000
TUN, GW = 20, 1
ADDR = {"ha": "172.31.0.11", "hb": "172.31.0.12", "hc": "172.31.0.13"}


def vxlan(host: str, key: int, vni: int = VNI) -> Network:
    return Network(
        id=f"{host}{key:02x}".ljust(64, "0"),
        key=key,
        host=host,
        model=NetworkModel.VXLAN,
        pool_id="vxlan_10.131.0.0_24",
        subnet="10.131.0.0/24",
        gateway="10.131.0.1",
        gateway_mac=names.anycast_gateway_mac(vni),
        mtu=1450,
        vni=vni,
    )


def ep(net: Network, host_part: int) -> Endpoint:
    eid = f"e{net.host}{host_part:02x}".ljust(64, "0")
    return Endpoint(
        id=eid,
        network_id=net.id,
        host=net.host,
        mac=names.endpoint_mac(eid),
        address=f"10.131.0.{host_part}",
        port_name=names.endpoint_port(eid),
    )


NA, NB, NC = vxlan("ha", 3), vxlan("hb", 4), vxlan("hc", 5)
A1, A2, B1, C1 = ep(NA, 2), ep(NA, 3), ep(NB, 4), ep(NC, 5)
OTHER = vxlan("ha", 6, vni=6000)  # another VNI on host a: it gets none of 5000's peers
O1 = Endpoint(**{**ep(OTHER, 2).model_dump(), "id": "f" * 64, "port_name": "qlvffffffffffff"})


def bridge_a(*, tunnel: bool = True, peers: tuple[Peer, ...] | None = None) -> BridgeState:
    ports = {
        names.gateway_port(NA.id): GW,
        A1.port_name: 2,
        A2.port_name: 3,
        O1.port_name: 4,
        names.gateway_port(OTHER.id): 5,
    }
    if tunnel:
        ports[names.TUNNEL_PORT] = TUN
    if peers is None:
        peers = (Peer("hb", ADDR["hb"], VNI, (B1,)), Peer("hc", ADDR["hc"], VNI, (C1,)))
    return compute_bridge([NA, OTHER], [A1, A2, O1], ports, peers)


def bridge_b() -> BridgeState:
    ports = {names.gateway_port(NB.id): GW, B1.port_name: 2, names.TUNNEL_PORT: TUN}
    peers = (Peer("ha", ADDR["ha"], VNI, (A1, A2)), Peer("hc", ADDR["hc"], VNI, (C1,)))
    return compute_bridge([NB], [B1], ports, peers)


def tunnelled(packet: Packet, host: str) -> Packet:
    return {**packet, "tunnel_id": VNI, "tun_ipv4_dst": ADDR[host]}


def test_unicast_to_another_hosts_container_goes_into_the_tunnel_to_that_host() -> None:
    packet = ipv4(A1, B1.mac, B1.address)
    assert simulate(bridge_a(), 2, packet) == [(TUN, tunnelled(packet, "hb"))]
    stale = ipv4(A1, "52:45:00:00:00:99", C1.address)  # by address, with the MAC put right
    assert simulate(bridge_a(), 2, stale) == [(TUN, tunnelled({**stale, "eth_dst": C1.mac}, "hc"))]


def test_the_other_host_delivers_what_arrives_with_the_vni() -> None:
    packet = {**ipv4(A1, B1.mac, B1.address), "tunnel_id": VNI}
    assert simulate(bridge_b(), TUN, packet) == [(2, packet)]
    assert simulate(bridge_b(), TUN, {**packet, "tunnel_id": 6000}) == []


def test_arp_for_a_remote_container_is_answered_on_the_senders_host() -> None:
    out = simulate(bridge_a(), 2, arp_request(A1.mac, A1.address, B1.address))
    assert [port for port, _ in out] == [2]
    assert (out[0][1]["arp_op"], out[0][1]["arp_sha"]) == (2, B1.mac)


def test_broadcast_goes_once_to_each_other_host_and_to_local_ports() -> None:
    out = simulate(bridge_a(), 2, arp_request(A1.mac, A1.address, "10.131.0.200"))
    assert out_ports(out) == [GW, 3, TUN, TUN]
    assert sorted(p["tun_ipv4_dst"] for port, p in out if port == TUN) == [ADDR["hb"], ADDR["hc"]]


def test_broadcast_from_the_tunnel_floods_local_ports_only() -> None:
    request = {**arp_request(A1.mac, A1.address, "10.131.0.200"), "tunnel_id": VNI}
    assert out_ports(simulate(bridge_b(), TUN, request)) == [GW, 2]


def test_arp_from_the_tunnel_is_not_answered_from_the_table() -> None:
    request = {**arp_request(A1.mac, A1.address, B1.address), "tunnel_id": VNI}
    out = simulate(bridge_b(), TUN, request)
    assert [(port, p["arp_op"]) for port, p in out] == [(GW, 1), (2, 1)]


def test_the_gateway_is_the_same_on_every_host_and_always_local() -> None:
    assert NA.gateway_mac == NB.gateway_mac == NC.gateway_mac
    packet = ipv4(A1, NA.gateway_mac, "198.51.100.7")  # to the outside, through this host
    assert simulate(bridge_a(), 2, packet) == [(GW, packet)]
    out = simulate(bridge_b(), 2, arp_request(B1.mac, B1.address, NB.gateway))
    assert [port for port, _ in out] == [2] and out[0][1]["arp_sha"] == NB.gateway_mac


def test_another_vni_on_the_same_host_is_not_tunnelled_to_5000s_hosts() -> None:
    packet = ipv4(O1, B1.mac, B1.address)
    assert simulate(bridge_a(), 4, packet) == []
    out = simulate(bridge_a(), 4, arp_request(O1.mac, O1.address, "10.131.0.200"))
    assert out_ports(out) == [5]  # its own gateway only: OTHER has no peers


def test_without_the_tunnel_port_the_network_stays_local() -> None:
    st = bridge_a(tunnel=False)
    assert simulate(st, 2, ipv4(A1, B1.mac, B1.address)) == []
    assert out_ports(simulate(st, 2, arp_request(A1.mac, A1.address, "10.131.0.200"))) == [GW, 3]


def test_flows_grow_by_three_per_remote_endpoint_and_a_bucket_per_host() -> None:
    small = bridge_a(peers=(Peer("hb", ADDR["hb"], VNI, (B1,)),))
    big = bridge_a()
    assert len(big.flows) - len(small.flows) == 3
    group = {g.group_id: g for g in big.groups}[NA.key]
    small_group = {g.group_id: g for g in small.groups}[NA.key]
    assert len(group.buckets) - len(small_group.buckets) == 1
    for flow in big.flows:
        check_flow(flow)
