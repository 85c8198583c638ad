"""The driver's controller client against a mock transport: paths, token, error mapping."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from qingluan.api_schema import AddressRequest, EndpointUpdate, NetworkCreate
from qingluan.driver.client import HttpControllerClient, error_from_reply
from qingluan.errors import (
    Conflict,
    Exhausted,
    InvalidRequest,
    NotFound,
    QingluanError,
    Timeout,
    Unauthorized,
    Unavailable,
)
from qingluan.model import NetworkModel

NETWORK = {
    "id": "n1",
    "key": 3,
    "host": "node1",
    "model": "nat",
    "pool_id": "nat_10.128.0.0_24",
    "subnet": "10.128.0.0/24",
    "gateway": "10.128.0.1",
    "gateway_mac": "52:4c:00:00:00:03",
}


def client_for(handler, **kw) -> HttpControllerClient:
    return HttpControllerClient("http://ctl:6680", transport=httpx.MockTransport(handler), **kw)


def test_paths_bodies_and_bearer_token():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "PUT":
            return httpx.Response(201, json=NETWORK)
        if request.url.path == "/v1/networks":
            return httpx.Response(200, json=[NETWORK])
        return httpx.Response(200, json={"address": "10.128.0.9/24"})

    c = client_for(handler, token="s3cret")
    body = NetworkCreate(host="node1", model=NetworkModel.NAT, pool_id="nat_10.128.0.0_24")
    created = c.create_network("n1", body)
    assert created.created and created.network.gateway_mac == "52:4c:00:00:00:03"
    assert c.list_networks("node1")[0].id == "n1"
    assert c.request_address("nat_10.128.0.0_24", AddressRequest(gateway=True)).address
    put, get, post = seen
    assert put.headers["authorization"] == "Bearer s3cret"
    assert json.loads(put.content)["model"] == "nat"
    assert "authorization" not in get.headers  # GETs need no token
    assert get.url.params["host"] == "node1"
    assert post.url.path == "/v1/ipam/pools/nat_10.128.0.0_24/addresses"


def test_identical_repeat_is_not_created():
    c = client_for(lambda r: httpx.Response(200, json=NETWORK), token="t")
    body = NetworkCreate(host="node1", model=NetworkModel.NAT, pool_id="p")
    assert c.create_network("n1", body).created is False


def test_patch_sends_only_what_changes():
    sent: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.content)
        return httpx.Response(
            200,
            json={
                "id": "e1",
                "network_id": "n1",
                "host": "node1",
                "mac": "52:45:00:00:00:01",
                "address": "10.128.0.9",
                "port_name": "qlve1",
            },
        )

    client_for(handler, token="t").update_endpoint("e1", EndpointUpdate(port_mappings=()))
    assert json.loads(sent[0]) == {"port_mappings": []}


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (400, "invalid", InvalidRequest),
        (404, "not_found", NotFound),
        (409, "conflict", Conflict),
        (409, "exhausted", Exhausted),
        (503, "unavailable", Unavailable),
        (504, "timeout", Timeout),
        (500, "internal", QingluanError),
    ],
)
def test_error_codes_map_to_types_with_the_message_unchanged(status, code, cls):
    msg = "body.vni: VLAN id 4095 is outside 1-4094"
    err = error_from_reply(status, json.dumps({"error": msg, "code": code}).encode())
    assert type(err) is cls and str(err) == msg


def test_non_json_error_reply():
    err = error_from_reply(502, b"<html>bad gateway</html>")
    assert type(err) is QingluanError
    assert "answered 502: <html>bad gateway" in str(err)


def test_unknown_ids_on_get_and_delete():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error": "no such thing", "code": "not_found"})

    c = client_for(handler, token="t")
    assert c.get_network("nope") is None
    assert c.get_endpoint("nope") is None
    assert c.delete_endpoint("nope") is None
    c.release_pool("nope")
    with pytest.raises(NotFound, match="no such thing"):
        c.update_endpoint("nope", EndpointUpdate(container_name="x"))


def test_a_deletion_answers_with_the_endpoint_as_it_was():
    ep = {"id": "e" * 64, "network_id": "n" * 64, "host": "h1", "mac": "02:42:0a:00:00:02",
          "address": "10.0.0.2", "port_name": "qlveeeeeeeeeeee"}  # fmt: skip

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.method == "DELETE"
        if request.url.path.endswith("e" * 64):
            return httpx.Response(200, json=ep)
        return httpx.Response(204)

    c = client_for(handler, token="t")
    gone = c.delete_endpoint("e" * 64)
    assert gone is not None and gone.address == "10.0.0.2" and gone.port_mappings == ()
    assert c.delete_endpoint("f" * 64) is None


def test_token_file_is_reread_after_401(tmp_path: Path):
    token_file = tmp_path / "token"
    token_file.write_text("old\n")

    def handler(request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") != "Bearer new":
            return httpx.Response(401, json={"error": "wrong token", "code": "unauthorized"})
        return httpx.Response(204)

    c = client_for(handler, token_file=token_file)
    with pytest.raises(Unauthorized, match="wrong token"):
        c.delete_network("n1")
    token_file.write_text("new\n")  # the controller was (re)initialised
    c.delete_network("n1")


def test_missing_token_file_is_explained(tmp_path: Path):
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": "missing token", "code": "unauthorized"})

    c = client_for(handler, token_file=tmp_path / "absent")
    with pytest.raises(Unauthorized, match=r"missing token \(no token: .*absent is missing"):
        c.delete_network("n1")


def test_unreachable_and_slow_controller():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused")

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out")

    with pytest.raises(Unavailable, match=r"controller at http://ctl:6680 is not reachable"):
        client_for(refuse).list_pools()
    with pytest.raises(Timeout, match=r"did not answer GET /v1/ipam/pools within 10 s"):
        client_for(slow).list_pools()
