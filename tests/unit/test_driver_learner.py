"""The name learner: Docker's network and container names, learned after the plugin call.

Docker is played by ``FakeDockerd``: a small stand-in for dockerd, a real HTTP
server on a unix socket in tmp_path that answers the one Engine API call the
learner makes (``GET /v1.41/networks/{id}``) with Docker's JSON shape. The
controller is a recording fake of the four REST calls the learner uses.
"""

from __future__ import annotations

import json
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from qingluan import names
from qingluan.api_schema import EndpointUpdate, NetworkUpdate
from qingluan.cli import build_parser
from qingluan.driver.handlers import IpamDriver, NetworkDriver
from qingluan.driver.learner import (
    DEFAULT_DOCKER_HOST,
    DockerApi,
    DockerNetworkInfo,
    LearnerTiming,
    NameLearner,
    default_docker_host,
)
from qingluan.driver.main import config_from_args
from qingluan.driver.service import Driver, DriverConfig
from qingluan.errors import InvalidRequest, QingluanError, Unavailable
from qingluan.model import Endpoint, Network, NetworkModel
from tests.unit.test_driver_handlers import (
    FakeController,
    FakeHost,
    create_endpoint_req,
    docker_create_network,
    join_req,
)
from tests.unit.test_driver_server import post
from tests.unit.test_driver_service import running

HOST = "node1"
NET = "a1" * 32
NET2 = "b2" * 32
EP = "e1" * 32
EP2 = "f2" * 32
EP3 = "c3" * 32

FAST = LearnerTiming(debounce=0.05, max_delay=0.5, first_retry=0.05, retry_max=0.2, attempts=6)


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


# ---- a small stand-in for dockerd ------------------------------------------------


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    fake: FakeDockerd


class _DockerHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _UnixHTTPServer

    def do_GET(self) -> None:
        self.server.fake.handle(self)

    def log_message(self, format: str, *args: Any) -> None:  # client_address is '' on unix
        pass


class FakeDockerd:
    """A small stand-in for dockerd (not the real one): ``GET /v1.41/networks/{id}`` only,
    served over HTTP on a unix socket, with switches to fail or hold its answers."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.networks: dict[str, dict[str, Any]] = {}
        self.requests: list[str] = []  # network ids asked for, in order
        self.container_requests: list[str] = []  # container ids asked for (labels)
        self.labels: dict[str, dict[str, str]] = {}  # container id -> labels
        self.request_times: list[float] = []
        self.answered = 0
        self.fail_next = 0  # answer this many requests with a 500
        self.gate = threading.Event()  # cleared: hold every answer until set
        self.gate.set()
        self._lock = threading.Lock()
        self._server: _UnixHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return f"unix://{self.socket_path}"

    def start(self) -> FakeDockerd:
        self._server = _UnixHTTPServer(str(self.socket_path), _DockerHandler)
        self._server.fake = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.gate.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self.socket_path.unlink(missing_ok=True)

    def add_network(
        self,
        network_id: str,
        name: str,
        containers: dict[str, str],
        labels: dict[str, dict[str, str]] | None = None,
    ) -> None:
        """``containers``: endpoint id -> container name, shaped as dockerd shows them;
        ``labels``: endpoint id -> its container's labels."""
        for i, endpoint_id in enumerate(containers):
            self.labels[f"{i:x}".rjust(64, "c")] = dict((labels or {}).get(endpoint_id, {}))
        self.networks[network_id] = {
            "Name": name,
            "Id": network_id,
            "Scope": "local",
            "Driver": "qingluan",
            "Containers": {
                f"{i:x}".rjust(64, "c"): {
                    "Name": cname,
                    "EndpointID": endpoint_id,
                    "MacAddress": "02:00:00:00:00:01",
                    "IPv4Address": "10.210.0.7/24",
                    "IPv6Address": "",
                }
                for i, (endpoint_id, cname) in enumerate(containers.items())
            },
            "Options": {"model": "nat"},
            "Labels": {},
        }

    def handle(self, req: _DockerHandler) -> None:
        prefix = "/v1.41/networks/"
        network_id = req.path[len(prefix) :] if req.path.startswith(prefix) else None
        containers = "/v1.41/containers/"
        if req.path.startswith(containers) and req.path.endswith("/json"):
            cid = req.path[len(containers) : -len("/json")]
            with self._lock:
                self.container_requests.append(cid)
            known = cid in self.labels
            reply = {"Id": cid, "Config": {"Labels": self.labels[cid]}} if known else {}
            data = json.dumps(reply if known else {"message": "no such container"}).encode()
            req.send_response(200 if known else 404)
            req.send_header("Content-Type", "application/json")
            req.send_header("Content-Length", str(len(data)))
            req.end_headers()
            req.wfile.write(data)
            return
        with self._lock:
            self.requests.append(network_id or req.path)
            self.request_times.append(time.monotonic())
        self.gate.wait(10)
        with self._lock:
            fail = self.fail_next > 0
            self.fail_next -= 1 if fail else 0
        if fail:
            status, body = 500, {"message": "daemon is busy"}
        elif network_id is None:
            status, body = 404, {"message": "page not found"}
        elif network_id not in self.networks:
            status, body = 404, {"message": f"network {network_id} not found"}
        else:
            status, body = 200, self.networks[network_id]
        data = json.dumps(body).encode()
        req.send_response(status)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        req.wfile.write(data)
        with self._lock:
            self.answered += 1


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    path = tmp_path / "d.sock"
    assert len(str(path)) < 100, "unix socket paths are limited to 108 bytes"
    return path


