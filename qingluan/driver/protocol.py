"""Docker's libnetwork remote API as pydantic models, and Docker options in qingluan terms.

Requests tolerate fields that newer Docker versions add (``extra="ignore"``)
and the ``null`` that Go sends for an empty slice or map. Replies serialise
with Docker's PascalCase names and leave out what is ``None``.

The parsing functions turn what the user typed (``--opt``, ``--ipam-opt``,
``-p``) into the project's own values and raise
:class:`qingluan.errors.InvalidRequest` with a message that names the option,
because that message is what ``docker`` prints after
``Error response from daemon:``. See ``../shared/DOCKER-PROTOCOL.md``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from qingluan import modes
from qingluan.api_schema import (
    MTU_MAX,
    MTU_MIN,
    VLAN_MAX,
    VLAN_MIN,
    VNI_MAX,
    VNI_MIN,
    AddressRequest,
    PoolRequest,
)
from qingluan.errors import InvalidRequest
from qingluan.model import IDS_OPTION, NetworkModel, PortMapping, Protocol

CONTENT_TYPE = "application/vnd.docker.plugins.v1.2+json"

# Keys Docker uses inside request options.
GENERIC = "com.docker.network.generic"
INTERNAL = "com.docker.network.internal"
ENABLE_IPV6 = "com.docker.network.enable_ipv6"
MTU_OPTION = "com.docker.network.driver.mtu"
PORTMAP = "com.docker.network.portmap"
MAC_OPTION = "com.docker.network.endpoint.macaddress"
REQUEST_ADDRESS_TYPE = "RequestAddressType"
GATEWAY_ADDRESS_TYPE = "com.docker.network.gateway"

# qingluan's own --opt / --ipam-opt keys.
MODEL_OPTION = "model"
VNI_OPTION = "vni"
NAT_OPTION = modes.NAT_OPTION  # vxlan: NAT through this host (default true)
ACL_DEFAULT_OPTION = "acl_default"  # allow (default) or deny: traffic no ACL rule matches
POOL_OPTION = "pool"
PHYSNET_OPTION = "physnet"  # flat: which physical network (driver's --uplink PHYSNET:NIC)
# flat: set by the driver (never by the user) to the uplink NIC, which is also its OVS port
# name; the controller's pipeline reads Network.options["uplink"]
UPLINK_OPTION = "uplink"

DEFAULT_MODEL = NetworkModel.NAT
DEFAULT_POOL = "nat"

_PROTOCOLS = {6: Protocol.TCP, 17: Protocol.UDP, 132: Protocol.SCTP}


def _none_to_dict(value: Any) -> Any:
    return {} if value is None else value


def _none_to_list(value: Any) -> Any:
    return [] if value is None else value


def _none_to_str(value: Any) -> Any:
    return "" if value is None else value


Options = Annotated[dict[str, Any], BeforeValidator(_none_to_dict)]
Text = Annotated[str, BeforeValidator(_none_to_str)]


class DockerModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


def validation_message(exc: ValidationError) -> str:
    """A pydantic error as one line: ``Field: message; Other: message``."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)


# ---- Plugin ----------------------------------------------------------------


class ActivateReply(DockerModel):
    implements: list[str] = Field(alias="Implements")


class EmptyReply(DockerModel):
    """``{}``: most calls answer nothing."""


# ---- NetworkDriver requests ------------------------------------------------


class IPAMData(DockerModel):
    address_space: Text = Field(default="", alias="AddressSpace")
    pool: Text = Field(default="", alias="Pool")
    gateway: Text = Field(default="", alias="Gateway")
    aux_addresses: Options = Field(default_factory=dict, alias="AuxAddresses")


IPAMDataList = Annotated[list[IPAMData], BeforeValidator(_none_to_list)]


class CreateNetworkRequest(DockerModel):
    network_id: str = Field(alias="NetworkID", min_length=1)
    options: Options = Field(default_factory=dict, alias="Options")
    ipv4_data: IPAMDataList = Field(default_factory=list, alias="IPv4Data")
    ipv6_data: IPAMDataList = Field(default_factory=list, alias="IPv6Data")


class NetworkRequest(DockerModel):
    """DeleteNetwork, FreeNetwork."""

    network_id: str = Field(alias="NetworkID", min_length=1)


