"""IPAM decisions: pure functions from the current pools and allocations to a decision.

Nothing here reads or writes the store: ``qingluan.controller.services`` loads
the state, asks one of these functions, and stores what it returns, all in one
transaction. A refusal is a ``qingluan.errors`` exception whose message names
the values involved; Docker shows it after ``Error response from daemon:``.

The rules (docs/architecture.md, "IPAM"):

- A pool is one subnet for one network, named by the address pool the user
  chose (``--ipam-opt pool=nat``). Without ``--subnet`` the subnet is carved
  from the pool's range: the lowest ``/24`` that overlaps no other qingluan
  pool. A ``--subnet`` is used as given when it overlaps no other pool; the
  exact subnet of an existing pool of the same name is that pool again (replay).
- The gateway is kept on the pool; every other address is an ``Allocation``:
  with the MAC Docker sent (an endpoint) or without one (an ``--aux-address``).
  A request for an address its MAC already holds is the same allocation;
  with another MAC (or none) it is "already in use".
- A pool bound to a network keeps its gateway and aux addresses, and the pool
  itself, when Docker releases them: that is Docker's rollback of a refused
  second ``docker network create`` of the same subnet, and it must leave the
  first network intact.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from qingluan.api_schema import AddressRequest, PoolRequest
from qingluan.controller.pipeline.flow import NETWORK_KEY_MAX
from qingluan.errors import Conflict, Exhausted, InvalidRequest
from qingluan.model import Allocation, AllocationKind, Endpoint, Network, NetworkModel, Pool

# Models whose networks may span hosts: one network per host, all on one pool
# (one subnet, so addresses stay unique on the shared segment).
SHARED_MODELS = frozenset({NetworkModel.FLAT, NetworkModel.VLAN, NetworkModel.VXLAN})

_SEGMENT_LABEL = {NetworkModel.VLAN: "VLAN id", NetworkModel.VXLAN: "VNI"}


@dataclass(frozen=True)
class PoolDecision:
    pool: Pool
    created: bool


@dataclass(frozen=True)
class AddressDecision:
    """The address Docker gets (``ip/len``) and what to store for it."""

    address: str
    pool: Pool
    allocation: Allocation | None
    created: bool
    pool_changed: bool = False


@dataclass(frozen=True)
class ReleaseDecision:
    """``pool``: store this changed pool; ``remove``: delete this allocation."""

    pool: Pool | None = None
    remove: Allocation | None = None


def pool_id(name: str, subnet: IPv4Network | str) -> str:
    """``<pool name>_<network address>_<prefix>``, e.g. ``nat_10.128.0.0_24``."""
    net = IPv4Network(subnet)
    return f"{name}_{net.network_address}_{net.prefixlen}"


def network_label(network: Network) -> str:
    """How a message names a network: its Docker name if known, and its short id."""
    short = network.id[:12]
    return f"{network.name} ({short})" if network.name else short


def ipv6_refused() -> InvalidRequest:
    """The error for an IPv6 pool request (``docker network create --ipv6``)."""
    return InvalidRequest(
        "qingluan does not support IPv6: create the network without --ipv6 "
        "(qingluan pools are IPv4 only)"
    )


def with_prefix(pool: Pool, address: str) -> str:
    """``address/len`` with the prefix length of the pool's subnet, as Docker wants it."""
    return f"{address}/{IPv4Network(pool.subnet).prefixlen}"


def parse_address(text: str) -> IPv4Address:
    """An IPv4 address given as ``a.b.c.d`` or ``a.b.c.d/len``."""
    try:
        return IPv4Address(text.split("/", 1)[0])
    except ValueError:
        raise InvalidRequest(f"{text!r} is not an IPv4 address") from None


# ---- pools -------------------------------------------------------------------


def _overlap_message(subnet: IPv4Network, pool: Pool, networks: Sequence[Network]) -> str:
    bound = [n for n in networks if n.pool_id == pool.id]
    if bound:
        names = ", ".join(network_label(n) for n in bound)
        return f"subnet {subnet} overlaps subnet {pool.subnet} of network {names}"
    return f"subnet {subnet} overlaps subnet {pool.subnet} of address pool {pool.id}"


