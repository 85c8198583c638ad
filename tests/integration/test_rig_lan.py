"""The simulated physical LAN of the cross-host rig: hosts' eth1, the switch, the router."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from tests.integration.conftest import running_stack
from tests.support.lan import FLAT_GATEWAY, LAN_HOST, Lan
from tests.support.ovs import Netns
from tests.support.proc import run
from tests.support.stack import Stack

pytestmark = pytest.mark.integration


def ping(ns: Netns, address: str) -> None:
    ns.run("busybox", "ping", "-c", "1", "-W", "2", address)


@pytest.fixture
def lan() -> Iterator[tuple[Lan, list[Netns]]]:
    tag = secrets.token_hex(3)
    net = Lan(tag).start()
    machines = [Netns(f"qlt-{tag}-{i}") for i in range(3)]
    try:
        for i, ns in enumerate(machines):
            ns.create()
            net.attach(ns, "eth1", f"p{i}")
        yield net, machines
    finally:
        for ns in machines:
            ns.delete()
        net.close()


def test_lan_joins_machines_to_each_other_and_to_the_router(
    lan: tuple[Lan, list[Netns]],
) -> None:
    _, machines = lan
    for i, ns in enumerate(machines):
        ns.run("ip", "addr", "add", f"192.168.159.{11 + i}/24", "dev", "eth1")
    for i, ns in enumerate(machines):
        ping(ns, FLAT_GATEWAY)
        ping(ns, LAN_HOST)
        ping(ns, f"192.168.159.{11 + (i + 1) % 3}")


def test_lan_close_removes_every_namespace() -> None:
    net = Lan(secrets.token_hex(3)).start()
    names = (net.switch.name, net.router.name)
    net.close()
    listed = run(["ip", "netns", "list"])
    assert not any(name in listed for name in names)


@pytest.fixture(scope="module")
def lan_stack() -> Iterator[Stack]:
    with running_stack("qllan-", host_names=("h1", "h2"), lan=True) as s:
        yield s


def test_every_simulated_host_has_an_uplink_nic_on_the_lan(lan_stack: Stack) -> None:
    for i, host in enumerate(lan_stack.hosts):
        assert "eth1" in {name.split("@")[0] for name in host.links()}
        # a temporary address proves the cable; the NIC itself carries none
        host.sh("ip", "addr", "add", f"192.168.159.{21 + i}/24", "dev", "eth1")
        try:
            ping(host.netns, FLAT_GATEWAY)
        finally:
            host.sh("ip", "addr", "flush", "dev", "eth1")