class EndpointInterface(DockerModel):
    address: Text = Field(default="", alias="Address")
    address_ipv6: Text = Field(default="", alias="AddressIPv6")
    mac_address: Text = Field(default="", alias="MacAddress")


class CreateEndpointRequest(DockerModel):
    network_id: str = Field(alias="NetworkID", min_length=1)
    endpoint_id: str = Field(alias="EndpointID", min_length=1)
    interface: Annotated[EndpointInterface, BeforeValidator(_none_to_dict)] = Field(
        default_factory=EndpointInterface, alias="Interface"
    )
    options: Options = Field(default_factory=dict, alias="Options")


class EndpointRequest(DockerModel):
    """EndpointOperInfo, DeleteEndpoint, Leave, RevokeExternalConnectivity."""

    network_id: str = Field(alias="NetworkID", min_length=1)
    endpoint_id: str = Field(alias="EndpointID", min_length=1)


class JoinRequest(DockerModel):
    network_id: str = Field(alias="NetworkID", min_length=1)
    endpoint_id: str = Field(alias="EndpointID", min_length=1)
    sandbox_key: Text = Field(default="", alias="SandboxKey")
    options: Options = Field(default_factory=dict, alias="Options")


class ExternalConnectivityRequest(DockerModel):
    network_id: str = Field(alias="NetworkID", min_length=1)
    endpoint_id: str = Field(alias="EndpointID", min_length=1)
    options: Options = Field(default_factory=dict, alias="Options")


class DiscoveryRequest(DockerModel):
    discovery_type: int = Field(default=0, alias="DiscoveryType")
    discovery_data: Any = Field(default=None, alias="DiscoveryData")


class AllocateNetworkRequest(DockerModel):
    network_id: str = Field(alias="NetworkID", min_length=1)
    options: Options = Field(default_factory=dict, alias="Options")
    ipv4_data: IPAMDataList = Field(default_factory=list, alias="IPv4Data")
    ipv6_data: IPAMDataList = Field(default_factory=list, alias="IPv6Data")


# ---- NetworkDriver replies -------------------------------------------------


class NetworkCapabilities(DockerModel):
    scope: str = Field(alias="Scope")
    connectivity_scope: str = Field(alias="ConnectivityScope")


class InterfaceReply(DockerModel):
    address: str | None = Field(default=None, alias="Address")
    address_ipv6: str | None = Field(default=None, alias="AddressIPv6")
    mac_address: str | None = Field(default=None, alias="MacAddress")


class CreateEndpointReply(DockerModel):
    """``Interface`` is left out when Docker gave everything (an empty one is an error)."""

    interface: InterfaceReply | None = Field(default=None, alias="Interface")


class EndpointOperInfoReply(DockerModel):
    value: dict[str, Any] = Field(default_factory=dict, alias="Value")


class InterfaceName(DockerModel):
    src_name: str = Field(alias="SrcName")
    dst_prefix: str = Field(alias="DstPrefix")


class StaticRoute(DockerModel):
    destination: str = Field(alias="Destination")
    route_type: int = Field(alias="RouteType")
    next_hop: str | None = Field(default=None, alias="NextHop")


class JoinReply(DockerModel):
    interface_name: InterfaceName = Field(alias="InterfaceName")
    gateway: str | None = Field(default=None, alias="Gateway")
    static_routes: list[StaticRoute] | None = Field(default=None, alias="StaticRoutes")
    disable_gateway_service: bool = Field(default=False, alias="DisableGatewayService")


class AllocateNetworkReply(DockerModel):
    options: dict[str, str] = Field(default_factory=dict, alias="Options")


# ---- IpamDriver ------------------------------------------------------------


class IpamCapabilities(DockerModel):
    requires_mac_address: bool = Field(alias="RequiresMACAddress")
    requires_request_replay: bool = Field(alias="RequiresRequestReplay")


class AddressSpacesReply(DockerModel):
    local_default: str = Field(alias="LocalDefaultAddressSpace")
    global_default: str = Field(alias="GlobalDefaultAddressSpace")


class RequestPoolRequest(DockerModel):
    address_space: Text = Field(default="", alias="AddressSpace")
    pool: Text = Field(default="", alias="Pool")
    sub_pool: Text = Field(default="", alias="SubPool")
    options: Options = Field(default_factory=dict, alias="Options")
    v6: bool = Field(default=False, alias="V6")


