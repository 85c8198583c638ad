"""Services over a real SQLite store, with a recording stand-in for the converger.

The real converger (the reconciler) needs a connected switch and is tested
elsewhere; ``RecordingConverger`` records every converge and can be told to
fail, which is all the services depend on.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydantic import ValidationError

from qingluan import names
from qingluan.api_schema import (
    AclCreate,
    AddressRequest,
    EndpointCreate,
    EndpointUpdate,
    FlowDump,
    HostRegistration,
    NetworkCreate,
    NetworkUpdate,
    PoolRequest,
    ReconcileResult,
)
from qingluan.controller.config import ControllerConfig, parse_pool_ranges
from qingluan.controller.services import Services
from qingluan.controller.store import SqliteStore
from qingluan.errors import Conflict, InvalidRequest, NotFound, QingluanError, Timeout, Unavailable
from qingluan.model import DatapathType, NetworkModel, Pool, PortMapping, Protocol
from qingluan.names import gateway_mac

MAC_A = "02:42:ac:11:00:0a"
MAC_B = "02:42:ac:11:00:0b"
NET1 = "1" * 64
NET2 = "2" * 64
EP1 = "e1" + "0" * 62
EP2 = "e2" + "0" * 62


@dataclass
class RecordingConverger:
    """Stand-in for the reconciler: records calls; ``fail`` makes the next ones raise."""

    calls: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    fail: QingluanError | None = None
    connected: bool = True

    def converge(
        self,
        host: str,
        *,
        timeout: float = 5.0,
        require_ports: tuple[str, ...] = (),
        full: bool = False,
    ) -> ReconcileResult:
        self.calls.append((host, require_ports))
        if self.fail is not None:
            raise self.fail
        return ReconcileResult(
            host=host,
            flows_added=0,
            flows_deleted=0,
            groups_added=0,
            groups_modified=0,
            groups_deleted=0,
            seconds=0.0,
        )

    def is_connected(self, host: str) -> bool:
        return self.connected

    def ports(self, host: str) -> dict[str, int]:
        return {"qlb111111111111": 1}

    def dump(self, host: str) -> FlowDump:
        return FlowDump(host=host, connected=self.connected, flows=["x"], groups=[])


@pytest.fixture
def svc(store: SqliteStore, conv: RecordingConverger) -> Services:
    services = Services(store, conv)
    services.register_host("h1", reg(1))
    services.register_host("h2", reg(2))
    conv.calls.clear()
    return services


def reg(dpid: int) -> HostRegistration:
    return HostRegistration(dpid=dpid, bridge="br-ql", datapath_type=DatapathType.NETDEV)


def make_network(
    svc: Services,
    nid: str = NET1,
    subnet: str | None = "192.168.1.0/24",
    gateway: str | None = "192.168.1.1",
    *,
    pool: str = "nat",
    model: NetworkModel = NetworkModel.NAT,
    host: str = "h1",
    vni: int | None = None,
    aux: tuple[str, ...] = (),
) -> str:
    """Docker's `network create`: RequestPool, gateway, aux, CreateNetwork."""
    reply, _ = svc.request_pool(PoolRequest(pool=pool, subnet=subnet))
    svc.request_address(reply.pool_id, AddressRequest(address=gateway, gateway=True))
    for address in aux:
        svc.request_address(reply.pool_id, AddressRequest(address=address))
    svc.create_network(nid, NetworkCreate(host=host, model=model, pool_id=reply.pool_id, vni=vni))
    return reply.pool_id


def run_container(
    svc: Services, eid: str, mac: str, address: str | None = None, nid: str = NET1
) -> str:
    """Docker's `run`: RequestAddress with the MAC, then CreateEndpoint."""
    net = svc.get_network(nid)
    reply, _ = svc.request_address(net.pool_id, AddressRequest(address=address, mac=mac))
    ip = reply.address.split("/")[0]
    svc.create_endpoint(eid, endpoint_body(ip, mac, nid, host=net.host))
    return ip


