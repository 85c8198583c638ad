"""The driver's host plumbing on real Open vSwitch, netlink and iptables.

Every test works inside a network namespace of its own with its own OVS
(``tests.support.ovs.ovs_in_netns``), so veths, iptables chains (prefix
``QLTEST`` on top) and sysctls never touch the machine's own namespace; all of
it disappears with the namespace. Traffic tests use namespaces the test made
(a "container" and a simulated outside host) and a plain NORMAL flow on the
bridge in place of the controller's pipeline.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qingluan import names
from qingluan.driver.host.commands import HostError
from qingluan.driver.host.ovs import detect_datapath_type
from qingluan.driver.host.plumbing import LinuxHost
from qingluan.model import DatapathType, Endpoint, Network, NetworkModel, PortMapping, Protocol
from tests.support.ovs import Netns, OvsInstance, ovs_in_netns
from tests.support.proc import wait_until

pytestmark = pytest.mark.integration

PREFIX = "QLTEST"
REPO = Path(__file__).resolve().parents[2]
NAT_ID = "a1b2c3d4e5f6" + "0" * 52
NONAT_ID = "b1b2c3d4e5f6" + "0" * 52
EP_ID = "e1e2e3e4e5e6" + "0" * 52
EP2_ID = "f1f2f3f4f5f6" + "0" * 52
TARGET = "tcp:127.0.0.1:6653"


def network(net_id: str, model: NetworkModel, subnet: str, key: int = 1) -> Network:
    return Network(
        id=net_id,
        key=key,
        host="h1",
        model=model,
        pool_id="p",
        subnet=subnet,
        gateway=subnet.rsplit(".", 1)[0] + ".1",
        gateway_mac=names.gateway_mac(key),
        mtu=1450,
    )


def endpoint(ep_id: str, net: Network, address: str, *maps: PortMapping) -> Endpoint:
    return Endpoint(
        id=ep_id,
        network_id=net.id,
        host="h1",
        mac=names.endpoint_mac(ep_id),
        address=address,
        port_name=names.endpoint_port(ep_id),
        port_mappings=maps,
    )


NAT = network(NAT_ID, NetworkModel.NAT, "10.210.1.0/24", key=1)
NONAT = network(NONAT_ID, NetworkModel.NONAT, "10.210.2.0/24", key=2)


def host_of(ns: Netns, ovs: OvsInstance, **options: Any) -> LinuxHost:
    """The driver's plumbing for the rig's namespace and OVS."""
    return LinuxHost(
        bridge="br-ql",
        ovsdb=f"unix:{ovs.sock}",
        netns=ns.name,
        chain_prefix=PREFIX,
        datapath_type=DatapathType.NETDEV,
        **options,
    )


@pytest.fixture
def rig() -> Iterator[tuple[Netns, OvsInstance, LinuxHost]]:
    with ovs_in_netns() as (ns, ovs):
        host = host_of(ns, ovs)
        host.ensure_bridge(TARGET)
        try:
            yield ns, ovs, host
        finally:
            host.iptables.remove()


def link_json(ns: Netns, dev: str) -> dict[str, Any]:
    info: dict[str, Any] = json.loads(ns.run("ip", "-j", "-d", "addr", "show", "dev", dev))[0]
    return info


def iface_row(ovs: OvsInstance, name: str) -> dict[str, str]:
    out = ovs.vsctl("--format=json", "--columns=external_ids,ofport", "list", "interface", name)
    row = json.loads(out)["data"][0]
    ids = dict(row[0][1])
    ids["ofport"] = str(row[1])
    return ids


def tx_checksum(ns: Netns, dev: str) -> str:
    for line in ns.run("ethtool", "-k", dev).splitlines():
        if line.startswith("tx-checksumming:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no tx-checksumming line for {dev}")


# ---- detection and the bridge --------------------------------------------------------


def test_datapath_detection(tmp_path):
    assert detect_datapath_type(tmp_path / "absent") is DatapathType.NETDEV  # no kernel module
    (tmp_path / "openvswitch").mkdir()
    assert detect_datapath_type(tmp_path / "openvswitch") is DatapathType.SYSTEM


def test_bridge_settings_and_pinned_dpid(rig):
    _, ovs, host = rig
    settings = host.ovs.bridge_settings("br-ql")
    assert settings["datapath_type"] == "netdev"
    assert settings["fail_mode"] == "secure"
    assert settings["protocols"] == ["OpenFlow13"] or settings["protocols"] == "OpenFlow13"
    assert settings["other_config"]["disable-in-band"] == "true"
    pinned = int(settings["other_config"]["datapath-id"], 16)
    assert settings["controllers"] == [{"target": TARGET, "max_backoff": 1000}]
    ctl_uuid = ovs.vsctl("get", "bridge", "br-ql", "controller").strip()
    # idempotent: same dpid, and the controller record (its connection) is kept
    assert host.ensure_bridge(TARGET) == pinned
    assert ovs.vsctl("get", "bridge", "br-ql", "controller").strip() == ctl_uuid
    # a port (whose MAC could change the derived dpid) does not move it
    host.ensure_gateway(NAT)
    assert host.ovs.datapath_id("br-ql") == pinned
    # a new target replaces the controller
    host.ensure_bridge("tcp:127.0.0.1:6654")
    assert ovs.vsctl("get-controller", "br-ql").strip() == "tcp:127.0.0.1:6654"


# ---- gateways ------------------------------------------------------------------------------


def test_gateway_veth(rig):
    ns, ovs, host = rig
    host.ensure_gateway(NAT)
    dev, port = names.gateway_dev(NAT_ID), names.gateway_port(NAT_ID)
    info = link_json(ns, dev)
    assert info["address"] == NAT.gateway_mac
    assert info["mtu"] == 1450
    assert [(a["local"], a["prefixlen"]) for a in info["addr_info"] if a["family"] == "inet"] == [
        ("10.210.1.1", 24)
    ]
    assert "UP" in info["flags"] and "UP" in link_json(ns, port)["flags"]
    row = iface_row(ovs, port)
    assert row["qingluan-owner"] == "qingluan" and row["qingluan-network"] == NAT_ID
    assert int(row["ofport"]) > 0
    assert tx_checksum(ns, dev) == "off" and tx_checksum(ns, port) == "off"
    assert ns.run("sysctl", "-n", f"net.ipv4.conf.{dev}.route_localnet").strip() == "1"
    assert ns.run("sysctl", "-n", "net.ipv4.ip_forward").strip() == "1"
    index = info["ifindex"]
    host.ensure_gateway(NAT)  # reuse, no re-creation
    assert link_json(ns, dev)["ifindex"] == index
    # a stray extra address is removed, a lost one comes back
    ns.run("ip", "addr", "add", "10.210.1.99/24", "dev", dev)
    ns.run("ip", "addr", "del", "10.210.1.1/24", "dev", dev)
    host.ensure_gateway(NAT)
    assert [a["local"] for a in link_json(ns, dev)["addr_info"] if a["family"] == "inet"] == [
        "10.210.1.1"
    ]
    host.remove_gateway(NAT_ID)
    assert port not in host.ovs.port_names("br-ql")
    assert host.links.get(dev) is None and host.links.get(port) is None
    host.remove_gateway(NAT_ID)  # again: fine


def test_nonat_gateway_has_no_route_localnet(rig):
    ns, _, host = rig
    host.ensure_gateway(NONAT)
    dev = names.gateway_dev(NONAT_ID)
    assert ns.run("sysctl", "-n", f"net.ipv4.conf.{dev}.route_localnet").strip() == "0"


# ---- endpoints ----------------------------------------------------------------------------


def test_endpoint_veth_and_reuse_after_move(rig):
    ns, ovs, host = rig
    mac = names.endpoint_mac(EP_ID)
    port = host.ensure_endpoint(EP_ID, NAT, mac)
    peer = names.endpoint_peer(EP_ID)
    assert port == names.endpoint_port(EP_ID)
    row = iface_row(ovs, port)
    assert (row["qingluan-owner"], row["qingluan-endpoint"], row["qingluan-network"]) == (
        "qingluan",
        EP_ID,
        NAT_ID,
    )
    info = link_json(ns, peer)
    assert info["address"] == mac and info["mtu"] == 1450
    assert link_json(ns, port)["mtu"] == 1450
    assert "UP" not in info["flags"]  # Docker brings the container end up
    for key in ("ipv4.conf.{}.arp_ignore", "ipv6.conf.{}.disable_ipv6",
                "ipv4.conf.{}.route_localnet"):  # fmt: skip
        assert ns.run("sysctl", "-n", "net." + key.format(port)).strip() == "1", key
    assert tx_checksum(ns, peer) == "off" and tx_checksum(ns, port) == "off"
    assert host.endpoint_plumbed(EP_ID)  # what Join checks
    # Docker moves the container end into the sandbox; ensure again reuses the pair
    with Netns() as sandbox:
        ns.run("ip", "link", "set", peer, "netns", sandbox.name)
        assert not host.endpoint_plumbed(EP_ID)  # its end is no longer here
        index = link_json(ns, port)["ifindex"]
        assert host.ensure_endpoint(EP_ID, NAT, mac) == port
        assert link_json(ns, port)["ifindex"] == index
        assert "eth" not in sandbox.run("ip", "-br", "link")  # untouched there
        assert peer in sandbox.run("ip", "-br", "link")
        host.remove_endpoint(EP_ID)
        assert peer not in sandbox.run("ip", "-br", "link")  # the pair went as one
    assert port not in host.ovs.port_names("br-ql")
    host.remove_endpoint(EP_ID)


def test_container_end_moved_during_a_resync_keeps_the_pair(rig):
    """Docker moves the container end into the sandbox right after Join, while a
    periodic resync may be re-checking that endpoint: the pair must survive."""
    ns, _, host = rig
    mac = names.endpoint_mac(EP_ID)
    port, peer = host.ensure_endpoint(EP_ID, NAT, mac), names.endpoint_peer(EP_ID)
    index = link_json(ns, port)["ifindex"]
    with Netns() as sandbox:
        real_get = host.links.get
        moved = []

        def get_then_move(name: str):  # type: ignore[no-untyped-def]
            link = real_get(name)
            if name == port and not moved:  # seen with its peer here, then Docker moves it
                ns.run("ip", "link", "set", peer, "netns", sandbox.name)
                moved.append(name)
            return link

        host.links.get = get_then_move  # type: ignore[method-assign]
        try:
            assert host.ensure_endpoint(EP_ID, NAT, mac) == port
        finally:
            host.links.get = real_get  # type: ignore[method-assign]
        assert moved == [port]
        assert link_json(ns, port)["ifindex"] == index  # not re-created
        assert peer in sandbox.run("ip", "-br", "link")  # the container's end is alive
        host.remove_endpoint(EP_ID)


def test_existence_checks_in_the_drivers_own_namespace(rig):
    """The driver normally runs in the namespace it manages: then a device's existence is
    one ioctl, no netlink; the same answers as the netlink path of the rig's host."""
    ns, _, host = rig
    port = host.ensure_endpoint(EP_ID, NAT, names.endpoint_mac(EP_ID))
    peer = names.endpoint_peer(EP_ID)
    script = (
        "import sys; from qingluan.driver.host.links import Links; "
        f"l = Links(); print(l.exists('{port}'), l.exists('{peer}'), "
        f"l.get('qlcnothere'), l.exists('qlvnothere'))"
    )
    inside = ns.run(sys.executable, "-c", script).split()
    assert inside == ["True", "True", "None", "False"]
    assert [host.links.exists(port), host.links.exists(peer)] == [True, True]
    assert host.links.exists("qlcnothere") is False
    host.remove_endpoint(EP_ID)


