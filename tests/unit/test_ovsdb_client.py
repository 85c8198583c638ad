"""The native OVSDB client: target parsing, JSON-RPC framing over a real socket pair,
and its port operations against a real, throwaway ovsdb-server. There is no
ovs-vswitchd here: where the client waits for it (an ofport, ``cur_cfg``), the test
writes those columns itself from another thread, as ovs-vswitchd would; the
end-to-end behaviour with ovs-vswitchd is in tests/integration/test_host_plumbing.py."""

from __future__ import annotations

import json
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qingluan.driver.host.ovsdb import (
    Ovsdb,
    OvsdbError,
    _Reader,
    check_results,
    insert_port_ops,
    set_external_ids_ops,
    socket_address,
)
from tests.support.ovsdb_server import OvsdbServer, ovsdb_server

# ---- targets and results (pure) --------------------------------------------------------


def test_targets() -> None:
    assert socket_address("unix:/run/ovs/db.sock") == (socket.AF_UNIX, "/run/ovs/db.sock")
    assert socket_address("tcp:10.0.0.1:6640") == (socket.AF_INET, ("10.0.0.1", 6640))
    assert socket_address("tcp:[fd00::1]:6640") == (socket.AF_INET6, ("fd00::1", 6640))


def test_default_target_follows_ovs_rundir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OVS_RUNDIR", raising=False)
    assert socket_address(None) == (socket.AF_UNIX, "/var/run/openvswitch/db.sock")
    monkeypatch.setenv("OVS_RUNDIR", "/tmp/x")
    assert socket_address(None) == (socket.AF_UNIX, "/tmp/x/db.sock")


@pytest.mark.parametrize("target", ["ssl:1.2.3.4:6640", "unix:", "tcp:nohost", "db.sock"])
def test_unusable_targets_are_named(target: str) -> None:
    with pytest.raises(OvsdbError, match="use unix:PATH or tcp:IP:PORT") as err:
        Ovsdb(target)
    assert repr(target) in str(err.value)


def test_the_first_failed_operation_is_reported() -> None:
    ops = [{"op": "select", "table": "Port"}, {"op": "insert", "table": "Port"}]
    results = [{"rows": []}, {"error": "constraint violation", "details": "name not unique"}]
    with pytest.raises(OvsdbError, match=r"insert Port: constraint violation \(name not"):
        check_results(results, ops)
    with pytest.raises(OvsdbError, match="commit: referential integrity violation"):
        check_results([{}, {}, {"error": "referential integrity violation"}], ops)


def test_no_external_ids_means_no_operation() -> None:
    assert set_external_ids_ops("6b4a", {}) == []


def test_an_insert_is_guarded_by_the_bridge() -> None:
    first = insert_port_ops("br-ql", "qlv1", {"a": "b"})[0]
    assert first["op"] == "wait" and first["where"] == [["name", "==", "br-ql"]]


# ---- framing over a real socket pair -----------------------------------------------------


def test_messages_back_to_back_and_split_across_reads() -> None:
    a, b = socket.socketpair()
    with a, b:
        # a two-byte character, cut in the middle below
        one = json.dumps({"id": 1, "result": ["ö"]}, ensure_ascii=False).encode()
        two = json.dumps({"id": 2, "result": []}).encode()
        cut = one.index("ö".encode()) + 1  # inside the character
        reader = _Reader(b)
        a.sendall(one[:cut])

        def rest() -> None:
            time.sleep(0.05)
            a.sendall(one[cut:] + b"\n" + two)

        threading.Thread(target=rest, daemon=True).start()
        b.settimeout(5)
        assert reader.next() == {"id": 1, "result": ["ö"]}
        assert reader.next() == {"id": 2, "result": []}


def test_a_closed_connection_is_an_error() -> None:
    a, b = socket.socketpair()
    with b:
        a.sendall(b'{"id": 1, "res')
        a.close()
        b.settimeout(5)
        with pytest.raises(ConnectionError, match="closed the connection"):
            _Reader(b).next()


