"""Attach latency: ``docker run --rm --network NET qingluan/busybox true``, qingluan vs bridge.

One simulated Docker host (tests/support/stack.py: its own OVS on the
userspace datapath, isolated dockerd, the real qingluan driver and
controller). Two networks in that one dockerd:

- ``qlnat``: a qingluan ``nat`` network;
- ``b1``: a network of Docker's own ``bridge`` driver (kernel Linux bridge;
  the isolated dockerd runs with ``--bridge=none --iptables=false``, so no
  iptables rules, which only favours the baseline).

Each run times the whole CLI call: create, attach, start, exit, detach,
remove. OVS runs with userspace TSO (``--tso on``, the default: what
``make run`` sets up on a host without the kernel module) or without it
(``--tso off``: then the driver also turns TX offloads off on every veth).
The two are alternated (and the order flips every round) so that
drift of a noisy machine hits both alike; one warm-up run each is discarded.
Reported: medians, p90 and the ratio qingluan/bridge (goal <= 1.0), plus
where qingluan's time goes, from the driver's ``<call> ok (0.123 s)`` lines.

    .venv/bin/python benchmarks/attach_latency.py [--runs 15] [--tso on|off]
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.lib import (
    QL,
    BenchError,
    SimHost,
    bounded,
    log,
    median,
    one_host_stack,
    percentile,
    table,
)

QL_NET = "qlnat"
BRIDGE_NET = "b1"
NO_NET = "none"  # the same container without any network: what neither driver costs
BRIDGE_SUBNET = "192.168.251.0/24"  # lives only in the simulated host's namespace
IMAGE = "qingluan/busybox"
CALL_LINE = re.compile(r"INFO qingluan\.driver\.server: (\S+) ok \(([0-9.]+) s\)")


def timed_run(host: SimHost, network: str) -> float:
    assert host.dockerd is not None
    started = time.monotonic()
    done = host.dockerd.docker(
        "run", "--rm", "--network", network, IMAGE, "true", timeout=60, check=False
    )
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        raise BenchError(f"docker run on {network} failed: {done.stderr.strip()[-300:]}")
    return elapsed


def driver_calls(log_file: Path, offset: int) -> dict[str, list[float]]:
    """Durations of each plugin call logged after byte ``offset`` of the driver log."""
    calls: dict[str, list[float]] = defaultdict(list)
    with log_file.open("rb") as f:
        f.seek(offset)
        for line in f.read().decode(errors="replace").splitlines():
            m = CALL_LINE.search(line)
            if m:
                calls[m.group(1)].append(float(m.group(2)))
    return calls


def measure(runs: int, tso: bool) -> int:
    with one_host_stack(userspace_tso=tso, label="attach") as host:
        assert host.driver is not None
        nat = ("--opt", "model=nat", "--ipam-opt", "pool=nat")
        host.docker("network", "create", *QL, *nat, QL_NET)
        host.docker("network", "create", "-d", "bridge", "--subnet", BRIDGE_SUBNET, BRIDGE_NET)
        # warm-up (page cache, first-use paths of both drivers): not counted
        for net in (QL_NET, BRIDGE_NET, NO_NET):
            timed_run(host, net)
        time.sleep(0.5)  # let the last log lines of the warm-up land
        offset = host.driver.log.stat().st_size
        times: dict[str, list[float]] = {QL_NET: [], BRIDGE_NET: [], NO_NET: []}
        log(f"{runs} runs each, alternated")
        for i in range(runs):
            pair = (QL_NET, BRIDGE_NET) if i % 2 == 0 else (BRIDGE_NET, QL_NET)
            for net in (*pair, NO_NET) if i % 3 else (NO_NET, *pair):
                times[net].append(timed_run(host, net))
        time.sleep(0.5)
        calls = driver_calls(host.driver.log, offset)

    ql, br, none = times[QL_NET], times[BRIDGE_NET], times[NO_NET]
    print()
    print(
        f"attach latency: docker run --rm --network NET {IMAGE} true ({runs} runs each, "
        f"userspace datapath, userspace TSO {'on' if tso else 'off'})"
    )
    print()
    rows = [
        [name, f"{median(v):.3f}", f"{percentile(v, 90):.3f}", f"{min(v):.3f}", f"{max(v):.3f}"]
        for name, v in (("qingluan nat", ql), ("docker bridge", br), ("--network none", none))
    ]
    print(table(["network", "median s", "p90 s", "min s", "max s"], rows))
    ratio_median = median(ql) / median(br)
    ratio_p90 = percentile(ql, 90) / percentile(br, 90)
    verdict = "met" if ratio_median <= 1.0 else "NOT met"
    print()
    print(
        f"ratio qingluan/bridge: median {ratio_median:.2f}, p90 {ratio_p90:.2f}"
        f"  (goal <= 1.0: {verdict})"
    )
    own_ql, own_br = median(ql) - median(none), median(br) - median(none)
    print(
        f"over --network none (each network's own cost, medians): qingluan "
        f"{own_ql * 1000:.0f} ms, bridge {own_br * 1000:.0f} ms"
    )

    # where qingluan's time goes: the driver's own timing of each plugin call
    per_run = {c: v for c, v in calls.items() if len(v) >= runs}
    if per_run:
        print()
        print("qingluan plugin calls per run (driver log; medians):")
        crows = []
        total = 0.0
        for call, values in sorted(per_run.items(), key=lambda kv: -median(kv[1]) * len(kv[1])):
            per = len(values) / runs
            cost = median(values) * per
            total += cost
            crows.append(
                [
                    call,
                    f"{per:.0f}",
                    f"{median(values) * 1000:.1f}",
                    f"{percentile(values, 90) * 1000:.1f}",
                    f"{cost * 1000:.1f}",
                ]
            )
        crows.append(["total", "", "", "", f"{total * 1000:.1f}"])
        print(table(["call", "n/run", "median ms", "p90 ms", "ms/run"], crows))
        print(
            f"plugin calls: {total:.3f} s of the {median(ql):.3f} s median "
            f"({total / median(ql):.0%}); the rest is dockerd, containerd and runc"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="runs per network (>= 10)")
    parser.add_argument(
        "--tso",
        choices=("on", "off"),
        default="on",
        help="OVS userspace TSO (default on, as `make run` sets it here; off: the driver "
        "also runs ethtool on each veth)",
    )
    parser.add_argument("--timeout", type=float, default=280.0, help="bound of the whole run, s")
    args = parser.parse_args(argv)
    if args.runs < 10:
        parser.error("--runs must be at least 10")
    try:
        with bounded(args.timeout):
            return measure(args.runs, args.tso == "on")
    except BenchError as exc:
        print(f"attach_latency: FAILED: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
