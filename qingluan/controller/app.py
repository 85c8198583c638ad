"""The os-ken application: a thin shim that hands every switch event to the reconciler.

Each handler runs in os-ken's event loop and only parses (with ``ofvocab``)
and forwards; nothing here waits for a switch, because the replies it would
wait for are delivered by this same loop. The reconciler does the waiting in
its own threads.

``start_openflow`` runs os-ken in the current process: os-ken 4.x ships no
manager CLI, and its default hub is native threads, so the OpenFlow listener
lives beside the REST server (uvicorn) and shares the reconciler with it.
os-ken keeps process-wide state (``cfg.CONF``, ``AppManager``'s singleton
and its service registry), so there is one OpenFlow listener per process,
and it lasts as long as the process: the native hub cannot stop its threads
(its ``kill`` is a no-op). They are daemon threads, so the process can exit.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from os_ken import cfg
from os_ken.base import app_manager  # imports os_ken.controller.controller: the ofp-* options
from os_ken.controller import ofp_event
from os_ken.controller.handler import (
    CONFIG_DISPATCHER,
    DEAD_DISPATCHER,
    MAIN_DISPATCHER,
    set_ev_cls,
)
from os_ken.lib import hub

from qingluan.controller import ofvocab
from qingluan.controller.ofvocab import Request
from qingluan.controller.reconciler import Reconciler
from qingluan.errors import Unavailable

log = logging.getLogger(__name__)

_Handler = TypeVar("_Handler", bound=Callable[..., None])


def _on(event: Any, dispatchers: Any) -> Callable[[_Handler], _Handler]:
    """``set_ev_cls`` with a type: it marks the handler and returns it unchanged."""
    mark: Callable[[_Handler], _Handler] = set_ev_cls(event, dispatchers)
    return mark


class OskenSwitch:
    """``reconciler.Switch`` over one os-ken ``Datapath`` (one OpenFlow connection)."""

    def __init__(self, datapath: Any) -> None:
        self._datapath = datapath
        self._dpid = int(datapath.id)

    @property
    def dpid(self) -> int:
        return self._dpid

    def send(self, request: Request, xid: int) -> None:
        msg = ofvocab.to_message(self._datapath, request)
        msg.set_xid(xid)
        if not self._datapath.send_msg(msg):
            raise Unavailable(f"datapath {self._dpid:016x} is disconnecting")

    def __repr__(self) -> str:
        return f"OskenSwitch({self._dpid:016x} at {self._datapath.address})"


class QingluanApp(app_manager.OSKenApp):  # type: ignore[misc]  # os-ken is untyped
    """Forwards connects, ports, replies and errors to the injected ``Reconciler``."""

    OFP_VERSIONS = [ofvocab.OFP_VERSION]

    def __init__(self, *args: Any, reconciler: Reconciler, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reconciler = reconciler
        # touched only by this app's event loop (one thread)
        self._switches: dict[Any, OskenSwitch] = {}
        self._handshake_ports: dict[Any, dict[str, int]] = {}

    @_on(ofp_event.EventOFPPortDescStatsReply, CONFIG_DISPATCHER)
    def _port_desc(self, ev: Any) -> None:
        # os-ken's own handler asked for the ports during the handshake
        ports = self._handshake_ports.setdefault(ev.msg.datapath, {})
        ports.update(ofvocab.ports_by_name(ev.msg.body))

    @_on(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])
    def _state_change(self, ev: Any) -> None:
        datapath = ev.datapath
        if ev.state == MAIN_DISPATCHER:
            switch = OskenSwitch(datapath)
            self._switches[datapath] = switch
            ports = self._handshake_ports.pop(datapath, {})
            self._reconciler.switch_connected(switch, ports)
        else:
            self._handshake_ports.pop(datapath, None)
            old = self._switches.pop(datapath, None)
            if old is not None:
                self._reconciler.switch_disconnected(old)

    @_on(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    def _port_status(self, ev: Any) -> None:
        switch = self._switches.get(ev.msg.datapath)
        reason = ofvocab.port_reason(ev.msg)
        if switch is None or reason is None:
            return
        name, port_no = ofvocab.parse_port(ev.msg.desc)
        self._reconciler.port_status(switch, reason, name, port_no)

    @_on(ofp_event.EventOFPFlowStatsReply, MAIN_DISPATCHER)
    def _flow_stats(self, ev: Any) -> None:
        switch = self._switches.get(ev.msg.datapath)
        if switch is None:
            return
        try:
            flows = [ofvocab.parse_flow_stats(s) for s in ev.msg.body]
        except Exception as exc:  # a reply we cannot read must fail the dump, not hang it
            log.exception("datapath %016x: unreadable flow stats", switch.dpid)
            self._reconciler.error_reply(switch, ev.msg.xid, f"unreadable flow stats: {exc}")
            return
        self._reconciler.flow_stats_reply(switch, ev.msg.xid, flows, ofvocab.reply_has_more(ev.msg))

    @_on(ofp_event.EventOFPMeterConfigStatsReply, MAIN_DISPATCHER)
    def _meter_config(self, ev: Any) -> None:
        switch = self._switches.get(ev.msg.datapath)
        if switch is None:
            return
        try:
            meters = [ofvocab.parse_meter_config(s) for s in ev.msg.body]
        except Exception as exc:
            log.exception("datapath %016x: unreadable meter configuration", switch.dpid)
            self._reconciler.error_reply(switch, ev.msg.xid, f"unreadable meters: {exc}")
            return
        self._reconciler.meter_config_reply(
            switch, ev.msg.xid, meters, ofvocab.reply_has_more(ev.msg)
        )

    @_on(ofp_event.EventOFPPortStatsReply, MAIN_DISPATCHER)
    def _port_stats(self, ev: Any) -> None:
        switch = self._switches.get(ev.msg.datapath)
        if switch is None:
            return
        try:
            counters = [ofvocab.parse_port_stats(s) for s in ev.msg.body]
        except Exception as exc:
            log.exception("datapath %016x: unreadable port stats", switch.dpid)
            self._reconciler.error_reply(switch, ev.msg.xid, f"unreadable port stats: {exc}")
            return
        self._reconciler.port_stats_reply(
            switch, ev.msg.xid, counters, ofvocab.reply_has_more(ev.msg)
        )

    @_on(ofp_event.EventOFPGroupDescStatsReply, MAIN_DISPATCHER)
    def _group_desc(self, ev: Any) -> None:
        switch = self._switches.get(ev.msg.datapath)
        if switch is None:
            return
        try:
            groups = [ofvocab.parse_group_desc(s) for s in ev.msg.body]
        except Exception as exc:
            log.exception("datapath %016x: unreadable group description", switch.dpid)
            self._reconciler.error_reply(switch, ev.msg.xid, f"unreadable groups: {exc}")
            return
        self._reconciler.group_desc_reply(
            switch, ev.msg.xid, groups, ofvocab.reply_has_more(ev.msg)
        )

    @_on(ofp_event.EventOFPBarrierReply, MAIN_DISPATCHER)
    def _barrier(self, ev: Any) -> None:
        switch = self._switches.get(ev.msg.datapath)
        if switch is not None:
            self._reconciler.barrier_reply(switch, ev.msg.xid)

    @_on(ofp_event.EventOFPErrorMsg, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def _error(self, ev: Any) -> None:
        text = ofvocab.describe_error(ev.msg)
        switch = self._switches.get(ev.msg.datapath)
        if switch is None:
            log.warning("switch %s during handshake: %s", ev.msg.datapath.address, text)
            return
        self._reconciler.error_reply(switch, ev.msg.xid, text)


# ---- running os-ken in this process ------------------------------------------------


def _listening(port: int) -> bool:
    """Something in this network namespace listens on TCP ``port`` (``/proc/net/tcp*``)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()  # sl local_address rem_address st ...
            listens = len(fields) > 3 and fields[3] == "0A"
            if listens and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def _check_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            why = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc})"
            raise Unavailable(f"OpenFlow listen address {host}:{port} {why}") from exc


