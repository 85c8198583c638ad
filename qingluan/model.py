"""Plain domain data shared by the controller and the driver.

These values are validated once, where they enter the system (REST bodies in
``qingluan.api_schema``, Docker requests in ``qingluan.driver.protocol``), and
trusted everywhere inside. They are frozen so that a value handed to the pure
pipeline cannot change under it.
"""

from __future__ import annotations

import ipaddress
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NetworkModel(StrEnum):
    """The network modes (``--opt model=...``)."""

    NONAT = "nonat"
    NAT = "nat"
    FLAT = "flat"
    VLAN = "vlan"
    VXLAN = "vxlan"


class DatapathType(StrEnum):
    SYSTEM = "system"
    NETDEV = "netdev"


class Host(Frozen):
    """A Docker host running ``qingluan driver`` with its integration bridge."""

    name: str
    dpid: int = Field(description="OpenFlow datapath id of the host's integration bridge")
    bridge: str
    datapath_type: DatapathType
    address: str | None = Field(default=None, description="underlay address (cross-host modes)")


class Pool(Frozen):
    """An IPAM pool: one subnet handed to Docker for one network.

    ``name`` is the address-pool name the user chose with ``--ipam-opt pool=``
    (``nat``, ``nonat``, ...). ``network_id`` is set once a network is bound to
    the pool by CreateNetwork; a pool with no network is released by
    ReleasePool; a bound one is only marked ``released`` and goes when its last
    network is deleted (dockerd 20.10 releases the pool before DeleteNetwork;
    see docs/architecture.md, "IPAM").
    """

    id: str
    name: str
    subnet: str
    ip_range: str | None = None
    gateway: str | None = None
    user_subnet: bool = Field(description="the subnet came from --subnet, not from the pool range")
    network_id: str | None = None
    options: dict[str, str] = Field(default_factory=dict)
    released: bool = Field(
        default=False,
        description="Docker released the pool while a network was bound: it goes with the network",
    )


class AllocationKind(StrEnum):
    ENDPOINT = "endpoint"
    AUX = "aux"


class Allocation(Frozen):
    """One address handed out of a pool (the gateway is kept on the pool itself)."""

    pool_id: str
    address: str
    kind: AllocationKind
    mac: str | None = Field(default=None, description="MAC Docker sent with the request")


class Network(Frozen):
    """A qingluan network as the controller knows it.

    ``key`` is a small integer unique in the cluster; the pipeline uses it as
    the OpenFlow metadata value of the network and as its flood group id.
    """

    id: str = Field(description="Docker network id")
    key: int
    host: str
    model: NetworkModel
    pool_id: str
    subnet: str
    gateway: str = Field(description="gateway address without prefix length")
    gateway_mac: str
    mtu: int = 1500
    internal: bool = False
    vni: int | None = None
    name: str | None = Field(default=None, description="Docker network name, learned afterwards")
    options: dict[str, str] = Field(default_factory=dict)


class Protocol(StrEnum):
    TCP = "tcp"
    UDP = "udp"
    SCTP = "sctp"


class PortMapping(Frozen):
    """One ``docker run -p`` publication: host_ip:host_port[-end] -> container_port."""

    proto: Protocol
    container_port: int = Field(ge=1, le=65535)
    host_port: int = Field(ge=1, le=65535)
    host_port_end: int = Field(ge=1, le=65535)
    host_ip: str = Field(default="", description="'' means every host address")


class Endpoint(Frozen):
    """A container's interface on a qingluan network."""

    id: str = Field(description="Docker endpoint id")
    network_id: str
    host: str
    mac: str
    address: str = Field(description="IPv4 address without prefix length")
    port_name: str = Field(description="host end of the veth pair, attached to the bridge")
    container_name: str | None = None
    labels: dict[str, str] = Field(default_factory=dict, description="the container's labels")
    port_mappings: tuple[PortMapping, ...] = ()


# ---- policy ----------------------------------------------------------------


class AclDirection(StrEnum):
    """Relative to the endpoints a rule selects: traffic into them, or out of them."""

    INGRESS = "ingress"
    EGRESS = "egress"


class AclAction(StrEnum):
    ALLOW = "allow"
    DENY = "deny"


class AclProtocol(StrEnum):
    ANY = "any"
    TCP = "tcp"
    UDP = "udp"
    ICMP = "icmp"


