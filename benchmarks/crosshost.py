"""Cross-host throughput: iperf3 to another host per cross-host mode, against the same host.

One two-host rig (``tests.integration.conftest.running_stack`` with
``host_names=("h1", "h2"), lan=True, underlay=True``: two simulated Docker
hosts, each a network namespace with its own OVS on the userspace datapath,
isolated dockerd and the real qingluan driver with ``--uplink physnet1:eth1
--underlay-address ... --underlay-nic eth2``; a simulated LAN on every host's
``eth1`` and an underlay on every ``eth2``). For each cross-host mode, one
after the other:

- **flat**: ``--opt model=flat --ipam-opt pool=flat --subnet 192.168.159.0/24
  --gateway 192.168.159.1`` on both hosts (tests/integration/test_e2e_flat.py);
- **vlan**: VLAN 100, pool form (tests/integration/test_e2e_crosshost.py);
- **vxlan**: VNI 5000 (the same test module).

the network is created on both hosts, an iperf3 server container is started
on h2, a client container on h2 (**same host**, same network) and one on h1
(**cross host**, the same network reached over the LAN or the underlay).
After a 1 s warm-up of each client (not counted), the two clients are
measured alternately, ``--repeat`` times each, one TCP stream for
``--seconds``, the order flipping every round. Per mode the table gives the
median Gbit/s of each, the ratio cross/same of the medians, the median
retransmits of each and the containers' MTU; every sample follows. The
same-host figure is the baseline of the same run and the same datapath
(h2's ovs-vswitchd), so the ratio shows what leaving the host costs: the
uplink or tunnel port, the second OVS, the simulated wire. Traffic only ever
flows between containers of the rig.

    .venv/bin/python benchmarks/crosshost.py [--seconds 3] [--repeat 3] [--tso]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.lib import (
    QL,
    BenchError,
    SimHost,
    Stack,
    bounded,
    cleanup_shielded,
    gbits,
    iperf3,
    log,
    median,
    retransmits,
    table,
)
from tests.integration.conftest import ip_of, pings, running_stack
from tests.support.dockerd import DockerdError
from tests.support.proc import wait_until

IMAGE = "qingluan/iperf3"
KEEP_LOGS = "QINGLUAN_KEEP_TEST_LOGS"  # running_stack keeps its work directory when set

# network options per mode, as the end-to-end tests create them
MODES: dict[str, tuple[str, ...]] = {
    "flat": (
        "--opt", "model=flat", "--ipam-opt", "pool=flat",
        "--subnet", "192.168.159.0/24", "--gateway", "192.168.159.1",
    ),
    "vlan": (
        "--opt", "model=vlan", "--opt", "vni=100", "--ipam-opt", "pool=vlan",
        "--ipam-opt", "vni=100",
    ),
    "vxlan": (
        "--opt", "model=vxlan", "--opt", "vni=5000",
        "--ipam-opt", "pool=vxlan", "--ipam-opt", "vni=5000",
    ),
}  # fmt: skip
WAYS = ("same", "cross")  # same host (client on h2), cross host (client on h1)


@dataclass
class ModeResult:
    mode: str
    samples: dict[str, list[float]] = field(default_factory=lambda: {w: [] for w in WAYS})
    retrans: dict[str, list[int]] = field(default_factory=lambda: {w: [] for w in WAYS})
    mtu: str = ""

    def median(self, way: str) -> float:
        return median(self.samples[way])

    def median_retrans(self, way: str) -> float:
        return median(self.retrans[way])


@contextlib.contextmanager
def two_host_stack(tso: bool) -> Iterator[Stack]:
    """The rig, closed (also after the time bound or SIGTERM: shielded) afterwards;
    its work directory is kept, and named, when the run failed."""
    started = time.monotonic()
    log(f"starting a two-host stack with LAN and underlay (userspace TSO {'on' if tso else 'off'})")
    ctx = running_stack(
        "qlbench-xh-", host_names=("h1", "h2"), lan=True, underlay=True, userspace_tso=tso
    )
    stack = ctx.__enter__()
    log(f"stack up in {time.monotonic() - started:.1f} s")
    try:
        yield stack
    except BaseException:
        os.environ[KEEP_LOGS] = "1"  # read by running_stack's cleanup below
        log(f"logs of the failed run: {stack.workdir}")
        raise
    finally:
        with cleanup_shielded():
            ctx.__exit__(None, None, None)


def container_mtu(host: SimHost, name: str) -> int:
    return int(host.docker("exec", name, "cat", "/sys/class/net/eth0/mtu"))


def run_iperf3(host: SimHost, client: str, server_ip: str, seconds: int) -> tuple[float, int]:
    assert host.dockerd is not None
    argv = [
        host.dockerd.docker_bin, f"--host={host.dockerd.host}", "exec", client,
        "iperf3", "-c", server_ip, "-t", str(seconds), "--json", "--connect-timeout", "3000",
    ]  # fmt: skip
    report = iperf3(argv, seconds, f"{client}@{host.name}: iperf3 -c {server_ip}")
    return gbits(report), retransmits(report)


def measure_mode(stack: Stack, mode: str, seconds: int, repeat: int) -> ModeResult:
    h1, h2 = stack.hosts
    net = f"x{mode}"
    srv, same, cross = f"{mode}-srv", f"{mode}-same", f"{mode}-cross"
    for h in (h1, h2):
        h.docker("network", "create", *QL, *MODES[mode], net)
    h2.docker("run", "-d", "--name", srv, "--network", net, IMAGE, "iperf3", "-s", "--forceflush")
    wait_until(lambda: "listening" in h2.docker("logs", srv), 20, f"iperf3 -s in {srv}")
    h2.docker("run", "-d", "--name", same, "--network", net, IMAGE, "sleep", "900")
    h1.docker("run", "-d", "--name", cross, "--network", net, IMAGE, "sleep", "900")
    server_ip = ip_of(h2, srv)
    clients = {"same": (h2, same), "cross": (h1, cross)}
    for way, (h, name) in clients.items():
        wait_until(functools.partial(pings, h, name, server_ip), 30, f"{mode}: {way} ping")
    result = ModeResult(mode)
    mtus = {container_mtu(h2, srv), container_mtu(h2, same), container_mtu(h1, cross)}
    result.mtu = "/".join(str(m) for m in sorted(mtus))
    for h, name in clients.values():
        run_iperf3(h, name, server_ip, 1)  # warm-up (ARP, first flows, caches): not counted
    for r in range(repeat):
        order = WAYS if r % 2 == 0 else WAYS[::-1]
        for way in order:
            h, name = clients[way]
            gbps, retr = run_iperf3(h, name, server_ip, seconds)
            log(f"{mode}: {way} host: {gbps:.2f} Gbit/s ({retr} retr)")
            result.samples[way].append(gbps)
            result.retrans[way].append(retr)
    # the stack removes everything anyway; this keeps one mode's leftovers out of the next
    h2.docker("rm", "-f", srv, same)
    h1.docker("rm", "-f", cross)
    for h in (h1, h2):
        h.docker("network", "rm", net)
    return result


def report(results: list[ModeResult], seconds: int, repeat: int, tso: bool) -> None:
    print()
    print(
        f"crosshost: iperf3, one TCP stream, {seconds} s, median of {repeat}, server on h2; "
        f"same = client on h2, cross = client on h1; userspace datapath (OVS netdev), "
        f"userspace TSO {'on' if tso else 'off'}"
    )
    print()
    rows = [
        [
            res.mode,
            f"{res.median('same'):.2f}",
            f"{res.median('cross'):.2f}",
            f"{res.median('cross') / res.median('same'):.2f}",
            f"{res.median_retrans('same'):.0f}",
            f"{res.median_retrans('cross'):.0f}",
            res.mtu,
        ]
        for res in results
    ]
    headers = ["mode", "same host", "cross host", "cross/same", "retr same", "retr cross", "MTU"]
    print(table(headers, rows))
    print("(Gbit/s and retransmits per run: medians; MTU of the containers' eth0)")
    print()
    for res in results:
        for way in WAYS:
            values = ", ".join(f"{v:.2f}" for v in res.samples[way])
            retr = ", ".join(str(r) for r in res.retrans[way])
            print(f"  {res.mode} {way}: {values} Gbit/s (retransmits {retr})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=3, help="iperf3 -t (default 3)")
    parser.add_argument("--repeat", type=int, default=3, help="measurements of each (default 3)")
    parser.add_argument("--tso", action="store_true", help="OVS with userspace TSO enabled")
    parser.add_argument("--timeout", type=float, default=340.0, help="bound of the whole run, s")
    args = parser.parse_args(argv)
    if not 1 <= args.seconds <= 30 or not 1 <= args.repeat <= 5:
        parser.error("--seconds must be 1..30 and --repeat 1..5")
    # a rough lower bound: stack start-up, per mode two warm-ups and 2 x repeat runs
    estimate = 60 + len(MODES) * (2 * 3 + 2 * args.repeat * (args.seconds + 1.5))
    if estimate > args.timeout:
        parser.error(f"--seconds/--repeat need about {estimate:.0f} s, more than --timeout")
    results: list[ModeResult] = []
    started = time.monotonic()
    try:
        with bounded(args.timeout), two_host_stack(args.tso) as stack:
            for mode in MODES:
                results.append(measure_mode(stack, mode, args.seconds, args.repeat))
    except (BenchError, DockerdError, TimeoutError) as exc:
        print(f"crosshost: FAILED: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    report(results, args.seconds, args.repeat, args.tso)
    log(f"done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