def endpoint_body(address: str, mac: str, nid: str = NET1, host: str = "h1") -> EndpointCreate:
    return EndpointCreate(
        network_id=nid, host=host, mac=mac, address=address, port_name="qlv" + mac[-2:] * 6
    )


# ---- hosts -------------------------------------------------------------------


def test_register_host_converges_and_is_idempotent(store: SqliteStore) -> None:
    conv = RecordingConverger(connected=False, fail=Unavailable("not connected"))
    svc = Services(store, conv)
    status = svc.register_host("h1", reg(7))
    assert not status.connected and status.ports == {}
    assert conv.calls == [("h1", ())]
    assert svc.register_host("h1", reg(7)).host.dpid == 7
    assert svc.host_by_dpid(7) is not None and svc.host_by_dpid(8) is None


def test_register_host_timeout_is_an_error(store: SqliteStore) -> None:
    svc = Services(store, RecordingConverger(fail=Timeout("no barrier reply")))
    with pytest.raises(Timeout):
        svc.register_host("h1", reg(7))


def test_dpid_belongs_to_one_host(svc: Services) -> None:
    with pytest.raises(Conflict, match="datapath id 0x1 is already the bridge of host h1"):
        svc.register_host("h3", reg(1))


def test_delete_host_refused_while_networks_remain(svc: Services) -> None:
    make_network(svc)
    with pytest.raises(Conflict, match="host h1 still has networks"):
        svc.delete_host("h1")
    svc.delete_host("h2")
    svc.delete_host("nope")
    assert [h.host.name for h in svc.list_hosts()] == ["h1"]


def test_unknown_host(svc: Services) -> None:
    with pytest.raises(NotFound, match="host nope is not registered"):
        svc.get_host("nope")
    with pytest.raises(NotFound):
        svc.host_state("nope")


# ---- networks ----------------------------------------------------------------


def test_create_network_sequence(svc: Services, conv: RecordingConverger) -> None:
    pool_id = make_network(svc)
    net = svc.get_network(NET1)
    assert pool_id == "nat_192.168.1.0_24"
    assert (net.key, net.gateway, net.subnet, net.mtu) == (1, "192.168.1.1", "192.168.1.0/24", 1500)
    assert net.gateway_mac == gateway_mac(1)
    assert conv.calls == [("h1", ())]
    pool = svc.list_pools()[0]
    assert pool.network_id == NET1 and pool.gateway == "192.168.1.1"
    host, networks, endpoints = svc.host_state("h1")
    assert host.name == "h1" and networks == [net] and endpoints == []


def test_identical_repeat_changes_nothing(svc: Services) -> None:
    pool_id = make_network(svc)
    body = NetworkCreate(host="h1", model=NetworkModel.NAT, pool_id=pool_id)
    net, created = svc.create_network(NET1, body)
    assert not created and net == svc.get_network(NET1)
    with pytest.raises(Conflict, match="already exists with other settings"):
        svc.create_network(NET1, body.model_copy(update={"internal": True}))


def test_network_needs_host_pool_and_gateway(svc: Services) -> None:
    with pytest.raises(NotFound, match=re.escape("address pool nat_1.2.3.0_24 not found")):
        svc.create_network(
            NET1, NetworkCreate(host="h1", model=NetworkModel.NAT, pool_id="nat_1.2.3.0_24")
        )
    reply, _ = svc.request_pool(PoolRequest(pool="nat"))
    with pytest.raises(NotFound, match="host h9 is not registered"):
        svc.create_network(
            NET1, NetworkCreate(host="h9", model=NetworkModel.NAT, pool_id=reply.pool_id)
        )
    with pytest.raises(InvalidRequest, match="has no gateway"):
        svc.create_network(
            NET1, NetworkCreate(host="h1", model=NetworkModel.NAT, pool_id=reply.pool_id)
        )
    assert svc.list_networks() == []


