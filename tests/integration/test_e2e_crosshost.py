"""VLAN and VXLAN across three hosts, and the connectivity matrix of the cross-host modes.

Three simulated hosts (tests/support/stack.py), each with ``eth1`` on the
simulated LAN (trunk for VLANs, with a router whose VLAN interfaces are OVS
access ports) and ``eth2`` on the underlay (VXLAN). Every driver runs with
``--uplink physnet1:eth1 --underlay-address ... --underlay-nic eth2``.

Networks (seed commands): ``v100`` (VLAN 100, pool form) on h1 and h2,
``v200`` (VLAN 200, custom subnet form) on h1 and h2, ``vx`` (VNI 5000) on all
three, and ``n1`` (nat) on h1 alone. One container per network and host.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.integration.conftest import durations, ip_of, pings, run_sleeper, running_stack
from tests.support.dockerd import DockerCommandError
from tests.support.lan import LAN_HOST, Sniffer, VlanHost
from tests.support.proc import wait_until
from tests.support.stack import OUTSIDE_HOST_IP, OUTSIDE_IP, QL, SimHost, Stack, cli

pytestmark = pytest.mark.integration

IPERF3 = "qingluan/iperf3"

# the seed's two VLAN forms, verbatim but for the id and the subnet
VLAN100 = (
    "--opt", "model=vlan", "--opt", "vni=100", "--ipam-opt", "pool=vlan", "--ipam-opt", "vni=100",
)  # fmt: skip
V200_SUBNET, V200_GATEWAY = "10.77.200.0/24", "10.77.200.1"
VLAN200 = (
    "--subnet", V200_SUBNET, "--gateway", V200_GATEWAY,
    "--opt", "model=vlan", "--opt", "vni=200", "--ipam-opt", "pool=vlan", "--ipam-opt", "vni=200",
)  # fmt: skip
VXLAN = (
    "--opt", "model=vxlan", "--opt", "vni=5000",
    "--ipam-opt", "pool=vxlan", "--ipam-opt", "vni=5000",
)  # fmt: skip


@dataclass
class Cluster:
    stack: Stack
    ips: dict[str, str] = field(default_factory=dict)  # "<container>@<host>" -> address
    v100_gateway: str = ""
    vlan_hosts: dict[str, VlanHost] = field(default_factory=dict)

    def host(self, name: str) -> SimHost:
        return self.stack.host(name)

    def ip(self, where: str) -> str:
        return self.ips[where]


@pytest.fixture(scope="module")
def c() -> Iterator[Cluster]:
    with running_stack("qlxh-", host_names=("h1", "h2", "h3"), lan=True, underlay=True) as s:
        assert s.lan is not None
        c = Cluster(s)
        h1, h2, h3 = s.hosts
        for h in (h1, h2):
            h.docker("network", "create", *QL, *VLAN100, "v100")
            h.docker("network", "create", *QL, *VLAN200, "v200")
        for h in (h1, h2, h3):
            h.docker("network", "create", *QL, *VXLAN, "vx")
        h1.docker("network", "create", *QL, "--opt", "model=nat", "--ipam-opt", "pool=nat", "n1")
        v100 = h1.docker("network", "inspect", "-f", "{{(index .IPAM.Config 0).Gateway}}", "v100")
        c.v100_gateway = v100.strip()
        prefix = h1.docker("network", "inspect", "-f", "{{(index .IPAM.Config 0).Subnet}}", "v100")
        v100_net = ipaddress.IPv4Network(prefix.strip())
        # the LAN's router is the external gateway of both VLANs
        s.lan.router_vlan(100, f"{c.v100_gateway}/{v100_net.prefixlen}")
        s.lan.router_vlan(200, f"{V200_GATEWAY}/24")
        # two LAN machines with addresses of VLAN 100's subnet: one on VLAN 100, one on 200
        c.vlan_hosts["on100"] = s.lan.vlan_host(100, f"{v100_net[200]}/{v100_net.prefixlen}")
        c.vlan_hosts["on200"] = s.lan.vlan_host(200, f"{v100_net[201]}/{v100_net.prefixlen}")
        for h in (h1, h2):
            c.ips[f"a100@{h.name}"] = run_sleeper(h, "a100", "v100")
            c.ips[f"a200@{h.name}"] = run_sleeper(h, "a200", "v200")
        for h in (h1, h2, h3):
            c.ips[f"x@{h.name}"] = run_sleeper(h, "xc", "vx")
        c.ips["n@h1"] = run_sleeper(h1, "nc", "n1")
        yield c


# ---- VLAN -----------------------------------------------------------------------------


def test_the_same_vlan_on_each_host_is_one_network_with_one_address_space(c: Cluster) -> None:
    subnets = {
        h.docker("network", "inspect", "-f", "{{(index .IPAM.Config 0).Subnet}}", "v100").strip()
        for h in c.stack.hosts[:2]
    }
    assert len(subnets) == 1
    [subnet] = subnets
    assert ipaddress.IPv4Network(subnet).subnet_of(ipaddress.IPv4Network("10.130.0.0/16"))
    assert c.ip("a100@h1") != c.ip("a100@h2")
    assert ipaddress.IPv4Address(c.ip("a200@h1")) in ipaddress.IPv4Network(V200_SUBNET)
    nets = {n["vni"]: n for n in c.stack.get("/v1/networks") if n["model"] == "vlan"}
    assert set(nets) == {100, 200}


def test_containers_of_a_vlan_on_different_hosts_talk(c: Cluster) -> None:
    assert pings(c.host("h1"), "a100", c.ip("a100@h2"), count=2)
    assert pings(c.host("h2"), "a200", c.ip("a200@h1"))


def test_frames_leave_the_trunk_tagged_and_arrive_untagged(c: Cluster) -> None:
    assert c.stack.lan is not None
    h1 = c.host("h1")
    mac = h1.docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.MacAddress}}{{end}}",
                    "a100").strip().lower()  # fmt: skip
    with Sniffer(c.stack.lan.switch, "p-h1") as sniff:
        assert pings(h1, "a100", c.v100_gateway, count=2)
        frames = sniff.frames()
    from_container = [f for f in frames if f.src == mac]
    to_container = [f for f in frames if f.dst == mac]
    assert from_container and {f.vlan for f in from_container} == {100}
    assert to_container and {f.vlan for f in to_container} == {100}  # the router's replies
    # ...and the container, with one plain interface, got them: the pings were answered


def test_the_external_gateway_routes_vlan_containers(c: Cluster) -> None:
    h1 = c.host("h1")
    assert pings(h1, "a100", c.v100_gateway)
    assert pings(h1, "a100", LAN_HOST)  # another network, through the router
    assert pings(h1, "a200", c.ip("a100@h2"))  # VLAN 200 to VLAN 100, routed


def test_different_vlans_do_not_meet_at_layer_2(c: Cluster) -> None:
    h2 = c.host("h2")
    on100, on200 = c.vlan_hosts["on100"], c.vlan_hosts["on200"]
    assert pings(h2, "a100", on100.ip)  # a LAN machine on VLAN 100: reached
    assert not pings(h2, "a100", on200.ip)  # same subnet, but on VLAN 200: never reached


# ---- VXLAN ----------------------------------------------------------------------------


def test_vxlan_containers_on_three_hosts_reach_each_other(c: Cluster) -> None:
    for src in ("h1", "h2", "h3"):
        for dst in ("h1", "h2", "h3"):
            if src != dst:
                assert pings(c.host(src), "xc", c.ip(f"x@{dst}")), f"{src} -> {dst}"


def test_vxlan_mtu_is_the_underlay_minus_50_and_can_be_overridden(c: Cluster) -> None:
    h1 = c.host("h1")
    assert "mtu 1450" in h1.docker("exec", "xc", "ip", "link", "show", "eth0")
    h1.docker("network", "create", *QL, "--opt", "model=vxlan", "--opt", "vni=5001",
              "--opt", "com.docker.network.driver.mtu=1400", "--ipam-opt", "pool=vxlan",
              "vx-mtu")  # fmt: skip
    try:
        h1.docker("run", "--rm", "--network", "vx-mtu", "qingluan/busybox", "true")
        out = h1.docker("run", "--rm", "--network", "vx-mtu", "qingluan/busybox",
                        "ip", "link", "show", "eth0")  # fmt: skip
        assert "mtu 1400" in out
    finally:
        h1.docker("network", "rm", "vx-mtu")


def test_large_tcp_transfer_across_hosts(c: Cluster) -> None:
    """Two seconds of full-size TCP segments from h1 to h2 (iperf3, the receiver's count)."""
    h1, h2 = c.host("h1"), c.host("h2")
    h2.docker("run", "-d", "--name", "vx-srv", "--network", "vx", IPERF3, "iperf3", "-s",
              "--forceflush")  # fmt: skip
    try:
        wait_until(lambda: "listening" in h2.docker("logs", "vx-srv"), 20, "iperf3 -s")
        server = ip_of(h2, "vx-srv")
        out = h1.docker("run", "--rm", "--network", "vx", IPERF3, "iperf3", "-c", server,
                        "-t", "2", "-M", "1398", "--json", "--connect-timeout", "5000",
                        timeout=60)  # fmt: skip
        received = json.loads(out)["end"]["sum_received"]
        assert received["bytes"] > 10 * 2**20, received  # far beyond any window: TCP flows
    finally:
        h2.docker("rm", "-f", "vx-srv")


def test_the_gateway_is_the_same_on_every_host(c: Cluster) -> None:
    seen = set()
    for h in c.stack.hosts:
        gw = h.docker("exec", "xc", "ip", "route", "show", "default").split()[2]
        h.docker("exec", "xc", "ping", "-c", "1", "-W", "1", gw)
        neigh = h.docker("exec", "xc", "ip", "neigh", "show", gw)
        seen.add((gw, neigh.split("lladdr")[1].split()[0]))
    assert len(seen) == 1


def test_vxlan_egress_leaves_through_its_own_hosts_nat(c: Cluster) -> None:
    for h in c.stack.hosts:
        server = subprocess.Popen(
            ["ip", "netns", "exec", h.outside.name, sys.executable, "-m",
             "tests.support.whoami", "7000", "30"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
            # each host's "outside" is its own namespace: only its own NAT leads there
            seen = h.docker("exec", "xc", "sh", "-c", f"nc -w 3 {OUTSIDE_IP} 7000 </dev/null")
            assert seen == OUTSIDE_HOST_IP
        finally:
            server.kill()
            server.wait(10)


def flood_targets(h: SimHost) -> list[str]:
    return sorted(re.findall(r"set_field:([\d.]+)->tun_dst", h.ofctl("dump-groups", "br-ql")))


def test_broadcast_is_replicated_once_to_each_other_host(c: Cluster) -> None:
    addresses = {
        h.name: h.underlay_address.split("/")[0] for h in c.stack.hosts if h.underlay_address
    }
    assert flood_targets(c.host("h1")) == sorted([addresses["h2"], addresses["h3"]])
    assert flood_targets(c.host("h3")) == sorted([addresses["h1"], addresses["h2"]])


# ---- the matrix -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("src", "dst", "reach"),
    [
        ("a100@h1", "a100@h2", True),  # same network, other host
        ("x@h1", "x@h3", True),  # same network, other host
        ("x@h1", "a100@h2", False),  # other mode, other host
        ("x@h1", "n@h1", False),  # other network, other mode, same host
        ("n@h1", "x@h1", False),
        ("a100@h1", "x@h2", False),
        ("a100@h1", "n@h1", False),
    ],
)
def test_connectivity_matrix(c: Cluster, src: str, dst: str, reach: bool) -> None:
    name, host = src.split("@")
    container = {"x": "xc", "n": "nc"}.get(name, name)
    assert pings(c.host(host), container, c.ip(dst)) is reach


def test_same_ip_on_two_hosts_is_refused(c: Cluster) -> None:
    h1 = c.host("h1")
    taken = c.ip("a200@h2")  # --ip needs a network with a user subnet: v200
    with pytest.raises(DockerCommandError) as err:
        h1.docker("run", "-d", "--name", "dup", "--network", "v200", "--ip", taken,
                  "qingluan/busybox", "sleep", "60")  # fmt: skip
    h1.docker("rm", "-f", "dup")
    assert f"address {taken} is already in use" in str(err.value)
    assert pings(h1, "a200", taken)


def snapshot(c: Cluster, h: SimHost) -> tuple[object, ...]:
    return (
        h.docker("network", "ls", "-q"),
        c.stack.get("/v1/networks"),
        c.stack.get("/v1/ipam/pools"),
        h.ofctl("dump-flows", "br-ql", "--no-stats"),
    )


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        (("--opt", "model=vlan", "--opt", "vni=0"), "VLAN id must be 1-4094"),
        (("--opt", "model=vlan", "--opt", "vni=4095"), "VLAN id must be 1-4094"),
        (("--opt", "model=vlan", "--opt", "vni=ten"), "--opt vni=ten is not a number"),
        (("--opt", "model=vlan"), "model=vlan needs --opt vni=<VLAN id 1-4094>"),
        (("--opt", "model=vxlan", "--opt", "vni=0"), "VXLAN VNI must be 1-16777215"),
        (("--opt", "model=vxlan", "--opt", "vni=16777216"), "VXLAN VNI must be 1-16777215"),
        (("--opt", "model=vxlan", "--opt", "vni=7", "--opt", "nat=perhaps"), "say true or false"),
        (
            ("--opt", "model=vlan", "--opt", "vni=300", "--ipam-opt", "vni=301"),
            "--ipam-opt vni=301 and --opt vni=300 differ",
        ),
        (
            ("--opt", "model=vlan", "--opt", "vni=100", "--ipam-opt", "pool=vlan"),
            "VLAN id 100 is",  # already network v100 here, or v100 with its subnet elsewhere
        ),
    ],
)
def test_bad_cross_host_options_change_nothing(
    c: Cluster, opts: tuple[str, ...], message: str
) -> None:
    h1 = c.host("h1")
    before = (
        h1.docker("network", "ls", "-q"),
        c.stack.get("/v1/networks"),
        h1.ofctl("dump-flows", "br-ql", "--no-stats"),
    )
    err = h1.docker_fails("network", "create", *QL, "--ipam-opt", "pool=vlan", *opts, "bad")
    assert message in err
    after = (
        h1.docker("network", "ls", "-q"),
        c.stack.get("/v1/networks"),
        h1.ofctl("dump-flows", "br-ql", "--no-stats"),
    )
    assert after == before