def start_openflow(
    reconciler: Reconciler, listen_host: str, listen_port: int, *, ready_timeout: float = 10.0
) -> threading.Thread:
    """Run os-ken's ``AppManager`` with ``QingluanApp`` in a daemon thread.

    Returns that thread once the OpenFlow listener accepts connections, and
    starts the reconciler's periodic resync. The reconciler reaches the app as
    a constructor argument (``AppManager.instantiate_apps`` passes its keyword
    arguments to every app it creates; os-ken's own ``OFPHandler`` ignores it).
    Raises ``Unavailable`` if the address is taken or the listener does not
    come up in ``ready_timeout`` seconds, ``RuntimeError`` if os-ken already
    runs in this process or ``OSKEN_HUB_TYPE`` selects eventlet (the
    reconciler waits with ``threading`` primitives).
    """
    if hub.HUB_TYPE != "native":
        raise RuntimeError(f"os-ken hub {hub.HUB_TYPE!r}: qingluan needs the native-thread hub")
    if app_manager.lookup_service_brick(ofp_event.NAME) is not None:
        raise RuntimeError("os-ken already runs in this process: one OpenFlow listener each")
    _check_free(listen_host, listen_port)
    cfg.CONF(
        args=[f"--ofp-listen-host={listen_host}", f"--ofp-tcp-listen-port={listen_port}"],
        project="os_ken",
        default_config_files=[],
    )
    manager = app_manager.AppManager.get_instance()
    instantiated = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        # Threads that os-ken's native hub spawns from here inherit daemon=True.
        try:
            manager.load_apps([__name__])
            contexts = manager.create_contexts()
            services = manager.instantiate_apps(reconciler=reconciler, **contexts)
        except BaseException as exc:
            failure.append(exc)
            instantiated.set()
            raise
        instantiated.set()
        hub.joinall(services)

    thread = threading.Thread(target=run, name="os-ken", daemon=True)
    thread.start()
    deadline = time.monotonic() + ready_timeout
    if not instantiated.wait(ready_timeout) or failure:
        raise Unavailable(f"os-ken did not start: {failure[0] if failure else 'timed out'}")
    while not _listening(listen_port):
        if time.monotonic() > deadline:
            raise Unavailable(f"os-ken does not listen on {listen_host}:{listen_port}")
        time.sleep(0.02)
    reconciler.start()
    log.info("OpenFlow listener on %s:%d", listen_host, listen_port)
    return thread