class AclSelector(Frozen):
    """Exactly one of: an IPv4 CIDR, a network (name or id), a container name, a
    container label ``key=value``."""

    cidr: str | None = None
    network: str | None = None
    container: str | None = None
    label: str | None = None

    def describe(self) -> str:
        for kind in ("cidr", "network", "container", "label"):
            value = getattr(self, kind)
            if value is not None:
                return f"{kind} {value}"
        return "anything"


class AclRule(Frozen):
    """One ordered ACL rule as the controller stores it (validated by ``api_schema.AclCreate``).

    ``direction`` says which side the rule *selects*: ``egress`` filters what the
    endpoints matching ``src`` send, on their hosts; ``ingress`` what the
    endpoints matching ``dst`` receive, on theirs. The other side is the peer. A
    missing selector matches every endpoint (selected side) or every address
    (peer side). Higher ``priority`` wins; the first rule that matches decides.
    """

    id: str
    priority: int
    scope: str | None = Field(default=None, description="network name or id; None: all")
    direction: AclDirection
    src: AclSelector | None = None
    dst: AclSelector | None = None
    protocol: AclProtocol = AclProtocol.ANY
    port_min: int | None = None
    port_max: int | None = None
    icmp_type: int | None = None
    action: AclAction
    stateful: bool = True
    description: str = ""


class SteeringAction(StrEnum):
    DROP = "drop"
    DSCP = "dscp"
    MIRROR = "mirror"
    RATE_LIMIT = "rate_limit"  # an OpenFlow meter: above rate_kbps, packets are dropped
    REDIRECT = "redirect"  # through the service container ``via`` on the sender's host


class SteeringRule(Frozen):
    """Traffic steering: for IPv4 matching ``src``/``dst``/protocol/ports (anywhere in
    the cluster, on whichever host it passes), drop it, mark its DSCP, rate-limit it,
    send it through service containers (``via``), or copy it to a mirror: a container
    (``mirror_container``, on its host) or a bridge port (``mirror_port``: of
    ``mirror_host``, or of every host, e.g. each host's IDS port). Higher ``priority``
    wins (unique)."""

    id: str
    priority: int
    src: AclSelector | None = None
    dst: AclSelector | None = None
    protocol: AclProtocol = AclProtocol.ANY
    port_min: int | None = None
    port_max: int | None = None
    action: SteeringAction
    dscp: int | None = None
    rate_kbps: int | None = None
    burst_kbits: int | None = None
    mirror_container: str | None = None
    mirror_host: str | None = None
    mirror_port: str | None = None
    via: str | None = Field(default=None, description="redirect: the service container's name")
    description: str = ""


class RawFlowAction(StrEnum):
    DROP = "drop"
    CONTINUE = "continue"  # on to the rest of the pipeline (ARP, L2)


class RawFlow(Frozen):
    """An expert's flow in the reserved table EXPERT (between steering and ARP): a match
    on packet fields only, and drop or continue (optionally marking DSCP). It can stop
    traffic or mark it, never send it anywhere the pipeline would not."""

    id: str
    host: str | None = Field(default=None, description="only this host's bridge; None: every")
    priority: int
    match: dict[str, int | str] = Field(default_factory=dict)
    action: RawFlowAction
    set_dscp: int | None = None
    description: str = ""


# ---- intrusion detection -----------------------------------------------------

IDS_OPTION = "ids"  # network option (``--opt ids=true``): its traffic is mirrored to the IDS


class QuarantineScope(StrEnum):
    """What a quarantine drops: everything the endpoint sends, or one 5-tuple of it."""

    ENDPOINT = "endpoint"
    FLOW = "flow"


class IdsAction(StrEnum):
    LOG = "log"
    QUARANTINE = "quarantine"


class IdsPolicy(Frozen):
    """What to do with an IDS alert: the highest-priority policy that matches decides.

    A policy matches an alert with its ``signature_id`` (if set) and a severity of
    at most ``max_severity`` (if set; 1 is the most severe, as in Suricata and
    Snort). A policy with neither matches every alert. No policy matching: log.
    """

    id: str
    priority: int
    signature_id: int | None = None
    max_severity: int | None = None
    action: IdsAction
    scope: QuarantineScope = QuarantineScope.ENDPOINT
    duration: int = Field(default=300, description="seconds a quarantine lasts; 0: until lifted")
    description: str = ""