def request_pool(
    request: PoolRequest,
    pools: Sequence[Pool],
    ranges: Mapping[str, str | None],
    *,
    networks: Sequence[Network] = (),
    carve_prefix: int = 24,
) -> PoolDecision:
    """RequestPool: the pool for a ``--subnet`` or a subnet carved from a named range.

    ``networks`` only improve the message of an overlap (which network holds it).
    """
    if request.pool not in ranges:
        known = ", ".join(sorted(ranges))
        raise InvalidRequest(f"unknown address pool {request.pool!r}: known pools are {known}")
    if request.subnet is not None:
        return _pool_for_subnet(request, IPv4Network(request.subnet), pools, networks)

    vni = request.options.get("vni")
    if vni:
        # The same VLAN/VNI on another host is the same segment: the same subnet.
        for pool in sorted(pools, key=lambda p: p.id):
            if pool.name == request.pool and pool.options.get("vni") == vni:
                return PoolDecision(pool, created=False)

    cidr = ranges[request.pool]
    if cidr is None:
        raise InvalidRequest(
            f"address pool {request.pool!r} has no range to carve subnets from: "
            "give the network a --subnet (e.g. --subnet 192.168.1.0/24)"
        )
    subnet = _carve(IPv4Network(cidr), [IPv4Network(p.subnet) for p in pools], carve_prefix)
    if subnet is None:
        raise Exhausted(
            f"address pool {request.pool} ({cidr}) has no free /{carve_prefix} subnet left"
        )
    pool = Pool(
        id=pool_id(request.pool, subnet),
        name=request.pool,
        subnet=str(subnet),
        user_subnet=False,
        options=dict(request.options),
    )
    return PoolDecision(pool, created=True)


def _pool_for_subnet(
    request: PoolRequest,
    subnet: IPv4Network,
    pools: Sequence[Pool],
    networks: Sequence[Network],
) -> PoolDecision:
    for pool in pools:
        existing = IPv4Network(pool.subnet)
        if not existing.overlaps(subnet):
            continue
        if existing == subnet and pool.name == request.pool:
            if pool.ip_range != request.ip_range:
                raise Conflict(
                    f"subnet {subnet} is already address pool {pool.id} with ip-range "
                    f"{pool.ip_range or '(none)'}, not {request.ip_range or '(none)'}"
                )
            return PoolDecision(pool, created=False)
        raise Conflict(_overlap_message(subnet, pool, networks))
    pool = Pool(
        id=pool_id(request.pool, subnet),
        name=request.pool,
        subnet=str(subnet),
        ip_range=request.ip_range,
        user_subnet=True,
        options=dict(request.options),
    )
    return PoolDecision(pool, created=True)


