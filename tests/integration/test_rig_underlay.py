"""The underlay of the VXLAN rig: every host's eth2 on a bridge of its own, MTU 1500.

No controller, OVS, dockerd or driver is started here: only the wiring
(``Underlay``, ``Stack.start_network()``) is checked.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.lan import (
    FLAT_GATEWAY,
    UNDERLAY_BRIDGE,
    UNDERLAY_MTU,
    UNDERLAY_NIC,
    Lan,
    Sniffer,
    Underlay,
    link_mac,
    used_networks,
)
from tests.support.ovs import Netns
from tests.support.stack import Stack

pytestmark = pytest.mark.integration


def ping(ns: Netns, address: str) -> None:
    ns.run("busybox", "ping", "-c", "1", "-W", "2", address)


def no_ping(ns: Netns, address: str) -> bool:
    argv = [*ns.prefix(), "busybox", "ping", "-c", "1", "-W", "1", address]
    return subprocess.run(argv, capture_output=True, timeout=10).returncode != 0


def addresses(ns: Netns, dev: str) -> list[str]:
    return re.findall(r"inet (\S+)", ns.run("ip", "-4", "-o", "addr", "show", "dev", dev))


def mtu(ns: Netns, dev: str) -> int:
    return int(ns.run("cat", f"/sys/class/net/{dev}/mtu").strip())


@pytest.fixture
def lan_and_underlay() -> Iterator[tuple[Lan, Underlay, list[Netns]]]:
    """A LAN, an underlay in its switch namespace, three machines on the underlay."""
    tag = secrets.token_hex(3)
    lan = Lan(tag)
    underlay = Underlay(tag, switch=lan.switch)
    machines = [Netns(f"qlt-{tag}-u{i}") for i in range(3)]
    try:
        lan.start()
        underlay.start()
        for i, ns in enumerate(machines):
            ns.create()
            underlay.attach(ns, f"u{i}")
        yield lan, underlay, machines
    finally:
        for ns in machines:
            ns.delete()
        underlay.close()
        lan.close()


def test_underlay_subnet_is_a_free_172_31_slash_24() -> None:
    underlay = Underlay("x")  # nothing made until start()
    assert underlay.subnet.prefixlen == 24
    assert underlay.subnet.subnet_of(ipaddress.IPv4Network("172.31.0.0/16"))
    assert not any(underlay.subnet.overlaps(u) for u in used_networks())
    n = underlay.subnet.network_address.packed[2]
    assert [underlay.address(i) for i in range(2)] == [f"172.31.{n}.10/24", f"172.31.{n}.11/24"]


@pytest.mark.timeout(120)
def test_underlay_joins_eth2_of_machines_and_nothing_else(
    lan_and_underlay: tuple[Lan, Underlay, list[Netns]],
) -> None:
    lan, underlay, machines = lan_and_underlay
    assert underlay.bridge_ports() == {"u0", "u1", "u2"}
    assert underlay.mtu() == UNDERLAY_MTU
    for i, ns in enumerate(machines):
        assert addresses(ns, UNDERLAY_NIC) == []  # no address until someone gives it one
        assert mtu(ns, UNDERLAY_NIC) == UNDERLAY_MTU == mtu(lan.switch, f"u{i}")
        ns.run("ip", "addr", "add", underlay.address(i), "dev", UNDERLAY_NIC)
    ips = [underlay.address(i).split("/")[0] for i in range(3)]
    macs = {link_mac(ns, UNDERLAY_NIC) for ns in machines}
    with Sniffer(lan.switch, "router") as lan_wire:
        for i, ns in enumerate(machines):
            ping(ns, ips[(i + 1) % 3])
        # full-size frames pass (1472 + 8 ICMP + 20 IPv4 = 1500)
        machines[0].run("busybox", "ping", "-c", "1", "-W", "2", "-s", "1472", ips[1])
        # the LAN is another wire: an underlay machine with a LAN address cannot reach it
        machines[2].run("ip", "addr", "add", "192.168.159.77/24", "dev", UNDERLAY_NIC)
        assert no_ping(machines[2], FLAT_GATEWAY)
        assert no_ping(lan.router, "192.168.159.200")  # a control: an ARP lan_wire must see
        seen = lan_wire.frames()
    assert [f for f in seen if f.src == link_mac(lan.router, "eth0") and f.ethertype == 0x0806]
    assert not [f for f in seen if f.src in macs]  # not one underlay frame on lan0
    assert UNDERLAY_BRIDGE not in lan.switch.run("ip", "-o", "link", "show", "master", "lan0")
    # and the machine itself has no foot in it
    root = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    assert str(underlay.subnet.network_address).rsplit(".", 1)[0] + "." not in root


@pytest.fixture(params=[True, False], ids=["with-lan", "underlay-only"])
def wired_stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    workdir = Path(tempfile.mkdtemp(prefix="qlul-"))
    stack = Stack(workdir, ("h1", "h2"), lan=request.param, underlay=True)
    try:
        yield stack.start_network()
    finally:
        stack.close()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.timeout(120)
def test_stack_gives_every_host_an_eth2_on_the_underlay(wired_stack: Stack) -> None:
    underlay = wired_stack.underlay
    assert underlay is not None
    assert underlay.bridge_ports() == {"u-h1", "u-h2"}
    if wired_stack.lan is not None:
        assert underlay.ns is wired_stack.lan.switch
    hosts = wired_stack.hosts
    for i, host in enumerate(hosts):
        assert host.underlay_address == underlay.address(i)
        assert host.underlay_argv() == [
            "--underlay-address",
            underlay.address(i),
            "--underlay-nic",
            UNDERLAY_NIC,
        ]
        assert UNDERLAY_NIC in host.links()
        assert addresses(host.netns, UNDERLAY_NIC) == []  # the driver's to place
        assert mtu(host.netns, UNDERLAY_NIC) == UNDERLAY_MTU
        assert ("eth1" in host.links()) == (wired_stack.lan is not None)
    # a temporary address proves the cable
    try:
        for host in hosts:
            host.sh("ip", "addr", "add", str(host.underlay_address), "dev", UNDERLAY_NIC)
        ping(hosts[0].netns, str(hosts[1].underlay_address).split("/")[0])
        ping(hosts[1].netns, str(hosts[0].underlay_address).split("/")[0])
    finally:
        for host in hosts:
            host.sh("ip", "addr", "flush", "dev", UNDERLAY_NIC)
    names = [h.netns.name for h in hosts] + [underlay.ns.name]
    wired_stack.close()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(name in listed for name in names)


def test_stack_without_underlay_has_no_underlay_flags(tmp_path: Path) -> None:
    stack = Stack(tmp_path, ("h1",))  # never started: nothing to close
    assert stack.underlay is None
    assert stack.hosts[0].underlay_address is None
    assert stack.hosts[0].underlay_argv() == []
