"""The embedded sFlow collector: a UDP socket and one thread feeding a ``TrafficTable``.

Every datagram received is decoded (``sflow.decode_datagram``) and added to the
table with ``time.monotonic()`` as its arrival time, then handed to
``on_datagram`` if given. A datagram that does not decode is counted in
``decode_errors`` and logged at debug level; an exception from
``on_datagram`` is logged and does not stop the thread either.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable

from qingluan.controller.monitor.sflow import Datagram, SflowDecodeError, decode_datagram
from qingluan.controller.monitor.traffic import TrafficTable

__all__ = ["DEFAULT_PORT", "SflowCollector"]

log = logging.getLogger(__name__)

DEFAULT_PORT = 6343
_MAX_DATAGRAM = 65535
_RECV_TIMEOUT = 0.2
_RECV_BUFFER = 4 * 1024 * 1024


class SflowCollector:
    """Receives sFlow datagrams on ``host:port`` until ``close()``."""

    def __init__(
        self,
        table: TrafficTable,
        host: str = "0.0.0.0",
        port: int = DEFAULT_PORT,
        on_datagram: Callable[[Datagram], None] | None = None,
    ) -> None:
        self.table = table
        self.host = host
        self.port = port
        self.on_datagram = on_datagram
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._datagrams = 0
        self._decode_errors = 0

    @property
    def datagrams(self) -> int:
        """Datagrams received, decoded or not."""
        with self._lock:
            return self._datagrams

    @property
    def decode_errors(self) -> int:
        with self._lock:
            return self._decode_errors

    @property
    def bound_port(self) -> int:
        """The UDP port the socket is bound to (the real one when ``port`` was 0)."""
        if self._sock is None:
            raise RuntimeError("the sFlow collector is not started")
        return int(self._sock.getsockname()[1])

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> SflowCollector:
        """Bind the socket and start the receive thread; ``OSError`` if the bind fails."""
        if self._sock is not None:
            raise RuntimeError("the sFlow collector is already started")
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECV_BUFFER)
            sock.bind((self.host, self.port))
            sock.settimeout(_RECV_TIMEOUT)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, args=(sock,), name="sflow-collector", daemon=True
        )
        self._thread.start()
        log.info("sFlow collector listening on %s:%d", self.host, self.bound_port)
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread (within about one receive timeout) and close the socket."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> SflowCollector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> dict[str, int]:
        """The table's counts with this collector's received datagrams and decode errors."""
        out = self.table.stats()
        with self._lock:
            out["received"] = self._datagrams
            out["decode_errors"] = self._decode_errors
        return out

    def _run(self, sock: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                data, peer = sock.recvfrom(_MAX_DATAGRAM)
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stop.is_set():
                    return
                log.warning("sFlow collector: receive failed: %s", exc)
                time.sleep(_RECV_TIMEOUT)
                continue
            try:
                self.handle(data, peer[0])
            except Exception:
                log.exception("sFlow collector: datagram from %s not handled", peer[0])

    def handle(self, data: bytes, peer: str = "?") -> Datagram | None:
        """Decode one datagram and add it to the table; None when it does not decode."""
        now = time.monotonic()
        with self._lock:
            self._datagrams += 1
        try:
            datagram = decode_datagram(data)
        except SflowDecodeError as exc:
            with self._lock:
                self._decode_errors += 1
            log.debug("sFlow datagram from %s (%d bytes) dropped: %s", peer, len(data), exc)
            return None
        self.table.add(datagram, now)
        if self.on_datagram is not None:
            try:
                self.on_datagram(datagram)
            except Exception:
                log.exception("sFlow collector: on_datagram failed")
        return datagram