def _carve(cidr: IPv4Network, used: Sequence[IPv4Network], prefix: int) -> IPv4Network | None:
    """The lowest ``/prefix`` subnet of ``cidr`` that overlaps none of ``used``."""
    if cidr.prefixlen > prefix:
        return None
    inside = sorted((u for u in used if u.overlaps(cidr)), key=lambda u: int(u.network_address))
    size = 1 << (32 - prefix)
    candidate = int(cidr.network_address)
    end = int(cidr.broadcast_address)
    for block in inside:
        lo, hi = int(block.network_address), int(block.broadcast_address)
        if candidate + size - 1 < lo:
            break
        if hi >= candidate:
            # jump past the used block, to the next aligned candidate
            candidate = ((hi + 1 + size - 1) // size) * size
    if candidate + size - 1 > end:
        return None
    return IPv4Network((candidate, prefix))


def release_pool(pool: Pool, *, bound: bool) -> bool:
    """ReleasePool: True if the pool (and its allocations) go; a bound pool stays."""
    return not bound


# ---- addresses ---------------------------------------------------------------


def _usable(subnet: IPv4Network, text: str, what: str) -> IPv4Address:
    addr = parse_address(text)
    if addr not in subnet:
        raise InvalidRequest(f"{what} {addr} is not inside subnet {subnet}")
    if addr == subnet.network_address:
        raise InvalidRequest(f"{what} {addr} is the network address of subnet {subnet}")
    if addr == subnet.broadcast_address:
        raise InvalidRequest(f"{what} {addr} is the broadcast address of subnet {subnet}")
    return addr


def _same(pool: Pool, address: str) -> AddressDecision:
    return AddressDecision(with_prefix(pool, address), pool, None, created=False)


def request_address(
    pool: Pool, allocations: Sequence[Allocation], request: AddressRequest
) -> AddressDecision:
    """RequestAddress: the gateway, a given address, or the lowest free one."""
    subnet = IPv4Network(pool.subnet)
    taken = {a.address: a for a in allocations if a.pool_id == pool.id}
    if request.gateway:
        return _request_gateway(pool, subnet, taken, request.address)

    if request.address is not None:
        addr = str(_usable(subnet, request.address, "address"))
        if addr == pool.gateway:
            raise Conflict(f"address {addr} is already in use: it is the gateway of {subnet}")
        held = taken.get(addr)
        if held is not None:
            if held.mac == request.mac:
                return _same(pool, addr)  # replay, or a repeated --aux-address
            raise Conflict(f"address {addr} is already in use in subnet {subnet}")
        return _allocate(pool, addr, request.mac)

    if request.mac is not None:
        mine = sorted(
            (a for a in taken.values() if a.mac == request.mac),
            key=lambda a: int(IPv4Address(a.address)),
        )
        if mine:
            return _same(pool, mine[0].address)
    scope = IPv4Network(pool.ip_range) if pool.ip_range else subnet
    skip = {int(IPv4Address(a)) for a in taken}
    skip.update((int(subnet.network_address), int(subnet.broadcast_address)))
    if pool.gateway is not None:
        skip.add(int(IPv4Address(pool.gateway)))
    free = _lowest_free(scope, skip)
    if free is None:
        where = f"ip-range {scope}" if pool.ip_range else f"subnet {subnet}"
        raise Exhausted(f"address pool {pool.id} has no free address left in {where}")
    return _allocate(pool, str(free), request.mac)


def _request_gateway(
    pool: Pool, subnet: IPv4Network, taken: Mapping[str, Allocation], given: str | None
) -> AddressDecision:
    if given is not None:
        addr = str(_usable(subnet, given, "gateway"))
        if pool.gateway is not None:
            if pool.gateway == addr:
                return _same(pool, addr)
            raise Conflict(
                f"subnet {subnet} already has gateway {pool.gateway}, "
                f"so {addr} cannot be its gateway (address pool {pool.id})"
            )
        if addr in taken:
            raise Conflict(f"gateway {addr} is already in use in subnet {subnet}")
    else:
        if pool.gateway is not None:
            return _same(pool, pool.gateway)
        skip = {int(IPv4Address(a)) for a in taken}
        skip.update((int(subnet.network_address), int(subnet.broadcast_address)))
        free = _lowest_free(subnet, skip)
        if free is None:
            raise Exhausted(f"address pool {pool.id} has no free address left for a gateway")
        addr = str(free)
    changed = pool.model_copy(update={"gateway": addr})
    return AddressDecision(with_prefix(pool, addr), changed, None, created=True, pool_changed=True)


def _allocate(pool: Pool, address: str, mac: str | None) -> AddressDecision:
    allocation = Allocation(
        pool_id=pool.id,
        address=address,
        kind=AllocationKind.ENDPOINT if mac is not None else AllocationKind.AUX,
        mac=mac,
    )
    return AddressDecision(with_prefix(pool, address), pool, allocation, created=True)


def _lowest_free(scope: IPv4Network, skip: set[int]) -> IPv4Address | None:
    for value in range(int(scope.network_address), int(scope.broadcast_address) + 1):
        if value not in skip:
            return IPv4Address(value)
    return None


def release_address(
    pool: Pool, allocations: Sequence[Allocation], address: str, *, bound: bool
) -> ReleaseDecision:
    """ReleaseAddress: unknown addresses are fine; a bound pool keeps gateway and aux."""
    addr = str(parse_address(address))
    if addr == pool.gateway:
        return (
            ReleaseDecision()
            if bound
            else ReleaseDecision(pool=pool.model_copy(update={"gateway": None}))
        )
    for allocation in allocations:
        if allocation.pool_id == pool.id and allocation.address == addr:
            if bound and allocation.kind is AllocationKind.AUX:
                return ReleaseDecision()
            return ReleaseDecision(remove=allocation)
    return ReleaseDecision()


# ---- networks and endpoints --------------------------------------------------


def pool_gateway(pool: Pool) -> str:
    """The gateway a network on this pool uses; a pool without one cannot have a network."""
    if pool.gateway is None:
        raise InvalidRequest(
            f"address pool {pool.id} has no gateway: request the gateway address first"
        )
    return pool.gateway


def check_network(network: Network, pool: Pool, networks: Sequence[Network]) -> None:
    """Refuse a new network that would collide with the ones in ``networks``.

    A pool serves one network, except that a flat, vlan or vxlan network may
    exist once per host on one pool (the same segment across hosts). A VLAN id
    or VNI names one network per host, and the same subnet on every host.
    """
    others = [n for n in networks if n.id != network.id]
    uplink = network.options.get("uplink")
    if network.model is NetworkModel.FLAT and uplink:
        for other in others:
            if (
                other.model is NetworkModel.FLAT
                and other.host == network.host
                and other.options.get("uplink") == uplink
            ):
                raise Conflict(
                    f"host {network.host} already has flat network {network_label(other)} "
                    f"on {uplink}: untagged traffic of one NIC is one network "
                    "(use another NIC, or a vlan network)"
                )
    label = _SEGMENT_LABEL.get(network.model)
    pool_vni = pool.options.get("vni", "").strip()
    if label is not None and pool_vni and pool_vni != str(network.vni):
        raise InvalidRequest(
            f"--ipam-opt vni={pool_vni} and --opt vni={network.vni} differ: "
            f"give the network's {label} to both"
        )
    if label is not None and network.vni is not None:
        for other in others:
            if other.model is not network.model or other.vni != network.vni:
                continue
            if other.host == network.host:
                raise Conflict(
                    f"{label} {network.vni} is already network {network_label(other)} "
                    f"on host {other.host}"
                )
            if other.pool_id != network.pool_id:
                raise Conflict(
                    f"{label} {network.vni} is network {network_label(other)} with subnet "
                    f"{other.subnet} on host {other.host}: use the same subnet "
                    f"(--subnet {other.subnet})"
                )
    for other in others:
        if other.pool_id != pool.id:
            continue
        shared = (
            network.model in SHARED_MODELS
            and other.model is network.model
            and other.vni == network.vni
            and other.host != network.host
        )
        if not shared:
            raise Conflict(f"subnet {pool.subnet} overlaps network {network_label(other)}")


def bind_pool(pool: Pool, network_id: str) -> Pool:
    """The pool with ``network_id`` recorded, unless it already names a network."""
    if pool.network_id is not None:
        return pool
    return pool.model_copy(update={"network_id": network_id})


def unbind_pool(pool: Pool, network_id: str, remaining: Sequence[Network]) -> Pool:
    """The pool after ``network_id`` went; it names another network that still uses it."""
    if pool.network_id != network_id:
        return pool
    left = sorted(n.id for n in remaining if n.pool_id == pool.id and n.id != network_id)
    return pool.model_copy(update={"network_id": left[0] if left else None})


def next_network_key(used: Iterable[int], *, maximum: int = NETWORK_KEY_MAX) -> int:
    """The smallest network key >= 1 that no network holds."""
    taken = set(used)
    for key in range(1, maximum + 1):
        if key not in taken:
            return key
    raise Exhausted(f"no free network key: all {maximum} are in use")


def check_endpoint(endpoint: Endpoint, network: Network, endpoints: Sequence[Endpoint]) -> None:
    """Refuse an endpoint on the wrong host, or whose MAC/address another one holds."""
    if endpoint.host != network.host:
        raise InvalidRequest(
            f"network {network_label(network)} is on host {network.host}, not {endpoint.host}"
        )
    for other in endpoints:
        if other.id == endpoint.id or other.network_id != network.id:
            continue
        if other.address == endpoint.address:
            raise Conflict(
                f"address {endpoint.address} is already in use by endpoint {other.id[:12]} "
                f"in network {network_label(network)}"
            )
        if other.mac == endpoint.mac:
            raise Conflict(
                f"MAC address {endpoint.mac} is already in use by endpoint {other.id[:12]} "
                f"in network {network_label(network)}"
            )
