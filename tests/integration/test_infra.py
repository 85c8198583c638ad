"""The test rigs themselves: an isolated dockerd and the offline images.

These run real dockerd (in a private mount namespace) and real containers;
no qingluan code is involved, so a failure here points at the machine or at
``tests/support/dockerd.py``, not at the product.
"""

from __future__ import annotations

import json
import os
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from tests.support.dockerd import (
    PLUGIN_SOCKET_DIR,
    IsolatedDockerd,
    mounts_under,
    sweep_stale,
)
from tests.support.image import BUSYBOX, IPERF3, ensure_images

pytestmark = pytest.mark.integration

# Free on this machine kind (ENVIRONMENT.md); no route is created for the plugin network.
PLUGIN_SUBNET = "192.168.251.0/24"
BRIDGE_SUBNET = "192.168.252.0/24"


@pytest.fixture(scope="module", autouse=True)
def _no_stale_instances() -> None:
    sweep_stale()


@pytest.fixture
def dockerd() -> Iterator[IsolatedDockerd]:
    with IsolatedDockerd() as d:
        d.start()
        ensure_images(d)
        yield d


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z"


def _leftovers(d: IsolatedDockerd, pids: list[int], bridges: list[str]) -> dict[str, object]:
    """What an instance left behind, as a dict of non-empty findings."""
    found = {
        "processes": [p for p in pids if not _gone(p)],
        "mounts": mounts_under(d.base) if d.base.exists() else [],
        "directory": [d.base] if d.base.exists() else [],
        "bridges": [b for b in bridges if Path(f"/sys/class/net/{b}").exists()],
    }
    return {k: v for k, v in found.items() if v}


def _bridge_of(d: IsolatedDockerd, network: str) -> str:
    return "br-" + d.docker("network", "inspect", "-f", "{{.Id}}", network).stdout.strip()[:12]


def test_runs_containers_from_the_offline_images(dockerd: IsolatedDockerd) -> None:
    assert dockerd.docker("run", "--rm", BUSYBOX, "true").returncode == 0
    out = dockerd.docker("run", "--rm", BUSYBOX, "sh", "-c", "seq 3; timeout 1 sleep 5; echo $?")
    assert out.stdout.split() == ["1", "2", "3", "143"]
    version = dockerd.docker("run", "--rm", IPERF3, "iperf3", "--version").stdout
    assert version.startswith("iperf 3")
    info = dockerd.docker("info", "--format", "{{json .}}").stdout
    driver = json.loads(info)["Driver"]
    assert driver in ("overlay2", "vfs"), driver
    # a second call is answered by the marker
    began = time.monotonic()
    ensure_images(dockerd)
    assert time.monotonic() - began < 0.5