class Quarantine(Frozen):
    """An endpoint (or one of its flows) whose traffic the pipeline drops.

    Dropped on the endpoint's own bridge, in table QUARANTINE, before anything
    else sees the packet. ``scope=flow`` drops only IPv4 from the endpoint's
    address matching ``protocol``, ``ipv4_dst`` and the ports that are set.
    """

    id: str
    endpoint_id: str
    host: str
    network_id: str
    mac: str
    address: str
    scope: QuarantineScope
    protocol: AclProtocol = AclProtocol.ANY
    ipv4_dst: str | None = None
    src_port: int | None = None
    dst_port: int | None = None
    reason: str = ""
    policy_id: str | None = None
    signature_id: int | None = None
    severity: int | None = None
    alerts: int = Field(default=1, description="alerts that led to or refreshed it")
    created_at: float = Field(description="unix time")
    expires_at: float | None = Field(default=None, description="unix time; None: until lifted")
    confirm_seconds: float | None = Field(
        default=None, description="alert received -> drop flow confirmed by the bridge"
    )


class IdsAlert(Frozen):
    """One alert as a host's IDS reported it (Suricata EVE or Snort alert_unixsock)."""

    host: str
    source: str = Field(default="suricata", description="suricata or snort")
    timestamp: str | None = None
    src_ip: str
    src_port: int | None = None
    dest_ip: str
    dest_port: int | None = None
    proto: str = ""
    signature_id: int
    gid: int = 1
    rev: int = 0
    signature: str = ""
    category: str = ""
    severity: int = 3


class AlertOutcome(Frozen):
    """What the controller did with one alert."""

    alert: IdsAlert
    action: IdsAction
    policy_id: str | None = None
    quarantine: Quarantine | None = None
    reason: str = Field(default="", description="why nothing more was done, if so")
    received_at: float
    confirm_seconds: float | None = None


# ---- monitoring ----------------------------------------------------------------


def _check_target(value: str) -> str:
    """``IP:PORT`` or ``[IPv6]:PORT``, as OVSDB's collector columns take them."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not a collector like 192.0.2.10:6343 (IP:PORT)")
    try:
        ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        raise ValueError(f"{value!r}: {host!r} is not an IP address") from None
    return value


Targets = Annotated[tuple[Annotated[str, AfterValidator(_check_target)], ...], Field()]


class SflowSettings(Frozen):
    enabled: bool = True
    targets: Targets = Field(
        default=(),
        description="host:port collectors; empty: the controller's embedded collector",
    )
    sampling: int = Field(default=400, ge=1, le=1 << 24, description="1-in-N packets")
    polling: int = Field(default=10, ge=1, le=3600, description="seconds between counter samples")
    header: int = Field(default=128, ge=64, le=256, description="bytes of each sampled header")


class NetflowSettings(Frozen):
    targets: Targets = Field(default=(), description="host:port; empty: off")
    active_timeout: int = Field(default=60, ge=-1, le=3600)


class IpfixSettings(Frozen):
    targets: Targets = Field(default=(), description="host:port; empty: off")
    sampling: int = Field(default=400, ge=1, le=1 << 24)


class MonitoringSettings(Frozen):
    """What every host's driver configures on its bridge (OVSDB sFlow, NetFlow, IPFIX)."""

    sflow: SflowSettings = Field(default_factory=SflowSettings)
    netflow: NetflowSettings = Field(default_factory=NetflowSettings)
    ipfix: IpfixSettings = Field(default_factory=IpfixSettings)
    collector_port: int = Field(
        default=6343, ge=1, le=65535, description="the embedded sFlow collector's UDP port"
    )


class Threshold(Frozen):
    """A flow-rate threshold of the embedded collector and what crossing it does: an
    automatic steering rule (drop, or rate-limit to ``rate_kbps``) for the flow, removed
    once the flow stayed under it for ``quiet_seconds``."""

    id: str
    metric: str = Field(default="bytes", pattern="^(bytes|packets)$")
    value: float = Field(gt=0, description="per second, per flow")
    protocol: AclProtocol = AclProtocol.ANY
    action: str = Field(pattern="^(drop|rate_limit)$")
    rate_kbps: int | None = None
    burst_kbits: int | None = None
    quiet_seconds: float = 30.0
    window: float = Field(default=5.0, description="seconds the rate is measured over")
