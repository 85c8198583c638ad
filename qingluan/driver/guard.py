"""Concurrency between Docker calls and the driver's start-up sweep.

Docker issues calls concurrently (many containers start at once), and the
start-up sweep removes qingluan devices that the controller does not know. A
CreateEndpoint that has made its veth but not yet registered it must not be
swept, so Docker calls that touch the host hold the guard *shared* and the
sweep holds it *exclusive*. Until the first sweep has run, shared holders wait
(bounded) and then fail with the reason start-up is stuck, which is what the
user should read (e.g. the controller is unreachable).

``KeyedLocks`` serialises calls about the same network or endpoint id.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from qingluan.errors import Unavailable


class HostGuard:
    def __init__(self, *, ready: bool = False, wait_timeout: float = 20.0) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0
        self._ready = ready
        self._last_error = "the driver is still starting"
        self._wait_timeout = wait_timeout

    @property
    def ready(self) -> bool:
        with self._cond:
            return self._ready

    def set_ready(self) -> None:
        with self._cond:
            self._ready = True
            self._cond.notify_all()

    def set_starting(self, reason: str) -> None:
        """Start-up has not succeeded yet; ``reason`` says why."""
        with self._cond:
            self._last_error = reason

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            ok = self._cond.wait_for(
                lambda: self._ready and not self._writer and not self._writers_waiting,
                timeout=self._wait_timeout,
            )
            if not ok:
                if not self._ready:
                    raise Unavailable(f"the qingluan driver is not ready: {self._last_error}")
                raise Unavailable("the qingluan driver is busy with its start-up sweep; retry")
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            try:
                self._cond.wait_for(lambda: not self._writer and self._readers == 0)
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class KeyedLocks:
    """One lock per key, created on demand and dropped when nobody holds it."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._mutex:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        lock.acquire()
        try:
            yield
        finally:
            lock.release()
            with self._mutex:
                lock, users = self._locks[key]
                if users <= 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)