@pytest.fixture
def dockerd(sock_path: Path) -> Iterator[FakeDockerd]:
    fake = FakeDockerd(sock_path).start()
    yield fake
    fake.stop()


# ---- a recording controller --------------------------------------------------------


def network(network_id: str, key: int = 1, name: str | None = None) -> Network:
    return Network(
        id=network_id,
        key=key,
        host=HOST,
        model=NetworkModel.NAT,
        pool_id=f"nat_10.210.{key}.0_24",
        subnet=f"10.210.{key}.0/24",
        gateway=f"10.210.{key}.1",
        gateway_mac=names.gateway_mac(key),
        mtu=1500,
        name=name,
    )


def endpoint(endpoint_id: str, network_id: str, container: str | None = None) -> Endpoint:
    return Endpoint(
        id=endpoint_id,
        network_id=network_id,
        host=HOST,
        mac=names.endpoint_mac(endpoint_id),
        address="10.210.1.7",
        port_name=names.endpoint_port(endpoint_id),
        container_name=container,
    )


class RecordingController:
    """The controller's networks and endpoints in memory, recording every PATCH."""

    def __init__(self) -> None:
        self.networks: dict[str, Network] = {}
        self.endpoints: dict[str, Endpoint] = {}
        self.patches: list[tuple[str, str, str]] = []  # (kind, id, name)
        self.fail: dict[str, QingluanError] = {}
        self._lock = threading.Lock()

    def _maybe_fail(self, call: str) -> None:
        err = self.fail.pop(call, None)  # fails once
        if err is not None:
            raise err

    def list_networks(self, host: str) -> list[Network]:
        self._maybe_fail("list_networks")
        with self._lock:
            return [n for n in self.networks.values() if n.host == host]

    def list_endpoints(self, host: str) -> list[Endpoint]:
        self._maybe_fail("list_endpoints")
        with self._lock:
            return [e for e in self.endpoints.values() if e.host == host]

    def update_network(self, network_id: str, body: NetworkUpdate) -> Network:
        self._maybe_fail("update_network")
        assert body.name is not None
        with self._lock:
            self.patches.append(("network", network_id, body.name))
            n = self.networks[network_id].model_copy(update={"name": body.name})
            self.networks[network_id] = n
            return n

    def update_endpoint(self, endpoint_id: str, body: EndpointUpdate) -> Endpoint:
        self._maybe_fail("update_endpoint")
        with self._lock:
            e = self.endpoints[endpoint_id]
            if body.container_name is not None:
                self.patches.append(("endpoint", endpoint_id, body.container_name))
                e = e.model_copy(update={"container_name": body.container_name})
            if body.labels is not None:
                self.patches.append(("labels", endpoint_id, ",".join(sorted(body.labels))))
                e = e.model_copy(update={"labels": dict(body.labels)})
            self.endpoints[endpoint_id] = e
            return e


