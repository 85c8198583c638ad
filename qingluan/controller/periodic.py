"""A daemon thread that calls one function every few seconds until closed."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Periodic:
    """``fn()`` every ``interval`` seconds; an exception is logged and the next call
    comes on time (e.g. expiring quarantines, evaluating thresholds)."""

    def __init__(self, name: str, interval: float, fn: Callable[[], object]) -> None:
        self.name = name
        self._interval = interval
        self._fn = fn
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._fn()
            except Exception:
                log.exception("%s failed; trying again in %.1f s", self.name, self._interval)
