"""The host's IDS as the driver runs it: alerts in (Suricata EVE or Snort), forwarded out.

``--ids suricata``: the driver listens on a unix stream socket, then starts and
supervises Suricata on the IDS mirror port's peer (``names.IDS_PEER``), whose EVE log
writes to that socket. ``--ids snort``: Snort is the operator's (``snort -A unsock -l
DIR -i qlids1``); the driver binds ``DIR/snort_alert`` and reads Snort's
``alert_unixsock`` datagrams.

Alerts go through a bounded queue to one forwarding thread that posts each to the
controller (``POST /v1/ids/alerts``), so a slow controller never makes the IDS drop
records. The IDS only ever reads a mirror port: whether it runs or not does not
change how traffic is forwarded.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import ValidationError

from qingluan.api_schema import AlertReport
from qingluan.driver.ids.eve import EveAlert, EveListener
from qingluan.driver.ids.suricata import SuricataSupervisor
from qingluan.ids.snort import ALERTPKT_SIZE, SnortAlert, SnortFormatError, parse_alertpkt
from qingluan.model import AlertOutcome

log = logging.getLogger(__name__)

QUEUE_SIZE = 1000
SNORT_SOCKET = "snort_alert"
_PROTOCOLS = {1: "ICMP", 6: "TCP", 17: "UDP", 132: "SCTP"}


def report_from_eve(host: str, alert: EveAlert) -> AlertReport:
    """The controller's body for one Suricata alert (ValidationError: e.g. IPv6)."""
    return AlertReport(
        host=host,
        source="suricata",
        timestamp=alert.timestamp[:64] or None,
        src_ip=alert.src_ip,
        src_port=alert.src_port,
        dest_ip=alert.dest_ip,
        dest_port=alert.dest_port,
        proto=alert.proto[:16],
        signature_id=alert.signature_id,
        gid=alert.gid,
        rev=alert.rev,
        signature=alert.signature[:1024],
        category=alert.category[:255],
        severity=max(1, alert.severity),
    )


def report_from_snort(host: str, alert: SnortAlert) -> AlertReport:
    if alert.src_ip is None or alert.dst_ip is None:
        raise ValueError("the alert's packet has no IPv4 header")
    return AlertReport(
        host=host,
        source="snort",
        timestamp=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(alert.seconds)),
        src_ip=alert.src_ip,
        src_port=alert.src_port,
        dest_ip=alert.dst_ip,
        dest_port=alert.dst_port,
        proto=_PROTOCOLS.get(alert.protocol or -1, str(alert.protocol or "")),
        signature_id=alert.sig_id,
        gid=alert.sig_generator,
        rev=alert.sig_rev,
        signature=alert.message[:1024],
        severity=max(1, alert.priority),
    )


class AlertForwarder:
    """A bounded queue and one thread posting each alert to the controller."""

    def __init__(
        self, post: Callable[[AlertReport], AlertOutcome], *, size: int = QUEUE_SIZE
    ) -> None:
        self._post = post
        self._queue: queue.Queue[tuple[AlertReport, float] | None] = queue.Queue(size)
        self._thread = threading.Thread(target=self._run, name="ql-ids-forward", daemon=True)
        self.forwarded = 0
        self.dropped = 0
        self.failed = 0
        self.last_outcome: AlertOutcome | None = None

    def start(self) -> None:
        self._thread.start()

    def submit(self, report: AlertReport) -> None:
        try:
            self._queue.put_nowait((report, time.perf_counter()))
        except queue.Full:
            self.dropped += 1
            log.warning("IDS alert dropped: %d alerts wait for the controller", self._queue.maxsize)

    def close(self) -> None:
        """Forward what waits (bounded), then stop the thread. With the queue full (the
        controller does not keep up), what waits is dropped, so that the thread stops."""
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            with contextlib.suppress(queue.Empty):
                while True:
                    if self._queue.get_nowait() is not None:
                        self.dropped += 1
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(None)
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            report, queued = item
            for attempt in range(3):
                try:
                    outcome = self._post(report)
                except Exception as exc:
                    log.warning("IDS alert not forwarded (attempt %d): %s", attempt + 1, exc)
                    time.sleep(0.2 * (attempt + 1))
                    continue
                self.forwarded += 1
                self.last_outcome = outcome
                log.info(
                    "IDS alert %s:%s from %s forwarded in %.1f ms: %s",
                    report.gid,
                    report.signature_id,
                    report.src_ip,
                    (time.perf_counter() - queued) * 1000,
                    outcome.action.value,
                )
                break
            else:
                self.failed += 1


class SnortListener:
    """Binds Snort's ``alert_unixsock`` datagram socket and parses what arrives."""

    def __init__(self, path: Path, on_alert: Callable[[SnortAlert], None]) -> None:
        self.path = path
        self._on_alert = on_alert
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.malformed = 0

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(self.path))
        os.chmod(self.path, 0o600)
        sock.settimeout(0.5)
        self._sock = sock
        self._thread = threading.Thread(target=self._run, name="ql-snort", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=3)
        if self._sock is not None:
            self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _run(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                data = self._sock.recv(ALERTPKT_SIZE + 1)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                alert = parse_alertpkt(data)
            except SnortFormatError as exc:
                self.malformed += 1
                log.warning("unreadable Snort alert datagram: %s", exc)
                continue
            try:
                self._on_alert(alert)
            except Exception:
                log.exception("Snort alert not handled")


class HostIds:
    """What ``--ids`` starts: a listener (and for Suricata the supervised process)."""

    def __init__(
        self,
        kind: str,
        *,
        host: str,
        post: Callable[[AlertReport], AlertOutcome],
        run_dir: Path,
        rule_files: Sequence[Path] = (),
        netns: str | None = None,
        interface: str,
    ) -> None:
        if kind not in ("suricata", "snort"):
            raise ValueError(f"--ids {kind}: say suricata or snort")
        self.kind = kind
        self.host = host
        self.run_dir = run_dir
        self.forwarder = AlertForwarder(post)
        self.eve: EveListener | None = None
        self.suricata: SuricataSupervisor | None = None
        self.snort: SnortListener | None = None
        if kind == "suricata":
            self.eve = EveListener(run_dir / "eve.sock", self._eve_alert)
            self.suricata = SuricataSupervisor(
                interface, run_dir / "eve.sock", run_dir / "suricata", rule_files, netns=netns
            )
        else:
            self.snort = SnortListener(run_dir / SNORT_SOCKET, self._snort_alert)

    def start(self) -> None:
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.forwarder.start()
        if self.eve is not None and self.suricata is not None:
            self.eve.start()
            self.suricata.start()
        if self.snort is not None:
            self.snort.start()

    def close(self) -> None:
        if self.suricata is not None:
            self.suricata.close()
        if self.eve is not None:
            self.eve.close()
        if self.snort is not None:
            self.snort.close()
        self.forwarder.close()

    def _eve_alert(self, alert: EveAlert) -> None:
        try:
            self.forwarder.submit(report_from_eve(self.host, alert))
        except ValidationError as exc:
            log.info("IDS alert %s not forwarded: %s", alert.signature_id, exc.errors()[0]["msg"])

    def _snort_alert(self, alert: SnortAlert) -> None:
        try:
            self.forwarder.submit(report_from_snort(self.host, alert))
        except (ValidationError, ValueError) as exc:
            log.info("Snort alert %s not forwarded: %s", alert.sig_id, exc)