@pytest.fixture
def fake_server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A unix socket that probes with ``echo`` first, then answers the transaction;
    yields its target and what it received."""
    root = Path(tempfile.mkdtemp(prefix="qlt-rpc-"))
    path = root / "s"
    received: list[dict[str, Any]] = []
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)
    srv.settimeout(5)

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(5)
            reader = _Reader(conn)
            request = reader.next()
            received.append(request)
            conn.sendall(json.dumps({"method": "echo", "params": ["x"], "id": "echo"}).encode())
            received.append(reader.next())  # the echo's answer
            reply = {"id": request["id"], "result": [{"rows": [{"name": "br0"}]}], "error": None}
            conn.sendall(json.dumps(reply).encode())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"unix:{path}", received
    finally:
        thread.join(5)
        srv.close()
        path.unlink(missing_ok=True)
        root.rmdir()


def test_the_servers_echo_is_answered(fake_server: tuple[str, list[dict[str, Any]]]) -> None:
    target, received = fake_server
    ops = [{"op": "select", "table": "Bridge", "where": [], "columns": ["name"]}]
    assert Ovsdb(target, timeout=5).transact(ops) == [{"rows": [{"name": "br0"}]}]
    request, echo = received
    assert request["method"] == "transact" and request["params"] == ["Open_vSwitch", *ops]
    assert echo == {"result": ["x"], "error": None, "id": "echo"}


def test_an_absent_server_is_named() -> None:
    with pytest.raises(OvsdbError, match=r"OVSDB at unix:/nonexistent/db\.sock"):
        Ovsdb("unix:/nonexistent/db.sock", timeout=1).port_names("br0")


# ---- against a real ovsdb-server ------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[OvsdbServer]:
    with ovsdb_server("br0") as srv:
        yield srv


def as_vswitchd(server: OvsdbServer, *args: str, after: float = 0.2) -> threading.Thread:
    """Write a column from another thread a little later, as ovs-vswitchd would."""

    def write() -> None:
        time.sleep(after)
        server.vsctl(*args)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def iface(server: OvsdbServer, name: str, column: str) -> str:
    return server.vsctl("get", "interface", name, column).strip()


def test_add_port_waits_for_the_ofport(server: OvsdbServer) -> None:
    db = Ovsdb(server.target, timeout=5)
    writer = as_vswitchd(server, "set", "interface", "qlv1", "ofport=7", "ifindex=42")
    started = time.monotonic()
    assert db.add_port("br0", "qlv1", {"qingluan-owner": "qingluan"}) == (7, None, 42)
    assert time.monotonic() - started >= 0.2  # it did wait for "ovs-vswitchd"
    writer.join(5)
    assert db.port_names("br0") == ["qlv1"]  # the bridge's own port is left out
    assert iface(server, "qlv1", "external_ids") == "{qingluan-owner=qingluan}"


def test_a_device_ovs_cannot_open_is_reported(server: OvsdbServer) -> None:
    db = Ovsdb(server.target, timeout=5)
    as_vswitchd(server, "set", "interface", "qlv1", "ofport=-1", 'error="no such device"')
    assert db.add_port("br0", "qlv1", {}) == (-1, "no such device", None)


def test_add_port_times_out_without_ovs_vswitchd(server: OvsdbServer) -> None:
    with pytest.raises(OvsdbError, match="wait Interface: timed out"):
        Ovsdb(server.target, timeout=1).add_port("br0", "qlv1", {})


def test_an_existing_port_keeps_its_other_external_ids(server: OvsdbServer) -> None:
    server.vsctl("add-port", "br0", "qlv1", "--", "set", "interface", "qlv1", "ofport=3",
                 "external_ids:keep=me", "external_ids:qingluan-network=old")  # fmt: skip
    db = Ovsdb(server.target, timeout=5)
    assert db.add_port("br0", "qlv1", {"qingluan-network": "new"}) == (3, None, None)
    assert iface(server, "qlv1", "external_ids") == "{keep=me, qingluan-network=new}"
    assert db.port_names("br0") == ["qlv1"]  # still one port


def test_a_port_of_another_bridge_is_refused_and_left_alone(server: OvsdbServer) -> None:
    server.vsctl("add-br", "br1", "--", "add-port", "br1", "qlv1")
    db = Ovsdb(server.target, timeout=5)
    with pytest.raises(OvsdbError, match=r"qlv1 .*actually attached to bridge br1"):
        db.add_port("br0", "qlv1", {})
    assert db.port_names("br1") == ["qlv1"] and db.port_names("br0") == []
    assert db.port_uuid("br0", "qlv1") is None and db.port_uuid("br1", "qlv1") is not None
    assert db.del_port("br0", "qlv1") is False
    assert db.port_names("br1") == ["qlv1"]


def test_a_missing_bridge_is_named(server: OvsdbServer) -> None:
    db = Ovsdb(server.target, timeout=5)
    with pytest.raises(OvsdbError, match="no bridge named br9"):
        db.add_port("br9", "qlv1", {})
    with pytest.raises(OvsdbError, match="no bridge named br9"):
        db.port_names("br9")
    assert "qlv1" not in server.vsctl("--columns=name", "list", "interface")


def test_del_port_removes_the_rows(server: OvsdbServer) -> None:
    server.vsctl("add-port", "br0", "qlv1", "--", "add-port", "br0", "qlv2")
    db = Ovsdb(server.target, timeout=5)
    assert db.del_port("br0", "qlv1") is True
    assert db.port_names("br0") == ["qlv2"]
    assert "qlv1" not in server.vsctl("--columns=name", "list", "interface")  # collected
    assert db.del_port("br0", "qlv1") is False  # absent: nothing to do


def test_del_port_with_wait_returns_once_cur_cfg_caught_up(server: OvsdbServer) -> None:
    server.vsctl("add-port", "br0", "qlv1")
    before = int(server.vsctl("get", "Open_vSwitch", ".", "next_cfg"))
    writer = as_vswitchd(server, "set", "Open_vSwitch", ".", f"cur_cfg={before + 1}", after=0.3)
    started = time.monotonic()
    assert Ovsdb(server.target, timeout=5).del_port("br0", "qlv1", wait=True) is True
    assert time.monotonic() - started >= 0.3
    writer.join(5)


def test_del_port_with_wait_gives_up_on_time(server: OvsdbServer) -> None:
    server.vsctl("add-port", "br0", "qlv1")
    with pytest.raises(OvsdbError, match="did not apply the change in 1 s"):
        Ovsdb(server.target, timeout=1).del_port("br0", "qlv1", wait=True)