def test_half_made_pair_is_replaced(rig):
    ns, _, host = rig
    peer = names.endpoint_peer(EP_ID)
    ns.run("ip", "link", "add", peer, "type", "veth", "peer", "name", "straypeer")
    host.ensure_endpoint(EP_ID, NAT, names.endpoint_mac(EP_ID))
    assert host.links.get("straypeer") is None
    port = host.links.get(names.endpoint_port(EP_ID))
    assert port is not None and host.links.get(peer) is not None
    other = host.links.get(peer)
    assert other is not None and port.peer_index == other.index


def test_rollback_when_ovs_refuses_the_port(rig):
    _, ovs, host = rig
    port = names.endpoint_port(EP_ID)
    # the name is already a port of another bridge: add-port to br-ql must fail
    ovs.vsctl("add-br", "br-other", "--", "set", "bridge", "br-other", "datapath_type=netdev")
    ovs.vsctl("add-port", "br-other", port)
    with pytest.raises(HostError, match="is actually attached to bridge br-other"):
        host.ensure_endpoint(EP_ID, NAT, names.endpoint_mac(EP_ID))
    assert host.links.get(port) is None and host.links.get(names.endpoint_peer(EP_ID)) is None
    assert port in host.ovs.port_names("br-other")  # not ours: untouched


