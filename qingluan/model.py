"""Plain domain data shared by the controller and the driver.

These values are validated once, where they enter the system (REST bodies in
``qingluan.api_schema``, Docker requests in ``qingluan.driver.protocol``), and
trusted everywhere inside. They are frozen so that a value handed to the pure
pipeline cannot change under it.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


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
