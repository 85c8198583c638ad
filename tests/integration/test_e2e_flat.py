"""FLAT: containers of two hosts directly on one physical LAN, with the LAN's own router.

Two simulated hosts whose ``eth1`` sit on a simulated switch with a router
(tests/support/lan.py); each driver runs with ``--uplink physnet1:eth1``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest

from tests.integration.conftest import ip_of, pings, running_stack
from tests.support.lan import FLAT_GATEWAY, LAN_HOST
from tests.support.stack import QL, Stack

pytestmark = pytest.mark.integration

# the seed's command, verbatim
FLAT = (
    "--opt", "model=flat", "--ipam-opt", "pool=flat",
    "--subnet", "192.168.159.0/24", "--gateway", "192.168.159.1",
)  # fmt: skip


@pytest.fixture(scope="module")
def lan_stack() -> Iterator[Stack]:
    with running_stack("qlflat-", host_names=("h1", "h2"), lan=True) as s:
        yield s


@pytest.fixture(scope="module")
def flat(lan_stack: Stack) -> Iterator[dict[str, str]]:
    """net-name on both hosts, one container each: {host: container ip}."""
    ips: dict[str, str] = {}
    created: list[str] = []
    try:
        for h in lan_stack.hosts:
            h.docker("network", "create", *QL, *FLAT, "net-name")
            created.append(h.name)
            h.docker("run", "-d", "--name", "f1", "--network", "net-name", "qingluan/busybox",
                     "sleep", "3600")  # fmt: skip
            ips[h.name] = ip_of(h, "f1")
        yield ips
    finally:
        for h in lan_stack.hosts:
            h.docker("rm", "-f", "f1")
            if h.name in created:
                h.docker("network", "rm", "net-name")


def test_addresses_come_from_one_pool_across_hosts(flat: dict[str, str]) -> None:
    subnet = ipaddress.IPv4Network("192.168.159.0/24")
    assert all(ipaddress.IPv4Address(ip) in subnet for ip in flat.values())
    assert len(set(flat.values())) == 2
    assert FLAT_GATEWAY not in flat.values() and LAN_HOST not in flat.values()


def test_containers_reach_the_lan_router_and_lan_hosts(
    lan_stack: Stack, flat: dict[str, str]
) -> None:
    for h in lan_stack.hosts:
        assert pings(h, "f1", FLAT_GATEWAY)
        assert pings(h, "f1", LAN_HOST)


def test_containers_on_different_hosts_reach_each_other_over_the_lan(
    lan_stack: Stack, flat: dict[str, str]
) -> None:
    h1, h2 = lan_stack.hosts
    assert pings(h1, "f1", flat["h2"], count=2)
    assert pings(h2, "f1", flat["h1"])


def test_the_lan_reaches_the_containers(lan_stack: Stack, flat: dict[str, str]) -> None:
    assert lan_stack.lan is not None
    for ip in flat.values():
        lan_stack.lan.router.run("busybox", "ping", "-c", "1", "-W", "2", ip)


def test_the_default_route_is_the_lan_router(lan_stack: Stack, flat: dict[str, str]) -> None:
    h1 = lan_stack.hosts[0]
    assert f"default via {FLAT_GATEWAY}" in h1.docker("exec", "f1", "ip", "route")


def test_a_second_flat_network_on_the_same_nic_is_refused(
    lan_stack: Stack, flat: dict[str, str]
) -> None:
    h1 = lan_stack.hosts[0]
    err = h1.docker_fails(
        "network", "create", *QL, "--opt", "model=flat", "--ipam-opt", "pool=flat",
        "--subnet", "192.168.158.0/24", "--gateway", "192.168.158.1", "flat-two",
    )  # fmt: skip
    assert "already has flat network" in err and "eth1" in err
