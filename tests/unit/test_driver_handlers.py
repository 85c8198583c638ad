"""The driver's protocol logic with a recording fake controller and fake host."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Sequence

import pytest

from qingluan import names
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
from qingluan.driver import protocol as p
from qingluan.driver.guard import HostGuard
from qingluan.driver.handlers import IpamDriver, NetworkDriver, join_gateway, port_conflict
from qingluan.driver.host.commands import HostError
from qingluan.driver.interfaces import NetworkCreated, SweepReport
from qingluan.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    QingluanError,
    Timeout,
    Unavailable,
)
from qingluan.model import (
    AlertOutcome,
    DatapathType,
    Endpoint,
    Host,
    IdsAction,
    IdsAlert,
    MonitoringSettings,
    Network,
    NetworkModel,
    Pool,
    PortMapping,
    Protocol,
)

HOST = "node1"
NET = "a1" * 32
NET2 = "b2" * 32
EP = "e1" * 32
EP2 = "f2" * 32


# ---- test doubles -------------------------------------------------------------


class FakeController:
    """The REST contract in memory (docs/rest-api.md), recording every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []
        self.pools: dict[str, Pool] = {}
        self.networks: dict[str, Network] = {}
        self.endpoints: dict[str, Endpoint] = {}
        self.fail: dict[str, QingluanError] = {}
        self.store_then_fail: set[str] = set()
        self.settings = MonitoringSettings()
        self._key = 0
        self._carve = ipaddress.IPv4Network("10.210.0.0/16").subnets(new_prefix=24)

    def _call(self, name: str, arg: object = None) -> None:
        self.calls.append((name, arg))
        err = self.fail.get(name)  # one lookup: tests change ``fail`` from other threads
        if err is not None and name not in self.store_then_fail:
            raise err

    def _after(self, name: str) -> None:
        if name in self.store_then_fail:
            raise self.fail[name]

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def register_host(self, name: str, body: HostRegistration) -> HostStatus:
        self._call("register_host", body)
        host = Host(name=name, dpid=body.dpid, bridge=body.bridge, datapath_type=body.datapath_type)
        return HostStatus(host=host, connected=True)

    def list_hosts(self) -> list[HostStatus]:
        return []

    def request_pool(self, body: PoolRequest) -> PoolReply:
        self._call("request_pool", body)
        subnet = body.subnet or str(next(self._carve))
        net = ipaddress.IPv4Network(subnet)
        pool_id = f"{body.pool}_{net.network_address}_{net.prefixlen}"
        self.pools.setdefault(
            pool_id,
            Pool(id=pool_id, name=body.pool, subnet=subnet, user_subnet=body.subnet is not None),
        )
        return PoolReply(pool_id=pool_id, subnet=subnet)

    def list_pools(self) -> list[Pool]:
        self._call("list_pools")
        return list(self.pools.values())

    def release_pool(self, pool_id: str) -> None:
        self._call("release_pool", pool_id)
        self.pools.pop(pool_id, None)

    def request_address(self, pool_id: str, body: AddressRequest) -> AddressReply:
        self._call("request_address", (pool_id, body))
        pool = self.pools[pool_id]
        net = ipaddress.IPv4Network(pool.subnet)
        if body.gateway:
            gw = body.address or str(next(net.hosts()))
            self.pools[pool_id] = pool.model_copy(update={"gateway": gw})
            return AddressReply(address=f"{gw}/{net.prefixlen}")
        return AddressReply(address=f"{body.address or list(net.hosts())[5]}/{net.prefixlen}")

    def release_address(self, pool_id: str, address: str) -> None:
        self._call("release_address", (pool_id, address))

    def create_network(self, network_id: str, body: NetworkCreate) -> NetworkCreated:
        self._call("create_network", body)
        if network_id in self.networks:
            return NetworkCreated(self.networks[network_id], False)
        pool = self.pools[body.pool_id]
        self._key += 1
        network = Network(
            id=network_id,
            key=self._key,
            host=body.host,
            model=body.model,
            pool_id=pool.id,
            subnet=pool.subnet,
            gateway=pool.gateway or str(next(ipaddress.IPv4Network(pool.subnet).hosts())),
            gateway_mac=names.gateway_mac(self._key),
            mtu=body.mtu or 1500,
            internal=body.internal,
            vni=body.vni,
            options=body.options,
        )
        self.networks[network_id] = network
        self.pools[pool.id] = pool.model_copy(update={"network_id": network_id})
        self._after("create_network")
        return NetworkCreated(network, True)

    def get_network(self, network_id: str) -> Network | None:
        self._call("get_network", network_id)
        return self.networks.get(network_id)

    def list_networks(self, host: str) -> list[Network]:
        self._call("list_networks", host)
        return [n for n in self.networks.values() if n.host == host]

    def delete_network(self, network_id: str) -> None:
        self._call("delete_network", network_id)
        if any(e.network_id == network_id for e in self.endpoints.values()):
            raise Conflict(f"network {network_id[:12]} still has endpoints")
        self.networks.pop(network_id, None)

    def create_endpoint(self, endpoint_id: str, body: EndpointCreate) -> EndpointStatus:
        self._call("create_endpoint", body)
        ep = Endpoint(
            id=endpoint_id,
            network_id=body.network_id,
            host=body.host,
            mac=body.mac,
            address=body.address,
            port_name=body.port_name,
            port_mappings=body.port_mappings,
        )
        self.endpoints[endpoint_id] = ep
        self._after("create_endpoint")
        return EndpointStatus(endpoint=ep, flows_confirmed=True)

    def get_endpoint(self, endpoint_id: str) -> Endpoint | None:
        self._call("get_endpoint", endpoint_id)
        return self.endpoints.get(endpoint_id)

    def list_endpoints(self, host: str) -> list[Endpoint]:
        self._call("list_endpoints", host)
        return [e for e in self.endpoints.values() if e.host == host]

    def update_endpoint(self, endpoint_id: str, body: EndpointUpdate) -> Endpoint:
        self._call("update_endpoint", body)
        ep = self.endpoints.get(endpoint_id)
        if ep is None:
            raise NotFound(f"endpoint {endpoint_id[:12]} not found")
        changes = {k: v for k, v in body if v is not None}
        ep = ep.model_copy(update=changes)
        self.endpoints[endpoint_id] = ep
        return ep

    def delete_endpoint(self, endpoint_id: str) -> Endpoint | None:
        self._call("delete_endpoint", endpoint_id)
        return self.endpoints.pop(endpoint_id, None)

    def monitoring_settings(self) -> MonitoringSettings:
        self._call("monitoring_settings")
        return self.settings

    def report_alert(self, body: AlertReport) -> AlertOutcome:
        self._call("report_alert", body)
        return AlertOutcome(alert=IdsAlert(**body.model_dump()), action=IdsAction.LOG,
                            received_at=0.0)  # fmt: skip


