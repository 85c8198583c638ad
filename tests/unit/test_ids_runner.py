"""The host's IDS glue: alerts of real Suricata (tests/data/eve) and x86-64 Snort datagrams
to the controller's body, the forwarding queue, and Snort's unix datagram socket."""

from __future__ import annotations

import dataclasses
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from qingluan.api_schema import AlertReport
from qingluan.driver.ids.eve import EveAlert, parse_eve_line
from qingluan.driver.ids_runner import (
    SNORT_SOCKET,
    AlertForwarder,
    HostIds,
    SnortListener,
    report_from_eve,
    report_from_snort,
)
from qingluan.ids.snort import ALERTPKT_SIZE, SnortAlert, parse_alertpkt
from qingluan.model import AlertOutcome, IdsAction, IdsAlert
from tests.support.proc import wait_until
from tests.unit.test_snort import EVENT, datagram

EVE = Path(__file__).resolve().parents[1] / "data" / "eve"


def eve(name: str) -> EveAlert:
    alert = parse_eve_line((EVE / name).read_bytes())
    assert alert is not None
    return alert


def report(sid: int = 1) -> AlertReport:
    return AlertReport(host="h1", src_ip="10.0.0.1", dest_ip="10.0.0.2", signature_id=sid)


def outcome(r: AlertReport) -> AlertOutcome:
    alert = IdsAlert(**r.model_dump())
    return AlertOutcome(alert=alert, action=IdsAction.LOG, received_at=0.0)


# ---- Suricata and Snort alerts as the controller takes them --------------------------


def test_a_suricata_http_alert() -> None:
    r = report_from_eve("h1", eve("alert-http.json"))
    assert (r.host, r.source, r.timestamp) == ("h1", "suricata", "2026-12-03T15:21:22.479870+0000")
    assert (r.src_ip, r.src_port, r.dest_ip, r.dest_port, r.proto) == (
        "10.78.0.1",
        54584,
        "10.78.0.2",
        8080,
        "TCP",
    )
    assert (r.gid, r.signature_id, r.rev, r.severity) == (1, 9000002, 1, 2)
    assert r.signature == "QINGLUAN example: HTTP request for the IDS test URI"
    assert r.category == "access to a potentially vulnerable web application"


def test_a_suricata_icmp_alert_has_no_ports() -> None:
    r = report_from_eve("h2", eve("alert-icmp.json"))
    assert (r.src_ip, r.src_port, r.dest_ip, r.dest_port, r.proto) == (
        "10.78.0.1",
        None,
        "10.78.0.2",
        None,
        "ICMP",
    )
    assert (r.signature_id, r.severity, r.category) == (9000001, 1, "Attempted Information Leak")


def test_suricata_fields_are_cut_to_what_the_controller_takes() -> None:
    long = dataclasses.replace(
        eve("alert-http.json"),
        signature="s" * 2000,
        category="c" * 300,
        proto="P" * 20,
        timestamp="t" * 80,
        severity=0,
    )
    r = report_from_eve("h1", long)
    assert (len(r.signature), len(r.category), len(r.proto), len(r.timestamp or "")) == (
        1024,
        255,
        16,
        64,
    )
    assert r.severity == 1  # the most severe the API knows
    assert report_from_eve("h1", dataclasses.replace(long, timestamp="")).timestamp is None


def test_an_ipv6_suricata_alert_is_refused() -> None:
    with pytest.raises(ValidationError, match="src_ip"):
        report_from_eve("h1", dataclasses.replace(eve("alert-icmp.json"), src_ip="fd00::1"))


def test_a_snort_alert() -> None:
    r = report_from_snort("h1", parse_alertpkt(datagram()))
    assert (r.host, r.source, r.timestamp) == ("h1", "snort", "2023-11-14T22:13:20")
    assert (r.src_ip, r.src_port, r.dest_ip, r.dest_port, r.proto) == (
        "10.131.0.2",
        40000,
        "10.131.0.3",
        80,
        "TCP",
    )
    assert (r.gid, r.signature_id, r.rev, r.severity) == (1, 1_000_001, 3, 1)
    assert r.signature == "qingluan test marker" and r.category == ""


