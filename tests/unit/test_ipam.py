"""Pure IPAM decisions: pools, gateways, addresses, network keys, bindings."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pytest

from qingluan.api_schema import AddressRequest, PoolRequest
from qingluan.controller import ipam
from qingluan.controller.config import DEFAULT_POOL_RANGES
from qingluan.errors import Conflict, Exhausted, InvalidRequest
from qingluan.model import (
    Allocation,
    AllocationKind,
    Endpoint,
    Network,
    NetworkModel,
    Pool,
)

MAC_A = "02:42:ac:11:00:0a"
MAC_B = "02:42:ac:11:00:0b"


@dataclass
class State:
    """Applies decisions the way the services do, without a store."""

    pools: dict[str, Pool] = field(default_factory=dict)
    allocations: list[Allocation] = field(default_factory=list)

    def pool(self, name: str, subnet: str | None = None, **kw: object) -> ipam.PoolDecision:
        request = PoolRequest(pool=name, subnet=subnet, **kw)
        decision = ipam.request_pool(request, list(self.pools.values()), DEFAULT_POOL_RANGES)
        if decision.created:
            self.pools[decision.pool.id] = decision.pool
        return decision

    def address(
        self, pool_id: str, address: str | None = None, mac: str | None = None, gw: bool = False
    ) -> ipam.AddressDecision:
        request = AddressRequest(address=address, mac=mac, gateway=gw)
        decision = ipam.request_address(self.pools[pool_id], self.allocations, request)
        self.pools[pool_id] = decision.pool
        if decision.allocation is not None:
            self.allocations.append(decision.allocation)
        return decision

    def release(self, pool_id: str, address: str, bound: bool) -> None:
        decision = ipam.release_address(self.pools[pool_id], self.allocations, address, bound=bound)
        if decision.pool is not None:
            self.pools[pool_id] = decision.pool
        if decision.remove is not None:
            self.allocations.remove(decision.remove)


def network(
    nid: str,
    pool: Pool,
    *,
    host: str = "h1",
    model: NetworkModel = NetworkModel.NAT,
    vni: int | None = None,
    key: int = 1,
    name: str | None = None,
) -> Network:
    return Network(
        id=nid,
        key=key,
        host=host,
        model=model,
        pool_id=pool.id,
        subnet=pool.subnet,
        gateway=pool.gateway or "0.0.0.0",
        gateway_mac="52:4c:00:00:00:01",
        vni=vni,
        name=name,
    )


# ---- pools -------------------------------------------------------------------


def test_pool_nat_carves_first_24_of_its_range() -> None:
    d = State().pool("nat")
    assert d.created
    assert d.pool.subnet == "10.128.0.0/24"
    assert d.pool.id == "nat_10.128.0.0_24"
    assert not d.pool.user_subnet


@pytest.mark.parametrize(
    ("name", "subnet"),
    [("nonat", "10.129.0.0/24"), ("vlan", "10.130.0.0/24"), ("vxlan", "10.131.0.0/24")],
)
def test_default_ranges(name: str, subnet: str) -> None:
    assert State().pool(name).pool.subnet == subnet


def test_carving_skips_used_subnets() -> None:
    s = State()
    assert s.pool("nat").pool.subnet == "10.128.0.0/24"
    assert s.pool("nat").pool.subnet == "10.128.1.0/24"
    # a user subnet of another pool inside nat's range is skipped too
    assert s.pool("nonat", "10.128.2.0/23").pool.subnet == "10.128.2.0/23"
    assert s.pool("nat").pool.subnet == "10.128.4.0/24"
    assert s.pool("nat", "10.128.6.0/25").created
    assert s.pool("nat").pool.subnet == "10.128.5.0/24"
    assert s.pool("nat").pool.subnet == "10.128.7.0/24"  # 10.128.6.0/24 is half used


def test_carving_fills_a_gap_left_by_a_release() -> None:
    s = State()
    for _ in range(3):
        s.pool("nat")
    del s.pools["nat_10.128.1.0_24"]
    assert s.pool("nat").pool.subnet == "10.128.1.0/24"


def test_carving_exhausted_names_the_pool() -> None:
    ranges = {"tiny": "10.200.0.0/23"}
    pools: list[Pool] = []
    for _ in range(2):
        d = ipam.request_pool(PoolRequest(pool="tiny"), pools, ranges)
        pools.append(d.pool)
    with pytest.raises(Exhausted, match=r"address pool tiny \(10.200.0.0/23\) has no free /24"):
        ipam.request_pool(PoolRequest(pool="tiny"), pools, ranges)


def test_unknown_pool_lists_known_names() -> None:
    with pytest.raises(InvalidRequest) as err:
        State().pool("bogus")
    assert str(err.value) == (
        "unknown address pool 'bogus': known pools are flat, nat, nonat, vlan, vxlan"
    )


def test_flat_needs_a_subnet() -> None:
    with pytest.raises(InvalidRequest, match="--subnet"):
        State().pool("flat")
    assert State().pool("flat", "192.168.50.0/24").pool.id == "flat_192.168.50.0_24"


def test_pool_nat_with_user_subnet() -> None:
    d = State().pool("nat", "192.168.2.0/24")
    assert d.pool.id == "nat_192.168.2.0_24"
    assert d.pool.subnet == "192.168.2.0/24"
    assert d.pool.user_subnet


def test_pool_nonat_with_user_subnet() -> None:
    d = State().pool("nonat", "192.168.1.0/24")
    assert (d.pool.id, d.pool.name, d.created) == ("nonat_192.168.1.0_24", "nonat", True)


def test_overlapping_subnet_refused_naming_it() -> None:
    s = State()
    s.pool("nonat", "192.168.1.0/24")
    with pytest.raises(Conflict) as err:
        s.pool("nat", "192.168.0.0/16")
    assert "192.168.0.0/16 overlaps subnet 192.168.1.0/24" in str(err.value)
    assert "nonat_192.168.1.0_24" in str(err.value)


def test_overlap_message_names_the_bound_network() -> None:
    pool = State().pool("nat", "192.168.1.0/24").pool.model_copy(update={"gateway": "192.168.1.1"})
    net = network("3f2a1b4c5d6e7f80", pool, name="web")
    with pytest.raises(Conflict, match=r"of network web \(3f2a1b4c5d6e\)"):
        ipam.request_pool(
            PoolRequest(pool="nat", subnet="192.168.1.128/25"),
            [pool],
            DEFAULT_POOL_RANGES,
            networks=[net],
        )


def test_same_subnet_same_name_is_the_same_pool() -> None:
    s = State()
    first = s.pool("nat", "192.168.2.0/24")
    again = s.pool("nat", "192.168.2.0/24")
    assert not again.created
    assert again.pool == first.pool
    assert len(s.pools) == 1


def test_same_subnet_other_name_conflicts() -> None:
    s = State()
    s.pool("nat", "192.168.2.0/24")
    with pytest.raises(Conflict, match="overlaps"):
        s.pool("nonat", "192.168.2.0/24")


def test_same_subnet_other_ip_range_conflicts() -> None:
    s = State()
    s.pool("nat", "192.168.2.0/24", ip_range="192.168.2.0/25")
    assert not s.pool("nat", "192.168.2.0/24", ip_range="192.168.2.0/25").created
    with pytest.raises(Conflict, match=re.escape("ip-range 192.168.2.0/25")):
        s.pool("nat", "192.168.2.0/24")


def test_replay_of_a_carved_pool_is_the_same_pool() -> None:
    s = State()
    carved = s.pool("nat").pool
    again = s.pool("nat", carved.subnet)
    assert not again.created and again.pool.id == carved.id


def test_pool_with_vni_is_shared_across_requests() -> None:
    s = State()
    first = s.pool("vlan", options={"pool": "vlan", "vni": "100"})
    again = s.pool("vlan", options={"pool": "vlan", "vni": "100"})
    other = s.pool("vlan", options={"pool": "vlan", "vni": "101"})
    assert not again.created and again.pool.id == first.pool.id
    assert other.created and other.pool.subnet == "10.130.1.0/24"


# ---- gateway -----------------------------------------------------------------


def test_gateway_given() -> None:
    s = State()
    pid = s.pool("nat", "192.168.2.0/24").pool.id
    d = s.address(pid, "192.168.2.1", gw=True)
    assert d.address == "192.168.2.1/24" and d.created
    assert s.pools[pid].gateway == "192.168.2.1"
    assert s.allocations == []  # the gateway lives on the pool


def test_gateway_defaults_to_first_host_address() -> None:
    s = State()
    pid = s.pool("nat").pool.id
    assert s.address(pid, gw=True).address == "10.128.0.1/24"


@pytest.mark.parametrize(
    ("gateway", "message"),
    [
        ("192.168.3.1", "gateway 192.168.3.1 is not inside subnet 192.168.2.0/24"),
        ("192.168.2.0", "gateway 192.168.2.0 is the network address of subnet 192.168.2.0/24"),
        ("192.168.2.255", "gateway 192.168.2.255 is the broadcast address of subnet"),
    ],
)
def test_gateway_must_be_a_host_address_of_the_subnet(gateway: str, message: str) -> None:
    s = State()
    pid = s.pool("nat", "192.168.2.0/24").pool.id
    with pytest.raises(InvalidRequest, match=message):
        s.address(pid, gateway, gw=True)
    assert s.pools[pid].gateway is None


def test_gateway_replay_and_other_gateway() -> None:
    s = State()
    pid = s.pool("nat", "192.168.2.0/24").pool.id
    s.address(pid, "192.168.2.1", gw=True)
    again = s.address(pid, "192.168.2.1", gw=True)
    assert not again.created and again.address == "192.168.2.1/24"
    assert not s.address(pid, gw=True).created  # dynamic gateway request: the same one
    with pytest.raises(Conflict, match=re.escape("already has gateway 192.168.2.1")):
        s.address(pid, "192.168.2.254", gw=True)


def test_gateway_on_an_aux_address_conflicts() -> None:
    s = State()
    pid = s.pool("nat", "192.168.2.0/24").pool.id
    s.address(pid, "192.168.2.1")
    with pytest.raises(Conflict, match="already in use"):
        s.address(pid, "192.168.2.1", gw=True)
    assert s.address(pid, gw=True).address == "192.168.2.2/24"


# ---- addresses ---------------------------------------------------------------


def gw_pool(s: State, subnet: str = "192.168.2.0/24", gateway: str = "192.168.2.1") -> str:
    pid = s.pool("nat", subnet).pool.id
    s.address(pid, gateway, gw=True)
    return pid


def test_dynamic_address_is_lowest_free_skipping_gateway() -> None:
    s = State()
    pid = gw_pool(s)
    assert s.address(pid, mac=MAC_A).address == "192.168.2.2/24"
    assert s.address(pid, mac=MAC_B).address == "192.168.2.3/24"
    assert s.allocations[0].kind is AllocationKind.ENDPOINT
    assert s.allocations[0].mac == MAC_A


def test_dynamic_address_skips_a_gateway_in_the_middle() -> None:
    s = State()
    pid = gw_pool(s, gateway="192.168.2.2")
    assert s.address(pid, mac=MAC_A).address == "192.168.2.1/24"
    assert s.address(pid, mac=MAC_B).address == "192.168.2.3/24"


def test_same_mac_gets_the_same_address() -> None:
    s = State()
    pid = gw_pool(s)
    first = s.address(pid, mac=MAC_A)
    again = s.address(pid, mac=MAC_A)
    replay = s.address(pid, "192.168.2.2", mac=MAC_A)
    assert not again.created and again.address == first.address
    assert not replay.created and replay.address == first.address
    assert len(s.allocations) == 1


def test_given_address_taken_by_another_mac_conflicts() -> None:
    s = State()
    pid = gw_pool(s)
    s.address(pid, "192.168.2.10", mac=MAC_A)
    with pytest.raises(Conflict, match=r"^address 192.168.2.10 is already in use"):
        s.address(pid, "192.168.2.10", mac=MAC_B)
    with pytest.raises(Conflict, match="already in use"):
        s.address(pid, "192.168.2.10")  # an aux request for it
    assert len(s.allocations) == 1


def test_given_address_is_the_gateway() -> None:
    s = State()
    pid = gw_pool(s)
    with pytest.raises(
        Conflict, match=re.escape("192.168.2.1 is already in use: it is the gateway")
    ):
        s.address(pid, "192.168.2.1", mac=MAC_A)


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("10.0.0.5", "address 10.0.0.5 is not inside subnet 192.168.2.0/24"),
        ("192.168.2.0", "network address"),
        ("192.168.2.255", "broadcast address"),
        ("not-an-ip", "'not-an-ip' is not an IPv4 address"),
    ],
)
def test_given_address_must_be_a_host_address_of_the_subnet(address: str, message: str) -> None:
    s = State()
    pid = gw_pool(s)
    with pytest.raises(InvalidRequest, match=message):
        ipam.request_address(
            s.pools[pid], s.allocations, AddressRequest.model_construct(address=address, mac=MAC_A)
        )


def test_ip_range_limits_dynamic_but_not_given_addresses() -> None:
    s = State()
    pid = s.pool("nat", "192.168.2.0/24", ip_range="192.168.2.128/30").pool.id
    s.address(pid, "192.168.2.1", gw=True)
    assert s.address(pid, mac=MAC_A).address == "192.168.2.128/24"
    assert s.address(pid, "192.168.2.50", mac=MAC_B).address == "192.168.2.50/24"
    for _ in range(3):
        s.address(pid)
    with pytest.raises(
        Exhausted, match=re.escape("no free address left in ip-range 192.168.2.128/30")
    ):
        s.address(pid)


def test_exhausted_30() -> None:
    s = State()
    pid = gw_pool(s, "192.168.9.0/30", "192.168.9.1")
    assert s.address(pid, mac=MAC_A).address == "192.168.9.2/30"
    with pytest.raises(Exhausted) as err:
        s.address(pid, mac=MAC_B)
    assert str(err.value) == (
        "address pool nat_192.168.9.0_30 has no free address left in subnet 192.168.9.0/30"
    )


def test_aux_addresses_are_kept_and_repeats_are_idempotent() -> None:
    s = State()
    pid = gw_pool(s)
    first = s.address(pid, "192.168.2.5")
    again = s.address(pid, "192.168.2.5")
    assert first.created and not again.created
    assert s.allocations == [
        Allocation(pool_id=pid, address="192.168.2.5", kind=AllocationKind.AUX, mac=None)
    ]
    with pytest.raises(Conflict, match="already in use"):
        s.address(pid, "192.168.2.5", mac=MAC_A)


# ---- release -----------------------------------------------------------------


def test_release_unknown_is_fine() -> None:
    s = State()
    pid = gw_pool(s)
    s.release(pid, "192.168.2.77", bound=False)
    assert s.pools[pid].gateway == "192.168.2.1"


def test_release_endpoint_address_accepts_a_prefix() -> None:
    s = State()
    pid = gw_pool(s)
    s.address(pid, mac=MAC_A)
    s.release(pid, "192.168.2.2/24", bound=True)
    assert s.allocations == []


def test_bound_pool_keeps_gateway_and_aux() -> None:
    s = State()
    pid = gw_pool(s)
    s.address(pid, "192.168.2.5")
    s.release(pid, "192.168.2.1", bound=True)
    s.release(pid, "192.168.2.5", bound=True)
    assert s.pools[pid].gateway == "192.168.2.1"
    assert len(s.allocations) == 1
    s.release(pid, "192.168.2.1", bound=False)
    s.release(pid, "192.168.2.5", bound=False)
    assert s.pools[pid].gateway is None
    assert s.allocations == []


def test_release_pool_only_when_unbound() -> None:
    pool = State().pool("nat").pool
    assert ipam.release_pool(pool, bound=False)
    assert not ipam.release_pool(pool, bound=True)


# ---- networks ----------------------------------------------------------------


def test_network_keys_smallest_free() -> None:
    assert ipam.next_network_key([]) == 1
    assert ipam.next_network_key([1, 2, 4]) == 3
    assert ipam.next_network_key([2, 3]) == 1
    with pytest.raises(Exhausted, match="no free network key"):
        ipam.next_network_key([1, 2, 3], maximum=3)


def gw(pool: Pool, gateway: str = "192.168.1.1") -> Pool:
    return pool.model_copy(update={"gateway": gateway})


def test_pool_without_gateway_refused() -> None:
    pool = State().pool("nat").pool
    with pytest.raises(InvalidRequest, match="has no gateway"):
        ipam.pool_gateway(pool)


def test_second_network_on_a_bound_pool_refused() -> None:
    pool = gw(State().pool("nat", "192.168.1.0/24").pool)
    first = network("a" * 64, pool, name="first")
    ipam.check_network(first, pool, [])
    ipam.check_network(first, pool, [first])  # itself is no conflict
    with pytest.raises(Conflict) as err:
        ipam.check_network(network("b" * 64, pool, key=2), pool, [first])
    assert str(err.value) == "subnet 192.168.1.0/24 overlaps network first (aaaaaaaaaaaa)"


def test_vlan_network_shares_its_pool_across_hosts() -> None:
    pool = gw(State().pool("vlan", "192.168.1.0/24").pool)
    on_a = network("a" * 64, pool, host="a", model=NetworkModel.VLAN, vni=100)
    on_b = network("b" * 64, pool, host="b", model=NetworkModel.VLAN, vni=100, key=2)
    ipam.check_network(on_b, pool, [on_a])
    again_on_a = network("c" * 64, pool, host="a", model=NetworkModel.VLAN, vni=100, key=3)
    with pytest.raises(Conflict, match="VLAN id 100 is already network aaaaaaaaaaaa on host a"):
        ipam.check_network(again_on_a, pool, [on_a, on_b])
    nat_on_b = network("d" * 64, pool, host="b", key=4)
    with pytest.raises(Conflict, match="overlaps network"):
        ipam.check_network(nat_on_b, pool, [on_a])


def test_same_vni_needs_the_same_subnet() -> None:
    s = State()
    p1 = gw(s.pool("vxlan", "192.168.1.0/24").pool)
    p2 = gw(s.pool("vxlan", "192.168.2.0/24").pool, "192.168.2.1")
    on_a = network("a" * 64, p1, host="a", model=NetworkModel.VXLAN, vni=5000)
    on_b = network("b" * 64, p2, host="b", model=NetworkModel.VXLAN, vni=5000, key=2)
    with pytest.raises(Conflict, match=r"VNI 5000 is network .* use the same subnet"):
        ipam.check_network(on_b, p2, [on_a])


def test_unbind_hands_the_pool_to_a_remaining_network() -> None:
    pool = gw(State().pool("vlan", "192.168.1.0/24").pool)
    on_a = network("a" * 64, pool, host="a", model=NetworkModel.VLAN, vni=100)
    on_b = network("b" * 64, pool, host="b", model=NetworkModel.VLAN, vni=100, key=2)
    bound = ipam.bind_pool(ipam.bind_pool(pool, on_a.id), on_b.id)
    assert bound.network_id == on_a.id
    assert ipam.unbind_pool(bound, on_a.id, [on_b]).network_id == on_b.id
    assert ipam.unbind_pool(bound, on_a.id, []).network_id is None
    assert ipam.unbind_pool(bound, on_b.id, [on_a]) == bound


def test_endpoint_checks() -> None:
    pool = gw(State().pool("nat", "192.168.1.0/24").pool)
    net = network("n" * 64, pool, name="web")

    def ep(eid: str, address: str, mac: str, host: str = "h1") -> Endpoint:
        return Endpoint(
            id=eid, network_id=net.id, host=host, mac=mac, address=address, port_name="qlv" + eid
        )

    first = ep("e1", "192.168.1.2", MAC_A)
    ipam.check_endpoint(first, net, [first])
    with pytest.raises(InvalidRequest, match=r"network web .* is on host h1, not h2"):
        ipam.check_endpoint(ep("e2", "192.168.1.3", MAC_B, host="h2"), net, [first])
    with pytest.raises(
        Conflict, match=re.escape("address 192.168.1.2 is already in use by endpoint e1")
    ):
        ipam.check_endpoint(ep("e2", "192.168.1.2", MAC_B), net, [first])
    with pytest.raises(Conflict, match="MAC address 02:42:ac:11:00:0a is already in use"):
        ipam.check_endpoint(ep("e2", "192.168.1.3", MAC_A), net, [first])


def test_ipv6_error_and_prefix() -> None:
    assert "IPv6" in str(ipam.ipv6_refused())
    assert ipam.pool_id("nat", "10.128.0.0/24") == "nat_10.128.0.0_24"


def test_ipam_vni_and_network_vni_must_agree() -> None:
    pool = gw(State().pool("vlan", options={"pool": "vlan", "vni": "100"}).pool)
    ipam.check_network(network("a" * 64, pool, model=NetworkModel.VLAN, vni=100), pool, [])
    with pytest.raises(InvalidRequest, match=r"--ipam-opt vni=100 and --opt vni=200 differ"):
        ipam.check_network(network("a" * 64, pool, model=NetworkModel.VLAN, vni=200), pool, [])