@pytest.fixture
def ctl() -> RecordingController:
    c = RecordingController()
    c.networks = {NET: network(NET, 1), NET2: network(NET2, 2)}
    c.endpoints = {
        EP: endpoint(EP, NET),
        EP2: endpoint(EP2, NET),
        EP3: endpoint(EP3, NET2),
    }
    return c


class ThreadRecordingDocker:
    """DockerApi, noting which thread asked (the learner's own, never a handler's)."""

    def __init__(self, api: DockerApi) -> None:
        self.api = api
        self.threads: set[str] = set()

    def inspect_network(self, network_id: str) -> DockerNetworkInfo | None:
        self.threads.add(threading.current_thread().name)
        return self.api.inspect_network(network_id)

    def container_labels(self, container_id: str) -> dict[str, str] | None:
        self.threads.add(threading.current_thread().name)
        return self.api.container_labels(container_id)


@pytest.fixture
def make_learner(sock_path: Path) -> Iterator[Callable[..., NameLearner]]:
    made: list[tuple[NameLearner, DockerApi]] = []

    def make(controller: Any, timing: LearnerTiming = FAST, start: bool = True) -> NameLearner:
        api = DockerApi(f"unix://{sock_path}", timeout=15)
        learner = NameLearner(
            host=HOST, controller=controller, docker=ThreadRecordingDocker(api), timing=timing
        )
        made.append((learner, api))
        if start:
            learner.start()
        return learner

    yield make
    for learner, api in made:
        learner.stop()
        api.close()


def settled(learner: NameLearner) -> Callable[[], bool]:
    return lambda: not learner.pending()


# ---- learning ------------------------------------------------------------------------


def test_learns_network_name_and_container_names(dockerd, ctl, make_learner):
    dockerd.add_network(NET, "named1", {EP: "web1", EP2: "/db1", "ffff" * 16: "other-host"})
    dockerd.add_network(NET2, "named2", {EP3: "web3"})
    learner = make_learner(ctl)
    learner.notify(NET)
    wait_for(lambda: len(ctl.patches) == 3, "three PATCHes")
    assert sorted(ctl.patches) == [
        ("endpoint", EP, "web1"),
        ("endpoint", EP2, "db1"),  # Docker's leading '/' dropped
        ("network", NET, "named1"),
    ]
    assert ctl.networks[NET].name == "named1"
    assert ctl.endpoints[EP].container_name == "web1"
    # only the network it was told about
    assert ctl.networks[NET2].name is None
    assert dockerd.requests == [NET]
    wait_for(settled(learner), "no retry pending")

    # another pass PATCHes only what differs
    ctl.endpoints[EP] = ctl.endpoints[EP].model_copy(update={"container_name": "old"})
    learner.notify(NET)
    wait_for(lambda: len(dockerd.requests) == 2 and len(ctl.patches) == 4, "second pass")
    time.sleep(0.2)
    assert ctl.patches[3:] == [("endpoint", EP, "web1")]


