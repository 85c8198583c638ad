"""What the benchmarks share: a bounded run, a one-host stack, statistics, iperf3.

Not a benchmark itself (``make bench`` runs only ``benchmarks/*.py``). Every
benchmark brings up its own whole-product rig (``tests.support.stack.Stack``
with one simulated Docker host: a network namespace with its own OVS,
isolated dockerd and the real ``qingluan driver``) and removes it again, also
on Ctrl-C, SIGTERM or when its time bound runs out.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.stack import QL, SimHost, Stack  # noqa: E402

__all__ = ["QL", "REPO", "BenchError", "SimHost", "Stack"]


class BenchError(RuntimeError):
    """The benchmark could not measure what it wanted; the message says why."""


class OutOfTime(BenchError):
    pass


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if signum == signal.SIGALRM:
        raise OutOfTime("the time bound (--timeout) was reached")
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def bounded(seconds: float) -> Iterator[None]:
    """Raise ``OutOfTime`` after ``seconds`` and turn SIGTERM into KeyboardInterrupt,
    so that the ``finally`` blocks (which remove every rig) always run."""
    old_alarm = signal.signal(signal.SIGALRM, _on_signal)
    old_term = signal.signal(signal.SIGTERM, _on_signal)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_alarm)
        signal.signal(signal.SIGTERM, old_term)


@contextlib.contextmanager
def cleanup_shielded() -> Iterator[None]:
    """Neither the time bound nor SIGTERM/SIGINT interrupts a cleanup: the timer is
    paused and those signals ignored until it is done (cleanup is bounded itself)."""
    remaining, _ = signal.setitimer(signal.ITIMER_REAL, 0)
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if remaining > 0:
            signal.setitimer(signal.ITIMER_REAL, remaining)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def one_host_stack(*, userspace_tso: bool = False, label: str = "bench") -> Iterator[SimHost]:
    """A started one-host Stack; closed and its work directory removed afterwards
    (kept, and named, when the run failed: it holds the logs)."""
    workdir = Path(tempfile.mkdtemp(prefix=f"qlbench-{label}-"))
    started = time.monotonic()
    log(f"starting a one-host stack (userspace TSO {'on' if userspace_tso else 'off'})")
    stack = Stack(workdir, userspace_tso=userspace_tso)
    ok = False
    try:
        stack.start()
        host = stack.hosts[0]  # its start() imported qingluan/busybox and qingluan/iperf3
        log(f"stack up in {time.monotonic() - started:.1f} s")
        yield host
        ok = True
    finally:
        with cleanup_shielded(), contextlib.suppress(Exception):
            stack.close()
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"logs of the failed run: {workdir}")


# ---- statistics -------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (p90 of 15 values is the 14th smallest)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs)

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


# ---- iperf3 -----------------------------------------------------------------------------


def iperf3(argv: Sequence[str], seconds: float, what: str) -> dict[str, Any]:
    """Run an iperf3 client with ``--json``; retry once if it could not connect or failed.

    Returns the parsed report; raises ``BenchError`` with iperf3's own message.
    """
    last = ""
    for attempt in (1, 2):
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=seconds + 30, check=False
            )
        except subprocess.TimeoutExpired:
            last = f"no result after {seconds + 30:.0f} s"
        else:
            try:
                report: dict[str, Any] = json.loads(done.stdout)
            except json.JSONDecodeError:
                report = {"error": (done.stderr or done.stdout).strip()[-300:] or "no output"}
            if "error" not in report and done.returncode == 0 and "end" in report:
                return report
            last = str(report.get("error") or done.stderr.strip()[-300:])
        if attempt == 1:
            log(f"{what}: iperf3 failed ({last}); retrying once")
            time.sleep(1.0)
    raise BenchError(f"{what}: iperf3 failed twice: {last}")


def gbits(report: dict[str, Any]) -> float:
    """What the receiver got, in Gbit/s."""
    return float(report["end"]["sum_received"]["bits_per_second"]) / 1e9


def retransmits(report: dict[str, Any]) -> int:
    return int(report["end"].get("sum_sent", {}).get("retransmits", 0))
