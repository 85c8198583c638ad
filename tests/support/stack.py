"""The whole product on one machine, for end-to-end tests and demos.

- the **controller** (the real ``qingluan controller`` process) in the root
  network namespace, listening only on a private management bridge;
- one or more **simulated Docker hosts**, each a network namespace holding its
  own Open vSwitch instance (userspace datapath), an isolated dockerd and the
  real ``qingluan driver`` process; the host reaches the controller over a
  veth on the management bridge;
- per host an **outside** namespace (203.0.113.2) behind the host's uplink
  address 203.0.113.1: the "internet" of NAT tests;
- with ``lan=True`` a simulated physical LAN (switch + router, tests/support/lan.py)
  with every host's ``eth1`` on it; with ``underlay=True`` an underlay bridge for
  VXLAN with every host's ``eth2`` on it (``SimHost.underlay_address`` is the
  address the driver is told to use, ``--underlay-address ... --underlay-nic eth2``).

Nothing touches the machine's own interfaces, routes or iptables: all NAT
rules live in the simulated hosts' namespaces. Everything is removed by
``close()``, also after a failure half-way through ``start()``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.support.dockerd import DockerCommandError, IsolatedDockerd
from tests.support.image import ensure_images
from tests.support.lan import UNDERLAY_NIC, Lan, Underlay, used_networks
from tests.support.ovs import Netns, OvsInstance, veth
from tests.support.proc import Proc, free_port, run

REPO = Path(__file__).resolve().parents[2]
QINGLUAN = [sys.executable, "-m", "qingluan"]
OUTSIDE_HOST_IP = "203.0.113.1"
OUTSIDE_IP = "203.0.113.2"
QL = ("--driver", "qingluan", "--ipam-driver", "qingluanIpam")


_used_networks = used_networks  # kept for callers of the old name


def _free_management_subnet() -> ipaddress.IPv4Network:
    used = _used_networks()
    for _ in range(200):
        cand = ipaddress.IPv4Network(f"10.254.{secrets.randbelow(250) + 1}.0/24")
        if not any(cand.overlaps(u) for u in used):
            return cand
    raise RuntimeError("no free 10.254.x.0/24 management subnet")


class SimHost:
    """One simulated Docker host: namespace, OVS, dockerd and the qingluan driver."""

    def __init__(self, stack: Stack, name: str, index: int, *, userspace_tso: bool = False) -> None:
        self.stack = stack
        self.name = name
        self.index = index
        self.userspace_tso = userspace_tso
        self.workdir = stack.workdir / name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.netns = Netns(f"qle-{stack.tag}-{name}")
        self.outside = Netns(f"qlo-{stack.tag}-{name}")
        self.ovs: OvsInstance | None = None
        self.dockerd: IsolatedDockerd | None = None
        self.driver: Proc | None = None
        self.mgmt_ip = str(stack.mgmt_net[10 + index])
        self.mgmt_dev = f"qlm{stack.tag}{index}"
        # "172.31.n.(10+index)/24" with underlay=True: the driver's --underlay-address
        self.underlay_address: str | None = (
            stack.underlay.address(index) if stack.underlay is not None else None
        )
        self._network_up = False

    # ---- life cycle ----

    def start(self) -> None:
        self.start_network()
        self.start_services()

    def start_network(self) -> None:
        """The namespace and its cables (management, outside, LAN eth1, underlay eth2):
        no OVS, dockerd or driver yet. Done once."""
        if self._network_up:
            return
        self._network_up = True
        self.netns.create()
        self._link_management()
        self._link_outside()
        if self.stack.lan is not None:
            self.stack.lan.attach(self.netns, "eth1", f"p-{self.name}")
        if self.stack.underlay is not None:
            # no address here: the driver puts underlay_address on its OVS bridge
            self.stack.underlay.attach(self.netns, f"u-{self.name}", UNDERLAY_NIC)

    def start_services(self) -> None:
        """OVS, the driver, dockerd (and the test images) in the host's namespace."""
        # default work dir: a short /tmp path (unix socket paths are limited to 108 bytes)
        self.ovs = OvsInstance(netns=self.netns.name, userspace_tso=self.userspace_tso).start()
        self.dockerd = IsolatedDockerd(netns=self.netns.name)
        self.start_driver()
        self.dockerd.start()
        ensure_images(self.dockerd)

    def _link_management(self) -> None:
        veth(None, self.mgmt_dev, self.netns, "mgmt0")
        run(["ip", "link", "set", self.mgmt_dev, "master", self.stack.mgmt_bridge])
        prefix = self.stack.mgmt_net.prefixlen
        self.netns.run("ip", "addr", "add", f"{self.mgmt_ip}/{prefix}", "dev", "mgmt0")

    def _link_outside(self) -> None:
        self.outside.create()
        # the pair lives between the host namespace and its outside namespace only
        veth(self.netns, "uplink0", self.outside, "eth0")
        self.netns.run("ip", "addr", "add", f"{OUTSIDE_HOST_IP}/24", "dev", "uplink0")
        self.outside.run("ip", "addr", "add", f"{OUTSIDE_IP}/24", "dev", "eth0")

    def driver_argv(self) -> list[str]:
        assert self.ovs is not None and self.dockerd is not None
        return [
            "ip",
            "netns",
            "exec",
            self.netns.name,
            *QINGLUAN,
            "driver",
            "--host-name",
            self.name,
            "--controller",
            self.stack.api_url,
            "--token-file",
            str(self.stack.token_file),
            "--openflow-target",
            f"tcp:{self.stack.mgmt_ip}:{self.stack.of_port}",
            "--ovsdb",
            f"unix:{self.ovs.sock}",
            "--plugin-dir",
            str(self.dockerd.plugin_dir),
            "--docker-host",
            self.dockerd.host,
            "--datapath",
            "netdev",
            "--resync-interval",
            "3",
            *(["--uplink", "physnet1:eth1"] if self.stack.lan is not None else []),
            *self.underlay_argv(),
            *self.ids_argv(),
            "--settings-interval",
            "1",
            "--log-level",
            "info",
        ]

    @property
    def ids_dir(self) -> Path:
        return self.workdir / "ids"

    def ids_argv(self) -> list[str]:
        """``--ids suricata`` with ``Stack(ids=True)``."""
        if not self.stack.ids:
            return []
        return ["--ids", "suricata", "--ids-dir", str(self.ids_dir)]

    def underlay_argv(self) -> list[str]:
        """The driver's underlay flags (none without ``Stack(underlay=True)``)."""
        if self.underlay_address is None:
            return []
        return ["--underlay-address", self.underlay_address, "--underlay-nic", UNDERLAY_NIC]

    def start_driver(self) -> None:
        assert self.dockerd is not None
        self.driver = Proc(f"driver {self.name}", self.driver_argv(), self.workdir / "driver.log")
        self.driver.env = {"PYTHONPATH": str(REPO)}
        self.driver.start()
        plugin = self.dockerd.plugin_dir
        self.driver.wait_ready(
            lambda: (
                (plugin / "qingluan.sock").exists()
                and (plugin / "qingluanIpam.sock").exists()
                and self.stack.host_connected(self.name)
            ),
            timeout=60,
        )

    def stop_driver(self) -> None:
        if self.driver is not None:
            self.driver.stop()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.dockerd is not None:
                self.dockerd.cleanup()
        with contextlib.suppress(Exception):
            self.stop_driver()
        with contextlib.suppress(Exception):
            if self.ovs is not None:
                self.ovs.stop()
        with contextlib.suppress(Exception):
            self.outside.delete()
        with contextlib.suppress(Exception):
            self.netns.delete()
        run(["ip", "link", "del", self.mgmt_dev], check=False)

    # ---- conveniences for tests ----

    def docker(self, *args: str, timeout: float = 90.0) -> str:
        assert self.dockerd is not None
        return self.dockerd.docker(*args, timeout=timeout).stdout.strip()

    def docker_fails(self, *args: str, timeout: float = 90.0) -> str:
        """Run a docker command that must fail; return what the user reads on stderr."""
        assert self.dockerd is not None
        try:
            out = self.dockerd.docker(*args, timeout=timeout).stdout
        except DockerCommandError as exc:
            return exc.stderr.strip()
        raise AssertionError(f"docker {' '.join(args)} succeeded: {out}")

    def sh(self, *cmd: str, check: bool = True, timeout: float = 30.0) -> str:
        """A command in the host's network namespace (iptables, ip, ovs-ofctl...)."""
        return self.netns.run(*cmd, check=check, timeout=timeout)

    def ofctl(self, *args: str) -> str:
        assert self.ovs is not None
        return self.ovs.ofctl(*args)

    def links(self) -> set[str]:
        out = self.sh("ip", "-o", "link", "show")
        return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


