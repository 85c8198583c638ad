"""Suricata's EVE JSON alerts, received on a unix stream socket the driver listens on.

Suricata is the socket's *client*: it connects when its ``eve-log`` output starts
(and again, at most every 500 ms, after the connection is lost), writes one JSON
record per line and drops records when the socket is full. So the listener has
to exist before Suricata starts, accept reconnections (every Suricata restart is
a new connection), and read fast: :class:`EveListener` reads every connection
from one selector thread and never blocks the caller.

Only ``event_type == "alert"`` records become :class:`EveAlert`; the others are
counted and dropped.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import selectors
import socket
import stat
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_RECORD = 1 << 20  # bytes: a longer line is dropped
READ_SIZE = 1 << 16
MAX_CONNECTIONS = 16
# sun_path is 108 bytes including the NUL; the listener binds PATH~ first, then renames it
MAX_LISTENER_PATH = 106


class EveError(ValueError):
    """A record that is not EVE JSON, or an alert without the fields an alert must have."""


@dataclass(frozen=True)
class EveAlert:
    timestamp: str
    flow_id: int | None
    in_iface: str | None
    src_ip: str
    src_port: int | None  # None for ICMP and other port-less protocols
    dest_ip: str
    dest_port: int | None
    proto: str
    app_proto: str | None
    vlan: tuple[int, ...]  # outermost first; empty when untagged
    signature_id: int
    gid: int
    rev: int
    signature: str
    category: str
    severity: int  # 1 is the most severe
    action: str  # "allowed" or "blocked"


def _snippet(line: bytes, limit: int = 80) -> str:
    text = line[:limit].decode("utf-8", "replace")
    return text + ("..." if len(line) > limit else "")


def _field(record: Mapping[str, Any], key: str, kind: type, *, where: str = "") -> Any:
    value = record.get(key)
    if value is None:
        return None
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise EveError(f"{where}{key} is not an integer: {value!r}")
    if kind is str and not isinstance(value, str):
        raise EveError(f"{where}{key} is not a string: {value!r}")
    return value


def _required(record: Mapping[str, Any], key: str, kind: type, *, where: str = "") -> Any:
    value = _field(record, key, kind, where=where)
    if value is None:
        raise EveError(f"alert record without {where}{key}")
    return value


def _vlan(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise EveError(f"vlan is not a VLAN id or a list of them: {value!r}")
    return tuple(items)


def parse_eve_line(line: bytes) -> EveAlert | None:
    """One EVE record (without or with its newline): an :class:`EveAlert`, or None if not an alert.

    Raises :class:`EveError` for anything that is not a JSON object with an
    ``event_type``, and for an alert without its addresses, protocol, timestamp
    or ``alert`` fields (``signature_id``, ``gid``, ``rev``, ``signature``,
    ``severity``, ``action``; ``category`` may be missing: a rule without classtype).
    """
    if not line.strip():
        raise EveError("empty EVE record")
    try:
        record = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EveError(f"EVE record is not JSON ({exc}): {_snippet(line)}") from None
    if not isinstance(record, dict):
        raise EveError(f"EVE record is not a JSON object: {_snippet(line)}")
    event_type = record.get("event_type")
    if not isinstance(event_type, str):
        raise EveError(f"EVE record without event_type: {_snippet(line)}")
    if event_type != "alert":
        return None
    alert = record.get("alert")
    if not isinstance(alert, dict):
        raise EveError("alert record without an alert object")
    return EveAlert(
        timestamp=_required(record, "timestamp", str),
        flow_id=_field(record, "flow_id", int),
        in_iface=_field(record, "in_iface", str),
        src_ip=_required(record, "src_ip", str),
        src_port=_field(record, "src_port", int),
        dest_ip=_required(record, "dest_ip", str),
        dest_port=_field(record, "dest_port", int),
        proto=_required(record, "proto", str),
        app_proto=_field(record, "app_proto", str),
        vlan=_vlan(record.get("vlan")),
        signature_id=_required(alert, "signature_id", int, where="alert."),
        gid=_required(alert, "gid", int, where="alert."),
        rev=_required(alert, "rev", int, where="alert."),
        signature=_required(alert, "signature", str, where="alert."),
        category=_field(alert, "category", str, where="alert.") or "",
        severity=_required(alert, "severity", int, where="alert."),
        action=_required(alert, "action", str, where="alert."),
    )


class LineFramer:
    """Splits a byte stream into newline-terminated records.

    Records may arrive split across reads or several per read. A record longer
    than ``max_line`` bytes is dropped (``oversized`` counts them) and the
    framer resynchronises at the next newline. Empty lines are skipped.
    """

    def __init__(self, max_line: int = MAX_RECORD) -> None:
        if max_line < 1:
            raise ValueError("max_line must be positive")
        self.max_line = max_line
        self.oversized = 0
        self._buf = bytearray()
        self._discarding = False

    @property
    def pending(self) -> int:
        """Bytes of an unfinished record held back."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """The records that ``data`` completes, without their newlines."""
        lines: list[bytes] = []
        start = 0
        if self._discarding:
            end = data.find(b"\n")
            if end < 0:
                return lines
            self._discarding = False
            start = end + 1
        buf = self._buf
        if buf:
            end = data.find(b"\n", start)
            if end < 0:
                buf += data[start:]
                self._check_pending()
                return lines
            buf += data[start:end]
            self._emit(bytes(buf), lines)
            buf.clear()
            start = end + 1
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            self._emit(data[start:end], lines)
            start = end + 1
        if start < len(data):
            buf += data[start:]
            self._check_pending()
        return lines

    def finish(self) -> bytes | None:
        """At the end of the stream: the unterminated rest, if any (a truncated record)."""
        rest = bytes(self._buf).strip()
        self._buf.clear()
        self._discarding = False
        return rest or None

    def _emit(self, line: bytes, lines: list[bytes]) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > self.max_line:
            self.oversized += 1
            return
        if line.strip():
            lines.append(line)

    def _check_pending(self) -> None:
        if len(self._buf) > self.max_line:
            self.oversized += 1
            self._buf.clear()
            self._discarding = True


@dataclass(frozen=True)
class EveStats:
    alerts: int  # alert records handed to on_alert
    other_records: int  # records of other event types, dropped
    malformed: int  # not JSON, alerts without required fields, truncated at EOF
    oversized: int  # records longer than the cap, dropped
    connections: int  # accepted since start (Suricata reconnects after each restart)
    active_connections: int
    callback_errors: int  # on_alert raised


class EveListener:
    """Listens on ``path`` for Suricata's ``eve-log`` (``filetype: unix_stream``).

    ``on_alert`` runs on the listener's thread, once per alert, in arrival
    order: keep it short (hand the alert on), since Suricata drops records
    while the socket is full. An exception from it is logged and counted.
    """

    def __init__(
        self,
        path: Path,
        on_alert: Callable[[EveAlert], None],
        *,
        max_record: int = MAX_RECORD,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.path = Path(path)
        self.on_alert = on_alert
        self.max_record = max_record
        self.max_connections = max_connections
        self.alerts = 0
        self.other_records = 0
        self.malformed = 0
        self.callback_errors = 0
        self.connections = 0
        self._oversized_closed = 0  # from connections already gone
        self._conns: dict[socket.socket, LineFramer] = {}
        self._sock: socket.socket | None = None
        self._inode: tuple[int, int] | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._selector: selectors.BaseSelector | None = None
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._connected = threading.Condition()

    # -- life cycle ---------------------------------------------------------------

    def start(self) -> EveListener:
        """Bind and listen (mode 0600), replacing a stale socket file; accept in a daemon thread."""
        if self._thread is not None:
            raise RuntimeError("EveListener already started")
        path = self.path
        if not path.is_absolute():
            raise ValueError(f"the EVE socket path must be absolute: {path}")
        if len(os.fsencode(path)) > MAX_LISTENER_PATH:
            raise ValueError(f"unix socket path longer than {MAX_LISTENER_PATH} bytes: {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._remove_stale(path)
        tmp = path.with_name(path.name + "~")
        tmp.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            # bound under a temporary name, restricted, then renamed: never reachable at 0666
            sock.bind(str(tmp))
            os.chmod(tmp, 0o600)
            sock.listen(8)
            sock.setblocking(False)
            os.replace(tmp, path)
            st = path.stat()
        except BaseException:
            sock.close()
            tmp.unlink(missing_ok=True)
            raise
        self._inode = (st.st_dev, st.st_ino)
        self._sock = sock
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(sock, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._run, name="eve-listener", daemon=True)
        self._thread.start()
        log.info("EVE listener on %s", path)
        return self

    def close(self, timeout: float = 2.0) -> None:
        """Stop reading, close every connection and remove the socket file. Idempotent."""
        self._closing.set()
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("EVE listener thread did not stop within %.1f s", timeout)
        self._release()
        with self._connected:
            self._connected.notify_all()

    def __enter__(self) -> EveListener:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state ----------------------------------------------------------------------

    @property
    def oversized(self) -> int:
        return self._oversized_closed + sum(f.oversized for f in list(self._conns.values()))

    def stats(self) -> EveStats:
        return EveStats(
            alerts=self.alerts,
            other_records=self.other_records,
            malformed=self.malformed,
            oversized=self.oversized,
            connections=self.connections,
            active_connections=len(self._conns),
            callback_errors=self.callback_errors,
        )

    def wait_connected(self, timeout: float, *, after: int = 0) -> bool:
        """Wait until more than ``after`` connections have been accepted (Suricata is writing)."""
        with self._connected:
            return self._connected.wait_for(
                lambda: self.connections > after or self._closing.is_set(), timeout
            ) and (self.connections > after)

    # -- internals ------------------------------------------------------------------

    @staticmethod
    def _remove_stale(path: Path) -> None:
        try:
            st = path.lstat()
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise FileExistsError(
                errno.EEXIST, f"{path} exists and is not a socket: not replacing it"
            )
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        probe.settimeout(0.5)
        try:
            probe.connect(str(path))
        except OSError:
            pass  # nobody listens: stale
        else:
            raise OSError(errno.EADDRINUSE, f"another process listens on {path}")
        finally:
            probe.close()
        log.info("removing stale EVE socket %s", path)
        path.unlink(missing_ok=True)

    def _run(self) -> None:
        selector = self._selector
        assert selector is not None
        try:
            while not self._closing.is_set():
                for key, _ in selector.select():
                    if self._closing.is_set():
                        break
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        self._drain_wake()
                    else:
                        self._read(key.fileobj)  # type: ignore[arg-type]
        except Exception:
            log.exception("EVE listener stopped on an unexpected error")

    def _drain_wake(self) -> None:
        assert self._wake_r is not None
        try:
            while self._wake_r.recv(64):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _accept(self) -> None:
        assert self._sock is not None and self._selector is not None
        while True:
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("EVE listener: accept failed: %s", exc)
                return
            if len(self._conns) >= self.max_connections:
                log.warning("EVE listener: %d connections open, refusing another", len(self._conns))
                conn.close()
                continue
            conn.setblocking(False)
            self._conns[conn] = LineFramer(self.max_record)
            self._selector.register(conn, selectors.EVENT_READ, "conn")
            with self._connected:
                self.connections += 1
                self._connected.notify_all()
            log.info("EVE listener: Suricata connected (connection %d)", self.connections)

    def _read(self, conn: socket.socket) -> None:
        framer = self._conns.get(conn)
        if framer is None:
            return
        try:
            data = conn.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.info("EVE listener: connection error: %s", exc)
            data = b""
        if not data:
            rest = framer.finish()
            if rest is not None:
                self._malformed(EveError(f"truncated record at end of stream: {_snippet(rest)}"))
            self._drop(conn)
            log.info("EVE listener: Suricata disconnected")
            return
        for line in framer.feed(data):
            self._handle(line)

    def _handle(self, line: bytes) -> None:
        try:
            alert = parse_eve_line(line)
        except EveError as exc:
            self._malformed(exc)
            return
        if alert is None:
            self.other_records += 1
            return
        self.alerts += 1
        try:
            self.on_alert(alert)
        except Exception:
            self.callback_errors += 1
            log.exception("EVE listener: alert callback failed (sid %d)", alert.signature_id)

    def _malformed(self, exc: EveError) -> None:
        self.malformed += 1
        n = self.malformed
        if n <= 10 or n & (n - 1) == 0:  # the first ten, then at powers of two
            log.warning("EVE listener: dropping a malformed record (%d so far): %s", n, exc)

    def _drop(self, conn: socket.socket) -> None:
        framer = self._conns.pop(conn, None)
        if framer is not None:
            self._oversized_closed += framer.oversized
        if self._selector is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(conn)
        conn.close()

    def _release(self) -> None:
        for conn in list(self._conns):
            self._drop(conn)
        if self._selector is not None:
            self._selector.close()
            self._selector = None
        for s in (self._sock, self._wake_r, self._wake_w):
            if s is not None:
                s.close()
        self._sock = self._wake_r = self._wake_w = None
        if self._inode is not None:
            # only our own socket file: a newer listener may have replaced it
            try:
                st = self.path.lstat()
                if (st.st_dev, st.st_ino) == self._inode:
                    self.path.unlink()
            except FileNotFoundError:
                pass
            self._inode = None