class RequestPoolReply(DockerModel):
    pool_id: str = Field(alias="PoolID")
    pool: str = Field(alias="Pool")
    data: dict[str, str] = Field(default_factory=dict, alias="Data")


class ReleasePoolRequest(DockerModel):
    pool_id: str = Field(alias="PoolID", min_length=1)


class RequestAddressRequest(DockerModel):
    pool_id: str = Field(alias="PoolID", min_length=1)
    address: Text = Field(default="", alias="Address")
    options: Options = Field(default_factory=dict, alias="Options")


class RequestAddressReply(DockerModel):
    address: str = Field(alias="Address")
    data: dict[str, str] = Field(default_factory=dict, alias="Data")


class ReleaseAddressRequest(DockerModel):
    pool_id: str = Field(alias="PoolID", min_length=1)
    address: Text = Field(default="", alias="Address")


# ---- options in qingluan terms ---------------------------------------------


@dataclass(frozen=True)
class NetworkOptions:
    """What ``docker network create --opt ... [--internal]`` asked for."""

    model: NetworkModel
    vni: int | None = None
    mtu: int | None = None
    internal: bool = False
    extra: dict[str, str] = field(default_factory=dict)


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def _number(option: str, raw: str) -> int:
    text = raw.strip()
    try:
        return int(text, 10)
    except ValueError:
        raise InvalidRequest(f"{option}={raw} is not a number") from None


def generic_options(options: Mapping[str, Any]) -> dict[str, str]:
    """The ``--opt k=v`` values (Docker nests them under ``com.docker.network.generic``)."""
    generic = options.get(GENERIC) or {}
    if not isinstance(generic, Mapping):
        raise InvalidRequest(f"{GENERIC} must be an object of --opt values, not {generic!r}")
    return {str(k): "" if v is None else str(v) for k, v in generic.items()}


def parse_network_options(options: Mapping[str, Any]) -> NetworkOptions:
    """``--opt model=``, ``vni=``, ``com.docker.network.driver.mtu=`` (or ``mtu=``) and
    ``--internal``. Unknown ``--opt`` keys are kept in ``extra``, never rejected."""
    if _flag(options.get(ENABLE_IPV6, False)):
        raise InvalidRequest("qingluan networks are IPv4 only: create the network without --ipv6")
    opts = generic_options(options)
    internal = _flag(options.get(INTERNAL, False)) or _flag(opts.pop(INTERNAL, False))

    raw_model = opts.pop(MODEL_OPTION, "").strip().lower()
    if not raw_model:
        model = DEFAULT_MODEL
    else:
        try:
            model = NetworkModel(raw_model)
        except ValueError:
            choices = ", ".join(m.value for m in NetworkModel)
            raise InvalidRequest(
                f"unknown network model {raw_model!r} (choose {choices})"
            ) from None

    raw_vni = opts.pop(VNI_OPTION, None)
    vni = _parse_vni(model, raw_vni)

    mtu: int | None = None
    for key in (MTU_OPTION, "mtu"):
        raw_mtu = opts.pop(key, None)
        if raw_mtu is None or not raw_mtu.strip():
            continue
        mtu = _number(f"--opt {key}", raw_mtu)
        if not MTU_MIN <= mtu <= MTU_MAX:
            raise InvalidRequest(f"--opt {key}={raw_mtu}: MTU must be {MTU_MIN}-{MTU_MAX}")
    _choice(opts, ACL_DEFAULT_OPTION, ("allow", "deny"),
            "what the network's ACLs do with traffic no rule matches")  # fmt: skip
    if opts.get(NAT_OPTION) is not None and model is not NetworkModel.VXLAN:
        raise InvalidRequest(
            f"--opt {NAT_OPTION} is for vxlan networks; a {model.value} network "
            "is NATed or not by its model (model=nat or model=nonat)"
        )
    _choice(opts, NAT_OPTION, ("true", "false"))
    _choice(opts, IDS_OPTION, ("true", "false"),
            "whether the host's IDS inspects the network's traffic")  # fmt: skip
    return NetworkOptions(model=model, vni=vni, mtu=mtu, internal=internal, extra=opts)


