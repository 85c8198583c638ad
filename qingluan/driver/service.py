"""The driver process: ``run_driver(DriverConfig(...))`` serves until SIGTERM/SIGINT.

Start-up order, chosen so that dockerd never waits on a missing socket (a
plugin that is down at dockerd's start stalls every container start):

1. bind both plugin sockets and answer at once;
2. in a background thread, retrying with backoff until it succeeds: ensure
   the integration bridge, register the host (``PUT /v1/hosts/{name}`` with
   dpid, bridge and datapath type), then sweep under the guard's exclusive
   lock: re-create the plumbing of the controller's networks and endpoints of
   this host, remove qingluan-named devices/ports the controller does not
   know, re-sync iptables; then hand every network of this host to the name
   learner (``qingluan.driver.learner``), which asks the local Docker API for
   the network's and its containers' names from its own thread, later.

Each sync also puts the IDS mirror port on the bridge (with ``--ids``) and, the
first time, writes the controller's monitoring settings (sFlow, NetFlow, IPFIX) into
the bridge; those are looked at again every ``settings_interval`` seconds and
applied when they change. After the first sync the IDS starts (``ids_runner``).

After that the same sync repeats every ``resync_interval`` seconds, so that
plumbing removed behind the driver's back (a gateway device, an OVS port, an
iptables chain) comes back while the driver runs.

Until step 2 has succeeded, Docker calls that touch the host wait (bounded)
and then fail with the reason (e.g. "the qingluan controller at … is not
reachable"); IPAM calls go to the controller directly. Stopping removes the
socket files and leaves all plumbing in place, so containers keep working
while the driver restarts.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from qingluan import names
from qingluan.api_schema import HostRegistration
from qingluan.driver.client import DEFAULT_URL, HttpControllerClient
from qingluan.driver.guard import HostGuard
from qingluan.driver.handlers import IpamDriver, NetworkDriver
from qingluan.driver.host.iptables import DEFAULT_PREFIX
from qingluan.driver.host.plumbing import LinuxHost
from qingluan.driver.host.sockbuf import DEFAULT_RCVBUF
from qingluan.driver.ids_runner import HostIds
from qingluan.driver.interfaces import ControllerClient, HostOps, SweepReport
from qingluan.driver.learner import DockerApi, NameLearner, default_docker_host
from qingluan.driver.server import (
    PluginApp,
    ipam_driver_routes,
    network_driver_routes,
    serve_plugins,
)
from qingluan.errors import QingluanError
from qingluan.model import DatapathType, MonitoringSettings

log = logging.getLogger(__name__)

UNDERLAY_CHECK_INTERVAL = 1.0  # seconds between looks at the userspace underlay

DEFAULT_PLUGIN_DIR = Path("/run/docker/plugins")
DEFAULT_TOKEN_FILE = Path("/var/lib/qingluan/token")
DEFAULT_OPENFLOW_TARGET = "tcp:127.0.0.1:6653"
DEFAULT_IDS_DIR = Path("/run/qingluan/ids")
DEFAULT_RULES = Path(__file__).parent / "ids" / "default.rules"


@dataclass(frozen=True)
class DriverConfig:
    """Everything ``qingluan driver`` can be told (CLI flags map 1:1)."""

    host: str = field(default_factory=socket.gethostname)
    controller_url: str = DEFAULT_URL
    token_file: Path = DEFAULT_TOKEN_FILE
    openflow_target: str = DEFAULT_OPENFLOW_TARGET
    bridge: str = "br-ql"
    ovsdb: str | None = None  # e.g. "unix:/run/openvswitch/db.sock"; None: ovs-vsctl's default
    plugin_dir: Path = DEFAULT_PLUGIN_DIR
    network_plugin: str = "qingluan"
    ipam_plugin: str = "qingluanIpam"
    chain_prefix: str = DEFAULT_PREFIX
    datapath_type: DatapathType | None = None  # None: detect (system if the kernel has OVS)
    underlay_address: str | None = None  # VXLAN tunnel endpoint, IP/LEN (--underlay-address)
    underlay_nic: str | None = None  # userspace datapath: the NIC that carries the underlay
    netns: str | None = None  # manage this network namespace instead of the root one
    controller_timeout: float = 10.0
    startup_wait: float = 20.0  # how long a Docker call waits for start-up to finish
    retry_max: float = 10.0  # longest pause between start-up attempts
    # after start-up, repeat the sync (bridge, registration, sweep, iptables) this often, so
    # that plumbing removed behind the driver's back comes back; 0: only at start-up
    resync_interval: float = 60.0
    workers: int = 32  # concurrent Docker calls
    # the local Docker API, asked (never inside a plugin call) for network and container names
    docker_host: str = field(default_factory=default_docker_host)
    # physical network -> host NIC (also its OVS port name), from --uplink PHYSNET:NIC
    uplinks: dict[str, str] = field(default_factory=dict)
    # the host's IDS on the mirror port: None, "suricata" (started and supervised here) or
    # "snort" (the operator's, alert_unixsock into <ids_dir>/snort_alert)
    ids: str | None = None
    ids_rules: tuple[Path, ...] = ()  # Suricata rule files; none: the shipped default.rules
    ids_dir: Path = DEFAULT_IDS_DIR  # sockets, Suricata's config and logs
    sflow_agent: str | None = None  # sFlow agent device or address; None: Open vSwitch's choice
    settings_interval: float = 5.0  # seconds between looks at the monitoring settings
    # userspace datapath: receive buffer of ovs-vswitchd's packet sockets for the bridge's
    # ports (host/sockbuf.py); 0: leave the system default
    ovs_rcvbuf: int = DEFAULT_RCVBUF

    @property
    def network_socket(self) -> Path:
        return self.plugin_dir / f"{self.network_plugin}.sock"

    @property
    def ipam_socket(self) -> Path:
        return self.plugin_dir / f"{self.ipam_plugin}.sock"


class Driver:
    """One host's driver: handlers, start-up sync and the plugin sockets."""

    def __init__(
        self,
        config: DriverConfig,
        *,
        controller: ControllerClient,
        host_ops: HostOps,
        learner: NameLearner | None = None,
    ) -> None:
        self.config = config
        self.controller = controller
        self.host_ops = host_ops
        self.guard = HostGuard(wait_timeout=config.startup_wait)
        self.learner = learner  # None: names are not learned (e.g. tests without Docker)
        self.network_driver = NetworkDriver(
            host=config.host,
            controller=controller,
            host_ops=host_ops,
            guard=self.guard,
            uplinks=config.uplinks,
            on_network_change=learner.notify if learner is not None else None,
        )
        self.ipam_driver = IpamDriver(controller=controller)
        self.last_sweep: SweepReport | None = None
        self._stopping = threading.Event()
        self._monitoring: MonitoringSettings | None = None  # what the bridge exports now
        self._monitoring_error: str | None = None
        self.ids: HostIds | None = None
        if config.ids is not None:
            self.ids = HostIds(
                config.ids,
                host=config.host,
                post=controller.report_alert,
                run_dir=config.ids_dir,
                rule_files=config.ids_rules or (DEFAULT_RULES,),
                netns=config.netns,
                interface=names.IDS_PEER,
            )

    @classmethod
    def from_config(cls, config: DriverConfig) -> Driver:
        controller = HttpControllerClient(
            config.controller_url, token_file=config.token_file, timeout=config.controller_timeout
        )
        host_ops = LinuxHost(
            bridge=config.bridge,
            ovsdb=config.ovsdb,
            netns=config.netns,
            chain_prefix=config.chain_prefix,
            datapath_type=config.datapath_type,
            underlay_address=config.underlay_address,
            underlay_nic=config.underlay_nic,
            ovs_rcvbuf=config.ovs_rcvbuf,
        )
        learner = NameLearner(
            host=config.host, controller=controller, docker=DockerApi(config.docker_host)
        )
        return cls(config, controller=controller, host_ops=host_ops, learner=learner)

    # ---- start-up sync ----

    def sync_once(self) -> SweepReport:
        """Bridge, registration, sweep; raises on the first failure."""
        cfg = self.config
        dpid = self.host_ops.ensure_bridge(cfg.openflow_target)
        self.controller.register_host(
            cfg.host,
            HostRegistration(
                dpid=dpid,
                bridge=self.host_ops.bridge,
                datapath_type=self.host_ops.datapath_type,
                address=cfg.underlay_address.split("/", 1)[0] if cfg.underlay_address else None,
            ),
        )
        log.info(
            "host %s registered: bridge %s dpid %016x (%s datapath)",
            cfg.host,
            self.host_ops.bridge,
            dpid,
            self.host_ops.datapath_type.value,
        )
        # endpoint removals still running take the guard themselves: let them finish first,
        # so the sweep does not race them for the same veths
        self.network_driver.flush()
        with self.guard.exclusive():
            networks = self.controller.list_networks(cfg.host)
            endpoints = self.controller.list_endpoints(cfg.host)
            report = self.host_ops.sweep(networks, endpoints)
        self.last_sweep = report
        log.info(
            "sweep: %d networks, %d endpoints; removed links %s ports %s; missing %s; errors %s",
            len(networks),
            len(endpoints),
            report.links_removed,
            report.ports_removed,
            report.endpoints_missing,
            report.errors,
        )
        if self.host_ops.has_underlay():
            self._warm_tunnels()
        if self.ids is not None:
            self.host_ops.ensure_ids_port()
        self.sync_monitoring(force=self._monitoring is None)
        if self.learner is not None:  # only enqueues: names of networks made before, or renamed
            self.learner.notify_many(n.id for n in networks)
        return report

    def sync_monitoring(self, *, force: bool = False) -> bool:
        """Apply the controller's monitoring settings to the bridge if they changed (or
        ``force``); False when they could not be read or applied (logged)."""
        try:
            settings = self.controller.monitoring_settings()
            if force or settings != self._monitoring:
                self.host_ops.apply_monitoring(
                    settings, self.config.controller_url, self.config.sflow_agent
                )
                if settings != self._monitoring:
                    log.info("bridge export: %s", settings.model_dump_json())
                self._monitoring = settings
        except Exception as exc:
            reason = str(exc)
            if reason != self._monitoring_error:  # once per cause, not every few seconds
                log.warning("monitoring settings not applied: %s", reason)
            self._monitoring_error = reason
            return False
        self._monitoring_error = None
        return True

    def _warm_tunnels(self) -> None:
        try:
            others = [
                h.host.address
                for h in self.controller.list_hosts()
                if h.host.name != self.config.host and h.host.address
            ]
            self.host_ops.warm_tunnels(others)
        except Exception as exc:
            log.warning("could not resolve the other hosts' underlay addresses: %s", exc)

    def sync_until_ready(self) -> None:
        """Retry ``sync_once`` with backoff until it works or the driver stops."""
        delay = 0.5
        while not self._stopping.is_set():
            try:
                self.sync_once()
            except Exception as exc:
                reason = exc.message if isinstance(exc, QingluanError) else repr(exc)
                self.guard.set_starting(reason)
                log.warning("start-up not done (%s); retrying in %.1f s", reason, delay)
                self._stopping.wait(delay)
                delay = min(delay * 2, self.config.retry_max)
                continue
            self.guard.set_ready()
            log.info("driver ready")
            break
        self._start_ids()
        self.resync_forever()

    def _start_ids(self) -> None:
        if self.ids is None or self._stopping.is_set():
            return
        try:
            self.ids.start()
        except Exception as exc:  # networking goes on without it
            reason = exc.message if isinstance(exc, QingluanError) else repr(exc)
            log.error("the IDS (%s) did not start: %s", self.ids.kind, reason)

    def resync_forever(self) -> None:
        """Repeat ``sync_once`` every ``resync_interval`` s; failures are logged, not fatal.

        With a userspace underlay, also check it every second: an ovs-vswitchd
        restart takes the underlay address off ``br-qlphy`` and every tunnel with
        it, which should not wait for the next full sync."""
        interval = self.config.resync_interval
        tick = UNDERLAY_CHECK_INTERVAL if self.host_ops.has_underlay() else interval
        settings_every = self.config.settings_interval
        if settings_every > 0:
            tick = min(tick, settings_every)
        due = time.monotonic() + interval
        settings_due = time.monotonic() + settings_every
        while interval > 0 and not self._stopping.wait(min(tick, interval)):
            if settings_every > 0 and time.monotonic() >= settings_due:
                settings_due = time.monotonic() + settings_every
                self.sync_monitoring()
            if time.monotonic() < due and self.host_ops.underlay_ok():
                continue
            due = time.monotonic() + interval
            try:
                report = self.sync_once()
            except Exception as exc:
                reason = exc.message if isinstance(exc, QingluanError) else repr(exc)
                log.warning("periodic resync failed (%s); next in %.0f s", reason, interval)
                continue
            if report.links_removed or report.ports_removed or report.nat_changed:
                log.info("periodic resync changed the host's plumbing")

    # ---- serving ----

    def apps(self, executor: ThreadPoolExecutor) -> dict[Path, PluginApp]:
        cfg = self.config
        return {
            cfg.network_socket: PluginApp(
                cfg.network_plugin, network_driver_routes(self.network_driver), executor
            ),
            cfg.ipam_socket: PluginApp(
                cfg.ipam_plugin, ipam_driver_routes(self.ipam_driver), executor
            ),
        }

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Serve until ``stop`` is set (or SIGTERM/SIGINT when run from the main thread)."""
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        handled: list[signal.Signals] = []
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
                handled.append(sig)
        executor = ThreadPoolExecutor(self.config.workers, thread_name_prefix="ql-call")
        syncer = threading.Thread(target=self.sync_until_ready, name="ql-startup", daemon=True)
        if self.learner is not None:
            self.learner.start()
        try:
            await serve_plugins(self.apps(executor), stop, ready=syncer.start)
        finally:
            self._stopping.set()
            for sig in handled:
                loop.remove_signal_handler(sig)
            executor.shutdown(wait=False, cancel_futures=True)
            if syncer.is_alive():
                syncer.join(timeout=5)
            if self.learner is not None:
                self.learner.stop(timeout=5)
            if self.ids is not None:
                self.ids.close()
            self.network_driver.close()  # endpoint removals still running finish first
            log.info("driver stopped")


def run_driver(config: DriverConfig) -> None:
    """Run the driver until SIGTERM/SIGINT (the entry point for ``qingluan driver``)."""
    try:
        driver = Driver.from_config(config)
        asyncio.run(driver.run())
    except QingluanError as exc:  # e.g. the socket is served by a driver already running
        raise SystemExit(f"qingluan driver: {exc.message}") from None
