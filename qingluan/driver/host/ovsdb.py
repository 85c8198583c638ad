"""A small native OVSDB client (RFC 7047 JSON-RPC) for the per-endpoint port changes.

Adding or removing an endpoint's port is on the critical path of ``docker
run``; an ``ovs-vsctl`` process costs 7-20 ms each (start-up, then it reads
every table it might need), three of them per attach. This client opens the
database socket itself, sends one ``transact`` with exactly the operations
needed and waits for ovs-vswitchd with OVSDB's own ``wait`` operation.

Every call opens its own connection (a unix socket connect is ~0.1 ms), so the
driver's worker threads never share one. The rest of the driver's OVS work
(bridge set-up, tunnels, export settings: once at start or every few seconds)
stays with ``ovs-vsctl``.

The operation builders are pure and tested on their own; :class:`Ovsdb` only
moves JSON over the socket.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from qingluan.driver.host.commands import HostError

DB = "Open_vSwitch"
DEFAULT_RUNDIR = "/var/run/openvswitch"

Op = dict[str, Any]


class OvsdbError(HostError):
    """The database refused a transaction or could not be reached."""


# ---- data ---------------------------------------------------------------------------


def decode(value: Any) -> Any:
    """An OVSDB JSON datum as Python: maps -> dict, sets -> list, uuids -> str."""
    if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
        kind, data = value
        if kind == "map":
            return {k: decode(v) for k, v in data}
        if kind == "set":
            return [decode(v) for v in data]
        if kind in ("uuid", "named-uuid"):
            return data
    return value


def as_list(value: Any) -> list[Any]:
    """A decoded set column: OVSDB sends a one-element set as the bare atom."""
    return value if isinstance(value, list) else [value]


def optional(value: Any) -> Any:
    """A decoded optional column (a set of at most one): the value or None."""
    items = as_list(value)
    return items[0] if items else None


def ovs_map(values: Mapping[str, str]) -> list[Any]:
    return ["map", [[k, v] for k, v in sorted(values.items())]]


def uuid_set(uuids: Sequence[str]) -> list[Any]:
    return ["set", [["uuid", u] for u in uuids]]


def by_name(name: str) -> list[list[str]]:
    return [["name", "==", name]]


# ---- operations (pure) --------------------------------------------------------------


def select(table: str, where: list[Any], columns: Sequence[str]) -> Op:
    return {"op": "select", "table": table, "where": where, "columns": list(columns)}


def lookup_port_ops(bridge: str, port: str) -> list[Op]:
    """Read what adding ``port`` to ``bridge`` depends on: the bridges' ports (to name
    the bridge that may already hold a port of that name), the port, its interface."""
    return [
        select("Bridge", [], ["name", "ports"]),
        select("Port", by_name(port), ["_uuid"]),
        select("Interface", by_name(port), ["_uuid"]),
    ]


def insert_port_ops(bridge: str, port: str, external_ids: Mapping[str, str]) -> list[Op]:
    """A new Port with one Interface of the same name on ``bridge``: what
    ``ovs-vsctl add-port BRIDGE PORT -- set interface PORT external_ids:...`` writes.
    The first operation makes the transaction fail if the bridge vanished meanwhile
    (a mutation of no row would otherwise leave the new rows unreferenced)."""
    return [
        {
            "op": "wait",
            "timeout": 0,
            "table": "Bridge",
            "where": by_name(bridge),
            "columns": ["name"],
            "until": "==",
            "rows": [{"name": bridge}],
        },
        {
            "op": "insert",
            "table": "Interface",
            "row": {"name": port, "external_ids": ovs_map(external_ids)},
            "uuid-name": "iface",
        },
        {
            "op": "insert",
            "table": "Port",
            "row": {"name": port, "interfaces": ["named-uuid", "iface"]},
            "uuid-name": "port",
        },
        {
            "op": "mutate",
            "table": "Bridge",
            "where": by_name(bridge),
            "mutations": [["ports", "insert", ["set", [["named-uuid", "port"]]]]],
        },
    ]


def set_external_ids_ops(iface_uuid: str, external_ids: Mapping[str, str]) -> list[Op]:
    """Set these keys of an interface's external_ids, keeping the others (``set
    interface X external_ids:k=v``): delete the keys, then insert them."""
    if not external_ids:
        return []
    where = [["_uuid", "==", ["uuid", iface_uuid]]]
    return [
        {
            "op": "mutate",
            "table": "Interface",
            "where": where,
            "mutations": [["external_ids", "delete", ["set", sorted(external_ids)]]],
        },
        {
            "op": "mutate",
            "table": "Interface",
            "where": where,
            "mutations": [["external_ids", "insert", ovs_map(external_ids)]],
        },
    ]


def await_ofport_ops(port: str, timeout_ms: int) -> list[Op]:
    """Hold the transaction until ovs-vswitchd gave the interface an ofport (-1 when it
    could not open the device), then read it with the error and the interface index."""
    return [
        {
            "op": "wait",
            "timeout": timeout_ms,
            "table": "Interface",
            "where": by_name(port),
            "columns": ["ofport"],
            "until": "!=",
            "rows": [{"ofport": ["set", []]}],
        },
        select("Interface", by_name(port), ["ofport", "error", "ifindex"]),
    ]


def remove_port_ops(bridge: str, port_uuid: str, *, bump_cfg: bool) -> list[Op]:
    """Take the port off ``bridge`` only (a port of another bridge is left alone:
    the mutation then changes nothing). The Port and Interface rows are not root
    rows, so OVSDB drops them once unreferenced. ``bump_cfg``: also ask
    ovs-vswitchd to report when it applied this (``next_cfg``), and read it back."""
    ops: list[Op] = [
        {
            "op": "mutate",
            "table": "Bridge",
            "where": by_name(bridge),
            "mutations": [["ports", "delete", uuid_set([port_uuid])]],
        }
    ]
    if bump_cfg:
        ops += [
            {"op": "mutate", "table": DB, "where": [], "mutations": [["next_cfg", "+=", 1]]},
            select(DB, [], ["next_cfg"]),
        ]
    return ops


# ---- transport ----------------------------------------------------------------------


def socket_address(target: str | None) -> tuple[int, Any]:
    """(address family, address) of an OVSDB target: ``unix:PATH``, ``tcp:IP:PORT``, or
    None for ovs-vsctl's default (``$OVS_RUNDIR/db.sock``)."""
    if target is None:
        rundir = os.environ.get("OVS_RUNDIR", DEFAULT_RUNDIR)
        return socket.AF_UNIX, str(Path(rundir) / "db.sock")
    kind, _, rest = target.partition(":")
    if kind == "unix" and rest:
        return socket.AF_UNIX, rest
    if kind == "tcp":
        host, _, port = rest.rpartition(":")
        if host and port.isdigit():
            return socket.AF_INET6 if ":" in host else socket.AF_INET, (host.strip("[]"), int(port))
    raise OvsdbError(f"OVSDB target {target!r}: use unix:PATH or tcp:IP:PORT")