def test_refused_second_network_and_dockers_rollback_leave_the_first_intact(
    svc: Services,
) -> None:
    pool_id = make_network(svc, aux=("192.168.1.5",))
    svc.update_network(NET1, NetworkUpdate(name="first"))
    run_container(svc, EP1, MAC_A)
    before = (_pools(svc), svc.get_network(NET1), svc.list_endpoints())

    # docker network create --subnet 192.168.1.0/24 --gateway 192.168.1.1 --aux-address ...
    reply, created = svc.request_pool(PoolRequest(pool="nat", subnet="192.168.1.0/24"))
    assert (reply.pool_id, created) == (pool_id, False)
    _, created = svc.request_address(pool_id, AddressRequest(address="192.168.1.1", gateway=True))
    assert not created
    _, created = svc.request_address(pool_id, AddressRequest(address="192.168.1.5"))
    assert not created
    with pytest.raises(Conflict) as err:
        svc.create_network(NET2, NetworkCreate(host="h1", model=NetworkModel.NAT, pool_id=pool_id))
    assert str(err.value) == "subnet 192.168.1.0/24 overlaps network first (111111111111)"
    # Docker's rollback: ReleaseAddress(gateway), ReleaseAddress(aux), ReleasePool
    svc.release_address(pool_id, "192.168.1.1")
    svc.release_address(pool_id, "192.168.1.5")
    svc.release_pool(pool_id)

    assert (_pools(svc), svc.get_network(NET1), svc.list_endpoints()) == before
    assert run_container(svc, EP2, MAC_B) == "192.168.1.3"  # .1 gateway, .2 EP1, .5 aux


def _pools(svc: Services) -> list[Pool]:
    """The pools apart from the ``released`` mark (which only matters at network delete)."""
    return [p.model_copy(update={"released": False}) for p in svc.list_pools()]


def test_docker_20_10_releases_the_pool_before_deleting_the_network(svc: Services) -> None:
    # docker network rm on dockerd 20.10: ReleaseAddress(gateway), ReleasePool, DeleteNetwork
    pool_id = make_network(svc)
    svc.release_address(pool_id, "192.168.1.1")
    svc.release_pool(pool_id)
    assert [p.id for p in svc.list_pools()] == [pool_id], "kept while the network exists"
    svc.delete_network(NET1)
    assert svc.list_pools() == []


def test_newer_docker_deletes_the_network_before_releasing_the_pool(svc: Services) -> None:
    pool_id = make_network(svc)
    svc.delete_network(NET1)
    svc.release_address(pool_id, "192.168.1.1")
    svc.release_pool(pool_id)
    assert svc.list_pools() == []


def test_a_pool_requested_again_after_a_release_is_kept_with_its_network(svc: Services) -> None:
    pool_id = make_network(svc)
    svc.release_pool(pool_id)  # e.g. the rollback of a refused second create
    svc.request_pool(PoolRequest(pool="nat", subnet="192.168.1.0/24"))  # dockerd's replay
    assert not svc.list_pools()[0].released


def test_failed_converge_undoes_the_network(svc: Services, conv: RecordingConverger) -> None:
    reply, _ = svc.request_pool(PoolRequest(pool="nat"))
    svc.request_address(reply.pool_id, AddressRequest(gateway=True))
    conv.fail = Unavailable("the bridge of host h1 is not connected")
    body = NetworkCreate(host="h1", model=NetworkModel.NAT, pool_id=reply.pool_id)
    with pytest.raises(Unavailable):
        svc.create_network(NET1, body)
    assert svc.list_networks() == []
    assert svc.list_pools()[0].network_id is None
    conv.fail = None
    net, created = svc.create_network(NET1, body)
    assert created and net.key == 1