# ---- leaving, restarting --------------------------------------------------------------


def test_restarting_one_hosts_ovs_restores_it_and_leaves_the_others_alone(c: Cluster) -> None:
    h1, h2 = c.host("h1"), c.host("h2")
    assert h2.ovs is not None
    before = durations(h1)
    h2.ovs.restart_vswitchd()
    paths = [(h1, "xc", "x@h2"), (h2, "xc", "x@h3"), (h2, "xc", "x@h1"), (h2, "a100", "a100@h1")]
    wait_until(
        lambda: all(pings(h, name, c.ip(dst)) for h, name, dst in paths),
        60,
        "vxlan and vlan to and from h2 after its OVS restart",
    )
    # and then every packet: h2's underlay and tunnels are whole again
    assert all(pings(h, name, c.ip(dst), count=3) for h, name, dst in paths)
    after = durations(h1)
    # h1's flows were never re-installed: the same flows, their durations only grew
    assert set(after) == set(before)
    assert all(after[k] >= before[k] for k in before)


def test_removing_the_network_on_one_host_leaves_the_others_working(c: Cluster) -> None:
    h1, h2, h3 = c.stack.hosts
    h3.docker("rm", "-f", "xc")
    h3.docker("network", "rm", "vx")
    addresses = {h.name: (h.underlay_address or "").split("/")[0] for h in c.stack.hosts}
    wait_until(lambda: flood_targets(h1) == [addresses["h2"]], 10, "h3 out of h1's flood group")
    assert flood_targets(h2) == [addresses["h1"]]
    assert c.ip("x@h3") not in h1.ofctl("dump-flows", "br-ql")
    assert pings(h1, "xc", c.ip("x@h2"))
    # and it comes back: a host joining gets tunnels to and from the others
    h3.docker("network", "create", *QL, *VXLAN, "vx")
    c.ips["x@h3"] = run_sleeper(h3, "xc", "vx")
    assert flood_targets(h1) == sorted([addresses["h2"], addresses["h3"]])
    assert pings(h3, "xc", c.ip("x@h1"))


def test_a_host_gone_for_good_is_forced_out_of_the_others_tunnels(c: Cluster) -> None:
    """Last in this module: h3 dies (its driver stops) and an operator removes it."""
    h1, h2, h3 = c.stack.hosts
    h3.stop_driver()
    refused = cli(c.stack, "host", "rm", "h3", "--token-file", str(c.stack.token_file))
    assert refused.returncode != 0 and "host h3 still has networks" in refused.stderr
    done = cli(c.stack, "host", "rm", "h3", "--force", "--token-file", str(c.stack.token_file))
    assert done.returncode == 0, done.stderr
    addresses = {h.name: (h.underlay_address or "").split("/")[0] for h in c.stack.hosts}
    assert flood_targets(h1) == [addresses["h2"]] and flood_targets(h2) == [addresses["h1"]]
    assert c.ip("x@h3") not in h1.ofctl("dump-flows", "br-ql")
    assert "h3" not in [h["host"]["name"] for h in c.stack.get("/v1/hosts")]
    assert pings(h1, "xc", c.ip("x@h2"))
