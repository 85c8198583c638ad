"""NONAT and NAT networks end to end: real dockerd, real OVS, real iptables, real packets.

The seed's four ``docker network create`` commands are typed verbatim; two
containers per network; the outside world is a namespace behind the host's
uplink (203.0.113.2). See tests/support/stack.py for the rig.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.integration.conftest import create_network, ip_of, pings, run_sleeper
from tests.support.proc import wait_until
from tests.support.stack import OUTSIDE_HOST_IP, OUTSIDE_IP, QL, SimHost, Stack, cli

pytestmark = pytest.mark.integration

SEED = {
    "nat1": ("--opt", "model=nat", "--ipam-opt", "pool=nat"),
    "nat2": (
        "--opt", "model=nat", "--ipam-opt", "pool=nat",
        "--subnet", "192.168.2.0/24", "--gateway", "192.168.2.1",
    ),
    "nonat1": ("--opt", "model=nonat", "--ipam-opt", "pool=nonat"),
    "nonat2": (
        "--opt", "model=nonat", "--ipam-opt", "pool=nonat",
        "--subnet", "192.168.1.0/24", "--gateway", "192.168.1.1",
    ),
}  # fmt: skip

# A CGI script that answers with the address the request came from.
WHOAMI_HTTPD = (
    "mkdir -p /www/cgi-bin && "
    "printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho $REMOTE_ADDR\\n' "
    "> /www/cgi-bin/ip && chmod +x /www/cgi-bin/ip && exec httpd -f -p 80 -h /www"
)


def http_get(host: SimHost, url: str, ns: str | None = None) -> str:
    """GET ``url`` from a namespace (default: the host's) with a 5 s bound."""
    code = (
        "import sys, urllib.request;"
        "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
    )
    argv = ["ip", "netns", "exec", ns or host.netns.name, sys.executable, "-c", code, url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    if done.returncode != 0:
        raise ConnectionError(f"GET {url} failed: {done.stderr.strip()[-300:]}")
    return done.stdout.strip()


@pytest.fixture(scope="module")
def seed(host: SimHost) -> Iterator[dict[str, list[str]]]:
    """The four seed networks with two containers each: {network: [ip_a, ip_b]}."""
    ips: dict[str, list[str]] = {}
    try:
        for net, opts in SEED.items():
            create_network(host, net, *opts)
            ips[net] = [run_sleeper(host, f"{net}-{c}", net) for c in ("a", "b")]
        yield ips
    finally:
        for net in SEED:
            for c in ("a", "b"):
                host.docker("rm", "-f", f"{net}-{c}")
            host.docker("network", "rm", net, timeout=60) if net in ips else None


def gateway_of(host: SimHost, net: str) -> str:
    return host.docker("network", "inspect", "-f", "{{(index .IPAM.Config 0).Gateway}}", net)


def subnet_of(host: SimHost, net: str) -> str:
    return host.docker("network", "inspect", "-f", "{{(index .IPAM.Config 0).Subnet}}", net)


def test_seed_networks_get_the_documented_subnets(
    host: SimHost, stack: Stack, seed: dict[str, list[str]]
) -> None:
    assert ipaddress.IPv4Network(subnet_of(host, "nat1")).subnet_of(
        ipaddress.IPv4Network("10.128.0.0/16")
    )
    assert gateway_of(host, "nat1") == str(ipaddress.IPv4Network(subnet_of(host, "nat1"))[1])
    assert subnet_of(host, "nat2") == "192.168.2.0/24"
    assert gateway_of(host, "nat2") == "192.168.2.1"
    assert ipaddress.IPv4Network(subnet_of(host, "nonat1")).subnet_of(
        ipaddress.IPv4Network("10.129.0.0/16")
    )
    assert subnet_of(host, "nonat2") == "192.168.1.0/24"
    assert gateway_of(host, "nonat2") == "192.168.1.1"
    models = {n["subnet"]: n["model"] for n in stack.status()["networks"]}
    assert models[subnet_of(host, "nat2")] == "nat"
    assert models[subnet_of(host, "nonat2")] == "nonat"
    for net, (ip_a, ip_b) in seed.items():
        assert ipaddress.IPv4Address(ip_a) in ipaddress.IPv4Network(subnet_of(host, net))
        assert ip_a != ip_b


@pytest.mark.parametrize("net", list(SEED))
def test_containers_of_one_network_reach_each_other_and_the_gateway(
    host: SimHost, seed: dict[str, list[str]], net: str
) -> None:
    assert pings(host, f"{net}-a", seed[net][1], count=2)
    assert pings(host, f"{net}-b", seed[net][0])
    assert pings(host, f"{net}-a", gateway_of(host, net))


@pytest.mark.parametrize(
    ("src", "dst"),
    [("nat1", "nat2"), ("nat2", "nat1"), ("nat1", "nonat1"), ("nonat1", "nonat2"),
     ("nonat2", "nat2")],
)  # fmt: skip
def test_networks_are_isolated_from_each_other(
    host: SimHost, seed: dict[str, list[str]], src: str, dst: str
) -> None:
    assert pings(host, f"{src}-a", seed[src][1]), "control: same network must work"
    assert not pings(host, f"{src}-a", seed[dst][0])


def test_nat_egress_reaches_outside_with_the_host_address(
    host: SimHost, seed: dict[str, list[str]]
) -> None:
    server = subprocess.Popen(
        ["ip", "netns", "exec", host.outside.name, sys.executable, "-m",
         "tests.support.whoami", "7000", "60"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        seen = host.docker("exec", "nat1-a", "sh", "-c", f"nc -w 3 {OUTSIDE_IP} 7000 </dev/null")
        assert seen == OUTSIDE_HOST_IP
        assert pings(host, "nat2-a", OUTSIDE_IP)
    finally:
        server.kill()
        server.wait(10)


def test_nonat_reaches_nothing_outside_but_the_host_reaches_it(
    host: SimHost, seed: dict[str, list[str]]
) -> None:
    assert not pings(host, "nonat1-a", OUTSIDE_IP)
    assert not pings(host, "nonat2-a", OUTSIDE_IP)
    host.sh("busybox", "ping", "-c", "1", "-W", "2", seed["nonat1"][0])
    host.sh("busybox", "ping", "-c", "1", "-W", "2", seed["nonat2"][1])


def test_published_port_answers_outside_and_localhost_without_docker_proxy(
    host: SimHost, seed: dict[str, list[str]]
) -> None:
    host.docker(
        "run", "-d", "--name", "web", "--network", "nat1", "-p", "8080:80",
        "-p", f"{OUTSIDE_HOST_IP}:8081:80", "qingluan/busybox", "sh", "-c", WHOAMI_HTTPD,
    )  # fmt: skip
    try:
        outside = http_get(host, f"http://{OUTSIDE_HOST_IP}:8080/cgi-bin/ip", ns=host.outside.name)
        # busybox httpd listens dual-stack: REMOTE_ADDR is [::ffff:a.b.c.d]
        seen = outside.removeprefix("[::ffff:").removesuffix("]")
        assert seen == OUTSIDE_IP, "the container must see the original source address"
        assert http_get(host, "http://127.0.0.1:8080/cgi-bin/ip")
        assert http_get(host, f"http://{OUTSIDE_HOST_IP}:8081/cgi-bin/ip", ns=host.outside.name)
        with pytest.raises(ConnectionError):
            http_get(host, "http://127.0.0.1:8081/cgi-bin/ip")  # published on one address only
        listeners = host.sh("ss", "-Hltn")
        assert ":8080" not in listeners and ":8081" not in listeners, "no proxy listens"
        assert subprocess.run(["pgrep", "-x", "docker-proxy"], capture_output=True).returncode
    finally:
        host.docker("rm", "-f", "web")
    assert "8080" not in host.sh("iptables-save", "-t", "nat")
    with pytest.raises(ConnectionError):
        http_get(host, f"http://{OUTSIDE_HOST_IP}:8080/", ns=host.outside.name)


def test_published_udp_port(host: SimHost, seed: dict[str, list[str]]) -> None:
    host.docker(
        "run", "-d", "--name", "udp", "--network", "nat1",
        "-p", "5201:5201", "-p", "5201:5201/udp", "qingluan/iperf3", "iperf3", "-s", "--forceflush",
    )  # fmt: skip
    try:
        wait_until(lambda: "listening" in host.docker("logs", "udp"), 20, "iperf3 -s")
        out = host.outside.run(
            "iperf3", "-c", OUTSIDE_HOST_IP, "-u", "-b", "1M", "-t", "1", "--json",
            "--connect-timeout", "5000", timeout=30,
        )  # fmt: skip
        data = json.loads(out)
        assert "error" not in data, data.get("error")
        received = data["end"]["sum_received"]
        assert received["packets"] > 0
        assert received["lost_percent"] < 50, received
    finally:
        host.docker("rm", "-f", "udp")


def _snapshot(host: SimHost, stack: Stack) -> dict[str, object]:
    status = stack.status()
    return {
        "links": {n for n in host.links() if n.startswith("ql")},
        "ports": set(host.sh("ovs-vsctl", f"--db=unix:{host.ovs.sock}", "list-ports", "br-ql")
                     .split()) if host.ovs else set(),
        "flows": set(host.ofctl("dump-flows", "br-ql", "--no-stats").splitlines()),
        "groups": set(host.ofctl("dump-groups", "br-ql").splitlines()),
        "nat": sorted(line for line in host.sh("iptables-save", "-t", "nat").splitlines()
                      if "QINGLUAN" in line),
        "filter": sorted(line for line in host.sh("iptables-save", "-t", "filter").splitlines()
                         if "QINGLUAN" in line),
        "networks": {n["id"] for n in status["networks"]},
        "endpoints": {e["id"] for e in status["endpoints"]},
        "pools": {p["id"] for p in status["pools"]},
    }  # fmt: skip


def test_removing_containers_and_networks_leaves_nothing_behind(
    host: SimHost, stack: Stack, seed: dict[str, list[str]]
) -> None:
    before = _snapshot(host, stack)
    create_network(host, "tmpnet", "--opt", "model=nat", "--ipam-opt", "pool=nat")
    run_sleeper(host, "tmp-a", "tmpnet", "-p", "9090:80")
    run_sleeper(host, "tmp-b", "tmpnet")
    during = _snapshot(host, stack)
    assert during["links"] != before["links"] and during["nat"] != before["nat"]
    host.docker("rm", "-f", "tmp-a", "tmp-b")
    host.docker("network", "rm", "tmpnet")
    after = _snapshot(host, stack)
    assert after == before


def test_a_new_container_pings_its_peer_on_the_very_first_packet(
    host: SimHost, seed: dict[str, list[str]]
) -> None:
    peer = seed["nat1"][1]
    failures = []
    for i in range(20):
        done = host.dockerd.docker(  # type: ignore[union-attr]
            "run", "--rm", "--network", "nat1", "qingluan/busybox",
            "ping", "-c", "1", "-W", "1", peer, timeout=60, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            failures.append((i, done.stdout[-200:], done.stderr[-200:]))
    assert failures == []


def test_status_cli_shows_hosts_networks_and_endpoints(
    host: SimHost, stack: Stack, seed: dict[str, list[str]]
) -> None:
    done = cli(stack, "status")
    assert done.returncode == 0, done.stderr
    assert "connected" in done.stdout and host.name in done.stdout
    for ip_a, ip_b in seed.values():
        assert ip_a in done.stdout and ip_b in done.stdout
    assert "192.168.2.0/24" in done.stdout
    flows = cli(stack, "flows", host.name)
    assert flows.returncode == 0, flows.stderr
    assert "goto_table:10" in flows.stdout and "group" in flows.stdout


def test_seed_network_names_are_unique_per_docker(
    host: SimHost, seed: dict[str, list[str]]
) -> None:
    err = host.docker_fails("network", "create", *QL, *SEED["nat1"], "nat1")
    assert "already exists" in err
    assert ip_of(host, "nat1-a") == seed["nat1"][0]


def test_ip_range_aux_address_and_given_ip(host: SimHost, seed: dict[str, list[str]]) -> None:
    create_network(
        host, "rng", "--opt", "model=nat", "--ipam-opt", "pool=nat",
        "--subnet", "192.168.3.0/24", "--ip-range", "192.168.3.128/28",
        "--aux-address", "reserved=192.168.3.128",
    )  # fmt: skip
    try:
        first = run_sleeper(host, "rng-a", "rng")
        second = run_sleeper(host, "rng-b", "rng")
        given = run_sleeper(host, "rng-c", "rng", "--ip", "192.168.3.5")  # outside the range
        in_range = ipaddress.IPv4Network("192.168.3.128/28")
        assert (
            ipaddress.IPv4Address(first) in in_range and ipaddress.IPv4Address(second) in in_range
        )
        assert "192.168.3.128" not in (first, second), "the aux address is reserved"
        assert given == "192.168.3.5"
        assert pings(host, "rng-c", first) and pings(host, "rng-a", given)
    finally:
        host.docker("rm", "-f", "rng-a", "rng-b", "rng-c")
        host.docker("network", "rm", "rng")
