"""The controller's use cases: load state, decide, store, converge the bridge.

Every change runs as one store transaction (load -> pure decision in
``qingluan.controller.ipam`` -> write), so two REST calls at once cannot hand
out one address or one network key twice. The bridge is converged after the
transaction, never inside it: a converge waits for a switch, and the
reconciler reads this same store (``host_state``) while it works.

Store layout (one JSON document per key)::

    hosts/<name>                      Host
    pools/<pool id>                   Pool (with its gateway)
    allocations/<pool id>/<address>   Allocation
    networks/<network id>             Network
    endpoints/<endpoint id>           Endpoint
    acls/<id>, steering/<id>, rawflows/<id>   AclRule, SteeringRule, RawFlow
    quarantines/<id>                  Quarantine (made by qingluan.controller.ids)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from pydantic import BaseModel

from qingluan import names
from qingluan.api_schema import (
    AclCreate,
    AclSelectorBody,
    AddressReply,
    AddressRequest,
    EndpointCreate,
    EndpointStatus,
    EndpointUpdate,
    FlowDump,
    HostRegistration,
    HostStatus,
    NetworkCreate,
    NetworkUpdate,
    PoolReply,
    PoolRequest,
    RawFlowCreate,
    ReconcileResult,
    Status,
    SteeringCreate,
)
from qingluan.controller import ipam
from qingluan.controller.config import (
    DEFAULT_CARVE_PREFIX,
    DEFAULT_POOL_RANGES,
    ControllerConfig,
)
from qingluan.controller.interfaces import Converger
from qingluan.controller.pipeline import Peer, Policy
from qingluan.controller.pipeline.acl import names_network
from qingluan.controller.rule_ids import claim_id, claim_priority
from qingluan.controller.store import KeyValue, Store, load, load_all
from qingluan.errors import Conflict, InvalidRequest, NotFound, QingluanError, Unavailable
from qingluan.model import (
    IDS_OPTION,
    AclRule,
    AclSelector,
    Allocation,
    Endpoint,
    Host,
    Network,
    NetworkModel,
    Pool,
    Quarantine,
    RawFlow,
    SteeringRule,
)

log = logging.getLogger(__name__)

HOSTS = "hosts/"
POOLS = "pools/"
ALLOCATIONS = "allocations/"
NETWORKS = "networks/"
ENDPOINTS = "endpoints/"
ACLS = "acls/"
STEERING = "steering/"
RAWFLOWS = "rawflows/"
QUARANTINES = "quarantines/"  # Quarantine, written by qingluan.controller.ids

DEFAULT_MTU = 1500
# A VXLAN header costs 50 bytes of a 1500-byte underlay; the driver, which
# knows the underlay, may send a better value.
DEFAULT_MTU_BY_MODEL = {NetworkModel.VXLAN: 1450}


def host_key(name: str) -> str:
    return HOSTS + name


def pool_key(pool_id: str) -> str:
    return POOLS + pool_id


def allocations_prefix(pool_id: str) -> str:
    return f"{ALLOCATIONS}{pool_id}/"


def allocation_key(pool_id: str, address: str) -> str:
    return allocations_prefix(pool_id) + address


def network_key(network_id: str) -> str:
    return NETWORKS + network_id


def acl_key(rule_id: str) -> str:
    return ACLS + rule_id


def endpoint_key(endpoint_id: str) -> str:
    return ENDPOINTS + endpoint_id


def _host_not_found(name: str) -> NotFound:
    return NotFound(f"host {name} is not registered (the driver registers it at start)")


def _short(docker_id: str) -> str:
    return docker_id[:12]


def underlay_ip(address: str) -> str:
    """A host's underlay address without a prefix length."""
    return address.split("/", 1)[0]


def tunnel_peers(
    host: str, hosts: Mapping[str, Host], networks: Sequence[Network], endpoints: Sequence[Endpoint]
) -> list[Peer]:
    """The other hosts' sides of ``host``'s vxlan networks (same VNI), with their endpoints.

    A host without an underlay address cannot be tunnelled to: it is left out.
    """
    vnis = {n.vni for n in networks if n.host == host and n.model is NetworkModel.VXLAN}
    by_network: dict[str, list[Endpoint]] = {}
    for endpoint in endpoints:
        by_network.setdefault(endpoint.network_id, []).append(endpoint)
    out: list[Peer] = []
    for network in networks:
        if network.model is not NetworkModel.VXLAN or network.host == host:
            continue
        other = hosts.get(network.host)
        if network.vni not in vnis or network.vni is None or other is None or not other.address:
            continue
        out.append(
            Peer(
                host=other.name,
                address=underlay_ip(other.address),
                vni=network.vni,
                endpoints=tuple(by_network.get(network.id, ())),
            )
        )
    return out


