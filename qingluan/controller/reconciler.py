"""Make each bridge hold exactly its desired flows and groups, sending only the difference.

The reconciler is the only thing that talks to switches. The os-ken app
(``qingluan.controller.app``) tells it about connections, ports and replies;
everything it sends goes through a ``Switch`` as ``ofvocab`` request values.

``converge(host)`` (see docs/architecture.md, "Reconciliation"):

1. compute the desired ``BridgeState`` from the host's networks, endpoints
   and the ports the switch reports (after waiting for ``require_ports``);
2. dump what the switch holds (flow stats + group descriptions);
3. diff by ``Flow.key`` / group id and send, in this order: group adds and
   modifies, barrier; flow deletes (strict, by table+priority+match and the
   flow's own cookie), flow adds (an ADD also replaces a flow with the same
   key whose actions or cookie differ), barrier; group deletes, barrier.

A flow that is already right is never sent, so a controller restart sends
nothing to a bridge that is right and its counters keep running. A phase
with nothing to send sends no barrier either.

Threads: the app's handlers call the ``switch_*`` / ``*_reply`` methods from
os-ken's event loop; they only record and notify and never wait, because
every reply is delivered by that same loop. Everything that waits for a
switch runs in the caller's thread (``converge``, ``dump``) or in the
reconciler's own workers (the converge on connect, after a port change, and
the periodic resync of every connected bridge).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from qingluan.api_schema import FlowDump, ReconcileResult
from qingluan.controller import ofvocab
from qingluan.controller.interfaces import Converger, StateSource
from qingluan.controller.ofvocab import (
    Barrier,
    FlowAdd,
    FlowDelete,
    FlowStatsRequest,
    GroupAdd,
    GroupDelete,
    GroupDescRequest,
    GroupModify,
    MeterAdd,
    MeterConfigRequest,
    MeterDelete,
    MeterModify,
    PortCounters,
    PortReason,
    PortStatsRequest,
    Request,
    SwitchFlow,
    SwitchGroup,
    SwitchMeter,
)
from qingluan.controller.pipeline.acl import Policy
from qingluan.controller.pipeline.bridge import Peer
from qingluan.controller.pipeline.flow import BridgeState, Flow, Group
from qingluan.errors import NotFound, QingluanError, Timeout, Unavailable
from qingluan.model import Endpoint, Host, Network

log = logging.getLogger(__name__)

ComputeFn = Callable[
    [Sequence[Network], Sequence[Endpoint], Mapping[str, int], Sequence[Peer], Policy | None],
    BridgeState,
]
FlowKey = tuple[int, int, tuple[tuple[str, object], ...]]

MAX_XID = 0xFFFF_FFFF
# Converges that may diff against the state the last converge confirmed (a change made
# through the REST API, a port that came or went). Connect, the periodic resync and an
# explicit verify read every flow and group back from the switch.
TRUSTING = frozenset({"request", "port"})


class SwitchRejected(QingluanError):
    """The switch refused a flow or group mod: the pipeline built something it cannot take."""


class Switch(Protocol):
    """One OpenFlow connection, as the app hands it to the reconciler."""

    @property
    def dpid(self) -> int: ...

    def send(self, request: Request, xid: int) -> None:
        """Queue one request with this xid; ``Unavailable`` if the connection is gone."""


@dataclass(frozen=True)
class Plan:
    """What one converge sends, phase by phase (each phase ends with a barrier)."""

    group_writes: tuple[GroupAdd | GroupModify, ...] = ()
    flow_deletes: tuple[FlowDelete, ...] = ()
    flow_adds: tuple[FlowAdd, ...] = ()
    group_deletes: tuple[GroupDelete, ...] = ()
    flows_replaced: int = 0  # adds that replace a flow with the same key
    undeletable: tuple[str, ...] = ()  # switch flows whose match we cannot say
    meter_writes: tuple[MeterAdd | MeterModify, ...] = ()
    meter_deletes: tuple[MeterDelete, ...] = ()

    def phases(self) -> list[list[Request]]:
        """Groups and meters first, then new and changed flows, and only then the flows
        that go: a packet meets the old rule set or the new one, never a half-emptied
        one. Groups and meters go last, when no flow points at them any more."""
        return [
            [*self.group_writes, *self.meter_writes],
            list(self.flow_adds),
            list(self.flow_deletes),
            [*self.group_deletes, *self.meter_deletes],
        ]

    @property
    def empty(self) -> bool:
        return not any(self.phases())


def plan(
    desired: BridgeState,
    flows: Iterable[SwitchFlow],
    groups: Iterable[SwitchGroup],
    meters: Iterable[SwitchMeter] = (),
) -> Plan:
    """The difference between a normalized desired state and what a switch reported."""
    want_flows = desired.flows_by_key()
    have_flows = {entry.flow.key: entry for entry in flows}
    deletes: list[FlowDelete] = []
    undeletable: list[str] = []
    for key, entry in have_flows.items():
        if key in want_flows:
            continue
        if entry.match_understood:
            deletes.append(FlowDelete(entry.flow))
        else:
            undeletable.append(ofvocab.render_switch_flow(entry))
    adds: list[FlowAdd] = []
    replaced = 0
    for key, flow in want_flows.items():
        have = have_flows.get(key)
        if have is not None and have.exact and have.flow == flow:
            continue
        replaced += have is not None
        adds.append(FlowAdd(flow))

    want_groups = desired.groups_by_id()
    have_groups = {entry.group.group_id: entry for entry in groups}
    writes: list[GroupAdd | GroupModify] = []
    for gid, group in want_groups.items():
        have_group = have_groups.get(gid)
        if have_group is None:
            writes.append(GroupAdd(group))
        elif not have_group.exact or have_group.group != group:
            writes.append(GroupModify(group))
    group_deletes = [GroupDelete(gid) for gid in have_groups if gid not in want_groups]

    def flow_order(req: FlowAdd | FlowDelete) -> tuple[int, int]:
        return (req.flow.table, -req.flow.priority)

    want_meters = {m.meter_id: m for m in desired.meters}
    have_meters = {entry.meter.meter_id: entry for entry in meters}
    meter_writes: list[MeterAdd | MeterModify] = []
    for mid, meter in sorted(want_meters.items()):
        have_meter = have_meters.get(mid)
        if have_meter is None:
            meter_writes.append(MeterAdd(meter))
        elif not have_meter.exact or have_meter.meter != meter:
            meter_writes.append(MeterModify(meter))
    meter_deletes = [MeterDelete(mid) for mid in sorted(have_meters) if mid not in want_meters]

    return Plan(
        meter_writes=tuple(meter_writes),
        meter_deletes=tuple(meter_deletes),
        group_writes=tuple(sorted(writes, key=lambda r: r.group.group_id)),
        flow_deletes=tuple(sorted(deletes, key=flow_order)),
        flow_adds=tuple(sorted(adds, key=flow_order)),
        group_deletes=tuple(sorted(group_deletes, key=lambda r: r.group_id)),
        flows_replaced=replaced,
        undeletable=tuple(undeletable),
    )


def normalized_state(state: BridgeState) -> BridgeState:
    """The desired state as the switch will report it; refuses two flows with one key."""
    try:
        flows = [ofvocab.normalize_flow(f) for f in state.flows]
        groups = [ofvocab.normalize_group(g) for g in state.groups]
    except ValueError as exc:
        raise QingluanError(f"the pipeline built a flow OpenFlow cannot carry: {exc}") from exc
    seen: dict[FlowKey, Flow] = {}
    for flow in flows:
        other = seen.setdefault(flow.key, flow)
        if other is not flow and other != flow:
            raise QingluanError(
                "the pipeline built two different flows with one identity: "
                f"{ofvocab.render_flow(other)} and {ofvocab.render_flow(flow)}"
            )
    group_ids: dict[int, Group] = {}
    for group in groups:
        other_group = group_ids.setdefault(group.group_id, group)
        if other_group != group:
            raise QingluanError(f"the pipeline built two different groups {group.group_id}")
    return BridgeState(frozenset(flows), frozenset(groups), state.meters)


@dataclass(frozen=True)
class HostMetrics:
    """How the reconciles of one host went (the last one, and totals)."""

    host: str
    runs: int = 0
    failures: int = 0
    last_result: ReconcileResult | None = None
    last_error: str | None = None
    last_trigger: str | None = None
    flows_replaced: int = 0  # of the last successful run
    messages_sent: int = 0  # of the last successful run, barriers included, dumps not
    desired_flows: int = 0
    desired_groups: int = 0
    flows_added_total: int = 0  # since the reconciler started
    flows_deleted_total: int = 0


@dataclass(frozen=True)
class _Outcome:
    result: ReconcileResult
    plan: Plan
    sent: int  # messages, barriers included
    desired: BridgeState


# ---- connection state ------------------------------------------------------------


@dataclass
class _Waiter:
    """One outstanding request: a multipart dump or a barrier."""

    flows: list[SwitchFlow] = field(default_factory=list)
    groups: list[SwitchGroup] = field(default_factory=list)
    meters: list[SwitchMeter] = field(default_factory=list)
    ports: list[PortCounters] = field(default_factory=list)
    done: bool = False
    error: str | None = None


class _Connection:
    def __init__(self, switch: Switch, ports: Mapping[str, int]) -> None:
        self.switch = switch
        self.dpid = switch.dpid
        self.ports: dict[str, int] = dict(ports)
        self.alive = True
        self.waiters: dict[int, _Waiter] = {}
        self.watched: dict[int, Request] = {}  # xid -> a sent mod whose error we want
        self.rejected: list[tuple[Request, str]] = []
        # what the switch holds after the last confirmed converge of this connection:
        # a converge for a change diffs against it instead of dumping every flow again
        self.known: BridgeState | None = None
        self._xid = random.randint(0x1000_0000, 0x7000_0000)

    def next_xid(self) -> int:
        self._xid = (self._xid % MAX_XID) + 1
        return self._xid


# ---- the reconciler ----------------------------------------------------------------


class Reconciler:
    """``interfaces.Converger`` over the switches the os-ken app reports.

    ``compute`` is the pure pipeline (``qingluan.controller.pipeline.compute_bridge``),
    injected so that tests can use a stand-in.
    """

    def __init__(
        self,
        state: StateSource,
        compute: ComputeFn,
        *,
        resync_interval: float | None = 30.0,
        background_timeout: float = 30.0,
        workers: int = 4,
        on_reconcile: Callable[[str, str, float | None], None] | None = None,
    ) -> None:
        """``on_reconcile(host, trigger, seconds)`` hears of every reconcile (seconds
        None: it failed), e.g. for the metrics."""
        self._on_reconcile = on_reconcile
        self._state = state
        self._compute = compute
        self._resync_interval = resync_interval
        self._background_timeout = background_timeout
        self._cond = threading.Condition()
        self._conns: dict[int, _Connection] = {}
        self._host_locks: dict[str, threading.Lock] = {}
        self._metrics: dict[str, HostMetrics] = {}
        self._pending: set[int] = set()
        self._executor = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="qingluan-reconcile"
        )
        self._stop = threading.Event()
        self._resync_thread: threading.Thread | None = None

    # ---- life cycle ----

    def start(self) -> None:
        """Start the periodic resync (if an interval is set)."""
        if self._resync_interval and self._resync_thread is None:
            self._resync_thread = threading.Thread(
                target=self._resync_loop, name="qingluan-resync", daemon=True
            )
            self._resync_thread.start()

    def close(self) -> None:
        """Stop the resync and the workers; a running converge finishes within its timeout."""
        self._stop.set()
        with self._cond:
            for conn in self._conns.values():
                conn.alive = False
            self._cond.notify_all()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _resync_loop(self) -> None:
        assert self._resync_interval
        while not self._stop.wait(self._resync_interval):
            self.resync_all()

    def resync_all(self) -> None:
        """Schedule a converge of every connected bridge."""
        with self._cond:
            dpids = list(self._conns)
        for dpid in dpids:
            self._schedule(dpid, "resync")

    # ---- called by the app from os-ken's event loop: never block ----

    def switch_connected(self, switch: Switch, ports: Mapping[str, int]) -> None:
        """A switch finished its handshake (features and port description)."""
        with self._cond:
            old = self._conns.get(switch.dpid)
            if old is not None:
                old.alive = False
            self._conns[switch.dpid] = _Connection(switch, ports)
            self._cond.notify_all()
        log.info("datapath %016x connected with %d ports", switch.dpid, len(ports))
        self._schedule(switch.dpid, "connect")

    def switch_disconnected(self, switch: Switch) -> None:
        with self._cond:
            conn = self._conns.get(switch.dpid)
            if conn is None or conn.switch is not switch:
                return  # an older connection of a switch that is back already
            conn.alive = False
            del self._conns[switch.dpid]
            self._cond.notify_all()
        log.info("datapath %016x disconnected", switch.dpid)

    def port_status(self, switch: Switch, reason: PortReason, name: str, port_no: int) -> None:
        with self._cond:
            conn = self._current(switch)
            if conn is None:
                return
            before = conn.ports.get(name)
            if reason is PortReason.DELETE:
                conn.ports.pop(name, None)
            else:
                conn.ports[name] = port_no
            changed = before != conn.ports.get(name)
            self._cond.notify_all()
        if changed:
            log.debug("datapath %016x: port %s %s (%d)", switch.dpid, name, reason, port_no)
            self._schedule(switch.dpid, "port")

    def flow_stats_reply(
        self, switch: Switch, xid: int, flows: Sequence[SwitchFlow], more: bool
    ) -> None:
        with self._cond:
            waiter = self._waiter(switch, xid)
            if waiter is not None:
                waiter.flows.extend(flows)
                waiter.done = not more
                self._cond.notify_all()

    def group_desc_reply(
        self, switch: Switch, xid: int, groups: Sequence[SwitchGroup], more: bool
    ) -> None:
        with self._cond:
            waiter = self._waiter(switch, xid)
            if waiter is not None:
                waiter.groups.extend(groups)
                waiter.done = not more
                self._cond.notify_all()

    def meter_config_reply(
        self, switch: Switch, xid: int, meters: Sequence[SwitchMeter], more: bool
    ) -> None:
        with self._cond:
            waiter = self._waiter(switch, xid)
            if waiter is not None:
                waiter.meters.extend(meters)
                waiter.done = not more
                self._cond.notify_all()

    def port_stats_reply(
        self, switch: Switch, xid: int, counters: Sequence[PortCounters], more: bool
    ) -> None:
        with self._cond:
            waiter = self._waiter(switch, xid)
            if waiter is not None:
                waiter.ports.extend(counters)
                waiter.done = not more
                self._cond.notify_all()

    def barrier_reply(self, switch: Switch, xid: int) -> None:
        with self._cond:
            waiter = self._waiter(switch, xid)
            if waiter is not None:
                waiter.done = True
                self._cond.notify_all()

    def error_reply(self, switch: Switch, xid: int, text: str) -> None:
        with self._cond:
            conn = self._current(switch)
            if conn is None:
                return
            request = conn.watched.pop(xid, None)
            if request is not None:
                conn.rejected.append((request, text))
                return
            waiter = conn.waiters.get(xid)
            if waiter is not None:
                waiter.error = text
                waiter.done = True
                self._cond.notify_all()
                return
        log.warning("datapath %016x: error for xid %#x: %s", switch.dpid, xid, text)

    def _current(self, switch: Switch) -> _Connection | None:
        conn = self._conns.get(switch.dpid)
        return conn if conn is not None and conn.switch is switch else None

    def _waiter(self, switch: Switch, xid: int) -> _Waiter | None:
        conn = self._current(switch)
        return None if conn is None else conn.waiters.get(xid)

    # ---- Converger ----

    def is_connected(self, host: str) -> bool:
        dpid = self._dpid_or_none(host)
        with self._cond:
            return dpid is not None and dpid in self._conns

    def ports(self, host: str) -> dict[str, int]:
        dpid = self._dpid_or_none(host)
        with self._cond:
            conn = self._conns.get(dpid) if dpid is not None else None
            return dict(conn.ports) if conn is not None else {}

    def dump(self, host: str, *, timeout: float = 5.0) -> FlowDump:
        """What the switch holds now (``connected=False`` and nothing if it is not connected)."""
        host_obj = self._state.host_state(host)[0]
        with self._cond:
            conn = self._conns.get(host_obj.dpid)
        if conn is None:
            return FlowDump(host=host, connected=False, flows=[], groups=[])
        flows, groups, _ = self._read(conn, time.monotonic() + timeout)
        flows.sort(key=lambda e: (e.flow.table, -e.flow.priority, ofvocab.render_flow(e.flow)))
        groups.sort(key=lambda e: e.group.group_id)
        return FlowDump(
            host=host,
            connected=True,
            flows=[ofvocab.render_switch_flow(e) for e in flows],
            groups=[ofvocab.render_switch_group(e) for e in groups],
        )

    def converge(
        self,
        host: str,
        *,
        timeout: float = 5.0,
        require_ports: tuple[str, ...] = (),
        full: bool = False,
    ) -> ReconcileResult:
        return self._converge(host, timeout, require_ports, "verify" if full else "request")

    def port_counters(self, host: str, *, timeout: float = 2.0) -> dict[str, PortCounters]:
        """Port name -> counters of the host's bridge now ({} if it is not connected)."""
        dpid = self._dpid_or_none(host)
        with self._cond:
            conn = self._conns.get(dpid) if dpid is not None else None
        if conn is None:
            return {}
        xid = self._send(conn, PortStatsRequest(), watch=False)
        counters = self._collect(conn, xid, time.monotonic() + timeout, "port stats").ports
        with self._cond:
            names = {number: name for name, number in conn.ports.items()}
        return {names[c.port_no]: c for c in counters if c.port_no in names}

    def metrics(self, host: str) -> HostMetrics:
        with self._cond:
            return self._metrics.get(host, HostMetrics(host))

    def all_metrics(self) -> dict[str, HostMetrics]:
        with self._cond:
            return dict(self._metrics)

    # ---- converging ----

    def _dpid_or_none(self, host: str) -> int | None:
        try:
            return self._state.host_state(host)[0].dpid
        except NotFound:
            return None

    def _host_lock(self, host: str) -> threading.Lock:
        with self._cond:
            return self._host_locks.setdefault(host, threading.Lock())

    def _converge(
        self, host: str, timeout: float, require_ports: tuple[str, ...], trigger: str
    ) -> ReconcileResult:
        started = time.monotonic()
        deadline = started + timeout
        lock = self._host_lock(host)
        if not lock.acquire(timeout=max(timeout, 0.0)):
            raise Timeout(f"host {host}: another reconcile still runs after {timeout:.1f}s")
        try:
            try:
                outcome = self._converge_locked(
                    host, started, deadline, require_ports, trust_known=trigger in TRUSTING
                )
            except Exception as exc:
                self._record_failure(host, trigger, exc)
                raise
            self._record(host, trigger, outcome)
            return outcome.result
        finally:
            lock.release()

    def _converge_locked(
        self,
        host: str,
        started: float,
        deadline: float,
        require_ports: tuple[str, ...],
        *,
        trust_known: bool = False,
    ) -> _Outcome:
        host_obj, networks, endpoints = self._state.host_state(host)
        peers = self._state.peers(host)
        policy = self._state.policy()
        with self._cond:
            conn = self._conns.get(host_obj.dpid)
        if conn is None:
            raise Unavailable(
                f"bridge {host_obj.bridge} of host {host} (dpid {host_obj.dpid:016x}) "
                "is not connected to the controller"
            )
        ports = self._wait_ports(conn, host_obj, require_ports, deadline)
        try:
            computed = self._compute(networks, endpoints, ports, peers, policy)
        except ValueError as exc:
            raise QingluanError(f"host {host}: cannot compute its flows: {exc}") from exc
        desired = normalized_state(computed)
        known = conn.known if trust_known else None
        if known is not None:
            flows = [SwitchFlow(f) for f in known.flows]
            groups = [SwitchGroup(g) for g in known.groups]
            meters = [SwitchMeter(m) for m in known.meters]
        else:
            flows, groups, meters = self._read(conn, deadline, meters=True)
        todo = plan(desired, flows, groups, meters)
        for text in todo.undeletable:
            log.warning("host %s: cannot delete a flow with a match not understood: %s", host, text)
        conn.known = None  # until the barrier confirms the switch holds ``desired``
        sent = self._apply(conn, host_obj, todo, deadline)
        conn.known = desired
        result = ReconcileResult(
            host=host,
            flows_added=len(todo.flow_adds),
            flows_deleted=len(todo.flow_deletes),
            groups_added=sum(isinstance(r, GroupAdd) for r in todo.group_writes),
            groups_modified=sum(isinstance(r, GroupModify) for r in todo.group_writes),
            groups_deleted=len(todo.group_deletes),
            seconds=round(time.monotonic() - started, 6),
        )
        return _Outcome(result, todo, sent, desired)

    def _record(self, host: str, trigger: str, outcome: _Outcome) -> None:
        result, todo, desired = outcome.result, outcome.plan, outcome.desired
        if self._on_reconcile is not None:
            self._on_reconcile(host, trigger, result.seconds)
        with self._cond:
            old = self._metrics.get(host, HostMetrics(host))
            self._metrics[host] = HostMetrics(
                host=host,
                runs=old.runs + 1,
                failures=old.failures,
                last_result=result,
                last_error=None,
                last_trigger=trigger,
                flows_replaced=todo.flows_replaced,
                messages_sent=outcome.sent,
                desired_flows=len(desired.flows),
                desired_groups=len(desired.groups),
                flows_added_total=old.flows_added_total + result.flows_added,
                flows_deleted_total=old.flows_deleted_total + result.flows_deleted,
            )
        if not todo.empty:
            log.info(
                "host %s (%s): +%d -%d flows, groups +%d ~%d -%d in %.3fs",
                host,
                trigger,
                result.flows_added,
                result.flows_deleted,
                result.groups_added,
                result.groups_modified,
                result.groups_deleted,
                result.seconds,
            )

    def _record_failure(self, host: str, trigger: str, exc: BaseException) -> None:
        if self._on_reconcile is not None:
            self._on_reconcile(host, trigger, None)
        with self._cond:
            old = self._metrics.get(host, HostMetrics(host))
            self._metrics[host] = HostMetrics(
                host=host,
                runs=old.runs + 1,
                failures=old.failures + 1,
                last_result=old.last_result,
                last_error=str(exc),
                last_trigger=trigger,
                flows_added_total=old.flows_added_total,
                flows_deleted_total=old.flows_deleted_total,
            )

    def _wait(self, conn: _Connection, ready: Callable[[], bool], deadline: float) -> bool:
        """Wait (holding ``_cond``) until ``ready()``; False on timeout. Raises if conn dies."""
        while not ready():
            if not conn.alive:
                raise Unavailable(f"datapath {conn.dpid:016x} disconnected")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._cond.wait(remaining)
        return True

    def _wait_ports(
        self, conn: _Connection, host: Host, names: tuple[str, ...], deadline: float
    ) -> dict[str, int]:
        with self._cond:
            if not self._wait(conn, lambda: all(n in conn.ports for n in names), deadline):
                missing = sorted(n for n in names if n not in conn.ports)
                raise Timeout(
                    f"port(s) {', '.join(missing)} did not appear on bridge {host.bridge} "
                    f"of host {host.name} in time"
                )
            return dict(conn.ports)

    def _send(self, conn: _Connection, request: Request, *, watch: bool) -> int:
        """Send one request; a waiter for dumps/barriers, a watch for mods."""
        with self._cond:
            if not conn.alive:
                raise Unavailable(f"datapath {conn.dpid:016x} disconnected")
            xid = conn.next_xid()
            if watch:
                conn.watched[xid] = request
            else:
                conn.waiters[xid] = _Waiter()
        conn.switch.send(request, xid)
        return xid

    def _collect(self, conn: _Connection, xid: int, deadline: float, what: str) -> _Waiter:
        with self._cond:
            try:
                waiter = conn.waiters[xid]
                if not self._wait(conn, lambda: waiter.done, deadline):
                    raise Timeout(f"datapath {conn.dpid:016x} did not answer the {what} in time")
            finally:
                conn.waiters.pop(xid, None)
        if waiter.error is not None:
            raise SwitchRejected(f"datapath {conn.dpid:016x} refused the {what}: {waiter.error}")
        return waiter

    def _read(
        self, conn: _Connection, deadline: float, *, meters: bool = False
    ) -> tuple[list[SwitchFlow], list[SwitchGroup], list[SwitchMeter]]:
        """Every flow and group (and, with ``meters``, meter) the switch holds; the dumps
        are in flight at once."""
        flows_xid = self._send(conn, FlowStatsRequest(), watch=False)
        groups_xid = self._send(conn, GroupDescRequest(), watch=False)
        meters_xid = self._send(conn, MeterConfigRequest(), watch=False) if meters else None
        flows = self._collect(conn, flows_xid, deadline, "flow dump").flows
        groups = self._collect(conn, groups_xid, deadline, "group dump").groups
        if meters_xid is None:
            return flows, groups, []
        return flows, groups, self._collect(conn, meters_xid, deadline, "meter dump").meters

    def _apply(self, conn: _Connection, host: Host, todo: Plan, deadline: float) -> int:
        sent = 0
        for phase in todo.phases():
            if not phase:
                continue
            xids = [self._send(conn, request, watch=True) for request in phase]
            barrier = self._send(conn, Barrier(), watch=False)
            sent += len(phase) + 1
            try:
                self._collect(conn, barrier, deadline, "barrier")
            finally:
                with self._cond:
                    for xid in xids:
                        conn.watched.pop(xid, None)
                    rejected, conn.rejected = conn.rejected, []
            if rejected:
                first = "; ".join(
                    f"{ofvocab.describe_request(req)}: {why}" for req, why in rejected[:3]
                )
                raise SwitchRejected(
                    f"bridge {host.bridge} of host {host.name} refused {len(rejected)} of "
                    f"{len(phase)} changes: {first}"
                )
        return sent

    # ---- background work ----

    def _schedule(self, dpid: int, trigger: str) -> None:
        with self._cond:
            if self._stop.is_set() or dpid in self._pending:
                return
            self._pending.add(dpid)
        try:
            self._executor.submit(self._background, dpid, trigger)
        except RuntimeError:  # shut down
            with self._cond:
                self._pending.discard(dpid)

    def _background(self, dpid: int, trigger: str) -> None:
        with self._cond:
            self._pending.discard(dpid)
        try:
            host = self._state.host_by_dpid(dpid)
            if host is None:
                log.info("datapath %016x is no registered host's bridge: left as it is", dpid)
                return
            self._converge(host.name, self._background_timeout, (), trigger)
        except QingluanError as exc:
            log.warning("datapath %016x: %s converge failed: %s", dpid, trigger, exc)
        except Exception:
            log.exception("datapath %016x: %s converge failed", dpid, trigger)


if TYPE_CHECKING:

    def _is_a_converger(reconciler: Reconciler) -> Converger:
        return reconciler  # mypy checks that Reconciler fits the protocol
