"""IDS alert to drop: how long a quarantine takes, with real Suricata on a real host.

One simulated Docker host (``tests.integration.conftest.running_stack`` with
``ids=True``: its own OVS on the userspace datapath, isolated dockerd, the real
``qingluan driver --ids suricata``). A nat network with ``--opt ids=true``, an
HTTP server (busybox httpd) and ``--clients`` client containers on it; one IDS
policy: quarantine on severity 2 or worse, until lifted.

Per client, one after the other:

1. the baseline: ``POST /v1/hosts/h1/reconcile`` (a no-op converge of the same bridge
   with its barrier, as the REST client sees it);
2. the client sends ``GET /qingluan-ids-test`` (qingluan's example rule 9000002);
   Suricata on the mirror port raises the alert, the driver forwards it;
3. the controller stores the quarantine and converges the bridge; the figure is the
   quarantine's ``confirm_seconds``: from the alert's arrival at the controller to the
   barrier that confirmed its drop flow; the driver's log adds
   ``forwarded in X ms`` (from reading the EVE record to the controller's answer);
4. the client's ping to the server must now fail; the quarantine is lifted.

Reported: median and p90 of the confirm time (goal < 50 ms) and of the driver's
forward time, the baseline's median, and the ratio confirm/baseline.

    .venv/bin/python benchmarks/quarantine.py [--clients 10] [--timeout 280]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.lib import (
    QL,
    BenchError,
    bounded,
    cleanup_shielded,
    log,
    median,
    percentile,
    table,
)
from tests.integration.conftest import ip_of, pings, run_sleeper, running_stack
from tests.support.dockerd import DockerCommandError
from tests.support.proc import wait_until

PORT = 8080
FORWARDED = re.compile(r"IDS alert 1:9000002 from (\S+) forwarded in ([\d.]+) ms")


def request(host, container: str, ip: str) -> None:  # type: ignore[no-untyped-def]
    line = f"printf 'GET /qingluan-ids-test HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} {PORT}"
    try:
        host.docker("exec", container, "sh", "-c", line, timeout=20)
    except DockerCommandError as exc:
        raise BenchError(f"{container} could not reach the server: {exc}") from None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=280)
    args = parser.parse_args()
    if args.clients < 3:
        raise SystemExit("--clients: at least 3")
    confirm: list[float] = []
    baseline: list[float] = []
    forwarded: dict[str, float] = {}
    with bounded(args.timeout):
        ctx = running_stack("qlbench-ids-", host_names=("h1",), ids=True)
        stack = ctx.__enter__()
        try:
            h1 = stack.hosts[0]
            h1.docker("network", "create", *QL, "--opt", "model=nat", "--opt", "ids=true",
                      "--ipam-opt", "pool=nat", "insp")  # fmt: skip
            h1.docker("run", "-d", "--name", "web", "--network", "insp", "qingluan/busybox",
                      "httpd", "-f", "-p", str(PORT), "-h", "/")  # fmt: skip
            web = ip_of(h1, "web")
            clients = {f"c{i}": run_sleeper(h1, f"c{i}", "insp") for i in range(args.clients)}
            log_path = h1.workdir / "driver.log"
            wait_until(lambda: "Engine started" in log_path.read_text(), 60, "Suricata")
            policy = {"max_severity": 2, "action": "quarantine", "duration": 0}
            response = stack.request("POST", "/v1/ids/policies", policy)
            if response.status_code != 201:
                raise BenchError(f"policy: {response.text}")
            for name, ip in clients.items():
                started = time.perf_counter()
                if stack.request("POST", "/v1/hosts/h1/reconcile").status_code != 200:
                    raise BenchError("the no-op reconcile failed")
                baseline.append(time.perf_counter() - started)
                request(h1, name, web)
                [q] = wait_until(lambda: stack.get("/v1/quarantines"), 20, f"{name} quarantined")
                if q["address"] != ip or q["confirm_seconds"] is None:
                    raise BenchError(f"unexpected quarantine {q}")
                confirm.append(float(q["confirm_seconds"]))
                if pings(h1, name, web):
                    raise BenchError(f"{name} still reaches the server in quarantine")
                stack.request("DELETE", f"/v1/quarantines/{q['id']}")
                log(f"{name}: confirmed in {q['confirm_seconds'] * 1000:.1f} ms")
            for match in FORWARDED.finditer(log_path.read_text()):
                forwarded[match.group(1)] = float(match.group(2)) / 1000
        except BaseException:
            os.environ["QINGLUAN_KEEP_TEST_LOGS"] = "1"
            log(f"logs of the failed run: {stack.workdir}")
            raise
        finally:
            with cleanup_shielded():
                ctx.__exit__(None, None, None)
    fwd = list(forwarded.values()) or [float("nan")]
    rows = [
        ["alert -> drop confirmed (controller)", f"{median(confirm) * 1000:.1f}",
         f"{percentile(confirm, 90) * 1000:.1f}", str(len(confirm))],
        ["EVE record read -> answer (driver)", f"{median(fwd) * 1000:.1f}",
         f"{percentile(fwd, 90) * 1000:.1f}", str(len(forwarded))],
        ["baseline: no-op reconcile (REST)", f"{median(baseline) * 1000:.1f}",
         f"{percentile(baseline, 90) * 1000:.1f}", str(len(baseline))],
    ]  # fmt: skip
    print(table(["", "median ms", "p90 ms", "n"], rows))
    print(f"confirm / baseline (medians): {median(confirm) / median(baseline):.2f}")
    goal = "met" if median(confirm) < 0.05 else "NOT met"
    print(f"goal alert -> drop < 50 ms: {goal}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"quarantine benchmark: {exc}", file=sys.stderr)
        sys.exit(1)