def tunnel_neighbours(host: str, networks: Sequence[Network]) -> list[str]:
    """Hosts that share a VNI with ``host``: their bridges tunnel to it."""
    vnis = {n.vni for n in networks if n.host == host and n.model is NetworkModel.VXLAN}
    return sorted(
        {
            n.host
            for n in networks
            if n.model is NetworkModel.VXLAN and n.vni in vnis and n.host != host
        }
    )


class StoreState:
    """``interfaces.StateSource`` read from the store: what the reconciler needs.

    Needs no converger, so the reconciler can be built before ``Services``.
    """

    def __init__(self, store: Store) -> None:
        self._store = store

    def host_by_dpid(self, dpid: int) -> Host | None:
        for host in load_all(self._store, HOSTS, Host):
            if host.dpid == dpid:
                return host
        return None

    def host_state(self, host: str) -> tuple[Host, list[Network], list[Endpoint]]:
        with self._store.transaction() as tx:
            found = load(tx, host_key(host), Host)
            if found is None:
                raise _host_not_found(host)
            networks = [n for n in load_all(tx, NETWORKS, Network) if n.host == host]
            endpoints = [e for e in load_all(tx, ENDPOINTS, Endpoint) if e.host == host]
        return found, networks, endpoints

    def policy(self) -> Policy:
        with self._store.transaction() as tx:
            rules = load_all(tx, ACLS, AclRule)
            steering = load_all(tx, STEERING, SteeringRule)
            raw = load_all(tx, RAWFLOWS, RawFlow)
            quarantines = load_all(tx, QUARANTINES, Quarantine)
            if not rules and not steering and not raw and not quarantines:
                return Policy()
            networks = load_all(tx, NETWORKS, Network)
            endpoints = load_all(tx, ENDPOINTS, Endpoint)
        return Policy(
            tuple(rules),
            tuple(networks),
            tuple(endpoints),
            tuple(steering),
            tuple(raw),
            tuple(quarantines),
        )

    def peers(self, host: str) -> list[Peer]:
        with self._store.transaction() as tx:
            hosts = {h.name: h for h in load_all(tx, HOSTS, Host)}
            networks = load_all(tx, NETWORKS, Network)
            endpoints = load_all(tx, ENDPOINTS, Endpoint)
        return tunnel_peers(host, hosts, networks, endpoints)