def test_learns_container_labels_for_acls(dockerd, ctl, make_learner):
    dockerd.add_network(NET, "named1", {EP: "web1"}, labels={EP: {"tier": "web", "a": "b=c"}})
    learner = make_learner(ctl)
    learner.notify(NET)
    wait_for(lambda: ctl.endpoints[EP].labels == {"tier": "web", "a": "b=c"}, "the labels")
    assert ctl.endpoints[EP].container_name == "web1"
    wait_for(settled(learner), "no retry pending")
    before = len(ctl.patches)
    learner.notify(NET)  # nothing changed: asked again, nothing PATCHed
    wait_for(lambda: len(dockerd.container_requests) >= 2, "a second look")
    time.sleep(0.2)
    assert len(ctl.patches) == before


def test_the_docker_api_is_asked_at_its_socket(dockerd, sock_path):
    dockerd.add_network(NET, "named1", {EP: "web1"})
    api = DockerApi(f"unix://{sock_path}")
    try:
        info = api.inspect_network(NET)
        assert info is not None and (info.name, info.containers) == ("named1", {EP: "web1"})
        assert api.inspect_network(NET2) is None  # 404: Docker does not know it
        dockerd.fail_next = 1
        with pytest.raises(Unavailable, match=r"answered GET /v1\.41/networks/.* with 500"):
            api.inspect_network(NET)
    finally:
        api.close()
    away = DockerApi(f"unix://{sock_path}.missing")
    with pytest.raises(Unavailable, match=r"Docker API at unix://.*missing is not reachable"):
        away.inspect_network(NET)


def test_debounces_a_burst_of_notifications(dockerd, ctl, make_learner):
    dockerd.add_network(NET, "named1", {EP: "web1", EP2: "db1"})
    timing = LearnerTiming(debounce=1.0, max_delay=5.0, first_retry=0.05, attempts=3)
    learner = make_learner(ctl, timing)
    start = time.monotonic()
    for _ in range(5):  # e.g. CreateNetwork, then Joins of `docker compose up`
        learner.notify(NET)
    assert learner.pending() == [NET]
    time.sleep(0.3)
    assert dockerd.requests == []  # Docker is not asked at once
    wait_for(lambda: len(ctl.patches) == 3, "names learned")
    time.sleep(0.3)
    assert dockerd.requests == [NET]  # one pass for the whole burst
    assert dockerd.request_times[0] - start >= 0.95


def test_a_steady_stream_of_notifications_still_gets_a_pass(dockerd, ctl, make_learner):
    dockerd.add_network(NET, "named1", {EP: "web1", EP2: "db1"})
    timing = LearnerTiming(debounce=0.5, max_delay=1.0, first_retry=0.05, attempts=3)
    learner = make_learner(ctl, timing)
    start = time.monotonic()
    while time.monotonic() - start < 3.0 and not dockerd.requests:
        learner.notify(NET)
        time.sleep(0.1)
    assert dockerd.requests, "no pass while notifications kept coming"
    assert dockerd.request_times[0] - start < 2.5


def test_retries_when_the_docker_api_fails(dockerd, ctl, make_learner):
    dockerd.add_network(NET, "named1", {EP: "web1", EP2: "db1"})
    dockerd.fail_next = 2
    learner = make_learner(ctl)
    learner.notify(NET)
    wait_for(lambda: len(ctl.patches) == 3, "names learned")
    assert dockerd.requests == [NET, NET, NET]


PATIENT = LearnerTiming(debounce=0.05, first_retry=0.05, retry_max=0.1, attempts=100)


def test_retries_until_dockerd_is_up(sock_path, ctl, make_learner):
    learner = make_learner(ctl, PATIENT)
    learner.notify(NET)  # nothing listens on the socket yet
    time.sleep(0.3)
    assert ctl.patches == []
    wait_for(lambda: learner.pending() == [NET], "a retry scheduled")
    fake = FakeDockerd(sock_path)
    fake.add_network(NET, "named1", {EP: "web1", EP2: "db1"})
    fake.start()
    try:
        wait_for(lambda: len(ctl.patches) == 3, "names learned once dockerd answers")
    finally:
        fake.stop()


