"""Restarting any part loses nothing: controller (kill -9), driver, dockerd, ovs-vswitchd.

Every test keeps a ping running between two containers, or checks them right
after the restart, and compares the host's state (devices, OVS ports, flows,
iptables, controller records) with what it was before.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.integration.conftest import create_network, durations, pings, run_sleeper
from tests.support.proc import run, wait_until
from tests.support.stack import SimHost, Stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pair(stack: Stack, host: SimHost) -> Iterator[tuple[str, str]]:
    """A nat network with two containers; dockerd switched to --live-restore first."""
    assert host.dockerd is not None
    host.dockerd.restart(live_restore=True)
    create_network(host, "rs", "--opt", "model=nat", "--ipam-opt", "pool=nat")
    ips = (run_sleeper(host, "rs-a", "rs", "-p", "8088:80"), run_sleeper(host, "rs-b", "rs"))
    try:
        yield ips
    finally:
        host.docker("rm", "-f", "rs-a", "rs-b")
        host.docker("network", "rm", "rs")


def background_ping(
    host: SimHost, container: str, target: str, count: int
) -> subprocess.Popen[str]:
    """``count`` pings 0.1 s apart from inside the container's network namespace.

    Not ``docker exec``: its session would die with a restarting dockerd.
    Bounded: count/10 s plus one.
    """
    assert host.dockerd is not None
    pid = host.dockerd.container_pid(container)
    return subprocess.Popen(
        ["nsenter", "-t", str(pid), "-n", "busybox", "ping", "-c", str(count), "-i", "0.1",
         "-W", "1", target],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def loss_of(ping: subprocess.Popen[str], timeout: float = 60) -> tuple[int, int, str]:
    out, _ = ping.communicate(timeout=timeout)
    m = re.search(r"(\d+) packets transmitted, (\d+) packets received", out)
    assert m, out
    return int(m.group(1)), int(m.group(2)), out


def flows(host: SimHost) -> set[str]:
    return set(host.ofctl("dump-flows", "br-ql", "--no-stats").splitlines())


def state(host: SimHost, stack: Stack) -> dict[str, object]:
    assert host.ovs is not None
    status = stack.status()
    return {
        "links": {n for n in host.links() if n.startswith("ql")},
        "ports": set(host.ovs.vsctl("list-ports", "br-ql").split()),
        "flows": flows(host),
        "nat": sorted(host.sh("iptables-save", "-t", "nat").splitlines()[1:-2]),
        "filter": sorted(host.sh("iptables-save", "-t", "filter").splitlines()[1:-2]),
        "status": (
            sorted(n["id"] for n in status["networks"]),
            sorted((e["id"], e["address"], e["mac"]) for e in status["endpoints"]),
            sorted(p["id"] for p in status["pools"]),
        ),
    }


def _normalise(rules: object) -> object:
    if isinstance(rules, list):  # iptables-save counters and timestamps vary
        return [re.sub(r"\[\d+:\d+\]", "", r) for r in rules if not r.startswith("#")]
    return rules


def same_state(a: dict[str, object], b: dict[str, object]) -> None:
    for key in a:
        assert _normalise(a[key]) == _normalise(b[key]), key


def test_controller_kill9_during_ping_loses_no_packet_and_changes_no_flow(
    stack: Stack, host: SimHost, pair: tuple[str, str]
) -> None:
    assert stack.controller is not None
    before = state(host, stack)
    ages = durations(host)
    ping = background_ping(host, "rs-a", pair[1], count=60)
    time.sleep(1)
    stack.controller.kill9()
    time.sleep(2)  # the bridge runs on its own (fail_mode=secure)
    stack.start_controller()
    wait_until(lambda: stack.host_connected(host.name), 20, "the bridge to reconnect")
    sent, received, out = loss_of(ping)
    assert sent == received == 60, out
    # the reconnect reconciled against a correct bridge: nothing was deleted or re-added
    after_ages = durations(host)
    assert set(after_ages) == set(ages)
    assert all(after_ages[f] >= ages[f] + 2 for f in ages), "a flow was re-installed"
    reply = stack.request("POST", f"/v1/hosts/{host.name}/reconcile")
    assert reply.status_code == 200, reply.text
    result = reply.json()
    assert (result["flows_added"], result["flows_deleted"]) == (0, 0)
    same_state(before, state(host, stack))


def test_driver_restart_keeps_containers_connected_and_sweeps_leftovers(
    stack: Stack, host: SimHost, pair: tuple[str, str]
) -> None:
    assert host.driver is not None and host.ovs is not None
    before = state(host, stack)
    ping = background_ping(host, "rs-a", pair[1], count=50)
    time.sleep(0.5)
    host.driver.kill9()
    # a leftover of some earlier life: a qingluan veth and port nobody owns any more
    host.sh("ip", "link", "add", "qlvdeadbeef0001", "type", "veth", "peer", "name",
            "qlcdeadbeef0001")  # fmt: skip
    host.ovs.vsctl("add-port", "br-ql", "qlvdeadbeef0001")
    host.start_driver()
    sent, received, out = loss_of(ping)
    assert sent == received == 50, out
    wait_until(
        lambda: "qlvdeadbeef0001" not in host.links(), 20, "the sweep to remove the leftover"
    )
    same_state(before, state(host, stack))
    assert pings(host, "rs-b", pair[0])
    run_sleeper(host, "rs-c", "rs")  # the restarted driver serves new containers
    assert pings(host, "rs-c", pair[0])
    host.docker("rm", "-f", "rs-c")


def test_dockerd_restart_with_live_restore_keeps_containers_and_addresses(
    stack: Stack, host: SimHost, pair: tuple[str, str]
) -> None:
    assert host.dockerd is not None
    before = state(host, stack)
    ping = background_ping(host, "rs-a", pair[1], count=40)
    time.sleep(0.5)
    host.dockerd.restart()
    sent, received, out = loss_of(ping)
    assert sent == received == 40, out
    # dockerd replayed its IPAM requests (RequiresRequestReplay): nothing changed
    same_state(before, state(host, stack))
    run_sleeper(host, "rs-d", "rs")
    new_ip = host.docker("inspect", "-f", "{{.NetworkSettings.Networks.rs.IPAddress}}", "rs-d")
    assert new_ip not in pair, "a replayed address must not be handed out again"
    assert pings(host, "rs-d", pair[0])
    host.docker("rm", "-f", "rs-d")


def test_dockerd_crash_keeps_containers_connected(
    stack: Stack, host: SimHost, pair: tuple[str, str]
) -> None:
    assert host.dockerd is not None
    before = state(host, stack)
    pid = host.dockerd.container_pid("rs-a")
    host.dockerd.kill()
    # no docker exec without dockerd: ping from inside the container's network namespace
    run(["nsenter", "-t", str(pid), "-n", "busybox", "ping", "-c", "3", "-W", "1", pair[1]])
    host.dockerd.start()
    assert pings(host, "rs-a", pair[1])
    same_state(before, state(host, stack))


def test_ovs_vswitchd_restart_gets_every_flow_back(
    stack: Stack, host: SimHost, pair: tuple[str, str]
) -> None:
    assert host.ovs is not None
    before = state(host, stack)
    host.ovs.restart_vswitchd()
    wait_until(lambda: flows(host) == before["flows"], 30, "the controller to replay the flows")
    assert pings(host, "rs-a", pair[1])
    assert pings(host, "rs-a", pair[0].rsplit(".", 1)[0] + ".1")  # the gateway kept its address
    same_state(before, state(host, stack))


def test_nothing_listens_for_published_ports_after_all_restarts(
    host: SimHost, pair: tuple[str, str]
) -> None:
    # published through DNAT only, before and after every restart above
    assert ":8088" not in host.sh("ss", "-Hltn")
    assert "--dport 8088" in host.sh("iptables-save", "-t", "nat")


def test_plumbing_removed_behind_the_running_driver_comes_back(
    stack: Stack, host: SimHost, pair: tuple[str, str]
) -> None:
    before = state(host, stack)
    network_id = host.docker("network", "inspect", "-f", "{{.Id}}", "rs")
    gateway_dev = "qlg" + network_id[:12]
    gateway_ip = pair[0].rsplit(".", 1)[0] + ".1"
    host.sh("ip", "link", "del", gateway_dev)  # takes its bridge end with it
    host.sh("iptables", "-t", "nat", "-F", "QINGLUAN-PREROUTING")
    assert not pings(host, "rs-a", gateway_ip)
    wait_until(lambda: gateway_dev in host.links(), 30, "the driver's resync to repair it")
    wait_until(lambda: pings(host, "rs-a", gateway_ip), 15, "the gateway to answer again")
    wait_until(  # the flushed chain's own rule (the OUTPUT chain's was never gone)
        lambda: any(
            line.startswith("-A QINGLUAN-PREROUTING") and "--dport 8088" in line
            for line in host.sh("iptables-save", "-t", "nat").splitlines()
        ),
        15,
        "the DNAT rules",
    )
    after = state(host, stack)
    for key in ("links", "ports", "nat", "status"):
        assert _normalise(after[key]) == _normalise(before[key]), key
    # the re-created gateway port has a new OpenFlow number: same flows, renumbered
    assert len(after["flows"]) == len(before["flows"])  # type: ignore[arg-type]