def test_a_port_whose_device_is_missing_is_refused_and_detached(rig):
    _, _, host = rig
    with pytest.raises(HostError, match="cannot attach qlvnodev to br-ql: could not open"):
        host.ovs.add_port("br-ql", "qlvnodev", {"qingluan-owner": "qingluan"})
    assert "qlvnodev" not in host.ovs.port_names("br-ql")


def rcvbuf(ns: Netns, dev: str) -> int:
    """The receive buffer of ovs-vswitchd's packet socket bound to ``dev`` (from ``ss``)."""
    for line in ns.run("ss", "-0", "-m", "-p", "-a").splitlines():
        if f"*:{dev} " in line and "ovs-vswitchd" in line:
            return int(line.split("skmem:(")[1].split(",")[1].removeprefix("rb"))
    raise AssertionError(f"no ovs-vswitchd packet socket for {dev}")


def test_ovs_packet_sockets_get_the_larger_receive_buffer(rig):
    ns, ovs, plain = rig
    default = int(ns.run("sysctl", "-n", "net.core.rmem_default"))
    port = plain.ensure_endpoint(EP_ID, NAT, names.endpoint_mac(EP_ID))
    assert rcvbuf(ns, port) == default  # without the setting OVS keeps the default
    host = host_of(ns, ovs, ovs_rcvbuf=4 << 20)
    host.ensure_endpoint(EP_ID, NAT, names.endpoint_mac(EP_ID))
    assert rcvbuf(ns, port) == 8 << 20  # the kernel reports twice what was set
    # ovs-vswitchd opens a new socket when the port is re-added: the sync's re-attach raises it
    ovs.vsctl("del-port", "br-ql", port)
    ovs.vsctl("add-port", "br-ql", port)
    wait_until(lambda: rcvbuf(ns, port) == default, 10, "the re-created socket")
    report = host.sweep([NAT], [endpoint(EP_ID, NAT, "10.210.1.5")])
    assert report.endpoints_reattached == [port] and rcvbuf(ns, port) == 8 << 20
    assert host.raise_buffer(port) == 0  # already large enough: left alone
    host.remove_endpoint(EP_ID)