class Services(StoreState):
    """Hosts, IPAM, networks and endpoints over a ``Store``, converged by a ``Converger``."""

    def __init__(
        self,
        store: Store,
        converger: Converger,
        *,
        pool_ranges: Mapping[str, str | None] | None = None,
        carve_prefix: int = DEFAULT_CARVE_PREFIX,
        converge_timeout: float = 5.0,
    ) -> None:
        super().__init__(store)
        self._converger = converger
        self._ranges = dict(DEFAULT_POOL_RANGES if pool_ranges is None else pool_ranges)
        self._carve_prefix = carve_prefix
        self._timeout = converge_timeout

    @classmethod
    def from_config(cls, store: Store, converger: Converger, config: ControllerConfig) -> Services:
        return cls(
            store,
            converger,
            pool_ranges=config.pool_ranges,
            carve_prefix=config.carve_prefix,
            converge_timeout=config.converge_timeout,
        )

    # ---- converging ----------------------------------------------------------

    def _converge_soon(self, host: str) -> None:
        """Converge after a change that is already stored and need not be confirmed now.

        A bridge that is not connected gets the change when it connects (the
        reconciler converges on every connect), so ``Unavailable`` is only
        logged; a connected bridge that does not answer is an error.
        """
        try:
            self._converger.converge(host, timeout=self._timeout)
        except Unavailable as exc:
            log.info("host %s: not converged now (%s); it will be on connect", host, exc)

    def _converge_neighbours(self, host: str, networks: Sequence[Network] | None = None) -> None:
        """Converge the hosts that tunnel to ``host`` (their view of it changed).

        ``networks``: the state to judge by (before a deletion, so that hosts
        that shared a network just removed are still found)."""
        known = load_all(self._store, NETWORKS, Network) if networks is None else networks
        for other in tunnel_neighbours(host, known):
            self._converge_soon(other)

    def _converge_after_rollback(self, host: str, cause: BaseException) -> None:
        """After undoing a change whose converge failed: take its flows off again."""
        if isinstance(cause, Unavailable):
            return  # nothing reached the bridge
        try:
            self._converger.converge(host, timeout=self._timeout)
        except QingluanError as exc:
            log.warning("host %s: converge after rollback failed: %s", host, exc)

    # ---- hosts ---------------------------------------------------------------

    def _host_status(self, host: Host) -> HostStatus:
        connected = self._converger.is_connected(host.name)
        ports = self._converger.ports(host.name) if connected else {}
        return HostStatus(host=host, connected=connected, ports=ports)

    def _host(self, name: str) -> Host:
        host = load(self._store, host_key(name), Host)
        if host is None:
            raise _host_not_found(name)
        return host

    def register_host(self, name: str, registration: HostRegistration) -> HostStatus:
        """Register or update a host, then converge its bridge (if it is connected)."""
        host = Host(
            name=name,
            dpid=registration.dpid,
            bridge=registration.bridge,
            datapath_type=registration.datapath_type,
            address=registration.address,
        )
        with self._store.transaction() as tx:
            for other in load_all(tx, HOSTS, Host):
                if other.name != name and other.dpid == host.dpid:
                    raise Conflict(
                        f"datapath id {host.dpid:#x} is already the bridge of host {other.name}"
                    )
            before = load(tx, host_key(name), Host)
            if before != host:
                tx.put(host_key(name), host)
        self._converge_soon(name)
        if before is None or before.address != host.address:
            self._converge_neighbours(name)
        return self._host_status(host)

    def list_hosts(self) -> list[HostStatus]:
        return [self._host_status(h) for h in load_all(self._store, HOSTS, Host)]

    def get_host(self, name: str) -> HostStatus:
        return self._host_status(self._host(name))

    def delete_host(self, name: str, *, force: bool = False) -> None:
        """Forget a host; refused while networks remain on it, unless ``force``: then its
        endpoints (and their addresses) and networks go too, for a host that is gone for
        good. The hosts that tunnelled to it are converged. Unknown hosts are fine."""
        with self._store.transaction() as tx:
            if load(tx, host_key(name), Host) is None:
                return
            before = load_all(tx, NETWORKS, Network)
            remaining = [n for n in before if n.host == name]
            if remaining and not force:
                labels = ", ".join(ipam.network_label(n) for n in remaining)
                raise Conflict(
                    f"host {name} still has networks: {labels} (remove them on the host, "
                    "or force the removal of a host that is gone for good)"
                )
            pools = {n.id: n.pool_id for n in remaining}
            for endpoint in load_all(tx, ENDPOINTS, Endpoint):
                if endpoint.network_id in pools:
                    tx.delete(endpoint_key(endpoint.id))
                    key = allocation_key(pools[endpoint.network_id], endpoint.address)
                    held = load(tx, key, Allocation)
                    if held is not None and held.mac == endpoint.mac:
                        tx.delete(key)
            for network in remaining:
                tx.delete(network_key(network.id))
                self._unbind(tx, network)
            tx.delete(host_key(name))
        if remaining:
            log.info("host %s removed with its networks %s", name, [n.id[:12] for n in remaining])
        self._converge_neighbours(name, before)

    def host_flows(self, name: str) -> FlowDump:
        self._host(name)
        return self._converger.dump(name)

    def reconcile_host(self, name: str) -> ReconcileResult:
        """Read the bridge back and send whatever differs (an operator's check)."""
        self._host(name)
        return self._converger.converge(name, timeout=self._timeout, full=True)

    # ---- IPAM ----------------------------------------------------------------

    def request_pool(self, request: PoolRequest) -> tuple[PoolReply, bool]:
        """RequestPool; the bool says whether a new pool was made (False: the same one)."""
        with self._store.transaction() as tx:
            decision = ipam.request_pool(
                request,
                load_all(tx, POOLS, Pool),
                self._ranges,
                networks=load_all(tx, NETWORKS, Network),
                carve_prefix=self._carve_prefix,
            )
            if decision.created:
                tx.put(pool_key(decision.pool.id), decision.pool)
            elif decision.pool.released:  # requested again (dockerd's replay): in use
                tx.put(
                    pool_key(decision.pool.id), decision.pool.model_copy(update={"released": False})
                )
        reply = PoolReply(pool_id=decision.pool.id, subnet=decision.pool.subnet)
        return reply, decision.created

    def list_pools(self) -> list[Pool]:
        return load_all(self._store, POOLS, Pool)

    def release_pool(self, pool_id: str) -> None:
        """ReleasePool: the pool and its allocations go, unless a network is bound to it."""
        with self._store.transaction() as tx:
            pool = load(tx, pool_key(pool_id), Pool)
            if pool is None:
                return
            bound = any(n.pool_id == pool_id for n in load_all(tx, NETWORKS, Network))
            if not ipam.release_pool(pool, bound=bound):
                log.info("pool %s is bound to a network: it goes with the network", pool_id)
                if not pool.released:
                    tx.put(pool_key(pool_id), pool.model_copy(update={"released": True}))
                return
            self._drop_pool(tx, pool_id)

    @staticmethod
    def _drop_pool(tx: KeyValue, pool_id: str) -> None:
        for key, _ in tx.scan(allocations_prefix(pool_id)):
            tx.delete(key)
        tx.delete(pool_key(pool_id))

    def _pool(self, kv: KeyValue, pool_id: str) -> Pool:
        pool = load(kv, pool_key(pool_id), Pool)
        if pool is None:
            raise NotFound(f"address pool {pool_id} not found")
        return pool

    def request_address(self, pool_id: str, request: AddressRequest) -> tuple[AddressReply, bool]:
        """RequestAddress; the bool is False for the same allocation again (replay)."""
        with self._store.transaction() as tx:
            pool = self._pool(tx, pool_id)
            allocations = load_all(tx, allocations_prefix(pool_id), Allocation)
            decision = ipam.request_address(pool, allocations, request)
            if decision.pool_changed:
                tx.put(pool_key(pool_id), decision.pool)
            if decision.allocation is not None:
                a = decision.allocation
                tx.put(allocation_key(pool_id, a.address), a)
        return AddressReply(address=decision.address), decision.created

    def release_address(self, pool_id: str, address: str) -> None:
        """ReleaseAddress; unknown pools and addresses are fine."""
        ipam.parse_address(address)
        with self._store.transaction() as tx:
            pool = load(tx, pool_key(pool_id), Pool)
            if pool is None:
                return
            bound = any(n.pool_id == pool_id for n in load_all(tx, NETWORKS, Network))
            allocations = load_all(tx, allocations_prefix(pool_id), Allocation)
            decision = ipam.release_address(pool, allocations, address, bound=bound)
            if decision.pool is not None:
                tx.put(pool_key(pool_id), decision.pool)
            if decision.remove is not None:
                tx.delete(allocation_key(pool_id, decision.remove.address))

    # ---- networks ------------------------------------------------------------

    def _network(self, kv: KeyValue, network_id: str) -> Network:
        network = load(kv, network_key(network_id), Network)
        if network is None:
            raise NotFound(f"network {network_id} not found")
        return network

    def create_network(self, network_id: str, body: NetworkCreate) -> tuple[Network, bool]:
        """CreateNetwork: bind the pool, allocate a key, converge the host's bridge.

        The bool is False for an identical repeat. A failed converge undoes the
        network (Docker does not call DeleteNetwork after a failed create).
        """
        mtu = body.mtu or DEFAULT_MTU_BY_MODEL.get(body.model, DEFAULT_MTU)
        with self._store.transaction() as tx:
            if load(tx, host_key(body.host), Host) is None:
                raise _host_not_found(body.host)
            pool = self._pool(tx, body.pool_id)
            networks = load_all(tx, NETWORKS, Network)
            existing = next((n for n in networks if n.id == network_id), None)
            if existing is not None:
                if not _same_network(existing, body, mtu):
                    raise Conflict(
                        f"network {ipam.network_label(existing)} already exists with other "
                        f"settings (host {existing.host}, model {existing.model.value}, "
                        f"pool {existing.pool_id})"
                    )
                network, created = existing, False
            else:
                key = ipam.next_network_key(n.key for n in networks)
                network = Network(
                    id=network_id,
                    key=key,
                    host=body.host,
                    model=body.model,
                    pool_id=pool.id,
                    subnet=pool.subnet,
                    gateway=ipam.pool_gateway(pool),
                    gateway_mac=(
                        names.anycast_gateway_mac(body.vni)
                        if body.model is NetworkModel.VXLAN and body.vni is not None
                        else names.gateway_mac(key)
                    ),
                    mtu=mtu,
                    internal=body.internal,
                    vni=body.vni,
                    options=dict(body.options),
                )
                ipam.check_network(network, pool, networks)
                tx.put(network_key(network_id), network)
                tx.put(pool_key(pool.id), ipam.bind_pool(pool, network_id))
                created = True
        try:
            self._converger.converge(network.host, timeout=self._timeout)
        except Exception as exc:
            if created:
                self._undo_network(network)
                self._converge_after_rollback(network.host, exc)
            raise
        if created and network.model is NetworkModel.VXLAN:
            self._converge_neighbours(network.host)
        return network, created

    def _undo_network(self, network: Network) -> None:
        with self._store.transaction() as tx:
            if load(tx, network_key(network.id), Network) != network:
                return  # changed meanwhile: not ours to undo
            if any(e.network_id == network.id for e in load_all(tx, ENDPOINTS, Endpoint)):
                return
            tx.delete(network_key(network.id))
            self._unbind(tx, network)

    def _unbind(self, tx: KeyValue, network: Network) -> None:
        pool = load(tx, pool_key(network.pool_id), Pool)
        if pool is not None:
            remaining = load_all(tx, NETWORKS, Network)
            if pool.released and not any(
                n.pool_id == pool.id for n in remaining if n.id != network.id
            ):
                self._drop_pool(tx, pool.id)
                return
            unbound = ipam.unbind_pool(pool, network.id, remaining)
            if unbound != pool:
                tx.put(pool_key(pool.id), unbound)

    def list_networks(self, host: str | None = None) -> list[Network]:
        networks = load_all(self._store, NETWORKS, Network)
        return [n for n in networks if host is None or n.host == host]

    def get_network(self, network_id: str) -> Network:
        return self._network(self._store, network_id)

    def update_network(self, network_id: str, body: NetworkUpdate) -> Network:
        """Record what Docker knows and the driver learns later (the network's name), or
        turn IDS inspection on or off (then the network's bridge is converged)."""
        with self._store.transaction() as tx:
            network = self._network(tx, network_id)
            before = network
            if body.name is not None and body.name != network.name:
                network = network.model_copy(update={"name": body.name})
            if body.ids is not None:
                options = {**network.options, IDS_OPTION: "true" if body.ids else "false"}
                network = network.model_copy(update={"options": options})
            if network != before:
                tx.put(network_key(network_id), network)
        if network.options.get(IDS_OPTION) != before.options.get(IDS_OPTION):
            self._converge_soon(network.host)
        return network

    def delete_network(self, network_id: str) -> None:
        """DeleteNetwork: refused while endpoints remain; unbinds the pool; converges."""
        with self._store.transaction() as tx:
            network = load(tx, network_key(network_id), Network)
            if network is None:
                return
            left = [e for e in load_all(tx, ENDPOINTS, Endpoint) if e.network_id == network_id]
            if left:
                ids = ", ".join(_short(e.id) for e in left)
                raise Conflict(f"network {ipam.network_label(network)} still has endpoints: {ids}")
            before = load_all(tx, NETWORKS, Network)
            tx.delete(network_key(network_id))
            self._unbind(tx, network)
        self._converge_soon(network.host)
        if network.model is NetworkModel.VXLAN:
            self._converge_neighbours(network.host, before)

    # ---- endpoints -----------------------------------------------------------

    def _endpoint(self, kv: KeyValue, endpoint_id: str) -> Endpoint:
        endpoint = load(kv, endpoint_key(endpoint_id), Endpoint)
        if endpoint is None:
            raise NotFound(f"endpoint {endpoint_id} not found")
        return endpoint

    def create_endpoint(
        self, endpoint_id: str, body: EndpointCreate
    ) -> tuple[EndpointStatus, bool]:
        """CreateEndpoint: store it, then return once its flows are confirmed.

        The address must be free or already allocated to this MAC in the
        network's pool (Docker's RequestAddress comes first; an address not
        allocated yet is allocated here). If the converge fails, the endpoint
        (and an allocation made here) is removed again and the error raised,
        so the driver can roll back its veth and Docker its address.
        """
        endpoint = Endpoint(
            id=endpoint_id,
            network_id=body.network_id,
            host=body.host,
            mac=body.mac,
            address=body.address,
            port_name=body.port_name,
            port_mappings=body.port_mappings,
        )
        added: Allocation | None = None
        with self._store.transaction() as tx:
            network = self._network(tx, body.network_id)
            existing = load(tx, endpoint_key(endpoint_id), Endpoint)
            if existing is not None:
                if not _same_endpoint(existing, endpoint):
                    raise Conflict(
                        f"endpoint {_short(endpoint_id)} already exists with other settings "
                        f"(network {_short(existing.network_id)}, address {existing.address}, "
                        f"MAC {existing.mac}, port {existing.port_name})"
                    )
                endpoint, created = existing, False
            else:
                ipam.check_endpoint(endpoint, network, load_all(tx, ENDPOINTS, Endpoint))
                pool = self._pool(tx, network.pool_id)
                decision = ipam.request_address(
                    pool,
                    load_all(tx, allocations_prefix(pool.id), Allocation),
                    AddressRequest(address=endpoint.address, mac=endpoint.mac),
                )
                if decision.allocation is not None:
                    added = decision.allocation
                    tx.put(allocation_key(pool.id, added.address), added)
                tx.put(endpoint_key(endpoint_id), endpoint)
                created = True
        try:
            self._converger.converge(
                endpoint.host, timeout=self._timeout, require_ports=(endpoint.port_name,)
            )
        except Exception as exc:
            if created:
                self._undo_endpoint(endpoint, network.pool_id, added)
                self._converge_after_rollback(endpoint.host, exc)
            raise
        if created and network.model is NetworkModel.VXLAN:
            # the other hosts learn the new endpoint before Join returns: replies from
            # their containers are tunnelled back from the first packet
            self._converge_neighbours(endpoint.host)
        if created and self._policy_exists():
            self._converge_others(endpoint.host)  # rules elsewhere may name its address
        return EndpointStatus(endpoint=endpoint, flows_confirmed=True), created

    def _undo_endpoint(self, endpoint: Endpoint, pool_id: str, added: Allocation | None) -> None:
        with self._store.transaction() as tx:
            if load(tx, endpoint_key(endpoint.id), Endpoint) == endpoint:
                tx.delete(endpoint_key(endpoint.id))
            if added is not None:
                key = allocation_key(pool_id, added.address)
                if load(tx, key, Allocation) == added:
                    tx.delete(key)

    def list_endpoints(
        self, host: str | None = None, network_id: str | None = None
    ) -> list[Endpoint]:
        return [
            e
            for e in load_all(self._store, ENDPOINTS, Endpoint)
            if (host is None or e.host == host)
            and (network_id is None or e.network_id == network_id)
        ]

    def get_endpoint(self, endpoint_id: str) -> Endpoint:
        return self._endpoint(self._store, endpoint_id)

    def update_endpoint(self, endpoint_id: str, body: EndpointUpdate) -> Endpoint:
        """Record the container name and published ports (the driver applies NAT)."""
        changes: dict[str, object] = {}
        if body.container_name is not None:
            changes["container_name"] = body.container_name
        if body.labels is not None:
            changes["labels"] = dict(body.labels)
        if body.port_mappings is not None:
            changes["port_mappings"] = body.port_mappings
        with self._store.transaction() as tx:
            endpoint = self._endpoint(tx, endpoint_id)
            updated = endpoint.model_copy(update=changes)
            if updated != endpoint:
                tx.put(endpoint_key(endpoint_id), updated)
        named = (updated.container_name, updated.labels) != (
            endpoint.container_name,
            endpoint.labels,
        )
        if named and self._policy_exists():
            self._converge_all()  # a rule naming the container or a label now applies
        return updated

    def delete_endpoint(self, endpoint_id: str) -> Endpoint | None:
        """DeleteEndpoint: forget it and take its flows off; returns what it was (None:
        unknown). Its address stays allocated until Docker's ReleaseAddress, which
        follows."""
        with self._store.transaction() as tx:
            endpoint = load(tx, endpoint_key(endpoint_id), Endpoint)
            if endpoint is None:
                return None
            tx.delete(endpoint_key(endpoint_id))
            network = load(tx, network_key(endpoint.network_id), Network)
        self._converge_soon(endpoint.host)
        if network is not None and network.model is NetworkModel.VXLAN:
            self._converge_neighbours(endpoint.host)
        if self._policy_exists():
            self._converge_others(endpoint.host)
        return endpoint

    # ---- ACLs ----------------------------------------------------------------

    def _converge_all(self) -> None:
        """Every registered host, one after the other, each confirmed (or disconnected:
        then it gets the rules when it connects)."""
        for host in load_all(self._store, HOSTS, Host):
            self._converge_soon(host.name)

    def _converge_others(self, host: str) -> None:
        for other in load_all(self._store, HOSTS, Host):
            if other.name != host:
                self._converge_soon(other.name)

    def _policy_exists(self) -> bool:
        return bool(self._store.scan(ACLS)) or bool(self._store.scan(STEERING))

    def create_acl(self, body: AclCreate) -> AclRule:
        """Store one rule, then converge every bridge; refused before anything changes."""
        with self._store.transaction() as tx:
            rules = load_all(tx, ACLS, AclRule)
            networks = load_all(tx, NETWORKS, Network)
            endpoints = load_all(tx, ENDPOINTS, Endpoint)
            rule_id = claim_id(body.id, "acl", (r.id for r in rules), "ACL rule")
            claim_priority(body.priority, rules, "ACL rule",
                           "every rule has its own priority (they decide the order)")  # fmt: skip
            if body.scope is not None and not any(names_network(n, body.scope) for n in networks):
                raise InvalidRequest(f"scope: unknown network {body.scope!r}")
            selectors = _selectors(body.src, body.dst, networks, endpoints)
            low, high = body.port_range()
            rule = AclRule(
                id=rule_id,
                priority=body.priority,
                scope=body.scope,
                direction=body.direction,
                src=selectors.get("src"),
                dst=selectors.get("dst"),
                protocol=body.protocol,
                port_min=low,
                port_max=high,
                icmp_type=body.icmp_type,
                action=body.action,
                stateful=body.stateful,
                description=body.description,
            )
            tx.put(acl_key(rule_id), rule)
        self._converge_all_or_undo(acl_key(rule_id))
        return rule

    def _converge_all_or_undo(self, key: str) -> None:
        """Every bridge takes the policy object just stored at ``key``; if one cannot, the
        object goes again (and the bridges with it), so nothing is half-applied."""
        try:
            self._converge_all_confirmed()
        except Exception:
            with self._store.transaction() as tx:
                tx.delete(key)
            self._converge_all()
            raise

    def _delete_policy(self, key: str, cls: type[BaseModel]) -> None:
        """Remove the policy object at ``key`` (unknown: fine), then converge every bridge."""
        with self._store.transaction() as tx:
            if load(tx, key, cls) is None:
                return
            tx.delete(key)
        self._converge_all_confirmed()

    def _converge_all_confirmed(self) -> None:
        for host in load_all(self._store, HOSTS, Host):
            try:
                self._converger.converge(host.name, timeout=self._timeout)
            except Unavailable as exc:
                log.info("host %s: not converged now (%s); it will be on connect", host.name, exc)

    def list_acls(self) -> list[AclRule]:
        return sorted(load_all(self._store, ACLS, AclRule), key=lambda r: (-r.priority, r.id))

    def get_acl(self, rule_id: str) -> AclRule:
        rule = load(self._store, acl_key(rule_id), AclRule)
        if rule is None:
            raise NotFound(f"ACL rule {rule_id} not found")
        return rule

    def delete_acl(self, rule_id: str) -> None:
        """Remove one rule (unknown: fine) and converge every bridge."""
        self._delete_policy(acl_key(rule_id), AclRule)

    # ---- steering --------------------------------------------------------------

    def create_steering(self, body: SteeringCreate) -> SteeringRule:
        """Store one steering rule, then converge every bridge; refused before anything
        changes (unknown container, network or host, a taken priority or id)."""
        with self._store.transaction() as tx:
            rules = load_all(tx, STEERING, SteeringRule)
            networks = load_all(tx, NETWORKS, Network)
            endpoints = load_all(tx, ENDPOINTS, Endpoint)
            rule_id = claim_id(body.id, "steer", (r.id for r in rules), "steering rule")
            claim_priority(body.priority, rules, "steering rule",
                           "every rule has its own priority")  # fmt: skip
            selectors = _selectors(body.src, body.dst, networks, endpoints)
            if body.mirror_container is not None and not any(
                e.container_name == body.mirror_container for e in endpoints
            ):
                raise InvalidRequest(
                    f"mirror_container: unknown container {body.mirror_container!r}"
                )
            for name in (n.strip() for n in (body.via or "").split(",")):
                if name and not any(e.container_name == name for e in endpoints):
                    raise InvalidRequest(f"via: unknown container {name!r}")
            if body.mirror_host is not None and load(tx, host_key(body.mirror_host), Host) is None:
                raise InvalidRequest(f"mirror_host: unknown host {body.mirror_host!r}")
            low, high = body.port_range()
            rule = SteeringRule(
                id=rule_id,
                priority=body.priority,
                src=selectors.get("src"),
                dst=selectors.get("dst"),
                protocol=body.protocol,
                port_min=low,
                port_max=high,
                action=body.action,
                dscp=body.dscp,
                rate_kbps=body.rate_kbps,
                burst_kbits=body.burst_kbits,
                mirror_container=body.mirror_container,
                mirror_host=body.mirror_host,
                mirror_port=body.mirror_port,
                via=body.via,
                description=body.description,
            )
            tx.put(STEERING + rule_id, rule)
        self._converge_all_or_undo(STEERING + rule_id)
        return rule

    def list_steering(self) -> list[SteeringRule]:
        return sorted(load_all(self._store, STEERING, SteeringRule), key=lambda r: -r.priority)

    def delete_steering(self, rule_id: str) -> None:
        self._delete_policy(STEERING + rule_id, SteeringRule)

    # ---- raw flows -------------------------------------------------------------

    def create_raw_flow(self, body: RawFlowCreate) -> RawFlow:
        """Store one expert flow, then converge the bridges it is for."""
        with self._store.transaction() as tx:
            flows = load_all(tx, RAWFLOWS, RawFlow)
            flow_id = claim_id(body.id, "raw", (f.id for f in flows), "raw flow")
            if body.host is not None and load(tx, host_key(body.host), Host) is None:
                raise InvalidRequest(f"host: unknown host {body.host!r}")
            clash = next(
                (
                    f
                    for f in flows
                    if f.priority == body.priority
                    and f.match == body.match
                    and (f.host is None or body.host is None or f.host == body.host)
                ),
                None,
            )
            if clash is not None:
                raise Conflict(f"raw flow {clash.id} has the same priority and match")
            flow = RawFlow(
                id=flow_id,
                host=body.host,
                priority=body.priority,
                match=dict(body.match),
                action=body.action,
                set_dscp=body.set_dscp,
                description=body.description,
            )
            tx.put(RAWFLOWS + flow_id, flow)
        self._converge_all_or_undo(RAWFLOWS + flow_id)
        return flow

    def list_raw_flows(self) -> list[RawFlow]:
        return sorted(load_all(self._store, RAWFLOWS, RawFlow), key=lambda f: (-f.priority, f.id))

    def delete_raw_flow(self, flow_id: str) -> None:
        self._delete_policy(RAWFLOWS + flow_id, RawFlow)

    # ---- status --------------------------------------------------------------

    def status(self) -> Status:
        with self._store.transaction() as tx:
            hosts = load_all(tx, HOSTS, Host)
            networks = load_all(tx, NETWORKS, Network)
            endpoints = load_all(tx, ENDPOINTS, Endpoint)
            pools = load_all(tx, POOLS, Pool)
        return Status(
            hosts=[self._host_status(h) for h in hosts],
            networks=networks,
            endpoints=endpoints,
            pools=pools,
        )


