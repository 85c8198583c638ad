"""The two seams of the driver: the controller's REST API and the host's plumbing.

The handlers in ``qingluan.driver.handlers`` only talk to these protocols, so
they are tested with recording fakes; the real implementations are
``qingluan.driver.client.HttpControllerClient`` and
``qingluan.driver.host.plumbing.LinuxHost`` (tested against real OVS,
netlink and iptables).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from qingluan.api_schema import (
    AddressReply,
    AddressRequest,
    AlertReport,
    EndpointCreate,
    EndpointStatus,
    EndpointUpdate,
    HostRegistration,
    HostStatus,
    NetworkCreate,
    PoolReply,
    PoolRequest,
)
from qingluan.model import AlertOutcome, DatapathType, Endpoint, MonitoringSettings, Network, Pool


class NetworkCreated(NamedTuple):
    network: Network
    created: bool  # False: an identical network already existed (200, not 201)


class ControllerClient(Protocol):
    """``/v1`` of the controller (docs/rest-api.md).

    Every method raises a ``qingluan.errors.QingluanError`` subclass chosen by
    the reply's ``code``, with the controller's message unchanged. ``get_*``
    return ``None`` for an unknown id; ``release_*``/``delete_*`` succeed for one.
    """

    def register_host(self, name: str, body: HostRegistration) -> HostStatus: ...

    def list_hosts(self) -> list[HostStatus]: ...

    def request_pool(self, body: PoolRequest) -> PoolReply: ...

    def list_pools(self) -> list[Pool]: ...

    def release_pool(self, pool_id: str) -> None: ...

    def request_address(self, pool_id: str, body: AddressRequest) -> AddressReply: ...

    def release_address(self, pool_id: str, address: str) -> None: ...

    def create_network(self, network_id: str, body: NetworkCreate) -> NetworkCreated: ...

    def get_network(self, network_id: str) -> Network | None: ...

    def list_networks(self, host: str) -> list[Network]: ...

    def delete_network(self, network_id: str) -> None: ...

    def create_endpoint(self, endpoint_id: str, body: EndpointCreate) -> EndpointStatus: ...

    def get_endpoint(self, endpoint_id: str) -> Endpoint | None: ...

    def list_endpoints(self, host: str) -> list[Endpoint]: ...

    def update_endpoint(self, endpoint_id: str, body: EndpointUpdate) -> Endpoint: ...

    def delete_endpoint(self, endpoint_id: str) -> Endpoint | None: ...

    def monitoring_settings(self) -> MonitoringSettings: ...

    def report_alert(self, body: AlertReport) -> AlertOutcome: ...


@dataclass
class SweepReport:
    """What the startup sweep did (for the log and for tests)."""

    gateways_ensured: list[str] = field(default_factory=list)
    uplinks_ensured: list[str] = field(default_factory=list)
    endpoints_reattached: list[str] = field(default_factory=list)
    endpoints_missing: list[str] = field(default_factory=list)
    links_removed: list[str] = field(default_factory=list)
    ports_removed: list[str] = field(default_factory=list)
    nat_changed: bool = False
    errors: list[str] = field(default_factory=list)


class HostOps(Protocol):
    """Everything the driver does to its host. Every method is idempotent and
    undoes its own partial work when it fails."""

    @property
    def datapath_type(self) -> DatapathType: ...

    @property
    def bridge(self) -> str: ...

    def ensure_bridge(self, controller_target: str) -> int:
        """Create or fix the integration bridge; return its (pinned) datapath id."""
        ...

    def ensure_gateway(self, network: Network) -> None:
        """The gateway veth of a nat/nonat network: ``qlg…`` with the gateway
        address and MAC in the host, ``qlb…`` on the bridge; sysctls for nat."""
        ...

    def remove_gateway(self, network_id: str) -> None: ...

    def ensure_uplink(self, physnet: str, nic: str) -> None:
        """The host NIC of a physical network (flat) on the bridge as port ``nic``, with
        ``qingluan-owner``/``qingluan-uplink=<physnet>`` external_ids. Refuses a NIC that
        does not exist or carries the default route. Never removed by the driver."""
        ...

    def ensure_endpoint(self, endpoint_id: str, network: Network, mac: str) -> str:
        """The endpoint veth: ``qlv…`` on the bridge (with ownership external_ids),
        ``qlc…`` (MAC, MTU) for Docker to move into the container. Returns the
        bridge port's name. Reuses a pair whose container end already moved."""
        ...

    def remove_endpoint(self, endpoint_id: str) -> None: ...

    def endpoint_plumbed(self, endpoint_id: str) -> bool:
        """Both ends of the endpoint's veth are still in this namespace (a cheap
        netlink look-up: Join only re-creates the pair if it vanished)."""
        ...

    def sync_nat(self, networks: Sequence[Network], endpoints: Sequence[Endpoint]) -> bool:
        """Make qingluan's iptables chains exactly what these networks and
        endpoints need; True if anything changed."""
        ...

    def sweep(self, networks: Sequence[Network], endpoints: Sequence[Endpoint]) -> SweepReport:
        """Start-up: re-create missing plumbing of these (the controller's
        networks and endpoints of this host) and remove qingluan's devices,
        ports and rules that belong to nothing in them."""
        ...

    def underlay_mtu(self) -> int | None:
        """MTU of the interface that carries tunnel traffic, if known."""
        ...

    def has_underlay(self) -> bool:
        """Whether this host has a VXLAN tunnel endpoint (``--underlay-address``)."""
        ...

    def underlay_ok(self) -> bool:
        """The underlay is as the last sync left it (cheap: one netlink look-up);
        True without an underlay."""
        ...

    def apply_monitoring(
        self, settings: MonitoringSettings, controller_url: str, agent: str | None = None
    ) -> None:
        """The bridge exports sFlow/NetFlow/IPFIX exactly as ``settings`` say."""

    def ensure_ids_port(self) -> str:
        """The IDS mirror port on the bridge; returns the device the IDS reads."""

    def warm_tunnels(self, addresses: Sequence[str]) -> None:
        """Make the datapath resolve these other hosts' underlay addresses now, so
        that the first tunnelled packet to them is not spent on resolution."""
        ...