def test_retries_until_docker_lists_the_network_and_its_containers(dockerd, ctl, make_learner):
    learner = make_learner(ctl, PATIENT)
    learner.notify(NET)  # CreateNetwork replied; Docker has not stored the network yet
    wait_for(lambda: len(dockerd.requests) >= 2, "a retry after the 404")
    dockerd.add_network(NET, "named1", {EP: "web1"})  # EP2's Join not done yet
    wait_for(lambda: ("network", NET, "named1") in ctl.patches, "network name")
    wait_for(lambda: ("endpoint", EP, "web1") in ctl.patches, "the first container")
    wait_for(lambda: len(dockerd.requests) >= 5, "more attempts")  # EP2 still missing
    assert ("endpoint", EP2, "db1") not in ctl.patches
    dockerd.add_network(NET, "named1", {EP: "web1", EP2: "db1"})
    wait_for(lambda: ("endpoint", EP2, "db1") in ctl.patches, "the late container")
    wait_for(settled(learner), "done")


def test_retries_when_the_controller_fails(dockerd, ctl, make_learner):
    dockerd.add_network(NET, "named1", {EP: "web1", EP2: "db1"})
    ctl.fail["list_endpoints"] = Unavailable("the qingluan controller is not reachable")
    ctl.fail["update_network"] = QingluanError("boom")
    learner = make_learner(ctl)
    learner.notify(NET)
    wait_for(lambda: len(ctl.patches) == 3, "names learned")
    wait_for(settled(learner), "done")


def test_gives_up_after_a_bounded_number_of_attempts(dockerd, ctl, make_learner):
    dockerd.fail_next = 1000
    timing = LearnerTiming(debounce=0.01, first_retry=0.02, retry_max=0.05, attempts=4)
    learner = make_learner(ctl, timing)
    learner.notify(NET)
    wait_for(lambda: len(dockerd.requests) == 4 and not learner.pending(), "four attempts")
    time.sleep(0.4)
    assert len(dockerd.requests) == 4
    assert ctl.patches == []
    # fresh news starts again
    dockerd.fail_next = 0
    dockerd.add_network(NET, "named1", {EP: "web1", EP2: "db1"})
    learner.notify(NET)
    wait_for(lambda: len(ctl.patches) == 3, "names learned")


def test_networks_of_other_hosts_or_gone_are_skipped(dockerd, ctl, make_learner):
    dockerd.add_network("9" * 64, "elsewhere", {})
    learner = make_learner(ctl)
    learner.notify("9" * 64)  # not in the controller's list for this host
    wait_for(lambda: learner.passes >= 1, "a pass")
    assert dockerd.requests == []
    assert ctl.patches == []
    assert learner.pending() == []


def test_a_name_the_controller_cannot_record_is_not_retried(dockerd, ctl, make_learner):
    dockerd.add_network(NET, "n" * 80, {EP: "web1", EP2: "db1"})  # Docker allows long names
    learner = make_learner(ctl)
    learner.notify(NET)
    wait_for(lambda: len(ctl.patches) == 2, "container names")
    wait_for(settled(learner), "done")
    assert ctl.networks[NET].name is None


# ---- never inside a plugin call ------------------------------------------------------


class NamingController(FakeController):
    """The handlers' fake controller plus PATCH /v1/networks/{id}."""

    def update_network(self, network_id: str, body: NetworkUpdate) -> Network:
        self._call("update_network", (network_id, body))
        n = self.networks[network_id].model_copy(update={"name": body.name})
        self.networks[network_id] = n
        return n