def test_network_keys_are_reused_after_delete(svc: Services) -> None:
    make_network(svc, NET1, None, None)
    make_network(svc, NET2, None, None)
    assert [n.key for n in svc.list_networks()] == [1, 2]
    svc.delete_network(NET1)
    make_network(svc, "3" * 64, None, None)
    assert svc.get_network("3" * 64).key == 1


def test_vxlan_default_mtu(svc: Services) -> None:
    make_network(svc, subnet=None, gateway=None, pool="vxlan", model=NetworkModel.VXLAN, vni=42)
    assert svc.get_network(NET1).mtu == 1450


def test_vlan_network_on_two_hosts_shares_the_pool(svc: Services) -> None:
    args = {"pool": "vlan", "model": NetworkModel.VLAN, "vni": 100}
    p1 = make_network(svc, NET1, **args)  # type: ignore[arg-type]
    p2 = make_network(svc, NET2, host="h2", **args)  # type: ignore[arg-type]
    assert p1 == p2
    run_container(svc, EP1, MAC_A, nid=NET1)
    # the second host's address comes from the same pool: no duplicate on the VLAN
    assert run_container(svc, EP2, MAC_B, nid=NET2) == "192.168.1.3"
    svc.delete_endpoint(EP1)
    svc.delete_network(NET1)
    svc.release_address(p1, "192.168.1.1")  # h1's `network rm`: the pool stays for h2
    svc.release_pool(p1)
    assert svc.list_pools()[0].network_id == NET2
    assert svc.list_pools()[0].gateway == "192.168.1.1"


def test_delete_network(svc: Services, conv: RecordingConverger) -> None:
    pool_id = make_network(svc)
    run_container(svc, EP1, MAC_A)
    with pytest.raises(Conflict, match="still has endpoints: e10000000000"):
        svc.delete_network(NET1)
    svc.delete_endpoint(EP1)
    conv.calls.clear()
    svc.delete_network(NET1)
    assert conv.calls == [("h1", ())]
    svc.delete_network(NET1)  # unknown: fine
    # Docker's `network rm` continues: ReleaseAddress(gw), ReleasePool
    svc.release_address(pool_id, "192.168.1.2")
    svc.release_address(pool_id, "192.168.1.1")
    svc.release_pool(pool_id)
    assert svc.list_pools() == []
    assert svc.status().pools == []


def test_delete_network_while_bridge_away(svc: Services, conv: RecordingConverger) -> None:
    make_network(svc)
    conv.fail = Unavailable("not connected")
    svc.delete_network(NET1)  # stored; flows go when the bridge connects
    assert svc.list_networks() == []


# ---- endpoints ---------------------------------------------------------------


def test_create_endpoint_waits_for_its_port(svc: Services, conv: RecordingConverger) -> None:
    make_network(svc)
    conv.calls.clear()
    svc.request_address("nat_192.168.1.0_24", AddressRequest(mac=MAC_A))
    status, created = svc.create_endpoint(EP1, endpoint_body("192.168.1.2", MAC_A))
    assert created and status.flows_confirmed
    assert conv.calls == [("h1", ("qlv0a0a0a0a0a0a",))]
    again, created = svc.create_endpoint(EP1, endpoint_body("192.168.1.2", MAC_A))
    assert not created and again == status
    with pytest.raises(Conflict, match="already exists with other settings"):
        svc.create_endpoint(EP1, endpoint_body("192.168.1.3", MAC_A))