def _choice(opts: dict[str, str], key: str, choices: tuple[str, str], why: str = "") -> None:
    """``--opt key=`` one of two words, kept lowercase; anything else is refused."""
    raw = opts.get(key)
    if raw is None:
        return
    value = raw.strip().lower()
    if value not in choices:
        hint = f" ({why})" if why else ""
        raise InvalidRequest(f"--opt {key}={raw}: say {choices[0]} or {choices[1]}{hint}")
    opts[key] = value


def _parse_vni(model: NetworkModel, raw: str | None) -> int | None:
    if raw is None or not raw.strip():
        if model is NetworkModel.VLAN:
            raise InvalidRequest(f"model=vlan needs --opt vni=<VLAN id {VLAN_MIN}-{VLAN_MAX}>")
        if model is NetworkModel.VXLAN:
            raise InvalidRequest(f"model=vxlan needs --opt vni=<VNI {VNI_MIN}-{VNI_MAX}>")
        return None
    vni = _number("--opt vni", raw)
    if model is NetworkModel.VLAN:
        if not VLAN_MIN <= vni <= VLAN_MAX:
            raise InvalidRequest(f"--opt vni={raw}: VLAN id must be {VLAN_MIN}-{VLAN_MAX}")
    elif model is NetworkModel.VXLAN:
        if not VNI_MIN <= vni <= VNI_MAX:
            raise InvalidRequest(f"--opt vni={raw}: VXLAN VNI must be {VNI_MIN}-{VNI_MAX}")
    else:
        raise InvalidRequest(f"--opt vni={raw}: a {model.value} network takes no vni")
    return vni


def single_ipv4_data(req: CreateNetworkRequest) -> IPAMData:
    """The one IPv4 subnet of a qingluan network."""
    if req.ipv6_data:
        raise InvalidRequest("qingluan networks are IPv4 only: create the network without --ipv6")
    if not req.ipv4_data:
        raise InvalidRequest("the network has no IPv4 subnet: use --ipam-driver qingluanIpam")
    if len(req.ipv4_data) > 1:
        raise InvalidRequest(
            f"a qingluan network has one subnet, got {len(req.ipv4_data)} (--subnet once)"
        )
    data = req.ipv4_data[0]
    try:
        ipaddress.IPv4Network(data.pool, strict=True)
    except ValueError:
        raise InvalidRequest(f"IPv4Data.Pool {data.pool!r} is not an IPv4 subnet") from None
    return data


def parse_pool_request(req: RequestPoolRequest) -> PoolRequest:
    """``--ipam-opt pool=`` (default ``nat``), ``--subnet``, ``--ip-range``, other opts."""
    if req.v6:
        raise InvalidRequest(
            "qingluanIpam has no IPv6 pools: create the network without --ipv6 "
            "and without an IPv6 --subnet"
        )
    opts = {str(k): "" if v is None else str(v) for k, v in req.options.items()}
    name = opts.get(POOL_OPTION, "").strip() or DEFAULT_POOL
    raw_vni = opts.get(VNI_OPTION)
    if raw_vni is not None and raw_vni.strip():
        _number("--ipam-opt vni", raw_vni)
    try:
        return PoolRequest(
            pool=name,
            subnet=req.pool or None,
            ip_range=req.sub_pool or None,
            options=opts,
        )
    except ValidationError as exc:
        raise InvalidRequest(_pool_message(exc)) from None


def _pool_message(exc: ValidationError) -> str:
    names = {"pool": "--ipam-opt pool", "subnet": "--subnet", "ip_range": "--ip-range"}
    parts = []
    for err in exc.errors():
        where = str(err["loc"][0]) if err["loc"] else ""
        msg = err["msg"].removeprefix("Value error, ")
        if where in names:
            parts.append(f"{names[where]}: {msg}")
        else:
            parts.append(msg.replace("ip_range: ", "--ip-range: "))
    return "; ".join(parts)


def strip_prefix(address: str) -> str:
    """``10.0.0.2/24`` -> ``10.0.0.2``; Docker is not consistent about the suffix."""
    return address.split("/", 1)[0].strip()