def test_handlers_only_enqueue_and_return_before_the_learner_ran(dockerd, make_learner):
    ctl, host = NamingController(), FakeHost()
    learner = make_learner(ctl, LearnerTiming(debounce=0.0, max_delay=0.0, first_retry=0.05))
    drv = NetworkDriver(host=HOST, controller=ctl, host_ops=host, on_network_change=learner.notify)
    ipam = IpamDriver(controller=ctl)
    dockerd.gate.clear()  # dockerd is "busy": every Docker API answer is held

    started = time.monotonic()
    docker_create_network(ipam, drv, NET, model="nat")
    drv.create_endpoint(create_endpoint_req())
    drv.join(join_req())
    assert time.monotonic() - started < 2.0
    # the learner did go to Docker, and is still waiting for it: the calls did not
    wait_for(lambda: dockerd.requests, "the learner asking Docker")
    assert dockerd.answered == 0
    assert "update_network" not in ctl.names()

    dockerd.add_network(NET, "named1", {EP: "web1"})
    dockerd.gate.set()
    wait_for(lambda: ctl.endpoints[EP].container_name == "web1", "container name")
    assert ctl.networks[NET].name == "named1"
    assert learner._docker.threads == {"ql-names"}  # type: ignore[attr-defined]


def test_a_failing_learner_never_fails_the_call():
    ctl, host = NamingController(), FakeHost()

    def broken(network_id: str) -> None:
        raise RuntimeError("queue is broken")

    drv = NetworkDriver(host=HOST, controller=ctl, host_ops=host, on_network_change=broken)
    docker_create_network(IpamDriver(controller=ctl), drv, NET, model="nat")
    drv.create_endpoint(create_endpoint_req())
    drv.join(join_req())
    assert NET in ctl.networks


# ---- the driver process ------------------------------------------------------------


def test_driver_learns_at_start_up_and_after_join(tmp_path, dockerd, make_learner):
    ctl, host = NamingController(), FakeHost()
    # state from before this driver's start: a network with one container
    ctl.networks[NET] = network(NET, 1)
    ctl.endpoints[EP] = endpoint(EP, NET)
    dockerd.add_network(NET, "named1", {EP: "web1"})
    learner = make_learner(ctl, start=False)
    cfg = DriverConfig(host=HOST, plugin_dir=tmp_path / "plugins", retry_max=0.2)
    driver = Driver(cfg, controller=ctl, host_ops=host, learner=learner)
    with running(driver):
        wait_for(lambda: ctl.endpoints[EP].container_name == "web1", "start-up pass")
        assert ctl.networks[NET].name == "named1"
        # a new container: CreateEndpoint happened, Join comes over the plugin socket
        ctl.endpoints[EP2] = endpoint(EP2, NET)
        dockerd.add_network(NET, "named1", {EP: "web1", EP2: "web2"})
        ids = {"NetworkID": NET, "EndpointID": EP2, "SandboxKey": "/var/run/docker/x"}
        status, _ = post(cfg.network_socket, "NetworkDriver.Join", ids)
        assert status == 200
        wait_for(lambda: ctl.endpoints[EP2].container_name == "web2", "name after Join")
    assert learner._thread is None  # stopped with the driver


# ---- configuration ---------------------------------------------------------------------


def test_docker_host_flag_and_defaults(monkeypatch):
    args = build_parser().parse_args(["driver", "--docker-host", "unix:///tmp/d.sock"])
    assert config_from_args(args).docker_host == "unix:///tmp/d.sock"

    monkeypatch.setenv("DOCKER_HOST", "unix:///run/user/0/docker.sock")
    assert config_from_args(build_parser().parse_args(["driver"])).docker_host == (
        "unix:///run/user/0/docker.sock"
    )
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.0.0.1:2375")
    assert config_from_args(build_parser().parse_args(["driver"])).docker_host == (
        DEFAULT_DOCKER_HOST
    )
    monkeypatch.delenv("DOCKER_HOST")
    assert default_docker_host() == "unix:///run/docker.sock"
    assert DriverConfig(host="x").docker_host == "unix:///run/docker.sock"
    with pytest.raises(InvalidRequest, match="only a local socket"):
        DockerApi("tcp://10.0.0.1:2375")
