"""Userspace TSO end to end: TCP through a nat network with the veths' offloads on and off.

The same checks run on two stacks (tests/support/stack.py): OVS started with
``other_config:userspace-tso-enable=true``, where the driver must leave the
veths' TX offloads on, and without it, where it must turn them off (else
every TCP connection through the userspace datapath times out). Real
packets: iperf3 between two containers, and iperf3 plus HTTP through a
published port from the outside namespace (the gateway veth and NAT path).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from qingluan import names
from tests.integration.conftest import create_network, ip_of, running_stack
from tests.integration.test_e2e_modes import WHOAMI_HTTPD, http_get
from tests.support.proc import wait_until
from tests.support.stack import OUTSIDE_HOST_IP, OUTSIDE_IP, SimHost, Stack

pytestmark = pytest.mark.integration

NET = "tsonat"
IPERF3 = "qingluan/iperf3"


@pytest.fixture(scope="module", params=[True, False], ids=["tso-on", "tso-off"])
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    with running_stack("qletso-", userspace_tso=request.param) as s:
        yield s


@pytest.fixture(scope="module")
def tso(stack: Stack) -> bool:
    return stack.hosts[0].userspace_tso


@pytest.fixture(scope="module")
def net(host: SimHost) -> Iterator[str]:
    create_network(host, NET, "--opt", "model=nat", "--ipam-opt", "pool=nat")
    try:
        yield NET
    finally:
        host.docker("network", "rm", NET, timeout=60)


@pytest.fixture(scope="module")
def server(host: SimHost, net: str) -> Iterator[str]:
    """An iperf3 server on the network, also published on the host's port 5201."""
    host.docker(
        "run", "-d", "--name", "tso-srv", "--network", net, "-p", "5201:5201",
        IPERF3, "iperf3", "-s", "--forceflush",
    )  # fmt: skip
    try:
        wait_until(lambda: "listening" in host.docker("logs", "tso-srv"), 20, "iperf3 -s")
        yield ip_of(host, "tso-srv")
    finally:
        host.docker("rm", "-f", "tso-srv")


def tx_checksum(host: SimHost, dev: str, sandbox: Path | None = None) -> str:
    ns = ["nsenter", f"--net={sandbox}"] if sandbox else ["ip", "netns", "exec", host.netns.name]
    out = subprocess.run(
        [*ns, "ethtool", "-k", dev], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    for line in out.splitlines():
        if line.startswith("tx-checksumming:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no tx-checksumming line for {dev}")


def iperf3_received(argv: list[str], timeout: float = 30) -> dict[str, float]:
    """Run an iperf3 client (``--json``); what the receiver got, with one retry to connect."""
    data: dict[str, object] = {}
    for _ in range(2):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        data = json.loads(done.stdout or "{}")
        if "error" not in data and done.returncode == 0:
            break
    assert "error" not in data and "end" in data, data.get("error") or done.stderr[-300:]
    end = data["end"]
    assert isinstance(end, dict)
    received: dict[str, float] = end["sum_received"]
    return received


def test_ovs_and_driver_agree_on_tso(host: SimHost, tso: bool) -> None:
    assert host.ovs is not None and host.driver is not None
    enabled_line = "Userspace TCP Segmentation Offloading support enabled"
    assert (enabled_line in host.ovs.log()) is tso
    driver_log = host.driver.log.read_text(errors="replace")
    assert f"userspace TSO {'enabled' if tso else 'disabled'}" in driver_log


def test_veth_offloads_follow_tso(host: SimHost, net: str, tso: bool) -> None:
    assert host.dockerd is not None
    host.docker("run", "-d", "--name", "tso-probe", "--network", net, IPERF3, "sleep", "300")
    try:
        want = "on" if tso else "off"
        network_id = host.docker("network", "inspect", "-f", "{{.Id}}", net)
        assert tx_checksum(host, names.gateway_dev(network_id)) == want
        assert tx_checksum(host, names.gateway_port(network_id)) == want
        settings = host.dockerd.inspect("tso-probe")[0]["NetworkSettings"]
        assert isinstance(settings, dict)
        endpoint_id = settings["Networks"][net]["EndpointID"]
        assert tx_checksum(host, names.endpoint_port(endpoint_id)) == want
        assert tx_checksum(host, "eth0", host.dockerd.sandbox_key("tso-probe")) == want
    finally:
        host.docker("rm", "-f", "tso-probe")


def test_tcp_between_two_containers(host: SimHost, server: str, net: str) -> None:
    assert host.dockerd is not None
    argv = [
        host.dockerd.docker_bin, "-H", host.dockerd.host, "run", "--rm", "--network", net,
        IPERF3, "iperf3", "-c", server, "-t", "1", "--json", "--connect-timeout", "5000",
    ]  # fmt: skip
    received = iperf3_received(argv)
    assert received["bytes"] > 1_000_000
    assert received["bits_per_second"] > 50e6


def test_published_tcp_port_answers(host: SimHost, server: str, net: str) -> None:
    # bulk TCP through the gateway veth and DNAT, from the outside namespace
    argv = [
        *host.outside.prefix(), "iperf3", "-c", OUTSIDE_HOST_IP, "-p", "5201", "-t", "1",
        "--json", "--connect-timeout", "5000",
    ]  # fmt: skip
    received = iperf3_received(argv)
    assert received["bytes"] > 1_000_000
    # and an HTTP request/response through a published port, outside and from localhost
    host.docker(
        "run", "-d", "--name", "tso-web", "--network", net, "-p", "8080:80",
        "qingluan/busybox", "sh", "-c", WHOAMI_HTTPD,
    )  # fmt: skip
    try:
        seen = http_get(host, f"http://{OUTSIDE_HOST_IP}:8080/cgi-bin/ip", ns=host.outside.name)
        assert seen.removeprefix("[::ffff:").removesuffix("]") == OUTSIDE_IP
        assert http_get(host, "http://127.0.0.1:8080/cgi-bin/ip")
    finally:
        host.docker("rm", "-f", "tso-web")