def test_snort_priority_and_protocol_numbers() -> None:
    buf = bytearray(datagram())
    struct.pack_into("<I", buf, EVENT + 16, 0)  # priority 0
    alert = parse_alertpkt(bytes(buf))
    assert alert.priority == 0 and report_from_snort("h1", alert).severity == 1
    assert report_from_snort("h1", dataclasses.replace(alert, protocol=17)).proto == "UDP"
    assert report_from_snort("h1", dataclasses.replace(alert, protocol=47)).proto == "47"


def test_a_snort_alert_without_an_ip_header_is_refused() -> None:
    alert = parse_alertpkt(datagram(val=0x1))
    with pytest.raises(ValueError, match="no IPv4 header"):
        report_from_snort("h1", alert)


# ---- the forwarding queue ------------------------------------------------------------


class Poster:
    """The controller's ``report_alert``: records, can fail, can hold the thread."""

    def __init__(self, failures: int = 0) -> None:
        self.posted: list[AlertReport] = []
        self.attempts = 0
        self.failures = failures
        self.holding = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def __call__(self, r: AlertReport) -> AlertOutcome:
        self.attempts += 1
        self.holding.set()
        assert self.release.wait(10)
        if self.failures:
            self.failures -= 1
            raise ConnectionError("controller away")
        self.posted.append(r)
        return outcome(r)


@pytest.fixture
def forwarder_of() -> Iterator[Callable[..., AlertForwarder]]:
    made: list[tuple[AlertForwarder, Poster]] = []

    def make(poster: Poster, size: int = 10) -> AlertForwarder:
        f = AlertForwarder(poster, size=size)
        made.append((f, poster))
        f.start()
        return f

    yield make
    for f, poster in made:
        poster.release.set()
        f.close()


def test_alerts_are_forwarded_in_order_and_close_sends_what_waits(
    forwarder_of: Callable[..., AlertForwarder],
) -> None:
    poster = Poster()
    f = forwarder_of(poster)
    for sid in range(1, 6):
        f.submit(report(sid))
    f.close()
    assert not f._thread.is_alive()
    assert [r.signature_id for r in poster.posted] == [1, 2, 3, 4, 5]
    assert (f.forwarded, f.dropped, f.failed) == (5, 0, 0)
    assert f.last_outcome is not None and f.last_outcome.alert.signature_id == 5


def test_a_full_queue_drops_and_counts(
    forwarder_of: Callable[..., AlertForwarder],
) -> None:
    poster = Poster()
    poster.release.clear()
    f = forwarder_of(poster, size=2)
    f.submit(report(1))
    assert poster.holding.wait(5)  # the thread holds alert 1: two more fit
    for sid in (2, 3, 4, 5):
        f.submit(report(sid))
    assert f.dropped == 2
    poster.release.set()
    wait_until(lambda: f.forwarded == 3, 5, "three alerts forwarded")
    assert [r.signature_id for r in poster.posted] == [1, 2, 3]


def test_closing_with_a_full_queue_drops_what_waits_and_stops(
    forwarder_of: Callable[..., AlertForwarder],
) -> None:
    poster = Poster()
    poster.release.clear()
    f = forwarder_of(poster, size=2)
    f.submit(report(1))
    assert poster.holding.wait(5)
    for sid in (2, 3, 4):
        f.submit(report(sid))
    assert f.dropped == 1
    closing = threading.Thread(target=f.close)
    closing.start()
    try:
        wait_until(lambda: f.dropped == 3, 2, "the waiting alerts dropped by close")
    finally:
        poster.release.set()
        closing.join(10)
    assert not closing.is_alive() and not f._thread.is_alive()
    assert [r.signature_id for r in poster.posted] == [1] and f.forwarded == 1


def test_a_failed_post_is_tried_three_times(
    forwarder_of: Callable[..., AlertForwarder],
) -> None:
    poster = Poster(failures=4)  # the first alert's three attempts, then one of the second's
    f = forwarder_of(poster)
    f.submit(report(1))
    f.submit(report(2))
    wait_until(lambda: f.forwarded == 1, 10, "the second alert forwarded")
    assert (f.failed, poster.attempts) == (1, 5)
    assert [r.signature_id for r in poster.posted] == [2]


