"""The simulated physical LAN of the cross-host rig: hosts' eth1, the switch, the router,
and 802.1Q VLANs on it (the router as their gateway, machines on VLANs)."""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import create_network, pings, run_sleeper, running_stack
from tests.support.lan import (
    FLAT_GATEWAY,
    FLAT_SUBNET,
    LAN_HOST,
    Lan,
    Sniffer,
    VlanHost,
    link_mac,
    used_networks,
)
from tests.support.ovs import Netns
from tests.support.proc import run
from tests.support.stack import SimHost, Stack

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


# ---- VLANs: the router as the gateway of 802.1Q VLANs, machines on VLANs ----------

VLAN_A, VLAN_B = 100, 200
NET_A, NET_B = "192.168.100.0/24", "192.168.200.0/24"
GW_A, GW_B = "192.168.100.1", "192.168.200.1"


def no_ping(ns: Netns, address: str) -> bool:
    """True when ``address`` does not answer one ping within a second."""
    argv = [*ns.prefix(), "busybox", "ping", "-c", "1", "-W", "1", address]
    return subprocess.run(argv, capture_output=True, timeout=10).returncode != 0


def alive(pid: int) -> bool:
    """A running process (not a zombie) with this pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def ttl_of_ping(ns: Netns, address: str) -> int:
    out = ns.run("busybox", "ping", "-c", "1", "-W", "2", address)
    return int(out.split("ttl=")[1].split()[0])


def neighbour_mac(ns: Netns, address: str, dev: str = VlanHost.DEV) -> str:
    out = ns.run("ip", "neigh", "show", address, "dev", dev).split()
    return out[out.index("lladdr") + 1]


TCP_SERVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1); s.settimeout(20)
print("ready", flush=True)
c, _ = s.accept(); c.settimeout(20); n = 0
while chunk := c.recv(65536):
    n += len(chunk)
c.sendall(str(n).encode()); c.close()
"""

TCP_CLIENT = r"""
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
c.sendall(b"x" * int(sys.argv[3])); c.shutdown(socket.SHUT_WR)
print(c.recv(100).decode())
"""


def tcp_bytes_through(client: Netns, server: Netns, server_ip: str, size: int) -> int:
    """Send ``size`` bytes over one TCP connection; what the server counted."""
    port = "5555"
    proc = subprocess.Popen(
        [*server.prefix(), sys.executable, "-c", TCP_SERVER, port],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        out = client.run(sys.executable, "-c", TCP_CLIENT, server_ip, port, str(size), timeout=30)
        return int(out.strip())
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="module", autouse=True)
def vlan_subnets_are_free() -> None:
    used = used_networks()
    for net in (NET_A, NET_B, FLAT_SUBNET):
        clash = [u for u in used if ipaddress.IPv4Network(net).overlaps(u)]
        assert not clash, f"{net} overlaps routes of this machine: {clash}"


@pytest.fixture
def bare_lan() -> Iterator[Lan]:
    net = Lan(secrets.token_hex(3))
    try:
        yield net.start()
    finally:
        net.close()


@pytest.mark.timeout(120)
def test_machines_on_one_vlan_reach_each_other_and_the_router_tagged(bare_lan: Lan) -> None:
    bare_lan.router_vlan(VLAN_A, f"{GW_A}/24")
    a = bare_lan.vlan_host(VLAN_A, "192.168.100.10/24", GW_A)
    b = bare_lan.vlan_host(VLAN_A, "192.168.100.11/24", GW_A)
    with Sniffer(bare_lan.switch, a.port) as wire:
        ping(a, b.ip)
        ping(b, GW_A)
        ping(a, GW_A)
        frames = wire.frames()
    from_a = [f for f in frames if not f.outgoing and f.src == a.mac]
    to_a = [f for f in frames if f.outgoing and f.dst == a.mac]
    # the ARP and IPv4 of a, and the answers of b and of the router, all crossed lan0 tagged
    assert {f.ethertype for f in from_a} >= {0x0806, 0x0800}
    assert {f.src for f in to_a} >= {b.mac, link_mac(bare_lan.router, f"v{VLAN_A}")}
    assert {f.vlan for f in from_a + to_a} == {VLAN_A}
    assert ttl_of_ping(a, b.ip) == 64  # one L2 segment: not routed


@pytest.mark.timeout(120)
def test_vlans_are_separate_broadcast_domains_on_one_vlan_unaware_switch(bare_lan: Lan) -> None:
    """Four machines, one IPv4 subnet, two VLANs; .11 exists on both VLANs."""
    a100 = bare_lan.vlan_host(VLAN_A, "192.168.100.10/24")
    b100 = bare_lan.vlan_host(VLAN_A, "192.168.100.11/24")
    c200 = bare_lan.vlan_host(VLAN_B, "192.168.100.12/24")
    d200 = bare_lan.vlan_host(VLAN_B, "192.168.100.11/24")
    with Sniffer(bare_lan.switch, c200.port) as wire:
        ping(a100, "192.168.100.11")
        ping(c200, "192.168.100.11")
        assert no_ping(a100, c200.ip)  # same subnet, other VLAN: no L2 path
        assert no_ping(c200, a100.ip)
        frames = wire.frames()
    # the same address answers with a different machine on each VLAN
    assert neighbour_mac(a100, "192.168.100.11") == b100.mac
    assert neighbour_mac(c200, "192.168.100.11") == d200.mac
    assert {f.vlan for f in frames if f.src == c200.mac} == {VLAN_B}
    # a100's broadcasts are flooded to c200's switch port too, tagged 100: its OVS drops them
    assert {f.vlan for f in frames if f.src == a100.mac} <= {VLAN_A}


