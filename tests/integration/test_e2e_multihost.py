"""Three Docker hosts, one controller: addresses come from one IPAM for the whole cluster.

Each simulated host has its own namespace, OVS, dockerd and driver; they share
only the controller (tests/support/stack.py).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest

from tests.integration.conftest import create_network, ip_of, pings, running_stack
from tests.support.proc import wait_until
from tests.support.stack import QL, SimHost, Stack

pytestmark = pytest.mark.integration

NAT = ("--opt", "model=nat", "--ipam-opt", "pool=nat")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Stack]:
    with running_stack("qlmh-", host_names=("h1", "h2", "h3")) as s:
        yield s


@pytest.fixture(scope="module")
def per_host(cluster: Stack) -> Iterator[dict[str, tuple[str, str, str]]]:
    """On every host a nat network 'local' with two containers: {host: (subnet, ip1, ip2)}."""
    out = {}
    try:
        for h in cluster.hosts:
            create_network(h, "local", *NAT)
            h.docker("run", "-d", "--name", "c1", "--network", "local", "qingluan/busybox",
                     "sleep", "3600")  # fmt: skip
            h.docker("run", "-d", "--name", "c2", "--network", "local", "qingluan/busybox",
                     "sleep", "3600")  # fmt: skip
            subnet = h.docker("network", "inspect", "-f", "{{(index .IPAM.Config 0).Subnet}}",
                              "local")  # fmt: skip
            out[h.name] = (subnet, ip_of(h, "c1"), ip_of(h, "c2"))
        yield out
    finally:
        for h in cluster.hosts:
            h.docker("rm", "-f", "c1", "c2")
            h.docker("network", "rm", "local") if h.name in out else None


def test_every_host_registers_and_its_bridge_connects(cluster: Stack) -> None:
    hosts = {h["host"]["name"]: h["connected"] for h in cluster.get("/v1/hosts")}
    assert hosts == {"h1": True, "h2": True, "h3": True}


def test_pool_subnets_and_addresses_are_unique_across_hosts(
    cluster: Stack, per_host: dict[str, tuple[str, str, str]]
) -> None:
    subnets = [ipaddress.IPv4Network(s) for s, _, _ in per_host.values()]
    assert len(set(subnets)) == 3
    for a in subnets:
        for b in subnets:
            assert a == b or not a.overlaps(b)
    addresses = [ip for _, *ips in per_host.values() for ip in ips]
    assert len(set(addresses)) == len(addresses)
    for h in cluster.hosts:
        assert pings(h, "c1", per_host[h.name][2])


def test_a_subnet_in_use_on_one_host_is_refused_on_another(
    cluster: Stack, per_host: dict[str, tuple[str, str, str]]
) -> None:
    h1, h2, _ = cluster.hosts
    create_network(h1, "user", *NAT, "--subnet", "192.168.2.0/24")
    try:
        err = h2.docker_fails("network", "create", *QL, *NAT, "--subnet", "192.168.2.0/24",
                              "user")  # fmt: skip
        assert "overlaps" in err and "192.168.2.0/24" in err
        taken = per_host["h1"][0]
        err = h2.docker_fails("network", "create", *QL, *NAT, "--subnet", taken, "other")
        assert "overlaps" in err
    finally:
        h1.docker("network", "rm", "user")


def test_removing_a_network_on_one_host_leaves_the_others_working(
    cluster: Stack, per_host: dict[str, tuple[str, str, str]]
) -> None:
    h1, h2, h3 = cluster.hosts
    create_network(h1, "gone", *NAT)
    h1.docker("network", "rm", "gone")
    for h in (h2, h3):
        assert pings(h, "c1", per_host[h.name][2])


def test_controller_restart_reconnects_every_host_without_flow_changes(
    cluster: Stack, per_host: dict[str, tuple[str, str, str]]
) -> None:
    assert cluster.controller is not None

    def flows(h: SimHost) -> list[str]:
        return sorted(h.ofctl("dump-flows", "br-ql", "--no-stats").splitlines())

    before = {h.name: flows(h) for h in cluster.hosts}
    cluster.controller.kill9()
    for h in cluster.hosts:  # forwarding goes on without the controller
        assert pings(h, "c1", per_host[h.name][2])
    cluster.start_controller()
    for h in cluster.hosts:
        wait_until(lambda h=h: cluster.host_connected(h.name), 20, f"{h.name} to reconnect")
        reply = cluster.request("POST", f"/v1/hosts/{h.name}/reconcile").json()
        assert (reply["flows_added"], reply["flows_deleted"]) == (0, 0)
        assert flows(h) == before[h.name]
