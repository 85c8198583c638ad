"""What packets do on the bridge ``compute_bridge`` describes (run through ``sim``)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from qingluan import names
from qingluan.controller.pipeline import compute_bridge
from qingluan.controller.pipeline.flow import (
    BridgeState,
    CookieKind,
    GroupAction,
    Output,
    cookie,
    cookie_kind,
)
from qingluan.controller.pipeline.sim import Packet, simulate
from qingluan.controller.pipeline.tables import Table, check_flow
from qingluan.errors import Conflict
from qingluan.model import Endpoint, Network, NetworkModel

BROADCAST = "ff:ff:ff:ff:ff:ff"
STRANGER_MAC = "52:45:de:ad:be:ef"


def network(key: int, model: NetworkModel = NetworkModel.NAT) -> Network:
    net_id = f"{key:02x}" * 32
    return Network(
        id=net_id,
        key=key,
        host="h1",
        model=model,
        pool_id=f"nat_10.128.{key}.0_24",
        subnet=f"10.128.{key}.0/24",
        gateway=f"10.128.{key}.1",
        gateway_mac=names.gateway_mac(key),
    )


def endpoint(net: Network, host_part: int, mac: str | None = None) -> Endpoint:
    ep_id = f"e{net.key:02x}{host_part:02x}".ljust(64, "0")
    return Endpoint(
        id=ep_id,
        network_id=net.id,
        host="h1",
        mac=mac or names.endpoint_mac(ep_id),
        address=f"10.128.{net.key}.{host_part}",
        port_name=names.endpoint_port(ep_id),
    )


@dataclass
class Lab:
    """Two NAT networks with two containers each and their gateways, all on the bridge."""

    net1: Network
    net2: Network
    a: Endpoint  # net1
    b: Endpoint  # net1
    c: Endpoint  # net2
    d: Endpoint  # net2
    ports: dict[str, int]

    @property
    def networks(self) -> list[Network]:
        return [self.net1, self.net2]

    @property
    def endpoints(self) -> list[Endpoint]:
        return [self.a, self.b, self.c, self.d]

    def port(self, owner: Endpoint | Network) -> int:
        if isinstance(owner, Network):
            return self.ports[names.gateway_port(owner.id)]
        return self.ports[owner.port_name]

    def state(self, ports: dict[str, int] | None = None) -> BridgeState:
        return compute_bridge(self.networks, self.endpoints, self.ports if ports is None else ports)


@pytest.fixture
def lab() -> Lab:
    net1, net2 = network(1), network(2)
    a, b, c, d = endpoint(net1, 2), endpoint(net1, 3), endpoint(net2, 2), endpoint(net2, 3)
    ports = {
        names.gateway_port(net1.id): 1,
        a.port_name: 2,
        b.port_name: 3,
        names.gateway_port(net2.id): 4,
        c.port_name: 5,
        d.port_name: 6,
        "qlvunrelated": 7,  # a port of nobody we know
    }
    return Lab(net1, net2, a, b, c, d, ports)


def ipv4(src: Endpoint, dst_mac: str, dst_ip: str) -> Packet:
    return {
        "eth_src": src.mac,
        "eth_dst": dst_mac,
        "eth_type": 0x0800,
        "ipv4_src": src.address,
        "ipv4_dst": dst_ip,
        "ip_proto": 17,
    }


def arp_request(src_mac: str, src_ip: str, target_ip: str) -> Packet:
    return {
        "eth_src": src_mac,
        "eth_dst": BROADCAST,
        "eth_type": 0x0806,
        "arp_op": 1,
        "arp_sha": src_mac,
        "arp_spa": src_ip,
        "arp_tha": "00:00:00:00:00:00",
        "arp_tpa": target_ip,
    }


def out_ports(outputs: list[tuple[int, Packet]]) -> list[int]:
    return sorted(port for port, _ in outputs)


# ---- unicast -------------------------------------------------------------------------


def test_ipv4_with_a_stale_destination_mac_still_reaches_the_address(lab: Lab) -> None:
    # b's address was given to a new container with a new MAC; a still caches the old one
    packet = ipv4(lab.a, "02:de:ad:00:00:01", lab.b.address)
    out = simulate(lab.state(), lab.port(lab.a), packet)
    assert out == [(lab.port(lab.b), {**packet, "eth_dst": lab.b.mac})]
    # the same stale MAC with an address of another network goes nowhere
    assert (
        simulate(lab.state(), lab.port(lab.a), ipv4(lab.a, "02:de:ad:00:00:01", lab.c.address))
        == []
    )


def test_unicast_between_containers_reaches_only_the_destination(lab: Lab) -> None:
    packet = ipv4(lab.a, lab.b.mac, lab.b.address)
    assert simulate(lab.state(), lab.port(lab.a), packet) == [(lab.port(lab.b), packet)]


def test_container_to_gateway_reaches_the_gateway_port(lab: Lab) -> None:
    packet = ipv4(lab.a, lab.net1.gateway_mac, "1.1.1.1")  # routed out by the host
    assert simulate(lab.state(), lab.port(lab.a), packet) == [(lab.port(lab.net1), packet)]


def test_gateway_is_trusted_whatever_the_source_address(lab: Lab) -> None:
    packet: Packet = {
        "eth_src": lab.net1.gateway_mac,
        "eth_dst": lab.a.mac,
        "eth_type": 0x0800,
        "ipv4_src": "8.8.8.8",  # a reply from outside, after the host routed it
        "ipv4_dst": lab.a.address,
    }
    assert simulate(lab.state(), lab.port(lab.net1), packet) == [(lab.port(lab.a), packet)]


def test_arp_reply_between_containers_is_delivered_not_answered(lab: Lab) -> None:
    reply = {
        **arp_request(lab.b.mac, lab.b.address, lab.a.address),
        "eth_dst": lab.a.mac,
        "arp_op": 2,
        "arp_tha": lab.a.mac,
    }
    assert simulate(lab.state(), lab.port(lab.b), reply) == [(lab.port(lab.a), reply)]


def test_unknown_unicast_is_dropped(lab: Lab) -> None:
    packet = ipv4(lab.a, STRANGER_MAC, "10.128.1.99")
    assert simulate(lab.state(), lab.port(lab.a), packet) == []
    from_gateway = {**packet, "eth_src": lab.net1.gateway_mac, "ipv4_src": "1.1.1.1"}
    assert simulate(lab.state(), lab.port(lab.net1), from_gateway) == []


def test_unknown_port_is_dropped(lab: Lab) -> None:
    packet = ipv4(lab.a, lab.b.mac, lab.b.address)
    assert simulate(lab.state(), lab.ports["qlvunrelated"], packet) == []


# ---- ARP -----------------------------------------------------------------------------


def test_arp_request_for_a_container_is_answered_back_to_the_asker(lab: Lab) -> None:
    request = arp_request(lab.a.mac, lab.a.address, lab.b.address)
    [(port, reply)] = simulate(lab.state(), lab.port(lab.a), request)
    assert port == lab.port(lab.a)
    assert reply == {
        "eth_src": lab.b.mac,
        "eth_dst": lab.a.mac,
        "eth_type": 0x0806,
        "arp_op": 2,
        "arp_sha": lab.b.mac,
        "arp_spa": lab.b.address,
        "arp_tha": lab.a.mac,
        "arp_tpa": lab.a.address,
    }


def test_arp_request_for_the_gateway_is_answered_with_the_gateway_mac(lab: Lab) -> None:
    request = arp_request(lab.a.mac, lab.a.address, lab.net1.gateway)
    [(port, reply)] = simulate(lab.state(), lab.port(lab.a), request)
    assert port == lab.port(lab.a)
    assert (reply["arp_op"], reply["arp_sha"], reply["arp_spa"], reply["eth_src"]) == (
        2,
        lab.net1.gateway_mac,
        lab.net1.gateway,
        lab.net1.gateway_mac,
    )


def test_arp_request_from_the_host_for_a_container_is_answered(lab: Lab) -> None:
    request = arp_request(lab.net1.gateway_mac, lab.net1.gateway, lab.a.address)
    [(port, reply)] = simulate(lab.state(), lab.port(lab.net1), request)
    assert port == lab.port(lab.net1)
    assert (reply["arp_sha"], reply["arp_tha"]) == (lab.a.mac, lab.net1.gateway_mac)


def test_arp_request_for_an_unknown_address_floods_the_network_only(lab: Lab) -> None:
    request = arp_request(lab.a.mac, lab.a.address, "10.128.1.77")
    outputs = simulate(lab.state(), lab.port(lab.a), request)
    assert out_ports(outputs) == sorted([lab.port(lab.b), lab.port(lab.net1)])
    assert all(p == request for _, p in outputs)


def test_arp_is_not_answered_with_another_networks_address(lab: Lab) -> None:
    request = arp_request(lab.a.mac, lab.a.address, lab.c.address)
    outputs = simulate(lab.state(), lab.port(lab.a), request)
    assert out_ports(outputs) == sorted([lab.port(lab.b), lab.port(lab.net1)])
    assert all(p["arp_op"] == 1 for _, p in outputs)


# ---- flooding ------------------------------------------------------------------------


@pytest.mark.parametrize("dst", [BROADCAST, "01:00:5e:00:00:fb", "33:33:00:00:00:01"])
def test_broadcast_and_multicast_reach_the_rest_of_the_network_only(lab: Lab, dst: str) -> None:
    packet = ipv4(lab.a, dst, "10.128.1.255")
    outputs = simulate(lab.state(), lab.port(lab.a), packet)
    assert out_ports(outputs) == sorted([lab.port(lab.b), lab.port(lab.net1)])


def test_broadcast_from_the_gateway_reaches_every_container_of_its_network(lab: Lab) -> None:
    packet = {**ipv4(lab.c, BROADCAST, "10.128.2.255"), "eth_src": lab.net2.gateway_mac}
    outputs = simulate(lab.state(), lab.port(lab.net2), packet)
    assert out_ports(outputs) == sorted([lab.port(lab.c), lab.port(lab.d)])


def test_flood_group_has_one_bucket_per_port_sorted(lab: Lab) -> None:
    groups = lab.state().groups_by_id()
    assert set(groups) == {lab.net1.key, lab.net2.key}
    buckets = groups[lab.net1.key].buckets
    assert buckets == tuple(
        (Output(p),) for p in sorted([lab.port(lab.net1), lab.port(lab.a), lab.port(lab.b)])
    )


# ---- port security and isolation -----------------------------------------------------


@pytest.mark.parametrize(
    "spoof",
    [
        {"ipv4_src": "10.128.1.3"},  # b's address
        {"ipv4_src": "10.128.2.2"},  # another network's address
        {"eth_src": STRANGER_MAC},
        {"eth_type": 0x86DD},  # IPv6
        {"eth_type": 0x8100},  # a VLAN tag
    ],
    ids=["ip-of-peer", "ip-of-other-net", "mac", "ipv6", "vlan"],
)
def test_spoofed_or_foreign_traffic_from_a_container_is_dropped(lab: Lab, spoof: Packet) -> None:
    honest = ipv4(lab.a, lab.net1.gateway_mac, "1.1.1.1")
    assert simulate(lab.state(), lab.port(lab.a), honest) != []  # the control
    assert simulate(lab.state(), lab.port(lab.a), {**honest, **spoof}) == []


@pytest.mark.parametrize(
    "spoof",
    [{"arp_spa": "10.128.1.3"}, {"arp_sha": STRANGER_MAC}, {"eth_src": STRANGER_MAC}],
    ids=["spa", "sha", "eth_src"],
)
def test_spoofed_arp_from_a_container_is_dropped(lab: Lab, spoof: Packet) -> None:
    honest = arp_request(lab.a.mac, lab.a.address, lab.b.address)
    assert simulate(lab.state(), lab.port(lab.a), honest) != []  # the control
    assert simulate(lab.state(), lab.port(lab.a), {**honest, **spoof}) == []


def test_a_container_sending_with_another_ports_identity_is_dropped(lab: Lab) -> None:
    as_b = ipv4(lab.b, lab.net1.gateway_mac, "1.1.1.1")
    assert simulate(lab.state(), lab.port(lab.a), as_b) == []


def test_containers_of_different_networks_cannot_reach_each_other(lab: Lab) -> None:
    to_c = ipv4(lab.a, lab.c.mac, lab.c.address)
    assert simulate(lab.state(), lab.port(lab.a), to_c) == []
    to_gateway2 = ipv4(lab.a, lab.net2.gateway_mac, lab.net2.gateway)
    assert simulate(lab.state(), lab.port(lab.a), to_gateway2) == []


def test_the_same_mac_in_two_networks_is_kept_apart() -> None:
    net1, net2 = network(1), network(2)
    a = endpoint(net1, 2, mac="02:00:00:00:00:aa")
    c = endpoint(net2, 2, mac="02:00:00:00:00:aa")
    b = endpoint(net1, 3)
    ports = {a.port_name: 2, b.port_name: 3, c.port_name: 5}
    state = compute_bridge([net1, net2], [a, b, c], ports)
    assert simulate(state, 3, ipv4(b, a.mac, a.address)) == [(2, ipv4(b, a.mac, a.address))]


# ---- ports not (yet) on the bridge ---------------------------------------------------


def test_endpoint_without_a_port_gets_nothing(lab: Lab) -> None:
    ports = {k: v for k, v in lab.ports.items() if k != lab.b.port_name}
    state = lab.state(ports)
    b_cookie = cookie(CookieKind.ENDPOINT, lab.b.id)
    assert not [f for f in state.flows if f.cookie == b_cookie]
    assert simulate(state, lab.port(lab.a), ipv4(lab.a, lab.b.mac, lab.b.address)) == []
    request = arp_request(lab.a.mac, lab.a.address, lab.b.address)
    assert out_ports(simulate(state, lab.port(lab.a), request)) == [lab.port(lab.net1)]
    # the rest of its network works
    to_gateway = ipv4(lab.a, lab.net1.gateway_mac, "1.1.1.1")
    assert out_ports(simulate(state, lab.port(lab.a), to_gateway)) == [lab.port(lab.net1)]
    buckets = state.groups_by_id()[lab.net1.key].buckets
    assert buckets == ((Output(lab.port(lab.net1)),), (Output(lab.port(lab.a)),))


def test_network_without_its_gateway_port_still_serves_its_containers(lab: Lab) -> None:
    ports = {k: v for k, v in lab.ports.items() if k != names.gateway_port(lab.net1.id)}
    state = lab.state(ports)
    packet = ipv4(lab.a, lab.b.mac, lab.b.address)
    assert simulate(state, lab.port(lab.a), packet) == [(lab.port(lab.b), packet)]
    broadcast = ipv4(lab.a, BROADCAST, "10.128.1.255")
    assert out_ports(simulate(state, lab.port(lab.a), broadcast)) == [lab.port(lab.b)]
    request = arp_request(lab.a.mac, lab.a.address, lab.net1.gateway)
    assert out_ports(simulate(state, lab.port(lab.a), request)) == [lab.port(lab.b)]


def test_network_with_no_port_has_no_group_and_no_flood_flow(lab: Lab) -> None:
    state = compute_bridge(lab.networks, lab.endpoints, {})
    assert state.groups == frozenset()
    assert not [a for f in state.flows for a in f.actions if isinstance(a, GroupAction)]
    # only the table-miss flows: one per table
    assert sorted(f.table for f in state.flows if f.priority == 0) == sorted(Table)
    assert len(state.flows) == len(Table)


def test_endpoint_of_an_unlisted_network_gets_nothing(lab: Lab) -> None:
    state = compute_bridge([lab.net1], lab.endpoints, lab.ports)
    packet = ipv4(lab.c, lab.d.mac, lab.d.address)
    assert simulate(state, lab.port(lab.c), packet) == []
    c_cookie = cookie(CookieKind.ENDPOINT, lab.c.id)
    assert not [f for f in state.flows if f.cookie == c_cookie]


# ---- models --------------------------------------------------------------------------


@pytest.mark.parametrize("model", list(NetworkModel))
def test_every_model_serves_its_local_ports(model: NetworkModel) -> None:
    net = network(3, model)
    a, b = endpoint(net, 2), endpoint(net, 3)
    ports = {a.port_name: 10, b.port_name: 11, names.gateway_port(net.id): 12}
    state = compute_bridge([net], [a, b], ports)
    packet = ipv4(a, b.mac, b.address)
    assert simulate(state, 10, packet) == [(11, packet)]
    assert out_ports(simulate(state, 10, ipv4(a, BROADCAST, "10.128.3.255"))) == [11, 12]


# ---- the state as values -------------------------------------------------------------


def test_every_flow_passes_its_tables_declaration(lab: Lab) -> None:
    state = lab.state()
    for flow in state.flows:
        assert check_flow(flow) is flow
    groups = state.groups_by_id()
    for flow in state.flows:
        for action in flow.actions:
            if isinstance(action, GroupAction):
                assert action.group_id in groups


def test_cookies_name_the_owner(lab: Lab) -> None:
    state = lab.state()
    kinds = {cookie_kind(f.cookie) for f in state.flows}
    assert kinds == {CookieKind.BASE, CookieKind.NETWORK, CookieKind.ENDPOINT}
    for flow in state.flows:
        if flow.priority == 0:
            assert cookie_kind(flow.cookie) == CookieKind.BASE
    a_flows = {f for f in state.flows if f.cookie == cookie(CookieKind.ENDPOINT, lab.a.id)}
    assert len(a_flows) == 5
    # removing an endpoint removes exactly the flows that carry its cookie
    without_a = compute_bridge(lab.networks, [lab.b, lab.c, lab.d], lab.ports)
    assert state.flows - without_a.flows == a_flows
    assert without_a.flows - state.flows == frozenset()


def test_matches_use_lowercase_macs() -> None:
    net = network(4)
    a = endpoint(net, 2, mac="02:AB:CD:00:00:01")
    state = compute_bridge([net], [a], {a.port_name: 3})
    macs = {
        v
        for f in state.flows
        for name, v in f.match
        if name in ("eth_src", "eth_dst", "arp_sha") and isinstance(v, str)
    }
    assert "02:ab:cd:00:00:01" in macs
    assert macs == {m.lower() for m in macs}


def test_flood_buckets_are_by_port_number_whatever_the_gateway_port() -> None:
    net = network(5)
    a, b = endpoint(net, 2), endpoint(net, 3)
    ports = {b.port_name: 3, a.port_name: 8, names.gateway_port(net.id): 20}
    [group] = compute_bridge([net], [b, a], ports).groups
    assert group.buckets == ((Output(3),), (Output(8),), (Output(20),))


def test_output_is_deterministic_whatever_the_input_order(lab: Lab) -> None:
    expected = lab.state()
    rng = random.Random(7)
    for _ in range(5):
        networks, endpoints, items = lab.networks, lab.endpoints, list(lab.ports.items())
        rng.shuffle(networks)
        rng.shuffle(endpoints)
        rng.shuffle(items)
        assert compute_bridge(networks, endpoints, dict(items)) == expected


def _count(networks: int, endpoints_per_network: int) -> int:
    nets = [network(k) for k in range(1, networks + 1)]
    eps = [endpoint(n, h) for n in nets for h in range(2, 2 + endpoints_per_network)]
    ports: dict[str, int] = {}
    for n in nets:
        ports[names.gateway_port(n.id)] = len(ports) + 1
    for e in eps:
        ports[e.port_name] = len(ports) + 1
    state = compute_bridge(nets, eps, ports)
    assert sum(len(g.buckets) for g in state.groups) == len(eps) + len(nets)
    return len(state.flows)


def test_flow_count_is_linear_in_endpoints() -> None:
    base = _count(0, 0)
    per_network = _count(1, 0) - base
    per_endpoint = _count(1, 1) - _count(1, 0)
    assert (base, per_network, per_endpoint) == (len(Table), 5, 5)
    for networks in (1, 2, 5):
        for n in (0, 1, 7, 40):
            assert _count(networks, n) == base + networks * (per_network + n * per_endpoint)


# ---- refused states ------------------------------------------------------------------


def test_two_endpoints_with_one_mac_in_a_network_conflict() -> None:
    net = network(1)
    a = endpoint(net, 2, mac="02:00:00:00:00:aa")
    b = endpoint(net, 3, mac="02:00:00:00:00:aa")
    with pytest.raises(Conflict, match=f"endpoint ({a.id}|{b.id})"):
        compute_bridge([net], [a, b], {a.port_name: 2, b.port_name: 3})


def test_two_networks_with_one_key_conflict() -> None:
    net1 = network(1)
    net1b = net1.model_copy(
        update={
            "id": "ff" * 32,
            "subnet": "10.200.0.0/24",
            "gateway": "10.200.0.1",
            "gateway_mac": names.gateway_mac(99),
        }
    )
    with pytest.raises(Conflict, match="group 1"):
        compute_bridge(
            [net1, net1b],
            [],
            {names.gateway_port(net1.id): 1, names.gateway_port(net1b.id): 2},
        )


@pytest.mark.parametrize("key", [-1, 1 << 24])
def test_a_key_outside_the_metadata_bits_is_refused(key: int) -> None:
    net = network(1).model_copy(update={"key": key})
    with pytest.raises(ValueError, match="key"):
        compute_bridge([net], [], {})


def test_flows_hold_plain_ints_as_the_switch_reports_them(lab: Lab) -> None:
    for flow in lab.state().flows:
        assert type(flow.table) is int
        assert flow.goto is None or type(flow.goto) is int
