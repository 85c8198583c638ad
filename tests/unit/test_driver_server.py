"""The plugin sockets, spoken to exactly as dockerd 20.10 does: raw HTTP over a unix socket,
``Accept: application/vnd.docker.plugins.v1.2+json``, no Content-Type, empty bodies."""

from __future__ import annotations

import asyncio
import json
import socket
import stat
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from qingluan.driver.handlers import IpamDriver, NetworkDriver
from qingluan.driver.protocol import EmptyReply
from qingluan.driver.server import (
    PluginApp,
    Route,
    bind_plugin_socket,
    ipam_driver_routes,
    network_driver_routes,
    serve_plugins,
)
from qingluan.errors import QingluanError
from tests.unit.test_driver_handlers import NET, FakeController, FakeHost

DOCKER_ACCEPT = "application/vnd.docker.plugins.v1.2+json"


class DockerConn:
    """One keep-alive connection, sending byte-for-byte what Go's net/http client sends."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(path))
        self.buf = b""

    def post(self, call: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        head = (
            f"POST /{call} HTTP/1.1\r\n"
            "Host: plugin\r\n"
            "User-Agent: Go-http-client/1.1\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"Accept: {DOCKER_ACCEPT}\r\n"
            "Accept-Encoding: gzip\r\n"
            "\r\n"
        )
        self.sock.sendall(head.encode() + body)
        return self._response()

    def raw(self, data: bytes) -> tuple[int, dict[str, str], bytes]:
        self.sock.sendall(data)
        return self._response()

    def _response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed before the reply"
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
        length = int(headers["content-length"])
        while len(self.buf) < length:
            self.buf += self.sock.recv(65536)
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body

    def close(self) -> None:
        self.sock.close()


def post(path: Path, call: str, body: object = None) -> tuple[int, dict[str, object]]:
    conn = DockerConn(path)
    try:
        raw = b"" if body is None else json.dumps(body).encode()
        status, headers, reply = conn.post(call, raw)
    finally:
        conn.close()
    assert headers["content-type"] == DOCKER_ACCEPT
    return status, json.loads(reply)


@contextmanager
def serving(apps: Mapping[Path, PluginApp]) -> Iterator[None]:
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    ready = threading.Event()
    failure: list[BaseException] = []

    def main() -> None:
        try:
            loop.run_until_complete(serve_plugins(apps, stop, ready=ready.set))
        except BaseException as exc:
            failure.append(exc)
            ready.set()
        finally:
            loop.close()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    assert ready.wait(10), "the plugin server did not start"
    if failure:
        raise failure[0]
    try:
        yield
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        assert not thread.is_alive()


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(8)
    yield pool
    pool.shutdown(wait=True)


@pytest.fixture
def plugins(tmp_path: Path, executor: ThreadPoolExecutor) -> Iterator[tuple[Path, Path]]:
    ctl, host = FakeController(), FakeHost()
    drv = NetworkDriver(host="node1", controller=ctl, host_ops=host)
    ipam = IpamDriver(controller=ctl)
    net_sock, ipam_sock = tmp_path / "qingluan.sock", tmp_path / "qingluanIpam.sock"
    apps = {
        net_sock: PluginApp("qingluan", network_driver_routes(drv), executor),
        ipam_sock: PluginApp("qingluanIpam", ipam_driver_routes(ipam), executor),
    }
    with serving(apps):
        yield net_sock, ipam_sock
    assert not net_sock.exists() and not ipam_sock.exists(), "socket files are removed on stop"


# ---- the handshake ------------------------------------------------------------------


def test_activate_and_capabilities_with_empty_bodies(plugins):
    net_sock, ipam_sock = plugins
    assert post(net_sock, "Plugin.Activate") == (200, {"Implements": ["NetworkDriver"]})
    assert post(ipam_sock, "Plugin.Activate") == (200, {"Implements": ["IpamDriver"]})
    assert post(net_sock, "NetworkDriver.GetCapabilities") == (
        200,
        {"Scope": "local", "ConnectivityScope": "global"},
    )
    assert post(ipam_sock, "IpamDriver.GetCapabilities") == (
        200,
        {"RequiresMACAddress": True, "RequiresRequestReplay": True},
    )
    status, spaces = post(ipam_sock, "IpamDriver.GetDefaultAddressSpaces")
    assert status == 200 and set(spaces) == {
        "LocalDefaultAddressSpace",
        "GlobalDefaultAddressSpace",
    }


def test_socket_files_are_root_only(plugins):
    for path in plugins:
        mode = path.lstat().st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o600


def test_docker_network_create_sequence(plugins):
    """What dockerd sent for ``network create --opt model=bogus --ipam-opt pool=nat``."""
    net_sock, ipam_sock = plugins
    status, pool = post(
        ipam_sock,
        "IpamDriver.RequestPool",
        {"AddressSpace": "l", "Pool": "", "SubPool": "", "Options": {"pool": "nat"}, "V6": False},
    )
    assert status == 200 and pool["PoolID"] and pool["Pool"]
    status, gw = post(
        ipam_sock,
        "IpamDriver.RequestAddress",
        {
            "PoolID": pool["PoolID"],
            "Address": "",
            "Options": {"RequestAddressType": "com.docker.network.gateway"},
        },
    )
    assert status == 200 and str(gw["Address"]).endswith("/24")
    create = {
        "NetworkID": NET,
        "Options": {
            "com.docker.network.enable_ipv6": False,
            "com.docker.network.generic": {"model": "bogus"},
        },
        "IPv4Data": [{"AddressSpace": "l", "Gateway": gw["Address"], "Pool": pool["Pool"]}],
        "IPv6Data": [],
    }
    assert post(net_sock, "NetworkDriver.CreateNetwork", create) == (
        400,
        {"Err": "unknown network model 'bogus' (choose nonat, nat, flat, vlan, vxlan)"},
    )
    create["Options"]["com.docker.network.generic"] = {"model": "nat"}  # type: ignore[index]
    assert post(net_sock, "NetworkDriver.CreateNetwork", create) == (200, {})
    assert post(net_sock, "NetworkDriver.CreateNetwork", create) == (200, {})  # idempotent
    assert post(net_sock, "NetworkDriver.DeleteNetwork", {"NetworkID": NET}) == (200, {})
    assert post(net_sock, "NetworkDriver.DeleteNetwork", {"NetworkID": NET}) == (200, {})


def test_teardown_of_unknown_ids_succeeds(plugins):
    net_sock, _ = plugins
    ids = {"NetworkID": "n" * 64, "EndpointID": "e" * 64}
    for call in ("RevokeExternalConnectivity", "Leave", "DeleteEndpoint"):
        assert post(net_sock, f"NetworkDriver.{call}", ids) == (200, {})
    assert post(net_sock, "NetworkDriver.EndpointOperInfo", ids) == (200, {"Value": {}})
    assert post(net_sock, "NetworkDriver.DiscoverNew", {"DiscoveryType": 1}) == (200, {})


def test_errors_are_non_2xx_with_err(plugins):
    net_sock, ipam_sock = plugins
    status, body = post(net_sock, "NetworkDriver.Bogus", {})
    assert status == 404 and "unknown call NetworkDriver.Bogus" in str(body["Err"])
    status, body = post(net_sock, "IpamDriver.RequestPool", {})  # wrong socket
    assert status == 404
    status, body = post(ipam_sock, "IpamDriver.RequestPool", {"V6": True})
    assert status == 400 and "IPv6" in str(body["Err"])
    status, body = post(net_sock, "NetworkDriver.Join", {"NetworkID": "x"})
    assert status == 400 and body["Err"] == "NetworkDriver.Join: EndpointID: Field required"
    status, body = post(net_sock, "NetworkDriver.Join", {"NetworkID": "x", "EndpointID": "y"})
    assert status == 404 and "not known to the qingluan controller" in str(body["Err"])


def test_malformed_bodies_and_methods(plugins):
    net_sock, _ = plugins
    conn = DockerConn(net_sock)
    try:
        status, _, body = conn.post("NetworkDriver.CreateNetwork", b"{not json")
        assert status == 400
        assert json.loads(body) == {
            "Err": "NetworkDriver.CreateNetwork: the request body is not JSON"
        }
        status, _, body = conn.raw(b"GET /Plugin.Activate HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 405 and "takes POST" in json.loads(body)["Err"]
        # the same keep-alive connection keeps working
        status, _, body = conn.post("Plugin.Activate")
        assert (status, json.loads(body)) == (200, {"Implements": ["NetworkDriver"]})
    finally:
        conn.close()


# ---- error mapping and concurrency with stub routes ------------------------------------------


def test_handler_errors_and_crashes(tmp_path, executor):
    def refuse() -> EmptyReply:
        raise QingluanError("the qingluan controller at http://x is not reachable")

    def crash() -> EmptyReply:
        raise RuntimeError("bug")

    path = tmp_path / "t.sock"
    routes = {"/T.Refuse": Route(None, refuse), "/T.Crash": Route(None, crash)}
    with serving({path: PluginApp("t", routes, executor)}):
        assert post(path, "T.Refuse") == (
            500,
            {"Err": "the qingluan controller at http://x is not reachable"},
        )
        status, body = post(path, "T.Crash")
        assert status == 500 and "internal error in T.Crash" in str(body["Err"])


def test_calls_run_concurrently(tmp_path, executor):
    def slow() -> EmptyReply:
        time.sleep(0.5)
        return EmptyReply()

    path = tmp_path / "slow.sock"
    with serving({path: PluginApp("slow", {"/S.Slow": Route(None, slow)}, executor)}):
        results: list[int] = []
        threads = [
            threading.Thread(target=lambda: results.append(post(path, "S.Slow")[0]))
            for _ in range(4)
        ]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(5)
        elapsed = time.monotonic() - started
    assert results == [200] * 4
    assert elapsed < 1.5, f"4 calls of 0.5 s took {elapsed:.2f} s: not concurrent"


# ---- socket files ----------------------------------------------------------------------------


def test_stale_socket_is_replaced(tmp_path, executor):
    path = tmp_path / "stale.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens
    app = PluginApp("t", {"/Plugin.Activate": Route(None, EmptyReply)}, executor)
    with serving({path: app}):
        assert post(path, "Plugin.Activate") == (200, {})
    assert not path.exists()


def test_live_socket_is_not_stolen(tmp_path):
    path = tmp_path / "live.sock"
    first = bind_plugin_socket(path)
    try:
        with pytest.raises(QingluanError, match="another running process"):
            bind_plugin_socket(path)
    finally:
        first.close()
        path.unlink()


def test_non_socket_file_is_refused(tmp_path):
    path = tmp_path / "file.sock"
    path.write_text("not a socket")
    with pytest.raises(QingluanError, match="is not a socket"):
        bind_plugin_socket(path)
    assert path.read_text() == "not a socket"