def test_endpoint_rolled_back_when_converge_fails(svc: Services, conv: RecordingConverger) -> None:
    pool_id = make_network(svc)
    svc.request_address(pool_id, AddressRequest(mac=MAC_A))
    conv.calls.clear()
    conv.fail = Timeout("port qlv0a0a0a0a0a0a did not appear on br-ql within 5s")
    with pytest.raises(Timeout):
        svc.create_endpoint(EP1, endpoint_body("192.168.1.2", MAC_A))
    assert svc.list_endpoints() == []
    with pytest.raises(NotFound):
        svc.get_endpoint(EP1)
    # converged once more to take off what may have reached the bridge
    assert conv.calls == [("h1", ("qlv0a0a0a0a0a0a",)), ("h1", ())]
    # Docker's RequestAddress allocation is Docker's to release; it is still there
    _, created = svc.request_address(pool_id, AddressRequest(mac=MAC_A))
    assert not created
    conv.fail = None
    status, created = svc.create_endpoint(EP1, endpoint_body("192.168.1.2", MAC_A))
    assert created and status.endpoint.address == "192.168.1.2"


def test_endpoint_allocation_made_by_create_is_rolled_back(
    svc: Services, conv: RecordingConverger
) -> None:
    pool_id = make_network(svc)
    conv.fail = Unavailable("the bridge of host h1 is not connected")
    with pytest.raises(Unavailable):
        svc.create_endpoint(EP1, endpoint_body("192.168.1.9", MAC_A))
    conv.fail = None
    # .9 is free again for another MAC
    reply, created = svc.request_address(pool_id, AddressRequest(address="192.168.1.9", mac=MAC_B))
    assert created and reply.address == "192.168.1.9/24"


def test_endpoint_address_rules(svc: Services) -> None:
    make_network(svc)
    run_container(svc, EP1, MAC_A)
    with pytest.raises(Conflict, match=re.escape("192.168.1.2 is already in use")):
        svc.create_endpoint(EP2, endpoint_body("192.168.1.2", MAC_B))
    with pytest.raises(Conflict, match="it is the gateway"):
        svc.create_endpoint(EP2, endpoint_body("192.168.1.1", MAC_B))
    with pytest.raises(InvalidRequest, match=re.escape("not inside subnet 192.168.1.0/24")):
        svc.create_endpoint(EP2, endpoint_body("10.0.0.2", MAC_B))
    with pytest.raises(InvalidRequest, match="is on host h1, not h2"):
        svc.create_endpoint(EP2, endpoint_body("192.168.1.3", MAC_B, host="h2"))
    with pytest.raises(NotFound, match="network 9 not found"):
        svc.create_endpoint(EP2, endpoint_body("192.168.1.3", MAC_B, nid="9"))
    assert len(svc.list_endpoints()) == 1


def test_given_ip_taken_and_replay(svc: Services) -> None:
    pool_id = make_network(svc)
    run_container(svc, EP1, MAC_A, "192.168.1.50")
    # dockerd's replay at its restart: same address, same MAC
    reply, created = svc.request_address(pool_id, AddressRequest(address="192.168.1.50", mac=MAC_A))
    assert (reply.address, created) == ("192.168.1.50/24", False)
    # another container asking for it with --ip
    with pytest.raises(Conflict, match=re.escape("address 192.168.1.50 is already in use")):
        svc.request_address(pool_id, AddressRequest(address="192.168.1.50", mac=MAC_B))


def test_update_and_list_endpoints(svc: Services) -> None:
    make_network(svc)
    run_container(svc, EP1, MAC_A)
    mapping = PortMapping(proto=Protocol.TCP, container_port=80, host_port=8080, host_port_end=8080)
    ep = svc.update_endpoint(EP1, EndpointUpdate(container_name="web", port_mappings=(mapping,)))
    assert ep.container_name == "web" and ep.port_mappings == (mapping,)
    assert svc.update_endpoint(EP1, EndpointUpdate()) == ep
    assert svc.list_endpoints(host="h1", network_id=NET1) == [ep]
    assert svc.list_endpoints(host="h2") == []
    # a repeat of CreateEndpoint after the name was learned is still identical
    _, created = svc.create_endpoint(EP1, endpoint_body("192.168.1.2", MAC_A))
    assert not created
    with pytest.raises(NotFound):
        svc.update_endpoint(EP2, EndpointUpdate(container_name="x"))


