"""The collector on a real UDP socket (127.0.0.1, port 0): the captured OVS
datagrams reach the table, garbage is counted and does not stop it."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from qingluan.controller.monitor.collector import SflowCollector
from qingluan.controller.monitor.sflow import Datagram
from qingluan.controller.monitor.traffic import TrafficTable

DATA = Path(__file__).resolve().parents[1] / "data" / "sflow"
WAIT = 10.0


def captured() -> list[bytes]:
    names = [line.split()[0] for line in (DATA / "index.txt").read_text().splitlines()]
    return [(DATA / name).read_bytes() for name in names]


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def sender() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        yield sock
    finally:
        sock.close()


@pytest.fixture
def seen() -> list[Datagram]:
    return []


@pytest.fixture
def collector(seen: list[Datagram]) -> Iterator[SflowCollector]:
    c = SflowCollector(TrafficTable(), host="127.0.0.1", port=0, on_datagram=seen.append)
    c.start()
    try:
        yield c
    finally:
        c.close()


def send_all(sender: socket.socket, port: int, datagrams: list[bytes]) -> None:
    for data in datagrams:
        sender.sendto(data, ("127.0.0.1", port))
        time.sleep(0.001)


def test_captured_datagrams_reach_the_table(collector, sender, seen):
    assert collector.bound_port > 0
    datagrams = captured()
    send_all(sender, collector.bound_port, datagrams)
    wait_for(lambda: collector.datagrams == len(datagrams), "all datagrams")
    stats = collector.table.stats()
    assert (stats["datagrams"], stats["packet_samples"], stats["counter_samples"]) == (54, 266, 18)
    assert stats["lost_datagrams"] == 0
    assert collector.decode_errors == 0
    top = collector.table.top_flows(time.monotonic(), limit=1)[0]
    assert (top.key.ipv4_src, top.key.ipv4_dst, top.key.dst_port) == (
        "10.77.0.1",
        "10.77.0.2",
        5201,
    )
    assert top.bytes == 21145536
    assert collector.table.port_names("10.77.9.1") == {3: "br0", 5: "qlhva", 7: "qlhvb"}
    wait_for(lambda: len(seen) == 54, "the callback for every datagram")
    assert [d.sequence for d in seen] == list(range(1, 55))


def test_garbage_is_counted_and_the_thread_goes_on(collector, sender, seen):
    good = captured()[7]
    garbage = [b"", b"\x00\x00\x00\x05", b"hello sflow", good[:100], b"\x00\x00\x00\x04" + good[4:]]
    send_all(sender, collector.bound_port, garbage)
    wait_for(lambda: collector.decode_errors == len(garbage), "the decode errors")
    assert collector.running
    send_all(sender, collector.bound_port, [good])
    wait_for(lambda: collector.table.stats()["datagrams"] == 1, "a good datagram afterwards")
    assert collector.datagrams == len(garbage) + 1
    stats = collector.stats()
    assert (stats["received"], stats["decode_errors"], stats["datagrams"]) == (6, 5, 1)
    assert seen[0].sequence == 8


def test_a_failing_callback_does_not_stop_the_collector(sender):
    calls: list[int] = []

    def boom(d: Datagram) -> None:
        calls.append(d.sequence)
        raise RuntimeError("callback failed")

    c = SflowCollector(TrafficTable(), host="127.0.0.1", port=0, on_datagram=boom).start()
    try:
        send_all(sender, c.bound_port, captured()[:3])
        wait_for(lambda: len(calls) == 3, "three callbacks")
        assert c.running and c.table.stats()["datagrams"] == 3
        # called directly, the datagram still comes back
        handled = c.handle(captured()[3])
        assert handled is not None and handled.sequence == 4
        assert calls[-1] == 4
        assert c.handle(b"garbage") is None and c.decode_errors == 1
    finally:
        c.close()


def test_close_is_prompt_and_frees_the_port():
    c = SflowCollector(TrafficTable(), host="127.0.0.1", port=0).start()
    port = c.bound_port
    assert c.running
    started = time.monotonic()
    c.close()
    assert time.monotonic() - started < 2.0
    assert not c.running
    assert not any(t.name == "sflow-collector" and t.is_alive() for t in threading.enumerate())
    with pytest.raises(RuntimeError):
        _ = c.bound_port
    again = SflowCollector(TrafficTable(), host="127.0.0.1", port=port).start()
    try:
        assert again.bound_port == port
    finally:
        again.close()
    c.close()  # twice is fine


def test_a_port_in_use_is_an_error_at_start():
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        holder.bind(("127.0.0.1", 0))
        c = SflowCollector(TrafficTable(), host="127.0.0.1", port=holder.getsockname()[1])
        with pytest.raises(OSError):
            c.start()
        assert not c.running
    finally:
        holder.close()