@pytest.mark.timeout(120)
def test_router_routes_between_vlans_and_the_flat_lan(bare_lan: Lan) -> None:
    bare_lan.router_vlan(VLAN_A, f"{GW_A}/24")
    bare_lan.router_vlan(VLAN_B, f"{GW_B}/24")
    a = bare_lan.vlan_host(VLAN_A, "192.168.100.10/24", GW_A)
    b = bare_lan.vlan_host(VLAN_B, "192.168.200.10/24", GW_B)
    flat = Netns(f"qlt-{bare_lan.tag}-flat")
    try:
        flat.create()
        bare_lan.attach(flat, "eth1", "pflat")
        flat.run("ip", "addr", "add", "192.168.159.50/24", "dev", "eth1")
        flat.run("ip", "route", "add", "default", "via", FLAT_GATEWAY)
        ping(b, GW_A)  # the router's address on the other VLAN
        assert ttl_of_ping(b, a.ip) == 63  # one hop: routed by the router
        assert ttl_of_ping(a, b.ip) == 63
        assert ttl_of_ping(flat, a.ip) == 63  # untagged eth0 <-> VLAN 100
        # TCP too (checksums: every veth has tx offload off)
        assert tcp_bytes_through(b, a, a.ip, 2_000_000) == 2_000_000
        assert tcp_bytes_through(flat, b, b.ip, 500_000) == 500_000
        # off VLAN 200: its machine loses its gateway, VLAN 100 keeps its own
        bare_lan.router_vlan_remove(VLAN_B)
        assert f"v{VLAN_B}" not in bare_lan.router.run("ip", "-o", "link", "show")
        assert no_ping(b, a.ip)
        ping(a, GW_A)
        ping(flat, a.ip)
    finally:
        flat.delete()


def test_lan_close_stops_vlan_ovs_and_removes_every_namespace() -> None:
    net = Lan(secrets.token_hex(3)).start()
    try:
        net.router_vlan(VLAN_A, f"{GW_A}/24")
        host = net.vlan_host(VLAN_A, "192.168.100.10/24", GW_A)
        ping(host, GW_A)
    finally:
        instances = [net.router_ovs, *(h.ovs for h in net.vlan_hosts)]
        pids = [ovs.vswitchd_pid() for ovs in instances if ovs is not None]
        names = (net.switch.name, net.router.name, *(h.name for h in net.vlan_hosts))
        net.close()
    listed = run(["ip", "netns", "list"])
    assert not any(name in listed for name in names)
    assert len(pids) == 2 and all(pid is not None for pid in pids)
    assert not any(alive(pid) for pid in pids if pid is not None)
    assert not any(ovs.root.exists() for ovs in instances if ovs is not None)


@pytest.mark.timeout(240)
def test_containers_on_a_vlan_reach_the_router_and_machines_on_vlans(lan_stack: Stack) -> None:
    """What the VLAN pieces are for: a driver-made VLAN 100 network on two hosts."""
    lan = lan_stack.lan
    assert lan is not None
    vlan = ("--opt", "model=vlan", "--opt", f"vni={VLAN_A}", "--ipam-opt", "pool=vlan",
            "--ipam-opt", f"vni={VLAN_A}", "--subnet", NET_A, "--gateway", GW_A)  # fmt: skip
    made: list[SimHost] = []
    try:
        lan.router_vlan(VLAN_A, f"{GW_A}/24")
        lan.router_vlan(VLAN_B, f"{GW_B}/24")
        m100 = lan.vlan_host(VLAN_A, "192.168.100.250/24", GW_A)
        m200 = lan.vlan_host(VLAN_B, "192.168.200.10/24", GW_B)
        for h in lan_stack.hosts:
            create_network(h, "rigv100", *vlan)
            made.append(h)
        ips = [run_sleeper(h, "rigc", "rigv100") for h in lan_stack.hosts]
        h1 = lan_stack.hosts[0]
        for target in (GW_A, m100.ip, ips[1], m200.ip, LAN_HOST):
            assert pings(h1, "rigc", target), target
        ping(m200, ips[0])  # and back, routed
    finally:
        for h in made:
            with contextlib.suppress(Exception):
                h.docker("rm", "-f", "rigc")
            h.docker("network", "rm", "rigv100")
        for vid in (VLAN_A, VLAN_B):
            lan.router_vlan_remove(vid)
        for host in lan.vlan_hosts:
            host.delete()