def test_delete_endpoint_converges(svc: Services, conv: RecordingConverger) -> None:
    make_network(svc)
    run_container(svc, EP1, MAC_A)
    conv.calls.clear()
    svc.delete_endpoint(EP1)
    svc.delete_endpoint(EP1)
    assert conv.calls == [("h1", ())]
    assert svc.host_state("h1")[2] == []


def test_concurrent_address_requests_are_unique(svc: Services) -> None:
    pool_id = make_network(svc)
    got: list[str] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        for j in range(10):
            mac = f"02:42:ac:11:{i:02x}:{j:02x}"
            reply, _ = svc.request_address(pool_id, AddressRequest(mac=mac))
            with lock:
                got.append(reply.address)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 80 and len(set(got)) == 80


def test_state_survives_reopening_the_store(tmp_path: Path) -> None:
    conv = RecordingConverger()
    with SqliteStore.in_state_dir(tmp_path) as store:
        svc = Services(store, conv)
        svc.register_host("h1", reg(1))
        make_network(svc)
        run_container(svc, EP1, MAC_A)
        before = svc.status()
    with SqliteStore.in_state_dir(tmp_path) as store:
        svc = Services(store, conv)
        assert svc.status() == before
        # replay after the restart changes nothing
        reply, created = svc.request_pool(PoolRequest(pool="nat", subnet="192.168.1.0/24"))
        assert not created
        _, created = svc.request_address(
            reply.pool_id, AddressRequest(address="192.168.1.2", mac=MAC_A)
        )
        assert not created
        assert svc.status() == before


def test_flows_and_reconcile_need_a_known_host(svc: Services, conv: RecordingConverger) -> None:
    assert svc.host_flows("h1").flows == ["x"]
    assert svc.reconcile_host("h1").host == "h1"
    with pytest.raises(NotFound):
        svc.host_flows("nope")
    with pytest.raises(NotFound):
        svc.reconcile_host("nope")


# ---- configuration -------------------------------------------------------------


