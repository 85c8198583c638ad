"""Bodies of the controller's REST API (``/v1``), shared by server and clients.

The controller validates every body against these models and the driver
builds its requests with them, so both ends agree on one contract. Every
validation error names the field it is about.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from qingluan.model import (
    AclAction,
    AclDirection,
    AclProtocol,
    DatapathType,
    Endpoint,
    Host,
    IdsAction,
    Network,
    NetworkModel,
    Pool,
    PortMapping,
    QuarantineScope,
    RawFlowAction,
    SteeringAction,
)

API_PREFIX = "/v1"

_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_PORT_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")

VLAN_MIN, VLAN_MAX = 1, 4094
VNI_MIN, VNI_MAX = 1, 16_777_215
MTU_MIN, MTU_MAX = 576, 9000


def _mac(value: str) -> str:
    low = value.lower()
    if not _MAC.match(low):
        raise ValueError(f"{value!r} is not a MAC address like 02:42:ac:11:00:02")
    if int(low[:2], 16) & 0x01:
        raise ValueError(f"{value!r} is a multicast MAC address")
    return low


def _ipv4(value: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 address") from None


def _ipv4_or_empty(value: str) -> str:
    return "" if value == "" else _ipv4(value)


def _cidr(value: str) -> str:
    try:
        net = ipaddress.IPv4Network(value, strict=True)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an IPv4 subnet like 192.168.1.0/24 ({exc})") from None
    if net.prefixlen > 30:
        raise ValueError(f"{value!r} is too small: the prefix length must be 30 or less")
    return str(net)


def _name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(
            f"{value!r} is not a valid name (letters, digits, '_', '.', '-'; at most 63)"
        )
    return value


def _port_name(value: str) -> str:
    if not _PORT_NAME.match(value):
        raise ValueError(f"{value!r} is not a valid interface name (at most 15 characters)")
    return value


Mac = Annotated[str, AfterValidator(_mac)]
IPv4 = Annotated[str, AfterValidator(_ipv4)]
IPv4OrEmpty = Annotated[str, AfterValidator(_ipv4_or_empty)]
Cidr = Annotated[str, AfterValidator(_cidr)]
Name = Annotated[str, AfterValidator(_name)]
PortName = Annotated[str, AfterValidator(_port_name)]


class Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# ---- errors ----------------------------------------------------------------


class ErrorBody(Body):
    """Every 4xx/5xx reply: ``{"error": "...", "code": "..."}``."""

    error: str
    code: str


# ---- hosts -----------------------------------------------------------------


class HostRegistration(Body):
    dpid: int = Field(ge=1, lt=2**64)
    bridge: PortName
    datapath_type: DatapathType
    address: IPv4 | None = None


class HostStatus(Body):
    host: Host
    connected: bool
    ports: dict[str, int] = Field(default_factory=dict, description="port name -> OpenFlow port")


class FlowDump(Body):
    host: str
    connected: bool
    flows: list[str]
    groups: list[str]


class ReconcileResult(Body):
    host: str
    flows_added: int
    flows_deleted: int
    groups_added: int
    groups_modified: int
    groups_deleted: int
    seconds: float


# ---- IPAM ------------------------------------------------------------------


class PoolRequest(Body):
    """RequestPool: a named pool (``--ipam-opt pool=``) and/or a ``--subnet``."""

    pool: Name = Field(description="address-pool name, e.g. nat, nonat, flat, vlan")
    subnet: Cidr | None = Field(default=None, description="--subnet; None: carve from the pool")
    ip_range: Cidr | None = Field(default=None, description="--ip-range inside the subnet")
    options: dict[str, str] = Field(default_factory=dict, description="all --ipam-opt values")

    @model_validator(mode="after")
    def _range_inside_subnet(self) -> PoolRequest:
        if self.ip_range is not None:
            if self.subnet is None:
                raise ValueError("ip_range: --ip-range needs --subnet")
            rng = ipaddress.IPv4Network(self.ip_range)
            if not rng.subnet_of(ipaddress.IPv4Network(self.subnet)):
                raise ValueError(f"ip_range: {self.ip_range} is not inside subnet {self.subnet}")
        return self


class PoolReply(Body):
    pool_id: str
    subnet: str


class AddressRequest(Body):
    address: IPv4 | None = Field(default=None, description="a given address; None: any free one")
    mac: Mac | None = Field(default=None, description="MAC of the endpoint that asks")
    gateway: bool = Field(default=False, description="the network's gateway address")


class AddressReply(Body):
    address: str = Field(description="address/prefix-length, as Docker wants it")


# ---- networks --------------------------------------------------------------


class NetworkCreate(Body):
    host: Name
    model: NetworkModel
    pool_id: str = Field(min_length=1, max_length=128)
    mtu: int | None = Field(default=None, ge=MTU_MIN, le=MTU_MAX)
    internal: bool = False
    vni: int | None = Field(default=None, description="VLAN id (vlan) or VNI (vxlan)")
    options: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _vni_fits_model(self) -> NetworkCreate:
        if self.model is NetworkModel.VLAN:
            if self.vni is None:
                raise ValueError("vni: a vlan network needs --opt vni=<VLAN id 1-4094>")
            if not VLAN_MIN <= self.vni <= VLAN_MAX:
                raise ValueError(f"vni: VLAN id {self.vni} is outside 1-4094")
        elif self.model is NetworkModel.VXLAN:
            if self.vni is None:
                raise ValueError("vni: a vxlan network needs --opt vni=<VNI 1-16777215>")
            if not VNI_MIN <= self.vni <= VNI_MAX:
                raise ValueError(f"vni: VNI {self.vni} is outside 1-16777215")
        elif self.vni is not None:
            raise ValueError(f"vni: a {self.model.value} network takes no vni")
        return self


class NetworkUpdate(Body):
    name: Name | None = None
    ids: bool | None = Field(
        default=None, description="whether the host's IDS inspects the network (--opt ids)"
    )


# ---- endpoints -------------------------------------------------------------


class EndpointCreate(Body):
    network_id: str = Field(min_length=1, max_length=128)
    host: Name
    mac: Mac
    address: IPv4
    port_name: PortName
    port_mappings: tuple[PortMapping, ...] = ()


class EndpointUpdate(Body):
    container_name: str | None = Field(default=None, max_length=255)
    labels: dict[str, str] | None = None
    port_mappings: tuple[PortMapping, ...] | None = None


class EndpointStatus(Body):
    endpoint: Endpoint
    flows_confirmed: bool


class Status(Body):
    hosts: list[HostStatus]
    networks: list[Network]
    endpoints: list[Endpoint]
    pools: list[Pool]


# ---- ACLs ------------------------------------------------------------------

ACL_PRIORITY_MIN, ACL_PRIORITY_MAX = 1, 4000


def _port_range(value: str) -> tuple[int, int]:
    parts = value.split("-")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"ports: {value!r} is not a port or a range like 8000-8080") from None
    if len(numbers) not in (1, 2) or not all(1 <= n <= 65535 for n in numbers):
        raise ValueError(f"ports: {value!r} is not a port or a range of 1-65535")
    low, high = numbers[0], numbers[-1]
    if low > high:
        raise ValueError(f"ports: the range {value} is reversed (write {high}-{low})")
    return low, high


class AclSelectorBody(Body):
    cidr: str | None = None
    network: str | None = Field(default=None, min_length=1, max_length=128)
    container: str | None = Field(default=None, min_length=1, max_length=255)
    label: str | None = Field(default=None, min_length=3, max_length=512)

    @model_validator(mode="after")
    def _exactly_one(self) -> AclSelectorBody:
        given = [k for k in ("cidr", "network", "container", "label") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                "a selector is exactly one of cidr, network, container, label "
                f"(got {', '.join(given) or 'none'})"
            )
        if self.cidr is not None:
            try:
                ipaddress.IPv4Network(self.cidr, strict=True)
            except ValueError as exc:
                raise ValueError(f"cidr: {self.cidr!r} is not an IPv4 CIDR ({exc})") from None
        if self.label is not None and ("=" not in self.label or not self.label.split("=", 1)[0]):
            raise ValueError(f"label: {self.label!r} is not key=value")
        return self


class AclCreate(Body):
    """``POST /v1/acls``: one rule. See ``qingluan.model.AclRule`` for the meaning."""

    id: Name | None = Field(default=None, description="a name for the rule; generated if absent")
    priority: int = Field(default=100, ge=ACL_PRIORITY_MIN, le=ACL_PRIORITY_MAX)
    scope: str | None = Field(default=None, min_length=1, max_length=128)
    direction: AclDirection
    src: AclSelectorBody | None = None
    dst: AclSelectorBody | None = None
    protocol: AclProtocol = AclProtocol.ANY
    ports: str | None = Field(default=None, description="destination port or range, tcp/udp")
    icmp_type: int | None = Field(default=None, ge=0, le=255)
    action: AclAction
    stateful: bool = True
    description: str = Field(default="", max_length=255)

    @model_validator(mode="after")
    def _consistent(self) -> AclCreate:
        if self.ports is not None:
            if self.protocol not in (AclProtocol.TCP, AclProtocol.UDP):
                raise ValueError(
                    f"ports: only tcp and udp rules have ports (protocol is {self.protocol})"
                )
            _port_range(self.ports)
        if self.icmp_type is not None and self.protocol is not AclProtocol.ICMP:
            raise ValueError(f"icmp_type: only icmp rules have one (protocol is {self.protocol})")
        return self

    def port_range(self) -> tuple[int | None, int | None]:
        if self.ports is None:
            return None, None
        return _port_range(self.ports)


class SteeringCreate(Body):
    """``POST /v1/steering``: one rule. See ``qingluan.model.SteeringRule``."""

    id: Name | None = Field(default=None, description="a name for the rule; generated if absent")
    priority: int = Field(default=100, ge=ACL_PRIORITY_MIN, le=ACL_PRIORITY_MAX)
    src: AclSelectorBody | None = None
    dst: AclSelectorBody | None = None
    protocol: AclProtocol = AclProtocol.ANY
    ports: str | None = Field(default=None, description="destination port or range, tcp/udp")
    action: SteeringAction
    dscp: int | None = Field(default=None, ge=0, le=63)
    rate_kbps: int | None = Field(default=None, ge=8, le=100_000_000)
    burst_kbits: int | None = Field(default=None, ge=1, le=100_000_000)
    mirror_container: str | None = Field(default=None, min_length=1, max_length=255)
    mirror_host: Name | None = None
    mirror_port: PortName | None = None
    via: str | None = Field(default=None, min_length=1, max_length=255)
    description: str = Field(default="", max_length=255)

    @model_validator(mode="after")
    def _consistent(self) -> SteeringCreate:
        if (self.action is SteeringAction.REDIRECT) != (self.via is not None):
            raise ValueError("via: a redirect rule names its service container, and only it")
        if self.ports is not None:
            if self.protocol not in (AclProtocol.TCP, AclProtocol.UDP):
                raise ValueError(
                    f"ports: only tcp and udp rules have ports (protocol is {self.protocol})"
                )
            _port_range(self.ports)
        mirror = (self.mirror_container, self.mirror_host, self.mirror_port)
        if self.action is SteeringAction.DSCP and self.dscp is None:
            raise ValueError("dscp: a dscp rule needs the value to mark (0-63)")
        if self.action is not SteeringAction.DSCP and self.dscp is not None:
            raise ValueError(f"dscp: only a dscp rule marks (action is {self.action})")
        limit = self.action is SteeringAction.RATE_LIMIT
        if limit and self.rate_kbps is None:
            raise ValueError("rate_kbps: a rate_limit rule needs the rate (kbit/s)")
        if not limit and (self.rate_kbps is not None or self.burst_kbits is not None):
            raise ValueError(
                f"rate_kbps: only a rate_limit rule has a rate (action is {self.action})"
            )
        if self.action is SteeringAction.MIRROR:
            by_container = self.mirror_container is not None
            by_port = self.mirror_port is not None
            if by_container == by_port or (by_container and self.mirror_host is not None):
                raise ValueError(
                    "mirror: give mirror_container, or mirror_port (on mirror_host, or on "
                    "every host)"
                )
        elif any(m is not None for m in mirror):
            raise ValueError(f"mirror_*: only a mirror rule has a mirror (action is {self.action})")
        return self

    def port_range(self) -> tuple[int | None, int | None]:
        if self.ports is None:
            return None, None
        return _port_range(self.ports)


class RawFlowCreate(Body):
    """``POST /v1/rawflows``: one expert flow in table EXPERT (see ``qingluan.model.RawFlow``)."""

    id: Name | None = None
    host: Name | None = None
    priority: int = Field(default=100, ge=1, le=60_000)
    match: dict[str, int | str] = Field(default_factory=dict)
    action: RawFlowAction
    set_dscp: int | None = Field(default=None, ge=0, le=63)
    description: str = Field(default="", max_length=255)

    @model_validator(mode="after")
    def _valid(self) -> RawFlowCreate:
        from qingluan.controller.pipeline.raw import parse_match

        parse_match(self.match)
        if self.set_dscp is not None and self.action is not RawFlowAction.CONTINUE:
            raise ValueError("set_dscp: only a flow that continues can mark")
        if self.set_dscp is not None and self.match.get("eth_type", 0x0800) != 0x0800:
            raise ValueError("set_dscp: only IPv4 can be marked")
        return self


# ---- intrusion detection -----------------------------------------------------------

SEVERITY_MIN, SEVERITY_MAX = 1, 255
QUARANTINE_MAX_SECONDS = 30 * 24 * 3600


class IdsPolicyCreate(Body):
    """``POST /v1/ids/policies``: what to do with the alerts it matches (see
    ``qingluan.model.IdsPolicy``)."""

    id: Name | None = Field(default=None, description="a name for the policy; generated if absent")
    priority: int = Field(default=100, ge=1, le=4000)
    signature_id: int | None = Field(default=None, ge=1, le=0xFFFFFFFF)
    max_severity: int | None = Field(default=None, ge=SEVERITY_MIN, le=SEVERITY_MAX)
    action: IdsAction
    scope: QuarantineScope = QuarantineScope.ENDPOINT
    duration: int = Field(default=300, ge=0, le=QUARANTINE_MAX_SECONDS)
    description: str = Field(default="", max_length=255)


class AlertReport(Body):
    """``POST /v1/ids/alerts``: one alert of a host's IDS, as its driver forwards it."""

    host: Name
    source: str = Field(default="suricata", pattern=r"^(suricata|snort)$")
    timestamp: str | None = Field(default=None, max_length=64)
    src_ip: IPv4
    src_port: int | None = Field(default=None, ge=0, le=65535)
    dest_ip: IPv4
    dest_port: int | None = Field(default=None, ge=0, le=65535)
    proto: str = Field(default="", max_length=16)
    signature_id: int = Field(ge=0, le=0xFFFFFFFF)
    gid: int = Field(default=1, ge=0, le=0xFFFFFFFF)
    rev: int = Field(default=0, ge=0, le=0xFFFFFFFF)
    signature: str = Field(default="", max_length=1024)
    category: str = Field(default="", max_length=255)
    severity: int = Field(default=3, ge=SEVERITY_MIN, le=SEVERITY_MAX)


