"""Throughput: iperf3 between two containers, qingluan vs a plain NORMAL bridge vs docker's bridge.

One simulated Docker host per configuration (tests/support/stack.py: its own
OVS on the userspace datapath, isolated dockerd, the real qingluan driver and
controller), first with userspace TSO off, then (a second stack) with
``other_config:userspace-tso-enable=true``. In each, three pairs of
``qingluan/iperf3`` containers, one TCP stream for ``--seconds``:

- **qingluan**: both containers on a qingluan ``nat`` network (the
  controller's pipeline on ``br-ql``, veths made by the driver).
- **NORMAL**: the fair L2 baseline. A second bridge ``base`` in the *same*
  ovs-vswitchd (same datapath type, same datapath thread) that the
  controller does not manage: no controller, ``fail_mode=standalone``, one
  flow ``priority=0,actions=NORMAL``. The two containers are started on an
  internal network of Docker's bridge driver (so Docker sets them up like any
  container of a user-defined network, embedded DNS and its connection tracking
  included) and get a veth pair each, made here by hand: one end on ``base``,
  the other moved into the container's namespace as ``eth1``, with
  the same MTU as the qingluan network and the same TX offload setting the
  driver chooses for this datapath (``tx_offload_off_needed``) and the same
  receive buffer for ovs-vswitchd's socket of each port (``sockbuf``). So the only
  difference to the qingluan pair is the OpenFlow pipeline (and the driver's
  per-port settings it applies in both cases), which is what the ratio should
  show. Containers (not bare namespaces) on both sides, so the iperf3 binary,
  cgroups and scheduling are the same.
- **docker bridge**: both containers on a network of Docker's own ``bridge``
  driver in the same dockerd (kernel Linux bridge, kernel veths: the upper
  bound on this machine, not a datapath OVS can match in userspace).

Measurements of one stack are interleaved (qingluan, NORMAL, bridge, then
again in a rotated order, ``--repeat`` times, after a 1 s warm-up run of
each that is not counted). The table gives the median of each and the
ratios of the medians; the ratios of the best runs follow, and every sample
is printed: one userspace TCP stream here loses tens of thousands of packets
per run (see the retransmits), so single runs scatter by +-25 % and an
outlier either way moves a best-of figure, rarely a median. Ratios are only
ever taken between figures of the same stack, i.e. of the same run.

    .venv/bin/python benchmarks/throughput.py [--seconds 5] [--repeat 4] [--no-tso]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.lib import (
    QL,
    BenchError,
    SimHost,
    bounded,
    gbits,
    iperf3,
    log,
    median,
    one_host_stack,
    retransmits,
    table,
)
from qingluan.driver.host.plumbing import tx_offload_off_needed
from qingluan.driver.host.sockbuf import PacketSocketBuffers
from qingluan.model import DatapathType
from tests.support.proc import wait_until

IMAGE = "qingluan/iperf3"
QL_NET = "qlnat"
BRIDGE_NET = "b1"
BRIDGE_SUBNET = "192.168.251.0/24"  # only inside the simulated host's namespace
BASE_BRIDGE = "base"
SIDE_NET = "nbside"  # the NORMAL containers' Docker network (eth0), unused by iperf3
SIDE_SUBNET = "192.168.253.0/24"  # only inside the simulated host
BASE_ADDRS = ("192.168.252.2", "192.168.252.3")  # only inside the two containers
KINDS = ("qingluan", "NORMAL", "docker bridge")


@dataclass
class Pair:
    kind: str
    server: str  # container names
    client: str
    server_ip: str


@dataclass
class Result:
    tso: bool
    samples: dict[str, list[float]] = field(default_factory=dict)
    retrans: dict[str, list[int]] = field(default_factory=dict)
    mtu: int = 0

    def best(self, kind: str) -> float:
        return max(self.samples[kind])

    def median(self, kind: str) -> float:
        return median(self.samples[kind])


def container_ip(host: SimHost, name: str) -> str:
    return host.docker(
        "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name
    )


def start_server(host: SimHost, name: str, *net: str) -> None:
    host.docker("run", "-d", "--name", name, *net, IMAGE, "iperf3", "-s", "--forceflush")
    wait_until(lambda: "listening" in host.docker("logs", name), 20, f"iperf3 -s in {name}")


def start_client(host: SimHost, name: str, *net: str) -> None:
    host.docker("run", "-d", "--name", name, *net, IMAGE, "sleep", "900")


def qingluan_pair(host: SimHost) -> Pair:
    nat = ("--opt", "model=nat", "--ipam-opt", "pool=nat")
    host.docker("network", "create", *QL, *nat, QL_NET)
    start_server(host, "ql-srv", "--network", QL_NET)
    start_client(host, "ql-cli", "--network", QL_NET)
    return Pair("qingluan", "ql-srv", "ql-cli", container_ip(host, "ql-srv"))


def bridge_pair(host: SimHost) -> Pair:
    host.docker("network", "create", "-d", "bridge", "--subnet", BRIDGE_SUBNET, BRIDGE_NET)
    start_server(host, "br-srv", "--network", BRIDGE_NET)
    start_client(host, "br-cli", "--network", BRIDGE_NET)
    return Pair("docker bridge", "br-srv", "br-cli", container_ip(host, "br-srv"))


def normal_pair(host: SimHost, mtu: int, tx_off: bool) -> Pair:
    """Two containers on the controller-less NORMAL bridge ``base``, through a second
    interface ``eth1``. Their ``eth0`` is on an internal network of Docker's bridge driver
    (``nbside``, unused by the test) so that Docker sets them up as it sets up every
    container of a user-defined network: its embedded DNS puts NAT rules into the
    container's namespace, which makes the kernel track every connection there. Without
    that the baseline would skip conntrack on both ends and win by a few per cent."""
    assert host.ovs is not None and host.dockerd is not None
    host.ovs.vsctl(
        "add-br", BASE_BRIDGE, "--", "set", "bridge", BASE_BRIDGE, "datapath_type=netdev",
        "fail_mode=standalone", "protocols=OpenFlow13", "other_config:disable-in-band=true",
    )  # fmt: skip
    host.ovs.ofctl("del-flows", BASE_BRIDGE)
    host.ovs.ofctl("add-flow", BASE_BRIDGE, "priority=0,actions=NORMAL")
    flows = host.ovs.dump_flows(BASE_BRIDGE)
    if flows != ["priority=0 actions=NORMAL"]:
        raise BenchError(f"bridge {BASE_BRIDGE} holds unexpected flows: {flows}")
    host.docker(
        "network", "create", "-d", "bridge", "--internal", "--subnet", SIDE_SUBNET, SIDE_NET
    )
    start_server(host, "nb-srv", "--network", SIDE_NET)
    start_client(host, "nb-cli", "--network", SIDE_NET)
    for i, (name, addr) in enumerate(zip(("nb-srv", "nb-cli"), BASE_ADDRS, strict=True)):
        port, peer = f"qbp{i}", f"qbc{i}"
        pid = host.dockerd.container_pid(name)
        host.sh("ip", "link", "add", port, "mtu", str(mtu), "type", "veth",
                "peer", "name", peer, "mtu", str(mtu))  # fmt: skip
        host.sh("sysctl", "-q", "-w", f"net.ipv6.conf.{port}.disable_ipv6=1")
        if tx_off:
            host.sh("ethtool", "-K", port, "tx", "off")
            host.sh("ethtool", "-K", peer, "tx", "off")
        host.sh("ip", "link", "set", peer, "netns", str(pid))
        inside = ["nsenter", f"--net=/proc/{pid}/ns/net"]
        host.sh(*inside, "ip", "link", "set", peer, "name", "eth1")
        host.sh(*inside, "ip", "addr", "add", f"{addr}/24", "dev", "eth1")
        host.sh(*inside, "ip", "link", "set", "eth1", "up")
        host.sh("ip", "link", "set", port, "up")
        host.ovs.vsctl("add-port", BASE_BRIDGE, port)
        # the receive buffer the driver gives its own ports' sockets (host/sockbuf.py)
        ifindex = int(host.sh("cat", f"/sys/class/net/{port}/ifindex"))
        PacketSocketBuffers(host.ovs.root / "ovs-vswitchd.pid").raise_for([ifindex])
    return Pair("NORMAL", "nb-srv", "nb-cli", BASE_ADDRS[0])


def run_iperf3(host: SimHost, pair: Pair, seconds: int) -> tuple[float, int]:
    assert host.dockerd is not None
    argv = [
        host.dockerd.docker_bin, f"--host={host.dockerd.host}", "exec", pair.client,
        "iperf3", "-c", pair.server_ip, "-t", str(seconds), "--json", "--connect-timeout", "3000",
    ]  # fmt: skip
    report = iperf3(argv, seconds, f"{pair.kind}: iperf3 -c {pair.server_ip}")
    return gbits(report), retransmits(report)


def measure(tso: bool, seconds: int, repeat: int) -> Result:
    result = Result(tso=tso)
    with one_host_stack(userspace_tso=tso, label="tput") as host:
        tx_off = tx_offload_off_needed(DatapathType.NETDEV, userspace_tso=tso, tunnelled=False)
        ql = qingluan_pair(host)
        mtu = int(host.docker("exec", ql.client, "cat", "/sys/class/net/eth0/mtu"))
        result.mtu = mtu
        pairs = [ql, normal_pair(host, mtu, tx_off), bridge_pair(host)]
        for p in pairs:
            result.samples[p.kind] = []
            result.retrans[p.kind] = []
            run_iperf3(host, p, 1)  # warm-up (first flows, caches): not counted
        for r in range(repeat):
            order = pairs[r % len(pairs) :] + pairs[: r % len(pairs)]
            for p in order:
                gbps, retr = run_iperf3(host, p, seconds)
                log(f"TSO {'on' if tso else 'off'}: {p.kind}: {gbps:.2f} Gbit/s ({retr} retr)")
                result.samples[p.kind].append(gbps)
                result.retrans[p.kind].append(retr)
        for name in ("ql-srv", "ql-cli", "nb-srv", "nb-cli", "br-srv", "br-cli"):
            host.docker("rm", "-f", name)
        host.ovs.vsctl("--if-exists", "del-br", BASE_BRIDGE)  # type: ignore[union-attr]
    return result


def report(results: list[Result], seconds: int, repeat: int) -> None:
    print()
    print(
        f"throughput: iperf3, one TCP stream, {seconds} s, median of {repeat}, "
        "userspace datapath (OVS netdev)"
    )
    print()
    rows = []
    for res in results:
        ql, normal, br = (res.median(k) for k in KINDS)
        rows.append(
            [
                "on" if res.tso else "off",
                f"{ql:.2f}",
                f"{normal:.2f}",
                f"{br:.2f}",
                f"{ql / normal:.2f}",
                f"{ql / br:.2f}",
                str(res.mtu),
            ]
        )
    headers = ["TSO", "qingluan", "NORMAL", "docker br", "ql/NORMAL", "ql/docker", "MTU"]
    print(table(headers, rows))
    print("(Gbit/s, medians; goals: ql/NORMAL >= 0.95, ql/docker >= 0.6 with TSO on)")
    print()
    for res in results:
        ql, normal, br = (res.median(k) for k in KINDS)
        goals = [f"ql/NORMAL {'met' if ql / normal >= 0.95 else 'NOT met'}"]
        if res.tso:
            goals.append(f"ql/docker {'met' if ql / br >= 0.6 else 'NOT met'}")
        bql, bnormal, bbr = (res.best(k) for k in KINDS)
        print(
            f"TSO {'on' if res.tso else 'off'}: {', '.join(goals)}; best runs: "
            f"ql/NORMAL {bql / bnormal:.2f}, ql/docker {bql / bbr:.2f}"
        )
        for k in KINDS:
            values = ", ".join(f"{v:.2f}" for v in res.samples[k])
            retr = ", ".join(str(r) for r in res.retrans[k])
            print(f"  {k}: {values} Gbit/s (retransmits {retr})")
    if len(results) == 2:
        off, on = results
        print(
            f"TSO on/off: qingluan {on.median('qingluan') / off.median('qingluan'):.1f}x, "
            f"NORMAL {on.median('NORMAL') / off.median('NORMAL'):.1f}x "
            "(docker bridge does not use OVS: its two figures show the machine's drift)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="iperf3 -t (default 5)")
    parser.add_argument("--repeat", type=int, default=4, help="measurements of each (default 4)")
    parser.add_argument("--no-tso", action="store_true", help="only the TSO-off stack")
    parser.add_argument("--timeout", type=float, default=285.0, help="bound of the whole run, s")
    args = parser.parse_args(argv)
    if not 1 <= args.seconds <= 60 or not 1 <= args.repeat <= 5:
        parser.error("--seconds must be 1..60 and --repeat 1..5")
    results: list[Result] = []
    started = time.monotonic()
    try:
        with bounded(args.timeout):
            for tso in (False,) if args.no_tso else (False, True):
                results.append(measure(tso, args.seconds, args.repeat))
    except BenchError as exc:
        print(f"throughput: FAILED: {exc}", file=sys.stderr)
        return 1
    report(results, args.seconds, args.repeat)
    log(f"done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