def test_config_defaults() -> None:
    config = ControllerConfig()
    assert config.state_dir == Path("/var/lib/qingluan")
    assert (config.api_host, config.api_port) == ("127.0.0.1", 6680)
    assert (config.openflow_host, config.openflow_port) == ("0.0.0.0", 6653)
    assert config.token_path == Path("/var/lib/qingluan/token")
    assert config.api_url == "http://127.0.0.1:6680"
    assert config.pool_ranges["nat"] == "10.128.0.0/16"
    assert config.pool_ranges["flat"] is None
    assert ControllerConfig(token_file=Path("/etc/t")).token_path == Path("/etc/t")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"api_port": 0}, "api_port"),
        ({"api_host": "not a host!"}, "neither an IP address nor a host name"),
        ({"pool_ranges": {"a": "10.0.0.0/16", "b": "10.0.1.0/24"}}, "overlaps pool a"),
        ({"pool_ranges": {"a": "10.0.0.0/25"}}, "smaller than one /24 subnet"),
        ({"pool_ranges": {"a": "10.0.0.1/16"}}, "not an IPv4 range"),
        ({"pool_ranges": {"bad name": None}}, "not a valid address-pool name"),
        ({"pool_ranges": {}}, "at least one address pool"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_config_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ControllerConfig(**kwargs)


def test_parse_pool_ranges_and_services_use_them(store: SqliteStore) -> None:
    ranges = parse_pool_ranges(["nat=172.30.0.0/16", "lab=", "edge=10.250.0.0/20"])
    assert ranges["nat"] == "172.30.0.0/16" and ranges["lab"] is None
    assert ranges["nonat"] == "10.129.0.0/16"
    with pytest.raises(ValueError, match="looks like nat="):
        parse_pool_ranges(["nat"])
    config = ControllerConfig(pool_ranges=ranges, carve_prefix=26)
    svc = Services.from_config(store, RecordingConverger(), config)
    assert svc.request_pool(PoolRequest(pool="nat"))[0].subnet == "172.30.0.0/26"
    assert svc.request_pool(PoolRequest(pool="edge"))[0].pool_id == "edge_10.250.0.0_26"
    with pytest.raises(InvalidRequest, match="--subnet"):
        svc.request_pool(PoolRequest(pool="lab"))


def _flat(svc: Services, nid: str, subnet: str, uplink: str, host: str = "h1") -> None:
    reply, _ = svc.request_pool(PoolRequest(pool="flat", subnet=subnet))
    gateway = subnet.rsplit(".", 1)[0] + ".1"
    svc.request_address(reply.pool_id, AddressRequest(address=gateway, gateway=True))
    svc.create_network(
        nid,
        NetworkCreate(
            host=host,
            model=NetworkModel.FLAT,
            pool_id=reply.pool_id,
            options={"physnet": "physnet1", "uplink": uplink},
        ),
    )


def test_one_flat_network_per_uplink_nic_on_a_host(svc: Services) -> None:
    _flat(svc, NET1, "192.168.159.0/24", "eth1")
    before = svc.list_networks()
    with pytest.raises(Conflict, match=r"already has flat network .* on eth1"):
        _flat(svc, NET2, "192.168.160.0/24", "eth1")
    assert svc.list_networks() == before
    _flat(svc, NET2, "192.168.160.0/24", "eth2")  # another NIC is fine


# ---- vxlan: peers and the hosts that tunnel to each other -----------------------


def vxlan_cluster(store: SqliteStore) -> tuple[Services, RecordingConverger]:
    conv = RecordingConverger()
    svc = Services(store, conv)
    for i, name in enumerate(("h1", "h2", "h3"), start=1):
        svc.register_host(name, reg(i).model_copy(update={"address": f"172.31.0.{10 + i}"}))
    for name, nid in (("h1", NET1), ("h2", NET2)):
        reply, _ = svc.request_pool(
            PoolRequest(pool="vxlan", options={"pool": "vxlan", "vni": "5000"})
        )
        svc.request_address(reply.pool_id, AddressRequest(gateway=True))
        svc.create_network(
            nid, NetworkCreate(host=name, model=NetworkModel.VXLAN, pool_id=reply.pool_id, vni=5000)
        )
    conv.calls.clear()
    return svc, conv


def test_a_vxlan_network_on_two_hosts_is_one_subnet_with_one_gateway_mac(
    store: SqliteStore,
) -> None:
    svc, _ = vxlan_cluster(store)
    one, two = svc.get_network(NET1), svc.get_network(NET2)
    assert one.subnet == two.subnet and one.gateway == two.gateway
    assert one.gateway_mac == two.gateway_mac == names.anycast_gateway_mac(5000)
    assert one.key != two.key


def test_peers_are_the_other_hosts_with_the_vni_and_their_endpoints(store: SqliteStore) -> None:
    svc, conv = vxlan_cluster(store)
    run_container(svc, "e" * 64, MAC_A, nid=NET2)
    # the endpoint on h2 is made known to h1 before CreateEndpoint returns; h3 has no part
    assert conv.calls == [("h2", ("qlv" + "0a" * 6,)), ("h1", ())]
    [peer] = svc.peers("h1")
    assert (peer.host, peer.address, peer.vni) == ("h2", "172.31.0.12", 5000)
    assert [e.id for e in peer.endpoints] == ["e" * 64]
    assert [p.host for p in svc.peers("h2")] == ["h1"] and svc.peers("h3") == []
    conv.calls.clear()
    svc.delete_endpoint("e" * 64)
    assert conv.calls == [("h2", ()), ("h1", ())]


def test_a_host_joining_or_leaving_a_vni_converges_the_others(store: SqliteStore) -> None:
    svc, conv = vxlan_cluster(store)
    svc.register_host("h2", reg(2).model_copy(update={"address": "172.31.0.99"}))
    assert conv.calls == [("h2", ()), ("h1", ())]  # a new underlay address: h1 re-points
    assert svc.peers("h1")[0].address == "172.31.0.99"
    conv.calls.clear()
    svc.delete_network(NET2)
    assert conv.calls == [("h2", ()), ("h1", ())]
    assert svc.peers("h1") == []


def test_a_host_gone_for_good_is_forced_out_of_every_other_hosts_tunnels(
    store: SqliteStore,
) -> None:
    svc, conv = vxlan_cluster(store)
    ip = run_container(svc, "e" * 64, MAC_A, nid=NET2)
    with pytest.raises(Conflict, match="host h2 still has networks"):
        svc.delete_host("h2")
    conv.calls.clear()
    svc.delete_host("h2", force=True)
    assert conv.calls == [("h1", ())]  # only the hosts that tunnelled to it
    assert svc.peers("h1") == [] and svc.list_endpoints(host="h2") == []
    assert [n.host for n in svc.list_networks()] == ["h1"]
    assert "h2" not in [h.host.name for h in svc.list_hosts()]
    # its container's address is free again in the shared pool
    reply, created = svc.request_address(
        svc.get_network(NET1).pool_id, AddressRequest(address=ip, mac="02:42:ac:11:00:0b")
    )
    assert created and reply.address.startswith(ip + "/")


# ---- ACLs ----------------------------------------------------------------------


def acl(**fields: object) -> AclCreate:
    return AclCreate.model_validate({"direction": "ingress", "action": "deny", **fields})


def test_acl_rules_are_checked_against_the_cluster_before_anything_changes(
    svc: Services, conv: RecordingConverger
) -> None:
    make_network(svc)
    run_container(svc, "e" * 64, MAC_A)
    svc.update_endpoint("e" * 64, EndpointUpdate(container_name="web"))
    conv.calls.clear()
    bad = [
        (acl(scope="nope"), "scope: unknown network 'nope'"),
        (acl(src={"container": "ghost"}), "src: unknown container 'ghost'"),
        (acl(dst={"network": "nope"}), "dst: unknown network 'nope'"),
    ]
    for body, message in bad:
        with pytest.raises(InvalidRequest, match=re.escape(message)):
            svc.create_acl(body)
    assert svc.list_acls() == [] and conv.calls == []
    rule = svc.create_acl(acl(src={"container": "web"}, priority=10))
    assert rule.id == "acl-1" and rule.src is not None and rule.src.container == "web"
    assert sorted(h for h, _ in conv.calls) == ["h1", "h2"]  # every bridge, before the reply
    with pytest.raises(Conflict, match="priority 10 is already ACL rule acl-1"):
        svc.create_acl(acl(priority=10))
    with pytest.raises(Conflict, match="ACL rule acl-1 already exists"):
        svc.create_acl(acl(id="acl-1", priority=11))
    policy = svc.policy()
    assert [r.id for r in policy.rules] == ["acl-1"] and len(policy.endpoints) == 1
    svc.delete_acl("acl-1")
    svc.delete_acl("acl-1")
    assert svc.list_acls() == [] and svc.policy().rules == ()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"src": {"cidr": "10.0.0.1/24"}}, "is not an IPv4 CIDR"),
        ({"protocol": "tcp", "ports": "90-80"}, "the range 90-80 is reversed"),
        ({"protocol": "icmp", "ports": "80"}, "only tcp and udp rules have ports"),
        ({"protocol": "tcp", "icmp_type": 8}, "only icmp rules have one"),
        ({"src": {"cidr": "10.0.0.0/8", "label": "a=b"}}, "exactly one of cidr"),
        ({"dst": {"label": "novalue"}}, "is not key=value"),
        ({"priority": 0}, "greater than or equal to 1"),
    ],
)
def test_bad_acl_bodies_name_the_problem(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        acl(**fields)
