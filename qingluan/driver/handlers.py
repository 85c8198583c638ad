"""What the driver answers to each Docker call, independent of HTTP and of the host.

``NetworkDriver`` and ``IpamDriver`` take an injected
:class:`~qingluan.driver.interfaces.ControllerClient` (the source of truth:
IPAM, networks, endpoints) and :class:`~qingluan.driver.interfaces.HostOps`
(veths, the bridge, iptables). Rules every handler keeps:

- idempotent: a repeated call succeeds and changes nothing;
- a failure half-way undoes what this call did, then raises the error whose
  message the user reads;
- Leave/DeleteEndpoint/DeleteNetwork/Revoke… of an unknown id succeed;
- no Docker API call (it deadlocks dockerd): CreateNetwork and Join only
  notify ``on_network_change`` (the name learner, ``qingluan.driver.learner``),
  which asks Docker later from its own thread.

Join semantics (who gets a default route; see ``join_gateway``):

==========  ===========================  =====================================
model       Gateway in the Join reply    DisableGatewayService
==========  ===========================  =====================================
nat         the network's gateway        false (it is the gateway)
flat, vlan  the network's gateway        false (the LAN's own router)
nonat       none: on-link only           true: no docker_gwbridge either
vxlan       none                         false: Docker adds docker_gwbridge for
                                         egress, as with its overlay driver
internal    none                         true
==========  ===========================  =====================================
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager

from pydantic import ValidationError

from qingluan import names
from qingluan.api_schema import MTU_MIN, EndpointCreate, EndpointUpdate, NetworkCreate
from qingluan.driver.guard import HostGuard, KeyedLocks
from qingluan.driver.interfaces import ControllerClient, HostOps
from qingluan.driver.protocol import (
    PHYSNET_OPTION,
    UPLINK_OPTION,
    AddressSpacesReply,
    AllocateNetworkReply,
    AllocateNetworkRequest,
    CreateEndpointReply,
    CreateEndpointRequest,
    CreateNetworkRequest,
    DiscoveryRequest,
    EmptyReply,
    EndpointOperInfoReply,
    EndpointRequest,
    ExternalConnectivityRequest,
    InterfaceName,
    InterfaceReply,
    IpamCapabilities,
    JoinReply,
    JoinRequest,
    NetworkCapabilities,
    NetworkRequest,
    ReleaseAddressRequest,
    ReleasePoolRequest,
    RequestAddressReply,
    RequestAddressRequest,
    RequestPoolReply,
    RequestPoolRequest,
    endpoint_address,
    parse_address_request,
    parse_network_options,
    parse_pool_request,
    parse_port_mappings,
    portmap_value,
    single_ipv4_data,
    strip_prefix,
    validation_message,
)
from qingluan.driver.uplinks import DEFAULT_PHYSNET, physnet_problem
from qingluan.errors import (
    Conflict,
    Exhausted,
    InvalidRequest,
    NotFound,
    QingluanError,
    Unauthorized,
)
from qingluan.model import Endpoint, Network, NetworkModel, PortMapping
from qingluan.modes import UPLINK_MODELS, has_gateway_dev, is_natted

log = logging.getLogger(__name__)

VXLAN_OVERHEAD = 50
FLUSH_TIMEOUT = 30.0  # longest wait for background endpoint removals

# Errors after which the controller surely did not store anything.
_REFUSED = (InvalidRequest, Conflict, Exhausted, NotFound, Unauthorized)


def short(docker_id: str) -> str:
    return docker_id[:12]


def join_gateway(network: Network) -> tuple[str | None, bool]:
    """(Gateway for the container's default route, DisableGatewayService)."""
    if network.internal:
        return None, True
    if network.model in UPLINK_MODELS or is_natted(network):
        return network.gateway, False  # flat/vlan: the LAN's router; nat/vxlan: this host
    return None, True  # nonat, vxlan with nat=false: on-link only, no docker_gwbridge


def publishes_nat(network: Network) -> bool:
    return is_natted(network)


def _overlap(a: PortMapping, b: PortMapping) -> bool:
    if a.proto != b.proto:
        return False
    if a.host_ip and b.host_ip and a.host_ip != b.host_ip:
        return False
    return a.host_port <= b.host_port_end and b.host_port <= a.host_port_end


def port_conflict(
    endpoint_id: str, mappings: Sequence[PortMapping], endpoints: Sequence[Endpoint]
) -> str | None:
    """Why these publications clash with another endpoint's on this host, if they do."""
    for other in endpoints:
        if other.id == endpoint_id:
            continue
        for mine in mappings:
            for theirs in other.port_mappings:
                if _overlap(mine, theirs):
                    where = f"{mine.host_ip}:" if mine.host_ip else ""
                    who = other.container_name or f"endpoint {short(other.id)}"
                    return (
                        f"host port {where}{mine.host_port}/{mine.proto.value} is already "
                        f"published by {who}"
                    )
    return None


def _controller_may_have_stored(exc: BaseException) -> bool:
    return not isinstance(exc, _REFUSED)


class NetworkDriver:
    """The ``qingluan`` NetworkDriver."""

    def __init__(
        self,
        *,
        host: str,
        controller: ControllerClient,
        host_ops: HostOps,
        guard: HostGuard | None = None,
        uplinks: Mapping[str, str] | None = None,
        on_network_change: Callable[[str], None] | None = None,
    ) -> None:
        self.host = host
        self._uplinks = dict(uplinks or {})  # physnet -> NIC (--uplink PHYSNET:NIC)
        self._controller = controller
        self._host_ops = host_ops
        self._guard = guard or HostGuard(ready=True)
        # e.g. NameLearner.notify: must only enqueue (no Docker API call in a plugin call)
        self._on_network_change = on_network_change
        self._locks = KeyedLocks()
        self._nat_lock = threading.Lock()
        # What the hot calls read without asking the controller again. Networks: only
        # what is fixed at creation is used here (model, subnet, gateway, MTU, options;
        # name and ids can change through REST and are not read from this copy).
        # Endpoints: the ones this process created, as it last wrote them; Join,
        # EndpointOperInfo, and Program/RevokeExternalConnectivity when nothing is or was
        # published read them. DeleteEndpoint goes by the controller's copy (the
        # deletion returns it), so a mapping set through REST is never left in iptables.
        self._networks: dict[str, Network] = {}
        self._endpoints: dict[str, Endpoint] = {}
        # DeleteEndpoint's veth removals, in the background (see delete_endpoint)
        self._removals = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ql-remove")
        self._removals_lock = threading.Lock()
        self._pending: dict[Future[None], str] = {}  # removal -> its endpoint id

    @contextmanager
    def _hold(self, key: str) -> Iterator[None]:
        with self._guard.shared(), self._locks.hold(key):
            yield

    # ---- capabilities, discovery, swarm ----

    def get_capabilities(self) -> NetworkCapabilities:
        return NetworkCapabilities(scope="local", connectivity_scope="global")

    def discover_new(self, req: DiscoveryRequest) -> EmptyReply:
        return EmptyReply()

    def discover_delete(self, req: DiscoveryRequest) -> EmptyReply:
        return EmptyReply()

    def allocate_network(self, req: AllocateNetworkRequest) -> AllocateNetworkReply:
        return AllocateNetworkReply()

    def free_network(self, req: NetworkRequest) -> EmptyReply:
        return EmptyReply()

    # ---- networks ----

    def create_network(self, req: CreateNetworkRequest) -> EmptyReply:
        opts = parse_network_options(req.options)
        ipv4 = single_ipv4_data(req)
        with self._hold(req.network_id):
            pool_id = self._pool_for(ipv4.pool, req.network_id)
            extra = dict(opts.extra)
            uplink: tuple[str, str] | None = None
            if opts.model in UPLINK_MODELS:
                uplink = self._uplink(extra)  # before the PUT: a refusal changes nothing
                extra[PHYSNET_OPTION], extra[UPLINK_OPTION] = uplink
            if opts.model is NetworkModel.VXLAN and not self._host_ops.has_underlay():
                raise InvalidRequest(
                    f"host {self.host} has no VXLAN tunnel endpoint: start qingluan driver "
                    "with --underlay-address IP/LEN (and --underlay-nic NIC on the "
                    "userspace datapath)"
                )
            mtu = opts.mtu
            if mtu is None and opts.model is NetworkModel.VXLAN:
                underlay = self._host_ops.underlay_mtu()
                if underlay is not None:
                    mtu = max(MTU_MIN, underlay - VXLAN_OVERHEAD)
            try:
                body = NetworkCreate(
                    host=self.host,
                    model=opts.model,
                    pool_id=pool_id,
                    mtu=mtu,
                    internal=opts.internal,
                    vni=opts.vni,
                    options=extra,
                )
            except ValidationError as exc:
                raise InvalidRequest(validation_message(exc)) from None
            try:
                network, created = self._controller.create_network(req.network_id, body)
            except Exception as exc:
                if _controller_may_have_stored(exc):
                    self._undo("delete network", self._controller.delete_network, req.network_id)
                raise
            try:
                if uplink is not None:
                    self._host_ops.ensure_uplink(*uplink)
                if has_gateway_dev(network):
                    self._host_ops.ensure_gateway(network)
                self._sync_nat()
            except Exception:
                log.warning("CreateNetwork %s failed on the host: undoing", short(network.id))
                self._undo("remove gateway", self._host_ops.remove_gateway, network.id)
                if created:
                    self._undo("delete network", self._controller.delete_network, network.id)
                self._undo("resync NAT", self._sync_nat)
                raise
            self._networks[network.id] = network
        log.info(
            "network %s: %s %s gateway %s",
            short(network.id),
            network.model.value,
            network.subnet,
            network.gateway,
        )
        self._changed(network.id)
        return EmptyReply()

    def _uplink(self, extra: Mapping[str, str]) -> tuple[str, str]:
        """(physnet, NIC) of a flat or vlan network from ``--opt physnet=`` and this
        host's uplinks (a vlan network's NIC is the trunk)."""
        if UPLINK_OPTION in extra:
            raise InvalidRequest(
                f"--opt {UPLINK_OPTION} is set by the driver from its --uplink flag: "
                f"pick the physical network with --opt {PHYSNET_OPTION}=NAME"
            )
        physnet = extra.get(PHYSNET_OPTION, "").strip() or DEFAULT_PHYSNET
        problem = physnet_problem(physnet)
        if problem:
            raise InvalidRequest(f"--opt {PHYSNET_OPTION}={physnet}: {problem}")
        nic = self._uplinks.get(physnet)
        if nic is None:
            raise InvalidRequest(
                f"host {self.host} has no uplink for physical network {physnet}: "
                f"start qingluan driver with --uplink {physnet}:<nic>"
            )
        return physnet, nic

    def _pool_for(self, subnet: str, network_id: str) -> str:
        """The PoolID of ``subnet`` (CreateNetwork does not carry it; subnets are unique)."""
        want = ipaddress.IPv4Network(subnet)
        matches = [p for p in self._controller.list_pools() if _same_subnet(p.subnet, want)]
        if not matches:
            raise InvalidRequest(
                f"subnet {subnet} was not allocated by qingluanIpam: create qingluan "
                "networks with --ipam-driver qingluanIpam"
            )
        matches.sort(key=lambda p: (p.network_id != network_id, p.network_id is not None, p.id))
        return matches[0].id

    def delete_network(self, req: NetworkRequest) -> EmptyReply:
        # A flat network's uplink NIC stays on the bridge: other flat networks of the same
        # physical network may use it, and attaching it again is all a next one needs.
        self.flush()  # its endpoints' veths are gone before the network is
        with self._hold(req.network_id):
            self._networks.pop(req.network_id, None)
            self._controller.delete_network(req.network_id)
            self._host_ops.remove_gateway(req.network_id)
            self._sync_nat()
        return EmptyReply()

    # ---- endpoints ----

    def _network(self, network_id: str) -> Network:
        cached = self._networks.get(network_id)
        if cached is not None:
            return cached
        network = self._controller.get_network(network_id)
        if network is None:
            raise NotFound(
                f"network {short(network_id)} is not known to the qingluan controller "
                "(was it created while another controller state was in use? "
                "remove it with docker network rm)"
            )
        if network.host != self.host:
            raise Conflict(
                f"network {short(network_id)} belongs to host {network.host}, not {self.host}"
            )
        self._networks[network_id] = network
        return network

    def _endpoint(self, endpoint_id: str) -> Endpoint | None:
        cached = self._endpoints.get(endpoint_id)
        return cached if cached is not None else self._controller.get_endpoint(endpoint_id)

    def create_endpoint(self, req: CreateEndpointRequest) -> CreateEndpointReply:
        address = endpoint_address(req.interface)
        given_mac = req.interface.mac_address.strip().lower()
        mac = given_mac or names.endpoint_mac(req.endpoint_id)
        self.flush(endpoint_id=req.endpoint_id)  # an id used again: its old veth goes first
        with self._hold(req.endpoint_id):
            network = self._network(req.network_id)
            port = self._host_ops.ensure_endpoint(req.endpoint_id, network, mac)
            try:
                body = EndpointCreate(
                    network_id=network.id,
                    host=self.host,
                    mac=mac,
                    address=address,
                    port_name=port,
                )
            except ValidationError as exc:
                self._undo("remove endpoint veth", self._host_ops.remove_endpoint, req.endpoint_id)
                raise InvalidRequest(validation_message(exc)) from None
            try:
                status = self._controller.create_endpoint(req.endpoint_id, body)
            except Exception as exc:
                log.warning("CreateEndpoint %s failed: undoing", short(req.endpoint_id))
                if _controller_may_have_stored(exc):
                    self._undo("delete endpoint", self._controller.delete_endpoint, req.endpoint_id)
                self._undo("remove endpoint veth", self._host_ops.remove_endpoint, req.endpoint_id)
                raise
            self._endpoints[req.endpoint_id] = status.endpoint
        log.info("endpoint %s: %s %s on %s", short(req.endpoint_id), address, mac, port)
        if given_mac:
            return CreateEndpointReply()
        return CreateEndpointReply(interface=InterfaceReply(mac_address=mac))

    def endpoint_oper_info(self, req: EndpointRequest) -> EndpointOperInfoReply:
        ep = self._endpoint(req.endpoint_id)
        if ep is None:
            return EndpointOperInfoReply()
        value: dict[str, object] = {
            "qingluan.host": ep.host,
            "qingluan.port": ep.port_name,
            "qingluan.container_interface": names.endpoint_peer(ep.id),
            "qingluan.mac": ep.mac,
            "qingluan.address": ep.address,
        }
        if ep.port_mappings:
            value["com.docker.network.portmap"] = portmap_value(ep.port_mappings)
        return EndpointOperInfoReply(value=value)

    def delete_endpoint(self, req: EndpointRequest) -> EmptyReply:
        """The controller forgets the endpoint (its flows are gone, confirmed by a
        barrier) and its published ports leave iptables before this returns; the veth
        pair and its OVS port, which then carry nothing, are removed right after in
        the background (the kernel takes 15-20 ms to delete a veth). DeleteNetwork,
        the periodic sync and shutdown wait for those removals (:meth:`flush`); after
        a crash the start-up sweep removes what is left."""
        with self._hold(req.endpoint_id):
            self._endpoints.pop(req.endpoint_id, None)
            ep = self._controller.delete_endpoint(req.endpoint_id)  # as it was
            if ep is not None and ep.port_mappings:
                self._sync_nat()
        with self._removals_lock:
            future = self._removals.submit(self._remove_plumbing, req.endpoint_id)
            self._pending[future] = req.endpoint_id
        future.add_done_callback(self._removed)
        return EmptyReply()

    def _remove_plumbing(self, endpoint_id: str) -> None:
        try:
            with self._hold(endpoint_id):
                self._host_ops.remove_endpoint(endpoint_id)
        except Exception as exc:
            log.error(
                "endpoint %s: its veth and port were not removed (%s); the next sync does it",
                short(endpoint_id),
                exc.message if isinstance(exc, QingluanError) else repr(exc),
            )

    def _removed(self, future: Future[None]) -> None:
        with self._removals_lock:
            self._pending.pop(future, None)

    def flush(self, timeout: float = FLUSH_TIMEOUT, endpoint_id: str | None = None) -> bool:
        """Wait for the endpoint removals started so far (only that endpoint's, if given);
        True if none is left. Never call it while holding a plugin-call hold: the
        removals take one themselves."""
        with self._removals_lock:
            pending = [f for f, e in self._pending.items() if endpoint_id in (None, e)]
        if not pending:
            return True
        _, left = wait(pending, timeout=timeout)
        if left:
            log.warning("%d endpoint removal(s) still running after %.0f s", len(left), timeout)
        return not left

    def close(self) -> None:
        self.flush()
        self._removals.shutdown(wait=False)

    def join(self, req: JoinRequest) -> JoinReply:
        with self._hold(req.endpoint_id):
            network = self._network(req.network_id)
            ep = self._endpoint(req.endpoint_id)
            if ep is None:
                raise NotFound(
                    f"endpoint {short(req.endpoint_id)} is not known to the qingluan controller"
                )
            # CreateEndpoint made the pair just before; re-create it only if it
            # vanished since (e.g. a sweep while nobody knew it).
            if not self._host_ops.endpoint_plumbed(ep.id):
                self._host_ops.ensure_endpoint(ep.id, network, ep.mac)
        self._changed(network.id)
        gateway, disable = join_gateway(network)
        return JoinReply(
            interface_name=InterfaceName(
                src_name=names.endpoint_peer(req.endpoint_id), dst_prefix="eth"
            ),
            gateway=gateway,
            disable_gateway_service=disable,
        )

    def leave(self, req: EndpointRequest) -> EmptyReply:
        # Docker moves the container end back (or it dies with the sandbox);
        # the pair itself goes with DeleteEndpoint.
        return EmptyReply()

    # ---- port publishing (nat) ----

    def program_external_connectivity(self, req: ExternalConnectivityRequest) -> EmptyReply:
        mappings = parse_port_mappings(req.options)
        network = self._network(req.network_id)
        if not publishes_nat(network):
            if mappings:
                log.info(
                    "endpoint %s: -p ignored on %s network %s (no NAT)",
                    short(req.endpoint_id),
                    network.model.value,
                    short(network.id),
                )
            return EmptyReply()
        with self._hold(req.endpoint_id), self._nat_lock:
            known = self._endpoints.get(req.endpoint_id)
            if not mappings and known is not None and not known.port_mappings:
                return EmptyReply()  # nothing published, nothing to revoke: no iptables work
            endpoints = self._controller.list_endpoints(self.host)
            current = next((e for e in endpoints if e.id == req.endpoint_id), None)
            if current is None:
                raise NotFound(f"endpoint {short(req.endpoint_id)} is not known")
            if not mappings and not current.port_mappings:
                return EmptyReply()  # nothing published, nothing to revoke: no iptables work
            clash = port_conflict(req.endpoint_id, mappings, endpoints)
            if clash:
                raise Conflict(clash)
            if current.port_mappings != mappings:
                updated = self._controller.update_endpoint(
                    req.endpoint_id, EndpointUpdate(port_mappings=mappings)
                )
                self._remember(updated)
            try:
                self._sync_nat_locked()
            except Exception:
                self._endpoints.pop(req.endpoint_id, None)
                self._undo(
                    "restore port mappings",
                    self._controller.update_endpoint,
                    req.endpoint_id,
                    EndpointUpdate(port_mappings=current.port_mappings),
                )
                self._undo("resync NAT", self._sync_nat_locked)
                raise
        return EmptyReply()

    def revoke_external_connectivity(self, req: EndpointRequest) -> EmptyReply:
        known = self._endpoints.get(req.endpoint_id)
        if known is not None and not known.port_mappings:
            return EmptyReply()  # it published nothing (DeleteEndpoint re-checks anyway)
        with self._hold(req.endpoint_id):
            ep = self._controller.get_endpoint(req.endpoint_id)
            if ep is None or not ep.port_mappings:
                return EmptyReply()
            self._remember(
                self._controller.update_endpoint(req.endpoint_id, EndpointUpdate(port_mappings=()))
            )
            self._sync_nat()
        return EmptyReply()

    # ---- helpers ----

    def _remember(self, endpoint: Endpoint) -> None:
        """Keep the controller's latest copy of an endpoint this process already knows."""
        if endpoint.id in self._endpoints:
            self._endpoints[endpoint.id] = endpoint

    def _changed(self, network_id: str) -> None:
        """Tell the name learner (asynchronous; its failure never fails the call)."""
        if self._on_network_change is None:
            return
        try:
            self._on_network_change(network_id)
        except Exception as exc:
            log.warning("network %s: name learner not notified: %s", short(network_id), exc)

    def _sync_nat(self) -> None:
        with self._nat_lock:
            self._sync_nat_locked()

    def _sync_nat_locked(self) -> None:
        networks = self._controller.list_networks(self.host)
        endpoints = self._controller.list_endpoints(self.host)
        self._host_ops.sync_nat(networks, endpoints)

    @staticmethod
    def _undo(what: str, fn: Callable[..., object], *args: object) -> None:
        """Best-effort rollback step: log and swallow its failure (the original error wins)."""
        try:
            fn(*args)
        except Exception as exc:
            log.error("rollback step %r failed: %s", what, exc)


def _same_subnet(cidr: str, want: ipaddress.IPv4Network) -> bool:
    with contextlib.suppress(ValueError):
        return ipaddress.IPv4Network(cidr) == want
    return False


class IpamDriver:
    """The ``qingluanIpam`` IpamDriver: every answer comes from the controller."""

    LOCAL_ADDRESS_SPACE = "qingluan-local"
    GLOBAL_ADDRESS_SPACE = "qingluan-global"

    def __init__(self, *, controller: ControllerClient) -> None:
        self._controller = controller

    def get_capabilities(self) -> IpamCapabilities:
        return IpamCapabilities(requires_mac_address=True, requires_request_replay=True)

    def get_default_address_spaces(self) -> AddressSpacesReply:
        return AddressSpacesReply(
            local_default=self.LOCAL_ADDRESS_SPACE,
            global_default=self.GLOBAL_ADDRESS_SPACE,
        )

    def request_pool(self, req: RequestPoolRequest) -> RequestPoolReply:
        reply = self._controller.request_pool(parse_pool_request(req))
        return RequestPoolReply(pool_id=reply.pool_id, pool=reply.subnet)

    def release_pool(self, req: ReleasePoolRequest) -> EmptyReply:
        self._controller.release_pool(req.pool_id)
        return EmptyReply()

    def request_address(self, req: RequestAddressRequest) -> RequestAddressReply:
        reply = self._controller.request_address(req.pool_id, parse_address_request(req))
        return RequestAddressReply(address=reply.address)

    def release_address(self, req: ReleaseAddressRequest) -> EmptyReply:
        address = strip_prefix(req.address)
        if address:
            self._controller.release_address(req.pool_id, address)
        return EmptyReply()
