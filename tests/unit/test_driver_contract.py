"""The driver against the real controller REST app (loopback HTTP, SQLite store).

Only the host is faked (``FakeHost``) and the controller's converger (no switch).
This pins the REST contract from the driver's side: paths, status codes, the
token, error bodies and Docker's call sequences end to end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from qingluan.api_schema import FlowDump, HostRegistration, ReconcileResult
from qingluan.controller.api import create_app
from qingluan.controller.services import Services
from qingluan.controller.store import SqliteStore
from qingluan.driver import protocol as p
from qingluan.driver.client import HttpControllerClient
from qingluan.driver.handlers import IpamDriver, NetworkDriver
from qingluan.errors import Conflict, InvalidRequest, Unauthorized
from qingluan.model import DatapathType
from tests.support.proc import free_port
from tests.unit.test_driver_handlers import FakeHost

TOKEN = "contract-token"
HOST = "h1"
NET1, NET2 = "a" * 64, "b" * 64
EP1 = "c" * 64
MAC1 = "02:42:0a:80:00:05"


class NullConverger:
    """The controller's converger without a switch: every bridge converges at once."""

    def converge(
        self,
        host: str,
        *,
        timeout: float = 5.0,
        require_ports: tuple[str, ...] = (),
        full: bool = False,
    ) -> ReconcileResult:
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
        return True

    def ports(self, host: str) -> dict[str, int]:
        return {}

    def dump(self, host: str) -> FlowDump:
        return FlowDump(host=host, connected=True, flows=[], groups=[])


@pytest.fixture
def controller_url(tmp_path: Path) -> Iterator[str]:
    store = SqliteStore.in_state_dir(tmp_path)
    app = create_app(Services(store, NullConverger()), TOKEN)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "controller app did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        store.close()


@pytest.fixture
def client(controller_url: str) -> Iterator[HttpControllerClient]:
    c = HttpControllerClient(controller_url, token=TOKEN)
    c.register_host(
        HOST, HostRegistration(dpid=1, bridge="br-ql", datapath_type=DatapathType.NETDEV)
    )
    yield c
    c.close()


def pool_req(pool: str, subnet: str = "") -> p.RequestPoolRequest:
    return p.RequestPoolRequest.model_validate(
        {"AddressSpace": "qingluan-local", "Pool": subnet, "Options": {"pool": pool}}
    )


def gw_req(pool_id: str) -> p.RequestAddressRequest:
    return p.RequestAddressRequest.model_validate(
        {"PoolID": pool_id, "Options": {"RequestAddressType": "com.docker.network.gateway"}}
    )


def create_req(network_id: str, pool: str, gateway: str, **generic: str) -> p.CreateNetworkRequest:
    return p.CreateNetworkRequest.model_validate(
        {
            "NetworkID": network_id,
            "Options": {"com.docker.network.generic": generic},
            "IPv4Data": [{"AddressSpace": "qingluan-local", "Pool": pool, "Gateway": gateway}],
        }
    )