def parse_address_request(req: RequestAddressRequest) -> AddressRequest:
    """The gateway (RequestAddressType), ``--ip``/``--aux-address`` and the endpoint's MAC."""
    opts = req.options
    gateway = str(opts.get(REQUEST_ADDRESS_TYPE, "")) == GATEWAY_ADDRESS_TYPE
    mac = str(opts.get(MAC_OPTION) or "").strip().lower() or None
    address = strip_prefix(req.address) or None
    try:
        return AddressRequest(address=address, mac=mac, gateway=gateway)
    except ValidationError as exc:
        msgs = []
        for err in exc.errors():
            where = str(err["loc"][0]) if err["loc"] else ""
            msg = err["msg"].removeprefix("Value error, ")
            label = {"address": "address", "mac": "MAC address"}.get(where, where)
            msgs.append(f"{label}: {msg}")
        raise InvalidRequest("; ".join(msgs)) from None


def endpoint_address(iface: EndpointInterface) -> str:
    """The endpoint's IPv4 address (no prefix length) that IPAM gave Docker."""
    if iface.address_ipv6:
        raise InvalidRequest("qingluan networks are IPv4 only: the endpoint has an IPv6 address")
    if not iface.address:
        raise InvalidRequest("the endpoint has no IPv4 address: use --ipam-driver qingluanIpam")
    try:
        return str(ipaddress.IPv4Interface(iface.address).ip)
    except ValueError:
        raise InvalidRequest(f"endpoint address {iface.address!r} is not IPv4") from None


def parse_port_mappings(options: Mapping[str, Any]) -> tuple[PortMapping, ...]:
    """``-p`` publications from ``com.docker.network.portmap``.

    IPv6 host addresses (dockerd 20.10 sends a ``::`` twin of every ``-p``) are
    skipped: qingluan networks are IPv4 only. ``0.0.0.0`` means every address,
    like ``""``. Duplicates collapse.
    """
    raw = options.get(PORTMAP)
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InvalidRequest(f"{PORTMAP} must be a list of port bindings, not {raw!r}")
    out: list[PortMapping] = []
    for entry in raw:
        if not isinstance(entry, Mapping):
            raise InvalidRequest(f"{PORTMAP}: {entry!r} is not a port binding")
        mapping = _port_mapping(entry)
        if mapping is not None and mapping not in out:
            out.append(mapping)
    return tuple(out)


def _int_field(entry: Mapping[str, Any], key: str) -> int:
    value = entry.get(key, 0)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidRequest(f"{PORTMAP}: {key}={value!r} is not a number")
    try:
        return int(value)
    except ValueError:
        raise InvalidRequest(f"{PORTMAP}: {key}={value!r} is not a number") from None


def _port_mapping(entry: Mapping[str, Any]) -> PortMapping | None:
    host_ip = str(entry.get("HostIP") or "").strip()
    if ":" in host_ip:
        return None  # IPv6
    if host_ip in ("", "0.0.0.0"):
        host_ip = ""
    else:
        try:
            host_ip = str(ipaddress.IPv4Address(host_ip))
        except ValueError:
            raise InvalidRequest(f"-p {host_ip}: not an IPv4 host address") from None
    proto_no = _int_field(entry, "Proto")
    proto = _PROTOCOLS.get(proto_no)
    port = _int_field(entry, "Port")
    if proto is None:
        raise InvalidRequest(f"-p ...:{port}: IP protocol {proto_no} cannot be published")
    start = _int_field(entry, "HostPort")
    end = _int_field(entry, "HostPortEnd") or start
    spec = f"-p {host_ip + ':' if host_ip else ''}{start or ''}:{port}/{proto.value}"
    if not 1 <= port <= 65535:
        raise InvalidRequest(f"{spec}: container port must be 1-65535")
    if start == 0:
        raise InvalidRequest(
            f"-p {port}/{proto.value}: qingluan publishes only explicit host ports, "
            f"e.g. -p 8080:{port} (no random ports, no -P)"
        )
    if not 1 <= start <= end <= 65535:
        raise InvalidRequest(f"{spec}: host port range {start}-{end} is not within 1-65535")
    return PortMapping(
        proto=proto,
        container_port=port,
        host_port=start,
        host_port_end=end,
        host_ip=host_ip,
    )


def portmap_value(mappings: tuple[PortMapping, ...]) -> list[dict[str, Any]]:
    """Port mappings back in Docker's shape (for EndpointOperInfo)."""
    numbers = {v: k for k, v in _PROTOCOLS.items()}
    return [
        {
            "Proto": numbers[m.proto],
            "IP": "",
            "Port": m.container_port,
            "HostIP": m.host_ip,
            "HostPort": m.host_port,
            "HostPortEnd": m.host_port_end,
        }
        for m in mappings
    ]