class _FakePlugin(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """A legacy network-driver plugin that records every call dockerd makes."""

    daemon_threads = True

    def __init__(self, path: Path) -> None:
        self.calls: list[tuple[str, str | None]] = []
        super().__init__(str(path), _PluginHandler)


class _PluginHandler(BaseHTTPRequestHandler):
    server: _FakePlugin
    replies = {
        "/Plugin.Activate": {"Implements": ["NetworkDriver"]},
        "/NetworkDriver.GetCapabilities": {"Scope": "local"},
    }

    def address_string(self) -> str:  # a unix socket peer has no address
        return "docker"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.server.calls.append((self.path, self.headers.get("Content-Type")))
        body = json.dumps(self.replies.get(self.path, {})).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.docker.plugins.v1+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_discovers_plugins_in_the_test_directory_only(dockerd: IsolatedDockerd) -> None:
    name = f"qltest{os.getpid()}"
    plugin = _FakePlugin(dockerd.plugin_dir / f"{name}.sock")
    threading.Thread(target=plugin.serve_forever, daemon=True).start()
    try:
        dockerd.docker("network", "create", "-d", name, "--subnet", PLUGIN_SUBNET, "qlt-plugin")
        dockerd.docker("network", "rm", "qlt-plugin")
    finally:
        plugin.shutdown()
        plugin.server_close()
    paths = [path for path, _ in plugin.calls]
    assert paths[0] == "/Plugin.Activate"
    assert "/NetworkDriver.CreateNetwork" in paths
    assert "/NetworkDriver.DeleteNetwork" in paths
    # what DOCKER-PROTOCOL.md says: no Content-Type on plugin calls
    assert {ctype for _, ctype in plugin.calls} == {None}
    # inside the namespace /run/docker/plugins *is* the test directory; the host's is untouched
    inode = subprocess.run(
        [
            "nsenter",
            f"--mount=/proc/{dockerd.pid}/ns/mnt",
            "stat",
            "-c",
            "%i",
            str(PLUGIN_SOCKET_DIR),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout.strip()
    assert int(inode) == dockerd.plugin_dir.stat().st_ino
    assert not (PLUGIN_SOCKET_DIR / f"{name}.sock").exists()


def test_bridge_network_works_without_iptables(dockerd: IsolatedDockerd) -> None:
    """Docker's own bridge (the benchmarks' baseline) carries traffic with --iptables=false."""
    policy = subprocess.run(
        ["iptables", "-S", "FORWARD"], capture_output=True, text=True, check=True, timeout=10
    ).stdout.splitlines()[0]
    if policy == "-P FORWARD DROP":
        pytest.skip("the host's FORWARD policy is DROP: bridged traffic is filtered (br_netfilter)")
    dockerd.docker("network", "create", "-d", "bridge", "--subnet", BRIDGE_SUBNET, "qlt-br")
    for name in ("qlt-a", "qlt-b"):
        dockerd.docker(
            "run", "-d", "--init", "--name", name, "--network", "qlt-br", BUSYBOX, "sleep", "60"
        )
    peer = dockerd.docker(
        "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", "qlt-b"
    ).stdout.strip()
    assert peer.startswith("192.168.252.")
    ping = dockerd.docker("exec", "qlt-a", "ping", "-c", "2", "-W", "2", peer, check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr


def test_runs_inside_a_network_namespace() -> None:
    ns = f"qlt-dns{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
    try:
        with IsolatedDockerd(netns=ns) as d:
            d.start()
            ensure_images(d)
            d.docker("network", "create", "-d", "bridge", "--subnet", BRIDGE_SUBNET, "qlt-br")
            d.docker(
                "run",
                "-d",
                "--init",
                "--name",
                "qlt-in",
                "--network",
                "qlt-br",
                BUSYBOX,
                "sleep",
                "60",
            )
            bridge = _bridge_of(d, "qlt-br")
            in_ns = subprocess.run(
                ["ip", "-n", ns, "-o", "link", "show", bridge], capture_output=True, timeout=10
            )
            assert in_ns.returncode == 0
            assert not Path(f"/sys/class/net/{bridge}").exists()  # not in the root namespace
            d.kill()  # no graceful network removal: cleanup must delete the bridge itself
        gone = subprocess.run(
            ["ip", "-n", ns, "link", "show", bridge], capture_output=True, timeout=10
        )
        assert gone.returncode != 0
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False, timeout=10)


def test_live_restore_restart_keeps_running_containers() -> None:
    with IsolatedDockerd(live_restore=True) as d:
        d.start()
        ensure_images(d)
        d.docker("network", "create", "-d", "bridge", "--subnet", BRIDGE_SUBNET, "qlt-br")
        d.docker(
            "run",
            "-d",
            "--init",
            "--name",
            "qlt-keep",
            "--network",
            "qlt-br",
            BUSYBOX,
            "sleep",
            "120",
        )
        pid = d.container_pid("qlt-keep")
        first_ns = d.mount_ns
        d.restart()
        assert d.mount_ns == first_ns
        assert d.container_pid("qlt-keep") == pid
        assert d.docker("exec", "qlt-keep", "echo", "alive").stdout.strip() == "alive"
        # the sandbox key Docker gives drivers is a network namespace usable from the host
        key = d.sandbox_key("qlt-keep")
        links = subprocess.run(
            ["nsenter", f"--net={key}", "ip", "-o", "link"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
        assert ": lo:" in links and ": eth0@" in links


def test_restart_without_live_restore_stops_containers() -> None:
    with IsolatedDockerd() as d:
        d.start()
        ensure_images(d)
        d.docker("run", "-d", "--init", "--name", "qlt-stop", BUSYBOX, "sleep", "120")
        d.restart()
        state = d.docker("inspect", "-f", "{{.State.Running}}", "qlt-stop").stdout.strip()
        assert state == "false"


def test_cleanup_leaves_no_process_mount_or_device() -> None:
    d = IsolatedDockerd()
    try:
        d.start()
        ensure_images(d)
        d.docker("network", "create", "-d", "bridge", "--subnet", BRIDGE_SUBNET, "qlt-br")
        d.docker("run", "-d", "--name", "qlt-c1", "--network", "qlt-br", BUSYBOX, "sleep", "120")
        d.docker("run", "-d", "--name", "qlt-c2", BUSYBOX, "sleep", "120")
        pids = [*d.namespace_pids(), *(d.container_pid(c) for c in ("qlt-c1", "qlt-c2"))]
        bridges = [_bridge_of(d, "qlt-br")]
        assert mounts_under(d.netns_dir)
    finally:
        began = time.monotonic()
        d.cleanup()
        took = time.monotonic() - began
    assert _leftovers(d, pids, bridges) == {}
    assert took < 20, f"cleanup took {took:.1f}s"
    d.cleanup()  # a second call is harmless


def test_cleanup_after_a_crash_kills_shims_and_containers() -> None:
    d = IsolatedDockerd(live_restore=True)
    try:
        d.start()
        ensure_images(d)
        d.docker("network", "create", "-d", "bridge", "--subnet", BRIDGE_SUBNET, "qlt-br")
        d.docker("run", "-d", "--name", "qlt-c1", "--network", "qlt-br", BUSYBOX, "sleep", "120")
        pids = [*d.namespace_pids(), d.container_pid("qlt-c1")]
        bridges = [_bridge_of(d, "qlt-br")]
        d.kill()
        assert not _gone(pids[-1]), "the container should outlive a killed dockerd"
    finally:
        d.cleanup()
    assert _leftovers(d, pids, bridges) == {}


_ORPHAN = """
import os, sys
from pathlib import Path
from tests.support.dockerd import IsolatedDockerd
from tests.support.image import ensure_images
d = IsolatedDockerd()
d.start()
ensure_images(d, cache_dir=Path(sys.argv[1]))
d.docker("run", "-d", "--name", "qlt-orphan", "qingluan/busybox", "sleep", "120")
print(d.base, d.pid, d.container_pid("qlt-orphan"), flush=True)
os._exit(0)  # no cleanup: a pytest run killed half-way
"""


def test_sweep_cleans_up_after_a_dead_test_process(
    dockerd: IsolatedDockerd, tmp_path: Path
) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _ORPHAN, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.returncode == 0, out.stderr
    base, daemon, container = out.stdout.split()
    orphan = Path(base)
    assert orphan.exists() and not _gone(int(daemon)) and not _gone(int(container))
    removed = sweep_stale()
    assert orphan in removed
    assert dockerd.base not in removed  # a live instance is left alone
    assert not orphan.exists()
    assert _gone(int(daemon)) and _gone(int(container))
    assert dockerd.docker("ps", "-q").returncode == 0