def test_foreign_device_with_our_name_is_not_deleted(rig):
    ns, _, host = rig
    dev = names.gateway_dev(NAT_ID)
    ns.run("ip", "tuntap", "add", "dev", dev, "mode", "tap")
    with pytest.raises(HostError, match="is not a veth"):
        host.ensure_gateway(NAT)
    assert host.links.get(dev) is not None
    assert names.gateway_port(NAT_ID) not in host.ovs.port_names("br-ql")
    assert host.links.get(names.gateway_port(NAT_ID)) is None  # rolled back


# ---- the start-up sweep --------------------------------------------------------------------


def test_sweep_removes_stale_and_repairs_known(rig):
    ns, ovs, host = rig
    stale_ep, stale_net = "d" * 64, network("c" * 64, NetworkModel.NAT, "10.210.9.0/24", key=9)
    ep = endpoint(EP_ID, NAT, "10.210.1.7")
    gone = endpoint(EP2_ID, NAT, "10.210.1.8")
    host.ensure_gateway(NAT)
    host.ensure_endpoint(ep.id, NAT, ep.mac)
    host.ensure_endpoint(stale_ep, NAT, "52:45:00:00:00:09")
    host.ensure_gateway(stale_net)
    # the known endpoint lost its bridge port (e.g. someone ran del-port)
    ovs.vsctl("del-port", "br-ql", names.endpoint_port(ep.id))
    # things that are not the driver's
    ns.run("ip", "link", "add", "vethkeep", "type", "veth", "peer", "name", "vethkeep2")
    ovs.add_internal_port("br-ql", "uplink0")
    # the gateway of the known network lost its address
    ns.run("ip", "addr", "flush", "dev", names.gateway_dev(NAT_ID))

    report = host.sweep([NAT], [ep, gone])

    assert report.errors == []
    assert set(report.links_removed) >= {
        names.endpoint_port(stale_ep),
        names.gateway_dev(stale_net.id),
    }
    assert set(report.ports_removed) == {
        names.endpoint_port(stale_ep),
        names.gateway_port(stale_net.id),
    }
    assert report.endpoints_reattached == [names.endpoint_port(ep.id)]
    assert report.endpoints_missing == [names.endpoint_port(gone.id)]
    ports = host.ovs.port_names("br-ql")
    assert sorted(ports) == sorted(
        ["uplink0", names.gateway_port(NAT_ID), names.endpoint_port(ep.id)]
    )
    left = host.links.veths(("ql",))
    assert sorted(left) == sorted(
        [
            names.gateway_dev(NAT_ID),
            names.gateway_port(NAT_ID),
            names.endpoint_port(ep.id),
            names.endpoint_peer(ep.id),
        ]
    )
    assert host.links.get("vethkeep") is not None
    assert host.links.addresses(names.gateway_dev(NAT_ID)) == ["10.210.1.1/24"]
    # a second sweep has nothing left to do
    again = host.sweep([NAT], [ep, gone])
    assert (again.links_removed, again.ports_removed, again.nat_changed) == ([], [], False)