# ---- Snort's socket ------------------------------------------------------------------


def send(path: Path, data: bytes) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(data, str(path))


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[SnortListener, list[SnortAlert]]]:
    alerts: list[SnortAlert] = []
    sl = SnortListener(tmp_path / "run" / SNORT_SOCKET, alerts.append)
    sl.start()
    yield sl, alerts
    sl.close()


def test_snort_listener_reads_a_real_datagram(
    listener: tuple[SnortListener, list[SnortAlert]],
) -> None:
    sl, alerts = listener
    assert sl.path.stat().st_mode & 0o777 == 0o600
    data = datagram()
    assert len(data) == ALERTPKT_SIZE == 65_864
    send(sl.path, data)
    wait_until(lambda: alerts, 5, "the Snort alert")
    (alert,) = alerts
    assert (alert.sig_id, alert.src_ip, alert.dst_port) == (1_000_001, "10.131.0.2", 80)
    assert sl.malformed == 0


def test_snort_listener_counts_a_wrong_size_datagram(
    listener: tuple[SnortListener, list[SnortAlert]],
) -> None:
    sl, alerts = listener
    send(sl.path, datagram()[:-1])
    send(sl.path, b"short")
    wait_until(lambda: sl.malformed == 2, 5, "two malformed datagrams")
    send(sl.path, datagram())  # and it keeps reading
    wait_until(lambda: alerts, 5, "the Snort alert")
    assert sl.malformed == 2 and len(alerts) == 1


def test_snort_listener_close_removes_its_socket(tmp_path: Path) -> None:
    path = tmp_path / SNORT_SOCKET
    path.write_text("stale")  # a leftover of an earlier run is replaced
    sl = SnortListener(path, lambda a: None)
    sl.start()
    assert path.is_socket()
    started = time.monotonic()
    sl.close()
    assert time.monotonic() - started < 3 and not path.exists()


# ---- HostIds -------------------------------------------------------------------------


def test_host_ids_takes_only_suricata_or_snort(tmp_path: Path) -> None:
    for kind in ("zeek", "", "Snort"):
        with pytest.raises(ValueError, match="say suricata or snort"):
            HostIds(kind, host="h1", post=outcome, run_dir=tmp_path, interface="qlids1")


def test_host_ids_builds_the_listener_of_its_kind(tmp_path: Path) -> None:
    rules = tmp_path / "local.rules"
    rules.write_text("")
    suricata = HostIds(
        "suricata",
        host="h1",
        post=outcome,
        run_dir=tmp_path / "s",
        rule_files=[rules],
        interface="qlids1",
    )
    assert suricata.eve is not None and suricata.suricata is not None and suricata.snort is None
    assert suricata.eve.path == tmp_path / "s" / "eve.sock"
    assert suricata.suricata.interface == "qlids1"
    snort = HostIds("snort", host="h1", post=outcome, run_dir=tmp_path / "n", interface="qlids1")
    assert snort.snort is not None and snort.eve is None and snort.suricata is None
    assert snort.snort.path == tmp_path / "n" / SNORT_SOCKET
    assert not (tmp_path / "n").exists()  # nothing happens before start


def test_host_ids_with_snort_forwards_a_datagram_to_the_controller(tmp_path: Path) -> None:
    poster = Poster()
    ids = HostIds("snort", host="h1", post=poster, run_dir=tmp_path / "ids", interface="qlids1")
    ids.start()
    try:
        assert ids.snort is not None
        send(ids.snort.path, datagram())
        send(ids.snort.path, datagram(val=0x1))  # no IPv4 header: not forwarded
        send(ids.snort.path, datagram(message=b"second"))
        wait_until(lambda: len(poster.posted) == 2, 5, "two alerts posted")
        assert [(p.host, p.source, p.signature_id, p.signature) for p in poster.posted] == [
            ("h1", "snort", 1_000_001, "qingluan test marker"),
            ("h1", "snort", 1_000_001, "second"),
        ]
    finally:
        ids.close()
    assert ids.forwarder.forwarded == 2 and not ids.snort.path.exists()