def check_results(results: list[Any], ops: Sequence[Op]) -> list[dict[str, Any]]:
    """The per-operation results, or the first error as an :class:`OvsdbError`."""
    for i, result in enumerate(results):
        if isinstance(result, dict) and result.get("error"):
            what = ops[i]["op"] + " " + ops[i].get("table", "") if i < len(ops) else "commit"
            details = result.get("details")
            raise OvsdbError(
                f"OVSDB {what.strip()}: {result['error']}" + (f" ({details})" if details else "")
            )
    return [r if isinstance(r, dict) else {} for r in results]


class Ovsdb:
    """Transactions on one OVSDB server; thread-safe (one connection per call)."""

    def __init__(self, target: str | None = None, *, timeout: float = 10.0) -> None:
        self.family, self.address = socket_address(target)
        self.timeout = timeout
        self._ids = itertools.count(1)

    def transact(self, ops: Sequence[Op], *, timeout: float | None = None) -> list[dict[str, Any]]:
        if not ops:
            return []
        reply = self._call("transact", [DB, *ops], timeout or self.timeout)
        return check_results(reply, ops)

    def _call(self, method: str, params: list[Any], timeout: float) -> Any:
        request_id = next(self._ids)
        try:
            with socket.socket(self.family, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(self.address)
                request = {"method": method, "params": params, "id": request_id}
                sock.sendall(json.dumps(request).encode())
                reader = _Reader(sock)
                while True:
                    msg = reader.next()
                    if msg.get("method") == "echo":  # the server's keep-alive probe
                        answer = {"result": msg.get("params", []), "error": None, "id": msg["id"]}
                        sock.sendall(json.dumps(answer).encode())
                        continue
                    if msg.get("id") != request_id:
                        continue
                    if msg.get("error") is not None:
                        raise OvsdbError(f"OVSDB {method}: {msg['error']}")
                    return msg.get("result")
        except (OSError, ValueError) as exc:
            raise OvsdbError(f"OVSDB at {self._where()}: {exc}") from None

    def _where(self) -> str:
        if self.family == socket.AF_UNIX:
            return f"unix:{self.address}"
        return f"tcp:{self.address[0]}:{self.address[1]}"

    # ---- ports ----

    def port_names(self, bridge: str) -> list[str]:
        """The bridge's ports but its own local port (as ``ovs-vsctl list-ports``)."""
        bridge_row, ports = self.transact(
            [
                select("Bridge", by_name(bridge), ["ports"]),
                select("Port", [], ["_uuid", "name"]),
            ]
        )
        rows = bridge_row.get("rows", [])
        if not rows:
            raise OvsdbError(f"Open vSwitch has no bridge named {bridge}")
        mine = set(as_list(decode(rows[0]["ports"])))
        return sorted(
            r["name"]
            for r in ports.get("rows", [])
            if decode(r["_uuid"]) in mine and r["name"] != bridge
        )

    def add_port(
        self, bridge: str, port: str, external_ids: Mapping[str, str]
    ) -> tuple[int, str | None, int | None]:
        """Create ``port`` on ``bridge`` or reuse it there (``--may-exist``) and set these
        external_ids; return (ofport, error, ifindex) once ovs-vswitchd has opened it
        (ifindex None: not reported yet, or 0: a device without one)."""
        bridge_rows, port_row, iface_row = self.transact(lookup_port_ops(bridge, port))
        holders = {r["name"]: set(as_list(decode(r["ports"]))) for r in bridge_rows.get("rows", [])}
        if bridge not in holders:
            raise OvsdbError(f"Open vSwitch has no bridge named {bridge}")
        ports = port_row.get("rows", [])
        if ports:
            uuid = decode(ports[0]["_uuid"])
            if uuid not in holders[bridge]:
                other = next((b for b, p in holders.items() if uuid in p), "none")
                raise OvsdbError(
                    f"cannot add port {port} to bridge {bridge}: "
                    f"it is actually attached to bridge {other}"
                )
            ifaces = iface_row.get("rows", [])
            if ifaces:
                self.transact(set_external_ids_ops(decode(ifaces[0]["_uuid"]), external_ids))
        else:
            self.transact(insert_port_ops(bridge, port, external_ids))
        timeout_ms = int(self.timeout * 1000)
        results = self.transact(await_ofport_ops(port, timeout_ms), timeout=self.timeout + 5)
        rows = results[1].get("rows", [])
        if not rows:
            raise OvsdbError(f"port {port} vanished from bridge {bridge}")
        ofport = optional(decode(rows[0]["ofport"]))
        error = optional(decode(rows[0]["error"]))
        ifindex = optional(decode(rows[0]["ifindex"]))
        return (-1 if ofport is None else int(ofport)), error, int(ifindex or 0) or None

    def port_uuid(self, bridge: str, port: str) -> str | None:
        """The Port row of ``port`` if it is on ``bridge`` (None: absent, or elsewhere). Reads
        only that port and that bridge, not every port of the database."""
        port_row, bridge_row = self.transact(
            [select("Port", by_name(port), ["_uuid"]), select("Bridge", by_name(bridge), ["ports"])]
        )
        ports, bridges = port_row.get("rows", []), bridge_row.get("rows", [])
        if not ports or not bridges:
            return None
        uuid: str = decode(ports[0]["_uuid"])
        return uuid if uuid in as_list(decode(bridges[0]["ports"])) else None

    def del_port(self, bridge: str, port: str, *, wait: bool = False) -> bool:
        """Take ``port`` off ``bridge`` if it is there; True if it was. ``wait``: return
        only once ovs-vswitchd applied it (needed before a port of the same name is
        added again: until then ovs-vswitchd still holds the old device)."""
        uuid = self.port_uuid(bridge, port)
        if uuid is None:
            return False
        results = self.transact(remove_port_ops(bridge, uuid, bump_cfg=wait))
        removed = bool(results[0].get("count"))
        if wait and removed:
            self._await_cfg(int(results[2]["rows"][0]["next_cfg"]))
        return removed

    def _await_cfg(self, next_cfg: int) -> None:
        """Until ovs-vswitchd's ``cur_cfg`` reached ``next_cfg`` (bounded by the timeout)."""
        deadline = time.monotonic() + self.timeout
        pause = 0.001
        while True:
            (row,) = self.transact([select(DB, [], ["cur_cfg"])])
            if int(row["rows"][0]["cur_cfg"]) >= next_cfg:
                return
            if time.monotonic() > deadline:
                raise OvsdbError(
                    f"ovs-vswitchd did not apply the change in {self.timeout:.0f} s "
                    "(is ovs-vswitchd running?)"
                )
            time.sleep(pause)
            pause = min(pause * 2, 0.02)


class _Reader:
    """Whole JSON values from a stream socket (OVSDB sends them back to back)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = b""
        self._decoder = json.JSONDecoder()

    def next(self) -> dict[str, Any]:
        while True:
            text = self._buf.lstrip()
            if text:
                try:
                    decoded = text.decode()
                    value, end = self._decoder.raw_decode(decoded)
                except ValueError:  # also UnicodeDecodeError: incomplete, read on
                    pass
                else:
                    self._buf = decoded[end:].encode()
                    if not isinstance(value, dict):
                        raise ValueError(f"not a JSON-RPC message: {value!r}")
                    return value
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ConnectionError("the OVSDB server closed the connection")
            self._buf += chunk
