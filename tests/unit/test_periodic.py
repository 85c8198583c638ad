"""The controller's periodic threads (quarantine expiry, threshold evaluation)."""

from __future__ import annotations

import threading
import time

from qingluan.controller.periodic import Periodic


def test_calls_again_after_a_failure_and_stops_promptly() -> None:
    calls: list[float] = []
    third = threading.Event()

    def work() -> None:
        calls.append(time.monotonic())
        if len(calls) >= 3:
            third.set()
        if len(calls) == 1:
            raise RuntimeError("the first call fails")

    job = Periodic("test-periodic", 0.02, work)
    job.start()
    try:
        assert third.wait(5), "the job stopped after its failure"
    finally:
        started = time.monotonic()
        job.close()
    assert time.monotonic() - started < 1
    count = len(calls)
    time.sleep(0.1)
    assert len(calls) == count  # nothing after close
