"""The driver as real dockerd 20.10 uses it: the seed's commands, ``docker run -p``, teardown.

One simulated host: a network namespace with its own OVS and an isolated
dockerd in it; the driver (in this process, managing that namespace) and the
controller's real REST app on loopback. The controller's OpenFlow side is left
out (its converger is a stand-in), so the bridge gets one NORMAL
flow instead of the pipeline: this test is about Docker's protocol and the
host plumbing, not the flows.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from qingluan import names
from qingluan.controller.api import create_app
from qingluan.controller.services import Services
from qingluan.controller.store import SqliteStore
from qingluan.driver.client import HttpControllerClient
from qingluan.driver.host.plumbing import LinuxHost
from qingluan.driver.service import Driver, DriverConfig
from qingluan.model import DatapathType
from tests.support.dockerd import DockerCommandError, IsolatedDockerd
from tests.support.image import BUSYBOX, ensure_images
from tests.support.ovs import Netns, OvsInstance, ovs_in_netns
from tests.support.proc import free_port
from tests.unit.test_driver_contract import NullConverger

pytestmark = pytest.mark.integration

TOKEN = "dockerd-test-token"
PREFIX = "QLDOCK"
QL = ("--driver", "qingluan", "--ipam-driver", "qingluanIpam")


class DriverRunner:
    """The driver process, run on a thread of this process: start, stop, start again."""

    def __init__(self, config: DriverConfig, host_ops: LinuxHost) -> None:
        self.config, self.host_ops = config, host_ops
        self.driver: Driver | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Driver:
        driver = Driver(
            self.config,
            controller=HttpControllerClient(self.config.controller_url, token=TOKEN),
            host_ops=self.host_ops,
        )
        loop, stop = asyncio.new_event_loop(), asyncio.Event()
        thread = threading.Thread(target=lambda: loop.run_until_complete(driver.run(stop)))
        thread.start()
        self.driver, self._loop, self._stop, self._thread = driver, loop, stop, thread
        deadline = time.monotonic() + 20
        while not driver.guard.ready:
            assert time.monotonic() < deadline, "the driver did not get ready"
            time.sleep(0.05)
        return driver

    def stop(self) -> None:
        if self._thread is None:
            return
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)
        self._loop.close()
        self._thread = None


class Stack:
    def __init__(
        self, ns: Netns, ovs: OvsInstance, dockerd: IsolatedDockerd, runner: DriverRunner
    ) -> None:
        self.ns, self.ovs, self.dockerd, self.runner = ns, ovs, dockerd, runner

    def docker(self, *args: str, timeout: float = 90.0) -> str:
        return self.dockerd.docker(*args, timeout=timeout).stdout.strip()

    def fail(self, *args: str) -> str:
        with pytest.raises(DockerCommandError) as exc:
            self.dockerd.docker(*args, timeout=90.0)
        return exc.value.stderr.strip()

    def in_container(self, name: str, *cmd: str) -> str:
        return self.docker("exec", name, *cmd)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    store = SqliteStore.in_state_dir(tmp_path / "state")
    app = create_app(Services(store, NullConverger()), TOKEN)
    port = free_port()
    api = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off")
    )
    api_thread = threading.Thread(target=api.run, daemon=True)
    api_thread.start()
    with ovs_in_netns() as (ns, ovs), IsolatedDockerd(netns=ns.name) as dockerd:
        config = DriverConfig(
            host="dock1",
            controller_url=f"http://127.0.0.1:{port}",
            plugin_dir=dockerd.plugin_dir,
            ovsdb=f"unix:{ovs.sock}",
            netns=ns.name,
            chain_prefix=PREFIX,
            datapath_type=DatapathType.NETDEV,
        )
        host_ops = LinuxHost(
            bridge=config.bridge,
            ovsdb=config.ovsdb,
            netns=ns.name,
            chain_prefix=PREFIX,
            datapath_type=DatapathType.NETDEV,
        )
        runner = DriverRunner(config, host_ops)
        try:
            runner.start()
            ovs.ofctl("add-flow", "br-ql", "priority=0,actions=NORMAL")
            dockerd.start()
            ensure_images(dockerd)
            yield Stack(ns, ovs, dockerd, runner)
        finally:
            try:
                dockerd.cleanup()  # needs the driver still running
            finally:
                runner.stop()
                host_ops.iptables.remove()
                api.should_exit = True
                api_thread.join(10)
                store.close()


FETCH = (
    "import urllib.request as u,time\n"
    "for i in range(50):\n"
    "    try:\n"
    "        print(u.urlopen('http://127.0.0.1:8080/hostname',timeout=2).read().decode());break\n"
    "    except Exception: time.sleep(0.2)\n"
)


def test_seed_commands_run_and_teardown_leaves_nothing(stack: Stack):
    # a wrong --opt is refused with the driver's words
    err = stack.fail(
        "network", "create", *QL, "--opt", "model=bogus", "--ipam-opt", "pool=nat", "bad"
    )
    assert "unknown network model 'bogus' (choose nonat, nat, flat, vlan, vxlan)" in err
    err = stack.fail(
        "network", "create", *QL, "--opt", "model=vlan", "--opt", "vni=4095",
        "--ipam-opt", "pool=vlan", "--ipam-opt", "vni=4095", "--subnet", "192.168.9.0/24", "bad",
    )  # fmt: skip
    assert "--opt vni=4095: VLAN id must be 1-4094" in err

    # the seed's NAT commands, verbatim
    stack.docker("network", "create", *QL, "--opt", "model=nat", "--ipam-opt", "pool=nat", "nat1")
    stack.docker(
        "network", "create", *QL, "--opt", "model=nat", "--ipam-opt", "pool=nat",
        "--subnet", "192.168.2.0/24", "--gateway", "192.168.2.1", "nat2",
    )  # fmt: skip
    stack.docker(
        "network", "create", *QL, "--opt", "model=nonat", "--ipam-opt", "pool=nonat",
        "--subnet", "192.168.1.0/24", "--gateway", "192.168.1.1", "nonat2",
    )  # fmt: skip
    nat2_id = stack.docker("network", "inspect", "-f", "{{.Id}}", "nat2")
    gw_dev = names.gateway_dev(nat2_id)
    assert "192.168.2.1/24" in stack.ns.run("ip", "-br", "addr", "show", "dev", gw_dev)

    # a published web server on nat2
    stack.docker(
        "run", "-d", "--name", "web", "--network", "nat2", "-p", "8080:80", BUSYBOX,
        "httpd", "-f", "-p", "80", "-h", "/etc",
    )  # fmt: skip
    routes = stack.in_container("web", "ip", "route")
    assert "default via 192.168.2.1 dev eth0" in routes
    inspect = stack.dockerd.inspect("web")[0]
    nets = inspect["NetworkSettings"]["Networks"]  # type: ignore[index]
    ep_id, mac = nets["nat2"]["EndpointID"], nets["nat2"]["MacAddress"]
    assert mac in stack.in_container("web", "ip", "link", "show", "eth0")
    assert names.endpoint_port(ep_id) in stack.ovs.vsctl("list-ports", "br-ql")
    ip = nets["nat2"]["IPAddress"]
    assert ip.startswith("192.168.2.")
    # the published port, through the host's loopback (OUTPUT DNAT, no docker-proxy)
    hostname = stack.in_container("web", "hostname")
    assert stack.ns.run("python3", "-c", FETCH, timeout=30).strip() == hostname
    # the controller knows the publication (a restarted driver restores it from there)
    controller = HttpControllerClient(stack.runner.config.controller_url)
    eps = controller.list_endpoints("dock1")
    assert [m.host_port for e in eps for m in e.port_mappings] == [8080]

    # a driver restart that finds its NAT rules and a gateway address gone puts them back
    stack.runner.stop()
    assert not stack.runner.config.network_socket.exists()
    stack.runner.host_ops.iptables.remove()
    stack.ns.run("ip", "addr", "flush", "dev", gw_dev)
    ports_before = stack.ovs.vsctl("list-ports", "br-ql")
    report = stack.runner.start().last_sweep
    assert report is not None and report.errors == [] and report.nat_changed
    assert report.links_removed == [] and report.ports_removed == []
    assert stack.ovs.vsctl("list-ports", "br-ql") == ports_before
    assert stack.ns.run("python3", "-c", FETCH, timeout=30).strip() == hostname
    assert stack.in_container("web", "hostname") == hostname  # the container never noticed

    # nonat: on-link only, no default route and no docker_gwbridge interface
    out = stack.docker(
        "run", "--rm", "--network", "nonat2", BUSYBOX, "sh", "-c", "ip route; ip -o link"
    )
    assert "default" not in out
    assert "192.168.1.0/24 dev eth0" in out
    links = [ln.split(":")[1].strip().split("@")[0] for ln in out.splitlines() if "link/" in ln]
    assert links == ["lo", "eth0"]

    # teardown
    stack.docker("rm", "-f", "web")
    for net in ("nat1", "nat2", "nonat2"):
        stack.docker("network", "rm", net)
    assert [n for n in stack.ns.run("ip", "-br", "link").split() if n.startswith("ql")] == []
    assert [p for p in stack.ovs.vsctl("list-ports", "br-ql").split() if p.startswith("ql")] == []
    nat_rules = stack.ns.run("iptables", "-w", "10", "-t", "nat", "-S")
    assert not [r for r in nat_rules.splitlines() if r.startswith(f"-A {PREFIX}-")]