# ---- iptables ----------------------------------------------------------------------------


def snapshot(ns: Netns) -> dict[str, list[str]]:
    return {
        t: ns.run("iptables", "-w", "10", "-t", t, "-S").splitlines() for t in ("nat", "filter")
    }


def foreign(rules: dict[str, list[str]]) -> dict[str, list[str]]:
    return {t: [r for r in lines if PREFIX not in r] for t, lines in rules.items()}


def test_iptables_sync_is_exact_and_touches_only_its_chains(rig):
    ns, _, host = rig
    # somebody else's rules, present before and after
    ns.run("iptables", "-w", "10", "-N", "OTHER")
    ns.run("iptables", "-w", "10", "-A", "FORWARD", "-j", "OTHER")
    ns.run("iptables", "-w", "10", "-t", "nat", "-A", "POSTROUTING", "-s", "10.77.0.0/16",
           "-j", "MASQUERADE")  # fmt: skip
    before = foreign(snapshot(ns))

    web = endpoint(EP_ID, NAT, "10.210.1.7", PortMapping(
        proto=Protocol.TCP, container_port=80, host_port=8080, host_port_end=8080))  # fmt: skip
    dns = endpoint(EP2_ID, NAT, "10.210.1.8", PortMapping(
        proto=Protocol.UDP, container_port=53, host_port=5300, host_port_end=5310,
        host_ip="127.0.0.1"))  # fmt: skip
    assert host.sync_nat([NAT, NONAT], [web, dns]) is True
    rules = snapshot(ns)
    nat = "\n".join(rules["nat"])
    assert "-A PREROUTING -m addrtype --dst-type LOCAL -j QLTEST-PREROUTING" in nat
    assert "-A OUTPUT -m addrtype --dst-type LOCAL -j QLTEST-OUTPUT" in nat
    assert "-A POSTROUTING -j QLTEST-POSTROUTING" in nat
    assert "--to-destination 10.210.1.7:80" in nat
    assert "-d 127.0.0.1/32 -p udp -m udp --dport 5300:5310" in nat
    assert rules["filter"][3:4] == ["-A FORWARD -j QLTEST-FORWARD"] or any(
        r == "-A FORWARD -j QLTEST-FORWARD" for r in rules["filter"]
    )
    nonat_dev = names.gateway_dev(NONAT_ID)
    assert f"-A QLTEST-FORWARD -i {nonat_dev}" in "\n".join(rules["filter"])

    # a second apply (a restarted driver) changes nothing, not even counters' order
    assert host.sync_nat([NAT, NONAT], [web, dns]) is False
    assert snapshot(ns) == rules
    # jumps exist once, and come first in their built-in chains
    assert rules["nat"].count("-A POSTROUTING -j QLTEST-POSTROUTING") == 1
    # revoking one endpoint's ports rewrites only what changed
    assert host.sync_nat([NAT, NONAT], [web]) is True
    assert "5300:5310" not in "\n".join(snapshot(ns)["nat"])
    # a rule removed by hand comes back
    ns.run("iptables", "-w", "10", "-t", "nat", "-F", "QLTEST-POSTROUTING")
    assert host.sync_nat([NAT, NONAT], [web]) is True
    assert host.sync_nat([NAT, NONAT], [web]) is False

    assert foreign(snapshot(ns)) == before
    host.iptables.remove()
    after = snapshot(ns)
    assert not any(PREFIX in r for rs in after.values() for r in rs)
    assert after == before