def _same_network(existing: Network, body: NetworkCreate, mtu: int) -> bool:
    return (
        existing.host == body.host
        and existing.model is body.model
        and existing.pool_id == body.pool_id
        and existing.mtu == mtu
        and existing.internal == body.internal
        and existing.vni == body.vni
        and existing.options == body.options
    )


def _same_endpoint(existing: Endpoint, new: Endpoint) -> bool:
    """Identical for a repeat: what PATCH may change (name, published ports) aside."""
    mutable = {"container_name": None, "port_mappings": ()}
    return existing.model_copy(update=mutable) == new.model_copy(update=mutable)


def _selectors(
    src: AclSelectorBody | None,
    dst: AclSelectorBody | None,
    networks: Sequence[Network],
    endpoints: Sequence[Endpoint],
) -> dict[str, AclSelector]:
    """A rule's given selectors, each checked against the cluster."""
    out: dict[str, AclSelector] = {}
    for side, given in (("src", src), ("dst", dst)):
        if given is not None:
            selector = AclSelector(**given.model_dump())
            _check_selector(side, selector, networks, endpoints)
            out[side] = selector
    return out


def _check_selector(
    side: str, selector: AclSelector, networks: Sequence[Network], endpoints: Sequence[Endpoint]
) -> None:
    if selector.network is not None and not any(
        names_network(n, selector.network) for n in networks
    ):
        raise InvalidRequest(f"{side}: unknown network {selector.network!r}")
    if selector.container is not None and not any(
        e.container_name == selector.container for e in endpoints
    ):
        raise InvalidRequest(
            f"{side}: unknown container {selector.container!r} (no endpoint of a qingluan "
            "network belongs to a container of that name; select by label to name "
            "containers that do not run yet)"
        )
