"""The REST API as a client sees it: the real app over a real SQLite store.

The converger is a small recording stand-in (``RecordingConverger`` from
test_services): the real one needs a connected switch and is tested elsewhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from qingluan.controller.api import create_app
from qingluan.controller.auth import bearer_token, load_or_create_token, read_token, token_matches
from qingluan.controller.services import Services
from qingluan.controller.store import SqliteStore
from qingluan.errors import QingluanError, Timeout, Unavailable
from tests.unit.test_services import RecordingConverger

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAC_A = "02:42:ac:11:00:0a"
MAC_B = "02:42:ac:11:00:0b"
NET1 = "a" * 64
NET2 = "b" * 64
EP1 = "c" * 64
EP2 = "d" * 64


class Api:
    """A client with the token, and helpers for Docker's call sequences."""

    def __init__(self, client: TestClient, conv: RecordingConverger) -> None:
        self.client = client
        self.conv = conv

    def get(self, path: str, **kw: Any) -> httpx.Response:
        reply: httpx.Response = self.client.get("/v1" + path, **kw)
        return reply

    def call(self, method: str, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        kw.setdefault("headers", AUTH)
        reply: httpx.Response = self.client.request(method, "/v1" + path, json=body, **kw)
        return reply

    def pool(self, **body: Any) -> httpx.Response:
        return self.call("POST", "/ipam/pools", body)

    def address(self, pool_id: str, **body: Any) -> httpx.Response:
        return self.call("POST", f"/ipam/pools/{pool_id}/addresses", body)

    def network(self, nid: str, pool_id: str, **body: Any) -> httpx.Response:
        return self.call(
            "PUT", f"/networks/{nid}", {"host": "h1", "model": "nat", "pool_id": pool_id, **body}
        )

    def create_network(
        self,
        nid: str = NET1,
        subnet: str | None = None,
        gateway: str | None = None,
        pool: str = "nat",
    ) -> str:
        reply = self.pool(pool=pool, subnet=subnet)
        assert reply.status_code == 201, reply.text
        pool_id = str(reply.json()["pool_id"])
        assert self.address(pool_id, gateway=True, address=gateway).status_code == 201
        assert self.network(nid, pool_id).status_code == 201
        return pool_id

    def endpoint(self, eid: str, address: str, mac: str, nid: str = NET1) -> httpx.Response:
        body = {
            "network_id": nid,
            "host": "h1",
            "mac": mac,
            "address": address,
            "port_name": "qlv" + eid[:12],
        }
        return self.call("PUT", f"/endpoints/{eid}", body)


def make_api(store: SqliteStore, conv: RecordingConverger) -> Api:
    client = TestClient(create_app(Services(store, conv), TOKEN), raise_server_exceptions=False)
    api = Api(client, conv)
    reply = api.call("PUT", "/hosts/h1", {"dpid": 1, "bridge": "br-ql", "datapath_type": "netdev"})
    assert reply.status_code == 200, reply.text
    conv.calls.clear()
    return api


@pytest.fixture
def api(store: SqliteStore) -> Api:
    return make_api(store, RecordingConverger())


def error(reply: httpx.Response, status: int, code: str) -> str:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert set(body) == {"error", "code"}
    assert body["code"] == code
    return str(body["error"])


# ---- auth --------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": "Bearer"}],
)
def test_token_required_and_nothing_changes(api: Api, headers: dict[str, str]) -> None:
    before = api.get("/status").json()
    pool = api.pool(pool="nat").json()["pool_id"]
    middle = api.get("/status").json()
    calls = [
        ("POST", "/ipam/pools", {"pool": "nat"}),
        ("POST", f"/ipam/pools/{pool}/addresses", {"gateway": True}),
        ("DELETE", f"/ipam/pools/{pool}", None),
        ("PUT", "/hosts/h2", {"dpid": 2, "bridge": "br-ql", "datapath_type": "netdev"}),
        ("DELETE", "/hosts/h1", None),
        ("PUT", f"/networks/{NET1}", {"host": "h1", "model": "nat", "pool_id": pool}),
        ("POST", "/hosts/h1/reconcile", None),
        ("PATCH", f"/networks/{NET1}", {"name": "x"}),
    ]
    for method, path, body in calls:
        reply = api.call(method, path, body, headers=headers)
        assert error(reply, 401, "unauthorized")
        assert reply.headers["www-authenticate"] == "Bearer"
    assert api.get("/status").json() == middle != before
    assert api.conv.calls == []