# ---- real traffic through the plumbing ---------------------------------------------------


def whoami(ns: Netns, port: int, seconds: float = 20.0) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [*ns.prefix(), sys.executable, "-m", "tests.support.whoami", str(port), str(seconds)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.stderr else ""
    return proc


def fetch(ns: Netns, ip: str, port: int) -> str:
    code = (
        "import socket,sys;"
        f"s=socket.create_connection(({ip!r},{port}),timeout=5);"
        "print(s.recv(100).decode().strip())"
    )
    return ns.run(sys.executable, "-c", code, timeout=15).strip()


def attach_container(ns: Netns, host: LinuxHost, ep: Endpoint, cns: Netns) -> None:
    """What Docker does after Join: move the container end in, name, address, route."""
    host.ensure_endpoint(ep.id, NAT, ep.mac)
    peer = names.endpoint_peer(ep.id)
    ns.run("ip", "link", "set", peer, "netns", cns.name)
    cns.run("ip", "link", "set", peer, "name", "eth0")
    cns.run("ip", "addr", "add", f"{ep.address}/24", "dev", "eth0")
    cns.run("ip", "link", "set", "eth0", "up")
    cns.run("ip", "route", "add", "default", "via", NAT.gateway)


def test_nat_egress_and_published_ports_carry_traffic(rig):
    ns, ovs, host = rig
    ovs.ofctl("add-flow", "br-ql", "priority=0,actions=NORMAL")  # stands in for the pipeline
    web = endpoint(EP_ID, NAT, "10.210.1.7", PortMapping(
        proto=Protocol.TCP, container_port=80, host_port=8080, host_port_end=8080))  # fmt: skip
    client = endpoint(EP2_ID, NAT, "10.210.1.8")
    host.ensure_gateway(NAT)
    with Netns() as outside, Netns() as c_web, Netns() as c_client:
        # the simulated outside world: 10.250.0.2, reachable through the host's 10.250.0.1
        ns.run("ip", "link", "add", "out0", "type", "veth", "peer", "name", "eth0",
               "netns", outside.name)  # fmt: skip
        ns.run("ip", "addr", "add", "10.250.0.1/24", "dev", "out0")
        ns.run("ip", "link", "set", "out0", "up")
        outside.run("ip", "addr", "add", "10.250.0.2/24", "dev", "eth0")
        outside.run("ip", "link", "set", "eth0", "up")
        attach_container(ns, host, web, c_web)
        attach_container(ns, host, client, c_client)
        host.sync_nat([NAT], [web, client])

        servers = [whoami(outside, 7000), whoami(c_web, 80)]
        try:
            deadline = time.monotonic() + 10
            while True:  # the first packets may race the veths coming up
                try:
                    seen = fetch(c_web, "10.250.0.2", 7000)
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.3)
            assert seen == "10.250.0.1"  # egress MASQUERADE
            assert fetch(outside, "10.250.0.1", 8080) == "10.250.0.2"  # DNAT from PREROUTING
            assert fetch(ns, "127.0.0.1", 8080) == NAT.gateway  # OUTPUT DNAT of loopback
            assert fetch(c_client, "10.250.0.1", 8080) == NAT.gateway  # hairpin via host addr
            assert fetch(c_client, "10.210.1.7", 80) == "10.210.1.8"  # plain L2 on the bridge
            # the outside cannot route to the container directly (only published ports)
            outside.run("ip", "route", "add", "10.210.1.0/24", "via", "10.250.0.1")
            with pytest.raises(Exception):  # noqa: B017
                fetch(outside, "10.210.1.7", 80)
        finally:
            for proc in servers:
                proc.kill()
                proc.wait(5)
        host.remove_endpoint(web.id)
        host.remove_endpoint(client.id)