class Stack:
    """The controller plus simulated hosts; see the module docstring."""

    def __init__(
        self,
        workdir: Path,
        host_names: tuple[str, ...] = ("h1",),
        *,
        userspace_tso: bool = False,
        lan: bool = False,
        underlay: bool = False,
        ids: bool = False,
    ) -> None:
        """``userspace_tso``: every host's OVS starts with userspace TSO enabled.
        ``lan``: a simulated physical LAN (tests/support/lan.py) with every host's
        ``eth1`` on it, for the cross-host modes.
        ``underlay``: an underlay bridge ``ul0`` (in the LAN's switch namespace, or in
        its own) with every host's ``eth2`` on it, for VXLAN; the drivers get
        ``--underlay-address SimHost.underlay_address --underlay-nic eth2``.
        ``ids``: every driver runs Suricata on its IDS mirror port (``--ids suricata``).
        The controller's embedded sFlow collector listens on ``sflow_port`` (UDP) of the
        management address."""
        self.ids = ids
        self.sflow_port = free_port()
        self.workdir = workdir
        self.tag = secrets.token_hex(3)
        self.mgmt_net = _free_management_subnet()
        self.mgmt_ip = str(self.mgmt_net[1])
        self.mgmt_bridge = f"qlmb{self.tag}"
        self.api_port = free_port()
        self.of_port = free_port()
        self.state_dir = workdir / "controller"
        self.token_file = self.state_dir / "token"
        self.controller: Proc | None = None
        self._network_up = False
        self.lan = Lan(self.tag) if lan else None
        self.underlay = (
            Underlay(self.tag, switch=self.lan.switch if self.lan else None) if underlay else None
        )
        self.hosts = [
            SimHost(self, name, i, userspace_tso=userspace_tso) for i, name in enumerate(host_names)
        ]

    @property
    def api_url(self) -> str:
        return f"http://{self.mgmt_ip}:{self.api_port}"

    @property
    def token(self) -> str:
        return self.token_file.read_text().strip()

    def start(self) -> Stack:
        try:
            self.start_network()
            self.start_controller()
            for host in self.hosts:
                host.start_services()
        except BaseException:
            self.close()
            raise
        return self

    def start_network(self) -> Stack:
        """Only the wiring: management bridge, LAN, underlay, every host's namespace and
        cables; no controller, OVS, dockerd or driver (``start()`` does it all). Call
        ``close()`` afterwards in any case."""
        if not self._network_up:
            self._network_up = True
            run(["ip", "link", "add", self.mgmt_bridge, "type", "bridge"])
            prefix = self.mgmt_net.prefixlen
            run(["ip", "addr", "add", f"{self.mgmt_ip}/{prefix}", "dev", self.mgmt_bridge])
            run(["ip", "link", "set", self.mgmt_bridge, "up"])
            if self.lan is not None:
                self.lan.start()
            if self.underlay is not None:
                self.underlay.start()
        for host in self.hosts:
            host.start_network()
        return self

    def controller_argv(self) -> list[str]:
        return [
            *QINGLUAN,
            "controller",
            "--state-dir",
            str(self.state_dir),
            "--api-host",
            self.mgmt_ip,
            "--api-port",
            str(self.api_port),
            "--openflow-host",
            self.mgmt_ip,
            "--openflow-port",
            str(self.of_port),
            "--sflow-port",
            str(self.sflow_port),
            "--log-level",
            "info",
        ]

    def start_controller(self) -> None:
        self.controller = Proc(
            "controller", self.controller_argv(), self.workdir / "controller.log"
        ).start()
        self.controller.wait_ready(self._api_up, timeout=30)

    def _api_up(self) -> bool:
        try:
            return httpx.get(self.api_url + "/v1/status", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def close(self) -> None:
        for host in self.hosts:
            host.close()
        if self.controller is not None:
            self.controller.stop()
        if self.underlay is not None:
            self.underlay.close()
        if self.lan is not None:
            self.lan.close()
        run(["ip", "link", "del", self.mgmt_bridge], check=False)

    # ---- REST helpers ----

    def get(self, path: str) -> Any:
        reply = httpx.get(self.api_url + path, timeout=30)
        reply.raise_for_status()
        return reply.json()

    def request(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token if token is None else token}"}
        return httpx.request(method, self.api_url + path, json=body, headers=headers, timeout=30)

    def host_connected(self, name: str) -> bool:
        try:
            hosts = self.get("/v1/hosts")
        except httpx.HTTPError:
            return False
        return any(h["host"]["name"] == name and h["connected"] for h in hosts)

    def host(self, name: str) -> SimHost:
        """The simulated host called ``name``."""
        return next(h for h in self.hosts if h.name == name)

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = self.get("/v1/status")
        return data


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """The ``qingluan`` command as a person would run it against this stack."""
    return subprocess.run(
        [*QINGLUAN, *args, "--controller", stack.api_url],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