def test_token_checked_before_the_body(api: Api) -> None:
    reply = api.client.post(
        "/v1/ipam/pools", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert "missing API token" in error(reply, 401, "unauthorized")


def test_get_needs_no_token(api: Api) -> None:
    assert api.client.get("/v1/status").status_code == 200
    assert api.client.get("/v1/hosts").json()[0]["host"]["name"] == "h1"


# ---- validation --------------------------------------------------------------


def test_validation_errors_name_the_field(api: Api) -> None:
    pool_id = api.create_network()
    reply = api.network(NET2, pool_id, model="vlan", vni=4095)
    assert error(reply, 422, "invalid") == "body.vni: VLAN id 4095 is outside 1-4094"
    reply = api.address(pool_id, mac="01:00:5e:00:00:01")
    assert error(reply, 422, "invalid") == (
        "body.mac: '01:00:5e:00:00:01' is a multicast MAC address"
    )
    reply = api.pool(pool="nat", subnet="10.0.0.1/24")
    assert error(reply, 422, "invalid").startswith("body.subnet: '10.0.0.1/24' is not an IPv4")
    reply = api.pool(pool="nat", ip_range="10.0.0.0/25")
    assert error(reply, 422, "invalid") == "body.ip_range: --ip-range needs --subnet"
    reply = api.pool(pool="nat", colour="red")
    assert error(reply, 422, "invalid") == "body.colour: Extra inputs are not permitted"
    reply = api.call(
        "PUT", "/hosts/bad name!", {"dpid": 1, "bridge": "b", "datapath_type": "netdev"}
    )
    assert error(reply, 422, "invalid").startswith("path.name: 'bad name!' is not a valid name")
    reply = api.client.post(
        "/v1/ipam/pools", content=b"{not json", headers={**AUTH, "Content-Type": "application/json"}
    )
    assert error(reply, 422, "invalid").startswith("body: invalid JSON")
    assert [n["id"] for n in api.get("/networks").json()] == [NET1]


def test_unknown_path_and_method(api: Api) -> None:
    assert "GET /v1/nope" in error(api.get("/nope"), 404, "not_found")
    assert error(api.call("POST", "/status"), 405, "invalid")


def test_unexpected_errors_are_500_json(store: SqliteStore) -> None:
    class Broken(RecordingConverger):
        broken = False

        def is_connected(self, host: str) -> bool:
            if self.broken:
                raise RuntimeError("kaput")
            return True

    conv = Broken()
    api = make_api(store, conv)
    conv.broken = True
    assert "kaput" in error(api.get("/hosts"), 500, "internal")


# ---- the seed's IPAM cases ---------------------------------------------------


def test_pool_nat_carves_a_24(api: Api) -> None:
    reply = api.pool(pool="nat", options={"pool": "nat"})
    assert reply.status_code == 201
    assert reply.json() == {"pool_id": "nat_10.128.0.0_24", "subnet": "10.128.0.0/24"}
    assert api.pool(pool="nat").json()["subnet"] == "10.128.1.0/24"
    gw = api.address("nat_10.128.0.0_24", gateway=True)
    assert (gw.status_code, gw.json()) == (201, {"address": "10.128.0.1/24"})


def test_pool_nat_with_subnet_and_gateway(api: Api) -> None:
    pool_id = api.create_network(subnet="192.168.2.0/24", gateway="192.168.2.1")
    net = api.get(f"/networks/{NET1}").json()
    assert pool_id == "nat_192.168.2.0_24"
    assert (net["subnet"], net["gateway"], net["key"]) == ("192.168.2.0/24", "192.168.2.1", 1)


def test_pool_nonat_with_subnet(api: Api) -> None:
    reply = api.pool(pool="nonat", subnet="192.168.1.0/24")
    assert reply.json()["pool_id"] == "nonat_192.168.1.0_24"
    gw = api.address("nonat_192.168.1.0_24", gateway=True)
    assert gw.json()["address"] == "192.168.1.1/24"


def test_unknown_and_flat_pools(api: Api) -> None:
    assert "known pools are flat, nat, nonat, vlan, vxlan" in error(
        api.pool(pool="bogus"), 400, "invalid"
    )
    assert "--subnet" in error(api.pool(pool="flat"), 400, "invalid")


def test_overlapping_subnet_refused(api: Api) -> None:
    api.create_network(subnet="192.168.1.0/24", gateway="192.168.1.1")
    msg = error(api.pool(pool="nonat", subnet="192.168.1.128/25"), 409, "conflict")
    assert msg == (f"subnet 192.168.1.128/25 overlaps subnet 192.168.1.0/24 of network {NET1[:12]}")


def test_gateway_outside_subnet_refused(api: Api) -> None:
    pool_id = api.pool(pool="nat", subnet="192.168.2.0/24").json()["pool_id"]
    msg = error(api.address(pool_id, gateway=True, address="192.168.3.1"), 400, "invalid")
    assert msg == "gateway 192.168.3.1 is not inside subnet 192.168.2.0/24"


def test_ip_outside_subnet_or_taken_refused(api: Api) -> None:
    pool_id = api.create_network(subnet="192.168.2.0/24", gateway="192.168.2.1")
    msg = error(api.address(pool_id, address="10.9.9.9", mac=MAC_A), 400, "invalid")
    assert msg == "address 10.9.9.9 is not inside subnet 192.168.2.0/24"
    assert api.address(pool_id, address="192.168.2.10", mac=MAC_A).status_code == 201
    msg = error(api.address(pool_id, address="192.168.2.10", mac=MAC_B), 409, "conflict")
    assert msg == "address 192.168.2.10 is already in use in subnet 192.168.2.0/24"


def test_exhausted_pool_refused(api: Api) -> None:
    pool_id = api.create_network(subnet="192.168.9.0/30", gateway="192.168.9.1")
    assert api.address(pool_id, mac=MAC_A).json() == {"address": "192.168.9.2/30"}
    msg = error(api.address(pool_id, mac=MAC_B), 409, "exhausted")
    assert "nat_192.168.9.0_30 has no free address" in msg


def test_replay_changes_nothing(api: Api) -> None:
    pool_id = api.create_network(subnet="192.168.2.0/24", gateway="192.168.2.1")
    assert api.address(pool_id, address="192.168.2.5").status_code == 201  # --aux-address
    assert api.address(pool_id, mac=MAC_A).json() == {"address": "192.168.2.2/24"}
    before = api.get("/status").json()
    # dockerd's replay at its start: pool, gateway, aux and endpoint addresses
    again = api.pool(pool="nat", subnet="192.168.2.0/24")
    assert (again.status_code, again.json()["pool_id"]) == (200, pool_id)
    gw = api.address(pool_id, gateway=True, address="192.168.2.1")
    assert (gw.status_code, gw.json()["address"]) == (200, "192.168.2.1/24")
    assert api.address(pool_id, address="192.168.2.5").status_code == 200
    ep = api.address(pool_id, address="192.168.2.2", mac=MAC_A)
    assert (ep.status_code, ep.json()["address"]) == (200, "192.168.2.2/24")
    assert api.get("/status").json() == before


def test_refused_create_network_rollback_leaves_the_first_intact(api: Api) -> None:
    pool_id = api.create_network(subnet="192.168.1.0/24", gateway="192.168.1.1")
    assert api.call("PATCH", f"/networks/{NET1}", {"name": "first"}).status_code == 200
    before = api.get("/status").json()
    # docker network create --subnet 192.168.1.0/24 --gateway 192.168.1.1 second
    assert api.pool(pool="nat", subnet="192.168.1.0/24").status_code == 200
    assert api.address(pool_id, gateway=True, address="192.168.1.1").status_code == 200
    msg = error(api.network(NET2, pool_id), 409, "conflict")
    assert msg == f"subnet 192.168.1.0/24 overlaps network first ({NET1[:12]})"
    # Docker's rollback
    assert api.call("DELETE", f"/ipam/pools/{pool_id}/addresses/192.168.1.1").status_code == 204
    assert api.call("DELETE", f"/ipam/pools/{pool_id}").status_code == 204
    after = api.get("/status").json()
    assert [p.pop("released") for p in after["pools"]] == [True]  # goes with the network
    [p.pop("released") for p in before["pools"]]
    assert after == before


# ---- networks and endpoints --------------------------------------------------


def test_network_and_endpoint_lifecycle(api: Api) -> None:
    pool_id = api.create_network(subnet="192.168.1.0/24", gateway="192.168.1.1")
    assert api.network(NET1, pool_id).status_code == 200  # identical repeat
    assert api.conv.calls == [("h1", ()), ("h1", ())]
    api.conv.calls.clear()

    ip = api.address(pool_id, mac=MAC_A).json()["address"].split("/")[0]
    reply = api.endpoint(EP1, ip, MAC_A)
    assert reply.status_code == 201, reply.text
    assert reply.json()["flows_confirmed"] is True
    assert reply.json()["endpoint"]["address"] == "192.168.1.2"
    assert api.conv.calls == [("h1", ("qlv" + EP1[:12],))]
    assert api.endpoint(EP1, ip, MAC_A).status_code == 200

    patch = {
        "container_name": "web",
        "port_mappings": [
            {"proto": "tcp", "container_port": 80, "host_port": 8080, "host_port_end": 8080}
        ],
    }
    reply = api.call("PATCH", f"/endpoints/{EP1}", patch)
    assert reply.status_code == 200 and reply.json()["container_name"] == "web"
    assert [e["id"] for e in api.get("/endpoints", params={"host": "h1"}).json()] == [EP1]
    assert api.get("/endpoints", params={"network_id": NET2}).json() == []
    assert api.get(f"/endpoints/{EP1}").json()["port_mappings"][0]["host_port"] == 8080
    assert [n["id"] for n in api.get("/networks", params={"host": "h1"}).json()] == [NET1]
    assert api.get("/networks", params={"host": "h2"}).json() == []

    assert "still has endpoints" in error(api.call("DELETE", f"/networks/{NET1}"), 409, "conflict")
    assert "still has networks" in error(api.call("DELETE", "/hosts/h1"), 409, "conflict")
    gone = api.call("DELETE", f"/endpoints/{EP1}")
    assert gone.status_code == 200 and gone.json()["id"] == EP1  # the endpoint as it was
    assert api.call("DELETE", f"/endpoints/{EP1}").status_code == 204  # unknown now
    assert api.call("DELETE", f"/ipam/pools/{pool_id}/addresses/{ip}").status_code == 204
    assert api.call("DELETE", f"/networks/{NET1}").status_code == 204
    assert api.call("DELETE", f"/networks/{NET1}").status_code == 204
    assert api.call("DELETE", f"/ipam/pools/{pool_id}/addresses/192.168.1.1").status_code == 204
    assert api.call("DELETE", f"/ipam/pools/{pool_id}").status_code == 204
    assert api.get("/ipam/pools").json() == []
    assert api.call("DELETE", "/hosts/h1").status_code == 204
    assert error(api.get("/hosts/h1"), 404, "not_found") == (
        "host h1 is not registered (the driver registers it at start)"
    )


@pytest.mark.parametrize(
    ("failure", "status", "code"),
    [
        (Unavailable("the bridge of host h1 is not connected"), 503, "unavailable"),
        (Timeout("port did not appear in time"), 504, "timeout"),
    ],
)
def test_endpoint_not_created_when_converge_fails(
    api: Api, failure: QingluanError, status: int, code: str
) -> None:
    pool_id = api.create_network()
    ip = api.address(pool_id, mac=MAC_A).json()["address"].split("/")[0]
    api.conv.fail = failure
    assert error(api.endpoint(EP1, ip, MAC_A), status, code) == str(failure)
    api.conv.fail = None
    assert api.get("/endpoints").json() == []
    error(api.get(f"/endpoints/{EP1}"), 404, "not_found")
    assert api.endpoint(EP1, ip, MAC_A).status_code == 201


def test_network_not_created_when_bridge_away(api: Api) -> None:
    pool_id = api.pool(pool="nat").json()["pool_id"]
    api.address(pool_id, gateway=True)
    api.conv.fail = Unavailable("the bridge of host h1 is not connected")
    error(api.network(NET1, pool_id), 503, "unavailable")
    assert api.get("/networks").json() == []


def test_not_found_codes(api: Api) -> None:
    error(api.get(f"/networks/{NET1}"), 404, "not_found")
    error(api.address("nat_10.1.1.0_24", gateway=True), 404, "not_found")
    error(api.call("PATCH", f"/networks/{NET1}", {"name": "x"}), 404, "not_found")
    error(api.get("/hosts/nope/flows"), 404, "not_found")
    assert api.call("DELETE", "/ipam/pools/nat_10.1.1.0_24").status_code == 204
    assert api.call("DELETE", "/ipam/pools/nat_10.1.1.0_24/addresses/10.1.1.5").status_code == 204


def test_flows_and_reconcile(api: Api) -> None:
    assert api.get("/hosts/h1/flows").json()["flows"] == ["x"]
    reply = api.call("POST", "/hosts/h1/reconcile")
    assert reply.status_code == 200 and reply.json()["host"] == "h1"


def test_state_survives_restart(tmp_path: Path) -> None:
    with SqliteStore.in_state_dir(tmp_path) as store:
        api = make_api(store, RecordingConverger())
        pool_id = api.create_network(subnet="192.168.1.0/24", gateway="192.168.1.1")
        ip = api.address(pool_id, mac=MAC_A).json()["address"].split("/")[0]
        assert api.endpoint(EP1, ip, MAC_A).status_code == 201
        before = api.get("/status").json()
    with SqliteStore.in_state_dir(tmp_path) as store:
        client = TestClient(create_app(Services(store, RecordingConverger()), TOKEN))
        assert client.get("/v1/status").json() == before


def test_openapi_documents_routes_and_auth(api: Api) -> None:
    doc = api.client.get("/openapi.json").json()
    put_ep = doc["paths"]["/v1/endpoints/{endpoint_id}"]["put"]
    assert "flows are confirmed" in put_ep["description"]
    assert put_ep["security"] == [{"HTTPBearer": []}]
    assert "security" not in doc["paths"]["/v1/status"]["get"]
    assert {"201", "200", "401", "503", "504"} <= set(put_ep["responses"])


# ---- the token file ------------------------------------------------------------


def test_token_is_made_once_and_kept_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "token"
    token = load_or_create_token(path)
    assert len(token) >= 32
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_token(path) == token
    assert read_token(path) == token
    path.chmod(0o644)
    assert load_or_create_token(path) == token
    assert path.stat().st_mode & 0o777 == 0o600


def test_token_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="start the controller once"):
        read_token(tmp_path / "missing")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        read_token(tmp_path / "empty")
    with pytest.raises(ValueError):
        create_app(Services(SqliteStore(tmp_path / "db"), RecordingConverger()), "")


def test_token_compare_and_header() -> None:
    assert token_matches("abc", "abc")
    assert not token_matches("abc", "abd")
    assert not token_matches("abc", None)
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer ") is None
    assert bearer_token(None) is None
