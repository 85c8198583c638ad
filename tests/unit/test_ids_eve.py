"""EVE JSON alerts: the parser, the newline framer and the unix stream listener."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from qingluan.driver.ids.eve import (
    EveAlert,
    EveError,
    EveListener,
    LineFramer,
    parse_eve_line,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "eve"


def record(name: str) -> bytes:
    return (DATA / name).read_bytes()


def alert_dict(**changes: object) -> dict[str, object]:
    base: dict[str, object] = json.loads(record("alert-icmp.json"))
    base.update(changes)
    return base


def line_of(obj: object) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


# -- parser ---------------------------------------------------------------------------------


def test_real_icmp_alert_record():
    raw = json.loads(record("alert-icmp.json"))
    alert = parse_eve_line(record("alert-icmp.json"))
    assert alert == EveAlert(
        timestamp=raw["timestamp"],
        flow_id=raw["flow_id"],
        in_iface="qlsu-capb",
        src_ip="10.78.0.1",
        src_port=None,
        dest_ip="10.78.0.2",
        dest_port=None,
        proto="ICMP",
        app_proto=None,
        vlan=(),
        signature_id=9000001,
        gid=1,
        rev=1,
        signature="QINGLUAN example: ICMP echo request with the IDS test marker",
        category="Attempted Information Leak",
        severity=1,
        action="allowed",
    )
    assert isinstance(raw["flow_id"], int) and raw["flow_id"] > 0


def test_real_http_alert_record():
    alert = parse_eve_line(record("alert-http.json"))
    assert alert is not None
    assert (alert.src_ip, alert.dest_ip, alert.dest_port) == ("10.78.0.1", "10.78.0.2", 8080)
    assert isinstance(alert.src_port, int)
    assert (alert.proto, alert.app_proto) == ("TCP", "http")
    assert (alert.signature_id, alert.severity) == (9000002, 2)


def test_alert_is_frozen_and_hashable():
    alert = parse_eve_line(record("alert-icmp.json"))
    assert alert is not None
    with pytest.raises(AttributeError):
        alert.severity = 3  # type: ignore[misc]
    assert len({alert, alert}) == 1


@pytest.mark.parametrize("event_type", ["flow", "anomaly", "stats", "http", "dns", "drop"])
def test_other_event_types_are_not_alerts(event_type):
    assert parse_eve_line(line_of({"timestamp": "t", "event_type": event_type})) is None


@pytest.mark.parametrize(
    ("vlan", "expected"), [([100], (100,)), ([100, 200], (100, 200)), (7, (7,)), (None, ())]
)
def test_vlan_list_or_single(vlan, expected):
    obj = alert_dict(vlan=vlan)
    alert = parse_eve_line(line_of(obj))
    assert alert is not None and alert.vlan == expected


def test_optional_fields_missing():
    obj = alert_dict()
    for key in ("flow_id", "in_iface", "app_proto", "vlan"):
        obj.pop(key, None)
    assert isinstance(obj["alert"], dict)
    del obj["alert"]["category"]
    alert = parse_eve_line(line_of(obj))
    assert alert is not None
    assert (alert.flow_id, alert.in_iface, alert.app_proto, alert.vlan) == (None, None, None, ())
    assert alert.category == ""


def test_trailing_newline_and_crlf_accepted():
    raw = record("alert-icmp.json").strip()
    assert parse_eve_line(raw) == parse_eve_line(raw + b"\r\n")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"", "empty"),
        (b"   \n", "empty"),
        (b'{"event_type": "alert", ', "not JSON"),
        (b"\xff\xfe{}", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'"alert"', "not a JSON object"),
        (b'{"timestamp": "t"}', "without event_type"),
        (b'{"event_type": 5}', "without event_type"),
        (b'{"event_type": "alert", "src_ip": "1.2.3.4"}', "without an alert object"),
    ],
)
def test_malformed_records(line, message):
    with pytest.raises(EveError, match=message):
        parse_eve_line(line)


@pytest.mark.parametrize("key", ["timestamp", "src_ip", "dest_ip", "proto"])
def test_alert_missing_required_top_level_field(key):
    obj = alert_dict()
    del obj[key]
    with pytest.raises(EveError, match=f"without {key}"):
        parse_eve_line(line_of(obj))


@pytest.mark.parametrize("key", ["signature_id", "gid", "rev", "signature", "severity", "action"])
def test_alert_missing_required_alert_field(key):
    obj = alert_dict()
    assert isinstance(obj["alert"], dict)
    del obj["alert"][key]
    with pytest.raises(EveError, match=f"without alert.{key}"):
        parse_eve_line(line_of(obj))


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("alert", "signature_id"), "9000001"),
        (("alert", "severity"), True),
        (("alert", "signature"), 5),
        (("src_port",), "80"),
        (("flow_id",), 1.5),
        (("src_ip",), 167772161),
        (("vlan",), ["100"]),
    ],
)
def test_wrong_types_are_errors(path, value):
    obj = alert_dict()
    target: dict[str, object] = obj
    for key in path[:-1]:
        inner = target[key]
        assert isinstance(inner, dict)
        target = inner
    target[path[-1]] = value
    with pytest.raises(EveError):
        parse_eve_line(line_of(obj))


def test_eve_error_is_a_value_error():
    assert issubclass(EveError, ValueError)


# -- framer -----------------------------------------------------------------------------------


def test_framer_record_split_byte_by_byte():
    framer = LineFramer()
    data = b'{"a": 1}\n{"b": 2}\n'
    out: list[bytes] = []
    for i in range(len(data)):
        out += framer.feed(data[i : i + 1])
    assert out == [b'{"a": 1}', b'{"b": 2}']
    assert framer.pending == 0


def test_framer_several_records_per_read_and_partial_tail():
    framer = LineFramer()
    assert framer.feed(b"one\ntwo\nthr") == [b"one", b"two"]
    assert framer.pending == 3
    assert framer.feed(b"ee\n") == [b"three"]


def test_framer_skips_empty_lines_and_strips_cr():
    framer = LineFramer()
    assert framer.feed(b"\n\r\nx\r\n\n\ny\n") == [b"x", b"y"]


def test_framer_oversized_line_in_one_read_is_dropped():
    framer = LineFramer(max_line=10)
    assert framer.feed(b"short\n" + b"x" * 11 + b"\nnext\n") == [b"short", b"next"]
    assert framer.oversized == 1


def test_framer_line_of_exactly_the_cap_is_kept():
    framer = LineFramer(max_line=10)
    assert framer.feed(b"y" * 10 + b"\n") == [b"y" * 10]
    assert framer.oversized == 0


def test_framer_oversized_across_reads_resyncs_at_next_newline():
    framer = LineFramer(max_line=10)
    assert framer.feed(b"ok\n" + b"x" * 8) == [b"ok"]
    assert framer.feed(b"x" * 8) == []  # over the cap: dropped, memory released
    assert framer.pending == 0
    assert framer.oversized == 1
    assert framer.feed(b"x" * 100) == []  # still the same line: not counted again
    assert framer.feed(b"x" * 5 + b"\nafter\n") == [b"after"]
    assert framer.oversized == 1
    assert framer.feed(b"z" * 20 + b"\n") == []
    assert framer.oversized == 2


def test_framer_buffered_part_plus_rest_over_the_cap():
    framer = LineFramer(max_line=10)
    assert framer.feed(b"x" * 6) == []
    assert framer.feed(b"x" * 6 + b"\nok\n") == [b"ok"]
    assert framer.oversized == 1


def test_framer_one_mebibyte_default_cap():
    framer = LineFramer()
    big = b"a" * (1 << 20)
    assert framer.feed(big[:4096]) == []
    assert framer.feed(big[4096:] + b"\n") == [big]
    assert framer.feed(big + b"b\n") == []
    assert framer.oversized == 1


def test_framer_finish_returns_unterminated_rest():
    framer = LineFramer()
    framer.feed(b"done\n{half")
    assert framer.finish() == b"{half"
    assert framer.finish() is None


# -- listener over a real unix socket ---------------------------------------------------


@pytest.fixture
def workdir() -> Iterator[Path]:
    # short: sun_path holds 107 bytes
    path = Path(tempfile.mkdtemp(prefix="qleve-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Collector:
    def __init__(self) -> None:
        self.alerts: list[EveAlert] = []
        self.lock = threading.Lock()

    def __call__(self, alert: EveAlert) -> None:
        with self.lock:
            self.alerts.append(alert)

    def count(self) -> int:
        with self.lock:
            return len(self.alerts)


@pytest.fixture
def listener(workdir: Path) -> Iterator[tuple[EveListener, Collector]]:
    got = Collector()
    lst = EveListener(workdir / "eve.sock", got).start()
    try:
        yield lst, got
    finally:
        lst.close()


def connect(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(str(path))
    return s


def test_listener_socket_mode_and_cleanup(workdir: Path):
    path = workdir / "eve.sock"
    lst = EveListener(path, lambda a: None).start()
    st = path.lstat()
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert not (workdir / "eve.sock~").exists()
    lst.close()
    assert not path.exists()
    with pytest.raises(OSError):
        connect(path)
    lst.close()  # idempotent


def test_listener_records_split_across_sends(listener):
    lst, got = listener
    raw = record("alert-icmp.json")
    with connect(lst.path) as s:
        for i in range(0, len(raw), 37):
            s.sendall(raw[i : i + 37])
            time.sleep(0.005)
        # two records in one send, the second cut in half
        both = raw + record("alert-http.json")
        s.sendall(both[: len(raw) + 100])
        time.sleep(0.05)
        s.sendall(both[len(raw) + 100 :])
        assert wait_for(lambda: got.count() == 3)
    assert [a.signature_id for a in got.alerts] == [9000001, 9000001, 9000002]
    assert lst.stats().alerts == 3


def test_listener_counts_other_and_malformed_records(listener):
    lst, got = listener
    with connect(lst.path) as s:
        s.sendall(line_of({"timestamp": "t", "event_type": "flow"}))
        s.sendall(line_of({"timestamp": "t", "event_type": "stats"}))
        s.sendall(b"this is not json\n")
        s.sendall(line_of({"event_type": "alert", "src_ip": "10.0.0.1"}))
        s.sendall(record("alert-icmp.json"))
        assert wait_for(lambda: got.count() == 1)
    stats = lst.stats()
    assert (stats.alerts, stats.other_records, stats.malformed) == (1, 2, 2)


def test_listener_drops_oversized_records_and_resyncs(workdir: Path):
    got = Collector()
    with EveListener(workdir / "eve.sock", got, max_record=2048) as lst, connect(lst.path) as s:
        s.sendall(b'{"event_type": "alert", "pad": "' + b"x" * 100_000)
        s.sendall(b'"}\n' + record("alert-icmp.json"))
        assert wait_for(lambda: got.count() == 1)
        assert lst.oversized == 1
        assert lst.malformed == 0


def test_listener_truncated_record_at_disconnect_is_malformed(listener):
    lst, got = listener
    with connect(lst.path) as s:
        s.sendall(record("alert-icmp.json") + record("alert-icmp.json")[:50])
    assert wait_for(lambda: lst.malformed == 1)
    assert got.count() == 1


def test_listener_accepts_reconnections(listener):
    lst, got = listener
    for n in range(1, 4):
        with connect(lst.path) as s:
            s.sendall(record("alert-icmp.json"))
            assert wait_for(lambda n=n: got.count() == n)
        assert wait_for(lambda: lst.stats().active_connections == 0)
    assert lst.connections == 3


def test_listener_reads_concurrent_connections(listener):
    lst, got = listener
    with connect(lst.path) as a, connect(lst.path) as b:
        a.sendall(record("alert-icmp.json")[:100])
        b.sendall(record("alert-http.json"))
        a.sendall(record("alert-icmp.json")[100:])
        assert wait_for(lambda: got.count() == 2)
        assert lst.stats().active_connections == 2
    assert sorted(x.signature_id for x in got.alerts) == [9000001, 9000002]


def test_wait_connected(listener):
    lst, _ = listener
    assert not lst.wait_connected(0.05)
    with connect(lst.path):
        assert lst.wait_connected(2.0)
        assert not lst.wait_connected(0.05, after=1)


def test_callback_exception_does_not_kill_the_listener(workdir: Path):
    seen: list[int] = []

    def flaky(alert: EveAlert) -> None:
        seen.append(alert.signature_id)
        if len(seen) == 1:
            raise RuntimeError("boom")

    with EveListener(workdir / "eve.sock", flaky) as lst, connect(lst.path) as s:
        s.sendall(record("alert-icmp.json"))
        s.sendall(record("alert-http.json"))
        assert wait_for(lambda: len(seen) == 2)
        assert lst.callback_errors == 1
        assert lst.alerts == 2


def test_stale_socket_file_is_replaced(workdir: Path):
    path = workdir / "eve.sock"
    old = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old.bind(str(path))
    old.close()  # the file stays: nobody listens
    got = Collector()
    with EveListener(path, got) as lst, connect(path) as s:
        s.sendall(record("alert-icmp.json"))
        assert wait_for(lambda: got.count() == 1)
        assert lst.connections == 1


def test_a_live_listener_is_not_replaced(listener):
    lst, _ = listener
    with pytest.raises(OSError, match="another process listens"):
        EveListener(lst.path, lambda a: None).start()
    assert lst.path.exists()


def test_a_regular_file_is_not_replaced(workdir: Path):
    path = workdir / "eve.sock"
    path.write_text("keep me")
    with pytest.raises(FileExistsError, match="not a socket"):
        EveListener(path, lambda a: None).start()
    assert path.read_text() == "keep me"


def test_relative_or_too_long_paths_are_refused(workdir: Path):
    with pytest.raises(ValueError, match="absolute"):
        EveListener(Path("eve.sock"), lambda a: None).start()
    with pytest.raises(ValueError, match="longer than"):
        EveListener(workdir / ("x" * 120), lambda a: None).start()


def test_close_is_prompt_with_a_client_connected(workdir: Path):
    path = workdir / "eve.sock"
    lst = EveListener(path, lambda a: None).start()
    with connect(path) as s:
        s.sendall(b'{"partial": ')
        assert lst.wait_connected(2.0)
        t0 = time.monotonic()
        lst.close()
        assert time.monotonic() - t0 < 1.0
        # the listener closed its end (a reset, as it left our bytes unread)
        with contextlib.suppress(ConnectionResetError):
            assert s.recv(10) == b""
    assert not path.exists()


def test_close_leaves_a_newer_listeners_socket_alone(workdir: Path):
    path = workdir / "eve.sock"
    first = EveListener(path, lambda a: None).start()
    # simulate a successor that took over the path
    os.unlink(path)
    second = EveListener(path, lambda a: None).start()
    try:
        first.close()
        assert path.exists()
        with connect(path):
            assert second.wait_connected(2.0)
    finally:
        second.close()
    assert not path.exists()