def test_docker_run_lifecycle_against_the_real_api(client: HttpControllerClient):
    host = FakeHost()
    drv = NetworkDriver(host=HOST, controller=client, host_ops=host)
    ipam = IpamDriver(controller=client)

    # docker network create --opt model=nat --ipam-opt pool=nat nat1
    pool = ipam.request_pool(pool_req("nat"))
    gw = ipam.request_address(gw_req(pool.pool_id))
    drv.create_network(create_req(NET1, pool.pool, gw.address, model="nat"))
    network = client.get_network(NET1)
    assert network is not None and network.gateway == gw.address.split("/")[0]
    assert host.gateways[NET1].gateway_mac == network.gateway_mac
    # replay after a dockerd restart: same pool, same gateway
    assert ipam.request_pool(pool_req("nat", pool.pool)).pool_id == pool.pool_id
    assert ipam.request_address(gw_req(pool.pool_id)).address == gw.address

    # docker run -p 8080:80 --network nat1
    addr = ipam.request_address(
        p.RequestAddressRequest.model_validate(
            {"PoolID": pool.pool_id, "Options": {"com.docker.network.endpoint.macaddress": MAC1}}
        )
    )
    ep_req = p.CreateEndpointRequest.model_validate(
        {
            "NetworkID": NET1,
            "EndpointID": EP1,
            "Interface": {"Address": addr.address, "MacAddress": MAC1},
        }
    )
    assert drv.create_endpoint(ep_req).interface is None  # Docker gave the MAC
    drv.create_endpoint(ep_req)  # idempotent
    join = drv.join(
        p.JoinRequest.model_validate({"NetworkID": NET1, "EndpointID": EP1, "SandboxKey": "/x"})
    )
    assert join.gateway == network.gateway and join.disable_gateway_service is False
    binding = {"Proto": 6, "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080}
    drv.program_external_connectivity(
        p.ExternalConnectivityRequest.model_validate(
            {
                "NetworkID": NET1,
                "EndpointID": EP1,
                "Options": {"com.docker.network.portmap": [binding]},
            }
        )
    )
    stored = client.get_endpoint(EP1)
    assert stored is not None and [m.host_port for m in stored.port_mappings] == [8080]
    assert host.nat is not None and EP1 in host.nat[1]

    # docker rm -f
    ids = p.EndpointRequest.model_validate({"NetworkID": NET1, "EndpointID": EP1})
    drv.revoke_external_connectivity(ids)
    drv.leave(ids)
    drv.delete_endpoint(ids)
    ipam.release_address(
        p.ReleaseAddressRequest.model_validate({"PoolID": pool.pool_id, "Address": addr.address})
    )
    assert drv.flush(5)  # the veth goes in the background
    assert client.get_endpoint(EP1) is None and host.veths == {}
    # teardown calls for ids nobody knows any more
    drv.delete_endpoint(ids)
    drv.revoke_external_connectivity(ids)

    # docker network rm
    drv.delete_network(p.NetworkRequest.model_validate({"NetworkID": NET1}))
    ipam.release_address(
        p.ReleaseAddressRequest.model_validate({"PoolID": pool.pool_id, "Address": gw.address})
    )
    ipam.release_pool(p.ReleasePoolRequest.model_validate({"PoolID": pool.pool_id}))
    assert client.get_network(NET1) is None
    drv.delete_network(p.NetworkRequest.model_validate({"NetworkID": NET1}))


def test_controller_refusals_reach_docker_unchanged(client: HttpControllerClient):
    host = FakeHost()
    drv = NetworkDriver(host=HOST, controller=client, host_ops=host)
    ipam = IpamDriver(controller=client)
    pool = ipam.request_pool(pool_req("nat", "192.168.7.0/24"))
    gw = ipam.request_address(gw_req(pool.pool_id))
    drv.create_network(create_req(NET1, pool.pool, gw.address, model="nat"))
    # a second network on the same subnet: RequestPool gives the same pool, the PUT refuses
    again = ipam.request_pool(pool_req("nat", "192.168.7.0/24"))
    assert again.pool_id == pool.pool_id
    with pytest.raises(Conflict) as exc:
        drv.create_network(create_req(NET2, again.pool, gw.address, model="nat"))
    assert "overlap" in str(exc.value)
    assert NET2 not in host.gateways
    # the first network is untouched
    assert client.get_network(NET1) is not None
    with pytest.raises(InvalidRequest):
        ipam.request_address(
            p.RequestAddressRequest.model_validate(
                {"PoolID": pool.pool_id, "Address": "10.1.1.1", "Options": {}}
            )
        )


def test_wrong_token_is_unauthorized(controller_url: str):
    c = HttpControllerClient(controller_url, token="wrong")
    with pytest.raises(Unauthorized):
        c.delete_network(NET1)
    assert c.list_networks(HOST) == []  # GETs need no token
    c.close()