class FakeHost:
    """HostOps that records what would exist on the host."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []
        self.gateways: dict[str, Network] = {}
        self.uplinks: dict[str, str] = {}  # NIC -> physnet (on the bridge)
        self.veths: dict[str, str] = {}  # endpoint id -> mac
        self.nat: tuple[list[str], dict[str, tuple[PortMapping, ...]]] | None = None
        self.fail: dict[str, QingluanError] = {}
        self.mtu: int | None = 1500
        self.removal_gate: threading.Event | None = None  # set: remove_endpoint waits for it

    @property
    def datapath_type(self) -> DatapathType:
        return DatapathType.NETDEV

    @property
    def bridge(self) -> str:
        return "br-ql"

    def _call(self, name: str, arg: object) -> None:
        self.calls.append((name, arg))
        if name in self.fail:
            raise self.fail[name]

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def ensure_bridge(self, controller_target: str) -> int:
        self._call("ensure_bridge", controller_target)
        return 1

    def ensure_gateway(self, network: Network) -> None:
        self._call("ensure_gateway", network.id)
        self.gateways[network.id] = network

    def remove_gateway(self, network_id: str) -> None:
        self._call("remove_gateway", network_id)
        self.gateways.pop(network_id, None)

    def ensure_uplink(self, physnet: str, nic: str) -> None:
        self._call("ensure_uplink", (physnet, nic))
        self.uplinks[nic] = physnet

    def ensure_endpoint(self, endpoint_id: str, network: Network, mac: str) -> str:
        self._call("ensure_endpoint", (endpoint_id, mac))
        self.veths[endpoint_id] = mac
        return names.endpoint_port(endpoint_id)

    def remove_endpoint(self, endpoint_id: str) -> None:
        if self.removal_gate is not None:
            assert self.removal_gate.wait(10), "the test never opened the gate"
        self._call("remove_endpoint", endpoint_id)
        self.veths.pop(endpoint_id, None)

    def endpoint_plumbed(self, endpoint_id: str) -> bool:
        return endpoint_id in self.veths

    def sync_nat(self, networks: Sequence[Network], endpoints: Sequence[Endpoint]) -> bool:
        self._call("sync_nat", None)
        self.nat = (
            sorted(n.id for n in networks),
            {e.id: e.port_mappings for e in endpoints if e.port_mappings},
        )
        return True

    def sweep(self, networks: Sequence[Network], endpoints: Sequence[Endpoint]) -> SweepReport:
        self._call("sweep", None)
        return SweepReport()

    def has_underlay(self) -> bool:
        return True

    def underlay_ok(self) -> bool:
        return True

    def warm_tunnels(self, addresses: Sequence[str]) -> None:
        self.calls.append(("warm_tunnels", list(addresses)))

    def apply_monitoring(
        self, settings: MonitoringSettings, controller_url: str, agent: str | None = None
    ) -> None:
        self._call("apply_monitoring", (settings, controller_url, agent))

    def ensure_ids_port(self) -> str:
        self._call("ensure_ids_port", None)
        return "qlids1"

    def underlay_mtu(self) -> int | None:
        return self.mtu


@pytest.fixture
def ctl() -> FakeController:
    return FakeController()


@pytest.fixture
def host() -> FakeHost:
    return FakeHost()


UPLINKS = {"physnet1": "eth1"}


@pytest.fixture
def drv(ctl: FakeController, host: FakeHost) -> NetworkDriver:
    return NetworkDriver(host=HOST, controller=ctl, host_ops=host, uplinks=UPLINKS)


@pytest.fixture
def ipam(ctl: FakeController) -> IpamDriver:
    return IpamDriver(controller=ctl)


# ---- helpers that play dockerd -------------------------------------------------


def docker_create_network(
    ipam: IpamDriver,
    drv: NetworkDriver,
    network_id: str = NET,
    *,
    pool: str = "nat",
    subnet: str = "",
    internal: bool = False,
    more: dict[str, str] | None = None,
    **generic: str,
) -> str:
    """RequestPool -> RequestAddress(gateway) -> CreateNetwork, as dockerd orders them."""
    reply = ipam.request_pool(
        p.RequestPoolRequest.model_validate({"Pool": subnet, "Options": {"pool": pool}})
    )
    gw = ipam.request_address(
        p.RequestAddressRequest.model_validate(
            {
                "PoolID": reply.pool_id,
                "Options": {"RequestAddressType": "com.docker.network.gateway"},
            }
        )
    )
    options: dict[str, object] = {"com.docker.network.generic": {**generic, **(more or {})}}
    if internal:
        options["com.docker.network.internal"] = True
    drv.create_network(
        p.CreateNetworkRequest.model_validate(
            {
                "NetworkID": network_id,
                "Options": options,
                "IPv4Data": [{"AddressSpace": "l", "Pool": reply.pool, "Gateway": gw.address}],
                "IPv6Data": [],
            }
        )
    )
    return reply.pool_id


def create_endpoint_req(
    address: str = "10.210.0.7/24", mac: str = "", endpoint_id: str = EP, network_id: str = NET
) -> p.CreateEndpointRequest:
    return p.CreateEndpointRequest.model_validate(
        {
            "NetworkID": network_id,
            "EndpointID": endpoint_id,
            "Interface": {"Address": address, "AddressIPv6": "", "MacAddress": mac},
            "Options": {},
        }
    )


def ep_req(endpoint_id: str = EP, network_id: str = NET) -> p.EndpointRequest:
    return p.EndpointRequest.model_validate({"NetworkID": network_id, "EndpointID": endpoint_id})


def join_req(endpoint_id: str = EP, network_id: str = NET) -> p.JoinRequest:
    return p.JoinRequest.model_validate(
        {"NetworkID": network_id, "EndpointID": endpoint_id, "SandboxKey": "/var/run/docker/x"}
    )


def program_req(
    *bindings: dict[str, object], endpoint_id: str = EP
) -> p.ExternalConnectivityRequest:
    return p.ExternalConnectivityRequest.model_validate(
        {
            "NetworkID": NET,
            "EndpointID": endpoint_id,
            "Options": {"com.docker.network.portmap": list(bindings)},
        }
    )


def tcp(host_port: int, port: int = 80, host_ip: str = "") -> dict[str, object]:
    return {
        "Proto": 6,
        "IP": "",
        "Port": port,
        "HostIP": host_ip,
        "HostPort": host_port,
        "HostPortEnd": host_port,
    }


# ---- capabilities --------------------------------------------------------------


def test_capabilities(drv: NetworkDriver, ipam: IpamDriver):
    assert drv.get_capabilities().model_dump(by_alias=True) == {
        "Scope": "local",
        "ConnectivityScope": "global",
    }
    assert ipam.get_capabilities().model_dump(by_alias=True) == {
        "RequiresMACAddress": True,
        "RequiresRequestReplay": True,
    }
    spaces = ipam.get_default_address_spaces().model_dump(by_alias=True)
    assert set(spaces) == {"LocalDefaultAddressSpace", "GlobalDefaultAddressSpace"}


# ---- CreateNetwork / DeleteNetwork -----------------------------------------------


def test_create_nat_network_puts_network_then_plumbs(drv, ipam, ctl, host):
    pool_id = docker_create_network(ipam, drv, model="nat", extra="kept")
    body = next(arg for name, arg in ctl.calls if name == "create_network")
    assert isinstance(body, NetworkCreate)
    assert body.model_dump() == {
        "host": HOST,
        "model": NetworkModel.NAT,
        "pool_id": pool_id,
        "mtu": None,
        "internal": False,
        "vni": None,
        "options": {"extra": "kept"},
    }
    # the controller first (it allocates key and gateway MAC), then the host
    assert host.names() == ["ensure_gateway", "sync_nat"]
    assert host.gateways[NET].gateway_mac == ctl.networks[NET].gateway_mac
    assert host.nat is not None and host.nat[0] == [NET]


def test_create_network_with_user_subnet_finds_its_pool(drv, ipam, ctl):
    pool_id = docker_create_network(ipam, drv, pool="nonat", subnet="192.168.1.0/24", model="nonat")
    assert pool_id == "nonat_192.168.1.0_24"
    assert ctl.networks[NET].pool_id == pool_id


@pytest.mark.parametrize(
    ("generic", "gateway_dev"),
    [
        ({"model": "nonat"}, True),
        ({"model": "flat"}, False),
        ({"model": "vlan", "vni": "100"}, False),
        ({"model": "vxlan", "vni": "5000"}, True),
    ],
)
def test_gateway_device_for_nat_nonat_and_vxlan(drv, ipam, host, generic, gateway_dev):
    docker_create_network(ipam, drv, pool="x", **generic)
    assert (NET in host.gateways) is gateway_dev


SEED_FLAT = {"model": "flat"}  # --opt model=flat --ipam-opt pool=flat --subnet ... --gateway ...


def test_flat_network_carries_physnet_and_uplink(drv, ipam, ctl, host):
    docker_create_network(ipam, drv, pool="flat", subnet="192.168.159.0/24", **SEED_FLAT)
    body = next(arg for name, arg in ctl.calls if name == "create_network")
    assert isinstance(body, NetworkCreate)
    assert body.model is NetworkModel.FLAT
    assert body.options == {"physnet": "physnet1", "uplink": "eth1"}
    assert ctl.networks[NET].options["uplink"] == "eth1"  # the pipeline's OVS port name
    assert host.uplinks == {"eth1": "physnet1"}
    assert "ensure_gateway" not in host.names()  # the LAN's router is the gateway


def test_flat_uplink_is_shared_and_stays(ctl, host, ipam):
    drv = NetworkDriver(
        host=HOST, controller=ctl, host_ops=host, uplinks={**UPLINKS, "lan2": "eth2"}
    )
    docker_create_network(ipam, drv, pool="flat", subnet="192.168.159.0/24", **SEED_FLAT)
    docker_create_network(
        ipam, drv, NET2, pool="flat", subnet="192.168.160.0/24", model="flat", physnet="lan2"
    )
    docker_create_network(ipam, drv, pool="flat", subnet="192.168.159.0/24", **SEED_FLAT)
    assert ctl.networks[NET2].options == {"physnet": "lan2", "uplink": "eth2"}
    assert host.names().count("ensure_uplink") == 3
    drv.delete_network(p.NetworkRequest.model_validate({"NetworkID": NET}))
    assert host.uplinks == {"eth1": "physnet1", "eth2": "lan2"}  # never detached


@pytest.mark.parametrize(
    ("uplinks", "generic", "physnet"),
    [
        ({}, {}, "physnet1"),
        (UPLINKS, {"physnet": "physnet2"}, "physnet2"),
    ],
)
def test_flat_without_uplink_changes_nothing(ctl, host, ipam, uplinks, generic, physnet):
    drv = NetworkDriver(host=HOST, controller=ctl, host_ops=host, uplinks=uplinks)
    with pytest.raises(InvalidRequest) as err:
        docker_create_network(
            ipam, drv, pool="flat", subnet="192.168.159.0/24", model="flat", **generic
        )
    assert err.value.message == (
        f"host {HOST} has no uplink for physical network {physnet}: "
        f"start qingluan driver with --uplink {physnet}:<nic>"
    )
    assert "create_network" not in ctl.names() and not ctl.networks
    assert host.calls == []


@pytest.mark.parametrize(
    ("generic", "match"),
    [
        ({"uplink": "eth9"}, "--opt uplink is set by the driver"),
        ({"physnet": "bad name"}, "--opt physnet=bad name: physical network name"),
    ],
)
def test_flat_bad_options_change_nothing(drv, ipam, ctl, host, generic, match):
    with pytest.raises(InvalidRequest, match=match):
        docker_create_network(ipam, drv, pool="flat", model="flat", **generic)
    assert "create_network" not in ctl.names()
    assert host.calls == []


def test_flat_uplink_failure_rolls_back_the_network(drv, ipam, ctl, host):
    host.fail["ensure_uplink"] = QingluanError("uplink eth1 ... carries this host's default route")
    with pytest.raises(QingluanError, match="default route"):
        docker_create_network(ipam, drv, pool="flat", **SEED_FLAT)
    assert NET not in ctl.networks
    assert ("delete_network", NET) in ctl.calls


def test_vxlan_mtu_comes_from_the_underlay(drv, ipam, ctl, host):
    host.mtu = 1400
    docker_create_network(ipam, drv, pool="x", model="vxlan", vni="42")
    assert ctl.networks[NET].mtu == 1350
    docker_create_network(
        ipam,
        drv,
        NET2,
        pool="y",
        more={"com.docker.network.driver.mtu": "1300"},
        model="vxlan",
        vni="43",
    )
    assert ctl.networks[NET2].mtu == 1300


def test_bad_model_changes_nothing(drv, ipam, ctl, host):
    with pytest.raises(InvalidRequest, match="unknown network model 'bogus'"):
        docker_create_network(ipam, drv, model="bogus")
    assert "create_network" not in ctl.names()
    assert host.calls == []


def test_subnet_not_from_qingluan_ipam(drv, ctl):
    req = p.CreateNetworkRequest.model_validate(
        {"NetworkID": NET, "IPv4Data": [{"Pool": "172.18.0.0/16", "Gateway": "172.18.0.1/16"}]}
    )
    with pytest.raises(InvalidRequest, match="--ipam-driver qingluanIpam"):
        drv.create_network(req)
    assert "create_network" not in ctl.names()


def test_plumbing_failure_rolls_back_the_network(drv, ipam, ctl, host):
    host.fail["ensure_gateway"] = QingluanError("netlink: File exists")
    with pytest.raises(QingluanError, match="File exists"):
        docker_create_network(ipam, drv, model="nat")
    assert NET not in ctl.networks
    assert host.names()[:2] == ["ensure_gateway", "remove_gateway"]
    assert ("delete_network", NET) in ctl.calls


def test_nat_failure_rolls_back_gateway_and_network(drv, ipam, ctl, host):
    calls = {"n": 0}
    original = host.sync_nat

    def flaky(networks, endpoints):
        calls["n"] += 1
        if calls["n"] == 1:
            raise QingluanError("iptables-restore: line 3 failed")
        return original(networks, endpoints)

    host.sync_nat = flaky
    with pytest.raises(QingluanError, match="iptables-restore"):
        docker_create_network(ipam, drv, model="nat")
    assert NET not in ctl.networks and NET not in host.gateways
    assert host.nat == ([], {})  # re-synced without the network


def test_controller_timeout_deletes_what_it_may_have_stored(drv, ipam, ctl, host):
    ctl.fail["create_network"] = Timeout("bridge did not answer")
    ctl.store_then_fail.add("create_network")
    with pytest.raises(Timeout):
        docker_create_network(ipam, drv, model="nat")
    assert NET not in ctl.networks
    assert host.calls == []


def test_controller_refusal_is_not_undone(drv, ipam, ctl):
    ctl.fail["create_network"] = Conflict("subnet overlaps network abc")
    with pytest.raises(Conflict, match="overlaps"):
        docker_create_network(ipam, drv, model="nat")
    assert "delete_network" not in ctl.names()


def test_failed_repeat_keeps_the_existing_network(drv, ipam, ctl, host):
    docker_create_network(ipam, drv, model="nat")
    host.fail["ensure_gateway"] = QingluanError("boom")
    with pytest.raises(QingluanError):
        docker_create_network(ipam, drv, model="nat")
    assert NET in ctl.networks  # the PUT was a 200 repeat: not ours to delete


def test_create_network_is_idempotent(drv, ipam, ctl, host):
    docker_create_network(ipam, drv, model="nat")
    docker_create_network(ipam, drv, model="nat")
    assert list(ctl.networks) == [NET]
    assert host.names().count("ensure_gateway") == 2


def test_delete_network(drv, ipam, ctl, host):
    docker_create_network(ipam, drv, model="nat")
    drv.delete_network(p.NetworkRequest.model_validate({"NetworkID": NET}))
    assert NET not in ctl.networks and NET not in host.gateways
    assert host.nat == ([], {})
    # unknown id: fine, and still cleans up by name
    drv.delete_network(p.NetworkRequest.model_validate({"NetworkID": NET2}))
    assert ("remove_gateway", NET2) in host.calls


def test_delete_network_with_endpoints_keeps_the_plumbing(drv, ipam, ctl, host):
    docker_create_network(ipam, drv, model="nat")
    drv.create_endpoint(create_endpoint_req())
    with pytest.raises(Conflict):
        drv.delete_network(p.NetworkRequest.model_validate({"NetworkID": NET}))
    assert NET in host.gateways


# ---- endpoints ---------------------------------------------------------------------


def test_create_endpoint_fills_only_the_mac(drv, ipam, ctl, host):
    docker_create_network(ipam, drv, model="nat")
    reply = drv.create_endpoint(create_endpoint_req())
    mac = names.endpoint_mac(EP)
    assert reply.model_dump(by_alias=True, exclude_none=True) == {"Interface": {"MacAddress": mac}}
    assert host.veths == {EP: mac}
    body = ctl.calls[-1][1]
    assert isinstance(body, EndpointCreate)
    assert (body.address, body.mac, body.port_name, body.host) == (
        "10.210.0.7",
        mac,
        names.endpoint_port(EP),
        HOST,
    )


def test_create_endpoint_keeps_dockers_mac(drv, ipam, host):
    docker_create_network(ipam, drv, model="nat")
    reply = drv.create_endpoint(create_endpoint_req(mac="02:42:0A:D2:00:07"))
    assert reply.model_dump(by_alias=True, exclude_none=True) == {}
    assert host.veths[EP] == "02:42:0a:d2:00:07"


def test_create_endpoint_veth_before_controller(drv, ipam, ctl, host):
    docker_create_network(ipam, drv, model="nat")
    host.calls.clear()
    ctl.calls.clear()
    order: list[str] = []
    real_ensure, real_put = host.ensure_endpoint, ctl.create_endpoint

    def ensure(*a):
        order.append("veth")
        return real_ensure(*a)

    def put(*a):
        order.append("put")
        return real_put(*a)

    host.ensure_endpoint = ensure
    ctl.create_endpoint = put
    drv.create_endpoint(create_endpoint_req())
    assert order == ["veth", "put"]  # the controller waits for the port to appear


def test_create_endpoint_on_unknown_network(drv, host):
    with pytest.raises(NotFound, match="not known to the qingluan controller"):
        drv.create_endpoint(create_endpoint_req())
    assert host.calls == []


def test_create_endpoint_timeout_undoes_both_sides(drv, ipam, ctl, host):
    docker_create_network(ipam, drv, model="nat")
    ctl.fail["create_endpoint"] = Timeout("port qlv… did not appear in time")
    ctl.store_then_fail.add("create_endpoint")
    with pytest.raises(Timeout, match="did not appear"):
        drv.create_endpoint(create_endpoint_req())
    assert EP not in ctl.endpoints
    assert host.veths == {}


def test_create_endpoint_conflict_removes_veth_only(drv, ipam, ctl, host):
    docker_create_network(ipam, drv, model="nat")
    ctl.fail["create_endpoint"] = Conflict("address 10.210.0.7 is already in use")
    with pytest.raises(Conflict, match="already in use"):
        drv.create_endpoint(create_endpoint_req())
    assert "delete_endpoint" not in ctl.names()
    assert host.veths == {}


def test_create_endpoint_without_address(drv, ipam, host):
    docker_create_network(ipam, drv, model="nat")
    with pytest.raises(InvalidRequest, match="qingluanIpam"):
        drv.create_endpoint(create_endpoint_req(address=""))


def test_endpoint_oper_info(drv, ipam):
    docker_create_network(ipam, drv, model="nat")
    assert drv.endpoint_oper_info(ep_req()).model_dump(by_alias=True) == {"Value": {}}
    drv.create_endpoint(create_endpoint_req())
    value = drv.endpoint_oper_info(ep_req()).value
    assert value["qingluan.port"] == names.endpoint_port(EP)
    assert value["qingluan.address"] == "10.210.0.7"


def test_unknown_ids_succeed_for_teardown_calls(drv, ctl, host):
    drv.leave(ep_req())
    drv.delete_endpoint(ep_req())
    drv.revoke_external_connectivity(ep_req())
    drv.delete_network(p.NetworkRequest.model_validate({"NetworkID": NET}))
    assert ("remove_endpoint", EP) in host.calls


def test_delete_endpoint(drv, ipam, ctl, host):
    docker_create_network(ipam, drv, model="nat")
    drv.create_endpoint(create_endpoint_req())
    drv.delete_endpoint(ep_req())
    assert drv.flush(5)
    assert EP not in ctl.endpoints and host.veths == {}
    drv.delete_endpoint(ep_req())  # again: fine
    assert drv.flush(5)


def test_the_veth_goes_after_delete_endpoint_returned_and_before_the_network(drv, ipam, ctl, host):
    docker_create_network(ipam, drv, model="nat")
    drv.create_endpoint(create_endpoint_req())
    host.removal_gate = threading.Event()
    drv.delete_endpoint(ep_req())  # returns while the removal waits
    assert EP not in ctl.endpoints and EP in host.veths
    assert not drv.flush(0.1)
    deleting = threading.Thread(
        target=drv.delete_network, args=(p.NetworkRequest.model_validate({"NetworkID": NET}),)
    )
    deleting.start()
    deleting.join(0.2)
    assert deleting.is_alive() and NET in ctl.networks  # DeleteNetwork waits for it
    host.removal_gate.set()
    deleting.join(5)
    assert host.veths == {} and NET not in ctl.networks


def test_an_endpoint_id_used_again_waits_for_its_old_veth_to_go(drv, ipam, ctl, host):
    docker_create_network(ipam, drv, model="nat")
    drv.create_endpoint(create_endpoint_req())
    busy = threading.Event()
    for _ in range(2):  # occupy both removal workers: the removal below waits in the queue
        drv._removals.submit(busy.wait, 10)
    drv.delete_endpoint(ep_req())
    creating = threading.Thread(target=drv.create_endpoint, args=(create_endpoint_req(),))
    creating.start()
    creating.join(0.2)
    assert creating.is_alive()  # it waits: the queued removal would take the new pair
    busy.set()
    creating.join(5)
    assert drv.flush(5)
    assert EP in host.veths and EP in ctl.endpoints
    assert host.names()[-2:] == ["remove_endpoint", "ensure_endpoint"]


def test_a_failed_background_removal_is_logged(drv, ipam, ctl, host, caplog):
    docker_create_network(ipam, drv, model="nat")
    drv.create_endpoint(create_endpoint_req())
    host.fail["remove_endpoint"] = HostError("ip: device busy")
    drv.delete_endpoint(ep_req())  # Docker is told it worked: the controller forgot it
    assert drv.flush(5) and EP not in ctl.endpoints
    assert "its veth and port were not removed (ip: device busy)" in caplog.text


# ---- Join ---------------------------------------------------------------------------


def test_join_nat(drv, ipam, ctl, host):
    docker_create_network(ipam, drv, model="nat")
    drv.create_endpoint(create_endpoint_req())
    reply = drv.join(join_req())
    assert reply.model_dump(by_alias=True, exclude_none=True) == {
        "InterfaceName": {"SrcName": names.endpoint_peer(EP), "DstPrefix": "eth"},
        "Gateway": ctl.networks[NET].gateway,
        "DisableGatewayService": False,
    }


@pytest.mark.parametrize(
    ("generic", "internal", "want"),
    [
        ({"model": "nat"}, False, ("gw", False)),
        ({"model": "nonat"}, False, (None, True)),
        ({"model": "flat"}, False, ("gw", False)),
        ({"model": "vlan", "vni": "7"}, False, ("gw", False)),
        ({"model": "vxlan", "vni": "7"}, False, ("gw", False)),
        ({"model": "vxlan", "vni": "7", "nat": "false"}, False, (None, True)),
        ({"model": "nat"}, True, (None, True)),
        ({"model": "vlan", "vni": "7"}, True, (None, True)),
    ],
)
def test_join_gateway_per_model(drv, ipam, ctl, generic, internal, want):
    docker_create_network(ipam, drv, pool="x", internal=internal, **generic)
    network = ctl.networks[NET]
    gateway, disable = join_gateway(network)
    assert (gateway and "gw", disable) == want


def test_join_unknown_endpoint(drv, ipam):
    docker_create_network(ipam, drv, model="nat")
    with pytest.raises(NotFound, match="endpoint"):
        drv.join(join_req())


def test_join_recreates_a_missing_pair(drv, ipam, host):
    docker_create_network(ipam, drv, model="nat")
    drv.create_endpoint(create_endpoint_req())
    host.veths.clear()
    drv.join(join_req())
    assert EP in host.veths


def test_join_does_no_plumbing_when_the_pair_is_there(drv, ipam, host):
    docker_create_network(ipam, drv, model="nat")
    drv.create_endpoint(create_endpoint_req())
    before = list(host.calls)
    drv.join(join_req())
    assert host.calls == before, "Join must not redo CreateEndpoint's work"


# ---- port publishing -------------------------------------------------------------------


def test_program_external_connectivity_stores_and_applies(drv, ipam, ctl, host):
    docker_create_network(ipam, drv, model="nat")
    drv.create_endpoint(create_endpoint_req())
    drv.program_external_connectivity(program_req(tcp(8080), tcp(8080, host_ip="::")))
    mapping = PortMapping(proto=Protocol.TCP, container_port=80, host_port=8080, host_port_end=8080)
    assert ctl.endpoints[EP].port_mappings == (mapping,)
    assert host.nat is not None and host.nat[1] == {EP: (mapping,)}
    # a repeat does not patch again
    patches = ctl.names().count("update_endpoint")
    drv.program_external_connectivity(program_req(tcp(8080)))
    assert ctl.names().count("update_endpoint") == patches
    drv.revoke_external_connectivity(ep_req())
    assert ctl.endpoints[EP].port_mappings == ()
    assert host.nat[1] == {}


def test_published_port_conflict(drv, ipam, ctl):
    docker_create_network(ipam, drv, model="nat")
    drv.create_endpoint(create_endpoint_req())
    drv.create_endpoint(create_endpoint_req("10.210.0.8/24", endpoint_id=EP2))
    drv.program_external_connectivity(program_req(tcp(8080)))
    with pytest.raises(Conflict, match=r"host port 8080/tcp is already published by endpoint e1e1"):
        drv.program_external_connectivity(program_req(tcp(8080, port=81), endpoint_id=EP2))
    assert ctl.endpoints[EP2].port_mappings == ()
    # another host address or port is fine
    drv.program_external_connectivity(program_req(tcp(8081), endpoint_id=EP2))


def test_port_conflict_rules():
    def m(port: int, end: int | None = None, ip: str = "", proto=Protocol.TCP) -> PortMapping:
        return PortMapping(
            proto=proto, container_port=80, host_port=port, host_port_end=end or port, host_ip=ip
        )

    def ep(*maps: PortMapping) -> Endpoint:
        return Endpoint(
            id=EP2,
            network_id=NET,
            host=HOST,
            mac="52:45:00:00:00:02",
            address="10.0.0.3",
            port_name="qlv",
            port_mappings=maps,
            container_name="web",
        )

    assert port_conflict(EP, [m(80)], [ep(m(80))]) == "host port 80/tcp is already published by web"
    assert port_conflict(EP, [m(80)], [ep(m(70, 90))]) is not None
    assert port_conflict(EP, [m(80, ip="127.0.0.1")], [ep(m(80))]) is not None
    assert port_conflict(EP, [m(80, ip="127.0.0.1")], [ep(m(80, ip="10.0.0.1"))]) is None
    assert port_conflict(EP, [m(80, proto=Protocol.UDP)], [ep(m(80))]) is None
    assert port_conflict(EP2, [m(80)], [ep(m(80))]) is None  # itself


def test_publishing_ignored_without_nat(drv, ipam, ctl, host):
    docker_create_network(ipam, drv, pool="x", model="nonat")
    drv.create_endpoint(create_endpoint_req())
    drv.program_external_connectivity(program_req(tcp(8080)))
    assert "update_endpoint" not in ctl.names()


def test_program_unknown_endpoint_is_404(drv, ipam):
    docker_create_network(ipam, drv, model="nat")
    with pytest.raises(NotFound):  # Docker ignores a 404 here
        drv.program_external_connectivity(program_req(tcp(8080)))


def test_failed_nat_restores_the_old_mappings(drv, ipam, ctl, host):
    docker_create_network(ipam, drv, model="nat")
    drv.create_endpoint(create_endpoint_req())
    host.fail["sync_nat"] = QingluanError("iptables-restore failed")
    with pytest.raises(QingluanError):
        drv.program_external_connectivity(program_req(tcp(8080)))
    assert ctl.endpoints[EP].port_mappings == ()


def test_bad_port_map_is_refused(drv, ipam, ctl):
    docker_create_network(ipam, drv, model="nat")
    drv.create_endpoint(create_endpoint_req())
    with pytest.raises(InvalidRequest, match="explicit host ports"):
        drv.program_external_connectivity(program_req(tcp(0)))


# ---- IPAM ------------------------------------------------------------------------------


def test_ipam_calls_go_to_the_controller(ipam, ctl):
    reply = ipam.request_pool(
        p.RequestPoolRequest.model_validate({"Pool": "192.168.5.0/24", "Options": {"pool": "nat"}})
    )
    assert (reply.pool_id, reply.pool, reply.data) == ("nat_192.168.5.0_24", "192.168.5.0/24", {})
    gw = ipam.request_address(
        p.RequestAddressRequest.model_validate(
            {
                "PoolID": reply.pool_id,
                "Options": {"RequestAddressType": "com.docker.network.gateway"},
            }
        )
    )
    assert gw.address == "192.168.5.1/24"
    addr = ipam.request_address(
        p.RequestAddressRequest.model_validate(
            {
                "PoolID": reply.pool_id,
                "Address": "192.168.5.9",
                "Options": {"com.docker.network.endpoint.macaddress": "02:42:c0:a8:05:09"},
            }
        )
    )
    assert addr.address == "192.168.5.9/24"
    sent = ctl.calls[-1][1]
    assert isinstance(sent, tuple) and sent[1].mac == "02:42:c0:a8:05:09"
    ipam.release_address(
        p.ReleaseAddressRequest.model_validate(
            {"PoolID": reply.pool_id, "Address": "192.168.5.9/24"}
        )
    )
    assert ctl.calls[-1] == ("release_address", (reply.pool_id, "192.168.5.9"))
    ipam.release_pool(p.ReleasePoolRequest.model_validate({"PoolID": reply.pool_id}))
    assert ctl.calls[-1] == ("release_pool", reply.pool_id)


def test_ipam_v6_is_refused_before_the_controller(ipam, ctl):
    with pytest.raises(InvalidRequest, match="IPv6"):
        ipam.request_pool(p.RequestPoolRequest.model_validate({"V6": True}))
    assert ctl.calls == []


def test_controller_message_passes_through(ipam, ctl):
    ctl.fail["request_pool"] = QingluanError("pool nat is exhausted")
    with pytest.raises(QingluanError, match=r"^pool nat is exhausted$"):
        ipam.request_pool(p.RequestPoolRequest.model_validate({"Options": {"pool": "nat"}}))


# ---- start-up guard ----------------------------------------------------------------------


def test_calls_wait_for_startup_then_say_why(ctl, host, ipam):
    guard = HostGuard(wait_timeout=0.05)
    guard.set_starting("the qingluan controller at http://127.0.0.1:6680 is not reachable")
    drv = NetworkDriver(host=HOST, controller=ctl, host_ops=host, guard=guard)
    with pytest.raises(Unavailable, match="not ready: the qingluan controller at"):
        docker_create_network(ipam, drv, model="nat")
    assert drv.get_capabilities().scope == "local"  # capabilities never wait
    guard.set_ready()
    docker_create_network(ipam, drv, model="nat")


def test_guard_excludes_calls_during_the_sweep():
    guard = HostGuard(ready=True, wait_timeout=5)
    inside: list[str] = []
    entered = threading.Event()
    release = threading.Event()

    def sweep() -> None:
        with guard.exclusive():
            entered.set()
            inside.append("sweep-start")
            release.wait(2)
            inside.append("sweep-end")

    def call() -> None:
        with guard.shared():
            inside.append("call")

    t = threading.Thread(target=sweep)
    t.start()
    entered.wait(2)
    c = threading.Thread(target=call)
    c.start()
    c.join(0.1)
    assert inside == ["sweep-start"]
    release.set()
    t.join(2)
    c.join(2)
    assert inside == ["sweep-start", "sweep-end", "call"]


def test_program_external_connectivity_without_ports_touches_no_iptables(drv, ipam, ctl, host):
    docker_create_network(ipam, drv, model="nat")
    drv.create_endpoint(create_endpoint_req())
    syncs = [c for c in host.calls if c[0] == "sync_nat"]
    drv.program_external_connectivity(program_req())
    assert [c for c in host.calls if c[0] == "sync_nat"] == syncs
    # publishing later still works
    drv.program_external_connectivity(program_req(tcp(8080)))
    assert len([c for c in host.calls if c[0] == "sync_nat"]) == len(syncs) + 1


# ---- what the hot calls read locally ------------------------------------------------------


def docker_run_calls(drv: NetworkDriver) -> None:
    """The calls ``docker run --rm`` makes for a container that publishes nothing."""
    drv.create_endpoint(create_endpoint_req())
    drv.endpoint_oper_info(ep_req())
    drv.join(join_req())
    drv.program_external_connectivity(program_req())
    drv.endpoint_oper_info(ep_req())


def test_an_attach_asks_the_controller_once_per_change(drv, ipam, ctl):
    docker_create_network(ipam, drv, model="nat")
    ctl.calls.clear()
    docker_run_calls(drv)
    assert ctl.names() == ["create_endpoint"]  # the network came with CreateNetwork
    drv.revoke_external_connectivity(ep_req())
    drv.delete_endpoint(ep_req())
    # the deletion answers with the controller's copy: a mapping set elsewhere is cleaned up
    assert ctl.names()[1:] == ["delete_endpoint"]


def test_deleting_an_endpoint_clears_mappings_set_through_rest(drv, ipam, ctl, host):
    docker_create_network(ipam, drv, model="nat")
    drv.create_endpoint(create_endpoint_req())
    ctl.endpoints[EP] = ctl.endpoints[EP].model_copy(
        update={
            "port_mappings": (
                PortMapping(
                    proto=Protocol.TCP, container_port=80, host_port=8080, host_port_end=8080
                ),
            )
        }
    )  # a PATCH through REST, behind the driver's back
    syncs = len([c for c in host.calls if c[0] == "sync_nat"])
    drv.revoke_external_connectivity(ep_req())
    drv.delete_endpoint(ep_req())
    assert len([c for c in host.calls if c[0] == "sync_nat"]) == syncs + 1


def test_a_network_is_fetched_once_and_forgotten_with_its_deletion(ctl, host, ipam):
    first = NetworkDriver(host=HOST, controller=ctl, host_ops=host, uplinks=UPLINKS)
    docker_create_network(ipam, first, model="nat")
    drv = NetworkDriver(host=HOST, controller=ctl, host_ops=host, uplinks=UPLINKS)  # restarted
    ctl.calls.clear()
    docker_run_calls(drv)
    assert ctl.names().count("get_network") == 1
    drv.delete_endpoint(ep_req())
    drv.delete_network(p.NetworkRequest.model_validate({"NetworkID": NET}))
    with pytest.raises(NotFound, match="not known to the qingluan controller"):
        drv.create_endpoint(create_endpoint_req())


def test_an_endpoint_created_before_a_restart_is_read_from_the_controller(ctl, host, ipam):
    first = NetworkDriver(host=HOST, controller=ctl, host_ops=host, uplinks=UPLINKS)
    docker_create_network(ipam, first, model="nat")
    first.create_endpoint(create_endpoint_req())
    drv = NetworkDriver(host=HOST, controller=ctl, host_ops=host, uplinks=UPLINKS)
    ctl.calls.clear()
    assert drv.endpoint_oper_info(ep_req()).value["qingluan.address"] == "10.210.0.7"
    drv.join(join_req())
    assert ctl.names().count("get_endpoint") == 2


def test_published_ports_are_kept_in_the_local_copy(drv, ipam, ctl, host):
    docker_create_network(ipam, drv, model="nat")
    drv.create_endpoint(create_endpoint_req())
    drv.program_external_connectivity(program_req(tcp(8080)))
    syncs = [c for c in host.calls if c[0] == "sync_nat"]
    ctl.calls.clear()
    assert "com.docker.network.portmap" in drv.endpoint_oper_info(ep_req()).value
    # a later call without ports must revoke them: it cannot return early
    drv.program_external_connectivity(program_req())
    assert ctl.endpoints[EP].port_mappings == ()
    assert len([c for c in host.calls if c[0] == "sync_nat"]) == len(syncs) + 1
    assert "com.docker.network.portmap" not in drv.endpoint_oper_info(ep_req()).value