def test_device_sysctls_in_the_root_namespace_write_proc_sys():
    """The root namespace's path (make run): straight into /proc/sys, on a veth made here."""
    from qingluan.driver.host.commands import Runner
    from qingluan.driver.host.links import HostTuning

    dev = "qlt" + secrets.token_hex(4)
    subprocess.run(["ip", "link", "add", dev, "type", "veth", "peer", "name", dev + "p"],
                   check=True, timeout=10)  # fmt: skip
    try:
        HostTuning(Runner()).device_sysctls(
            dev, {"ipv4/arp_ignore": "1", "ipv4/route_localnet": "1", "ipv6/disable_ipv6": "1"}
        )
        base = Path("/proc/sys/net")
        assert (base / "ipv4/conf" / dev / "arp_ignore").read_text().strip() == "1"
        assert (base / "ipv4/conf" / dev / "route_localnet").read_text().strip() == "1"
        assert (base / "ipv6/conf" / dev / "disable_ipv6").read_text().strip() == "1"
        with pytest.raises(HostError, match="sysctl net/ipv4/conf/qlt-nonexistent"):
            HostTuning(Runner()).device_sysctls("qlt-nonexistent", {"ipv4/arp_ignore": "1"})
    finally:
        subprocess.run(["ip", "link", "del", dev], check=False, timeout=10)


def test_del_port_never_takes_a_port_off_another_bridge(rig):
    _, _, host = rig
    host.ovs.vsctl("add-br", "br-other", "--", "set", "bridge", "br-other", "datapath_type=netdev")
    try:
        host.ovs.vsctl("add-port", "br-other", "qlx0", "--", "set", "interface", "qlx0",
                       "type=internal")  # fmt: skip
        host.ovs.del_port("br-ql", "qlx0")  # not on br-ql: nothing to do
        assert "qlx0" in host.ovs.port_names("br-other")
        host.ovs.del_port("br-ql", "qlnothere")  # absent: fine
        host.ovs.vsctl("add-port", "br-ql", "qlx1", "--", "set", "interface", "qlx1",
                       "type=internal")  # fmt: skip
        host.ovs.del_port("br-ql", "qlx1")
        assert "qlx1" not in host.ovs.port_names("br-ql")
    finally:
        host.ovs.vsctl("--if-exists", "del-br", "br-other")