# ---- monitoring ----------------------------------------------------------------------


class ThresholdCreate(Body):
    """``POST /v1/monitoring/thresholds``: see ``qingluan.model.Threshold``."""

    id: Name | None = None
    metric: str = Field(default="bytes", pattern="^(bytes|packets)$")
    value: float = Field(gt=0, le=1e12, description="bytes or packets per second, per flow")
    protocol: AclProtocol = AclProtocol.ANY
    action: str = Field(pattern="^(drop|rate_limit)$")
    rate_kbps: int | None = Field(default=None, ge=8, le=100_000_000)
    burst_kbits: int | None = Field(default=None, ge=1, le=100_000_000)
    quiet_seconds: float = Field(default=30.0, gt=0, le=86_400)
    window: float = Field(default=5.0, ge=1, le=60)

    @model_validator(mode="after")
    def _rate(self) -> ThresholdCreate:
        if (self.action == "rate_limit") != (self.rate_kbps is not None):
            raise ValueError("rate_kbps: a rate_limit threshold needs it, and only it")
        if self.burst_kbits is not None and self.action != "rate_limit":
            raise ValueError("burst_kbits: only for rate_limit")
        return self


class FlowView(Body):
    """One flow the embedded collector estimates, attributed to the cluster."""

    host: str | None
    agent: str
    network: str | None
    network_id: str | None
    endpoint_src: str | None
    container_src: str | None
    endpoint_dst: str | None
    container_dst: str | None
    eth_src: str
    eth_dst: str
    ipv4_src: str | None
    ipv4_dst: str | None
    protocol: str | None
    src_port: int | None
    dst_port: int | None
    input_port: str | None
    bytes: int
    packets: int
    bytes_per_second: float
    packets_per_second: float


class InterfaceView(Body):
    """One bridge port's rates from its sFlow counter samples."""

    host: str | None
    agent: str
    if_index: int
    port_name: str | None
    of_port: int | None
    endpoint: str | None
    container: str | None
    network: str | None
    in_bps: float
    out_bps: float
    in_pps: float
    out_pps: float
    in_octets: int
    out_octets: int


class RtFlowView(Body):
    """One of sFlow-RT's active flows: its key (split into the flow's key fields), value."""

    key: str
    parts: list[str]
    value: float
    agent: str | None
    data_source: str | None
