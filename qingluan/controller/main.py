"""The controller process: store, services, reconciler, os-ken and the REST API.

os-ken's AppManager runs in a daemon thread (OpenFlow listener); uvicorn
serves the REST API in the main thread and owns SIGTERM/SIGINT. Both share
one ``Services`` and one ``Reconciler``; nothing lives in module globals.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Iterator
from functools import partial

import uvicorn
from pydantic import ValidationError

from qingluan.controller.api import create_app
from qingluan.controller.api_monitoring import monitoring_router
from qingluan.controller.app import start_openflow
from qingluan.controller.auth import load_or_create_token
from qingluan.controller.config import ControllerConfig, parse_pool_ranges
from qingluan.controller.ids import IdsService
from qingluan.controller.metrics import ClusterView, Metrics
from qingluan.controller.monitor.collector import SflowCollector
from qingluan.controller.monitor.reactions import Reactor, ThresholdEvent
from qingluan.controller.monitor.sflowrt import SflowRtClient, SflowRtPoller
from qingluan.controller.monitoring import (
    Cluster,
    MonitoringService,
)
from qingluan.controller.periodic import Periodic
from qingluan.controller.pipeline import compute_bridge
from qingluan.controller.reconciler import Reconciler
from qingluan.controller.services import Services, StoreState
from qingluan.controller.sflowrt_setup import RT_PREFIX, RtSetup, load_setup
from qingluan.controller.store import SqliteStore
from qingluan.model import Endpoint, Network, SteeringRule

log = logging.getLogger(__name__)


def config_from_args(args: argparse.Namespace) -> ControllerConfig:
    """A validated config from the CLI flags; a bad flag exits with the reason."""
    try:
        return ControllerConfig(
            state_dir=args.state_dir,
            api_host=args.api_host,
            api_port=args.api_port,
            openflow_host=args.openflow_host,
            openflow_port=args.openflow_port,
            pool_ranges=parse_pool_ranges(args.pool),
            resync_interval=args.resync_interval,
            sflow_host=getattr(args, "sflow_host", None),
            sflow_port=getattr(args, "sflow_port", 6343),
            sflow_rt_url=getattr(args, "sflow_rt", None),
            sflow_rt_config=getattr(args, "sflow_rt_config", None),
        )
    except (ValidationError, ValueError) as exc:
        raise SystemExit(f"qingluan controller: invalid configuration: {exc}") from None


def run_controller(config: ControllerConfig) -> None:
    config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = load_or_create_token(config.token_path)
    rt_setup = load_rt_setup(config)
    with contextlib.ExitStack() as stack:
        store = SqliteStore.in_state_dir(config.state_dir)
        stack.callback(store.close)
        metrics = Metrics()
        reconciler = Reconciler(
            StoreState(store),
            compute_bridge,
            resync_interval=config.resync_interval or None,
            on_reconcile=metrics.reconcile,
        )
        stack.callback(reconciler.close)
        services = Services.from_config(store, reconciler, config)
        ids = IdsService(
            store, reconciler, converge_timeout=config.converge_timeout, observer=metrics
        )
        metrics.quarantines_active(len(ids.list_quarantines()))
        monitoring = MonitoringService(
            store,
            lambda: cluster_of(services),
            services,
            collector_port=config.sflow_port,
            observer=metrics,
        )
        monitoring.reactor.sweep(services.list_steering())
        metrics.watch_cluster(cluster_view(services, reconciler, monitoring))
        start_openflow(reconciler, config.openflow_host, config.openflow_port)
        if config.sflow_port:
            collector = SflowCollector(
                monitoring.table,
                host=config.sflow_host or config.openflow_host,
                port=config.sflow_port,
                on_datagram=monitoring.on_datagram,
            )
            collector.start()
            stack.callback(collector.close)
            monitoring.collector = collector
        keeper = Periodic("ql-quarantines", 0.5, ids.expire)  # lift those whose time is up
        keeper.start()
        stack.callback(keeper.close)
        watch = Periodic("ql-thresholds", 1.0, monitoring.evaluate)
        watch.start()
        stack.callback(watch.close)
        stack.callback(monitoring.reactor.close)
        if config.sflow_rt_url is not None and rt_setup is not None:
            stack.enter_context(
                sflow_rt_poller(config.sflow_rt_url, rt_setup, services, monitoring)
            )
        app = create_app(
            services,
            token,
            ids=ids,
            metrics=metrics,
            extra=[partial(monitoring_router, monitoring)],
        )
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=config.api_host,
                port=config.api_port,
                log_level="warning",
                access_log=False,
            )
        )
        log.info("REST API on %s", config.api_url)
        server.run()


def load_rt_setup(config: ControllerConfig) -> RtSetup | None:
    if config.sflow_rt_url is None:
        if config.sflow_rt_config is not None:
            raise SystemExit("qingluan controller: --sflow-rt-config needs --sflow-rt URL")
        return None
    try:
        return load_setup(config.sflow_rt_config)
    except ValueError as exc:
        raise SystemExit(f"qingluan controller: {exc}") from None


@contextlib.contextmanager
def sflow_rt_poller(
    url: str, setup: RtSetup, services: Services, monitoring: MonitoringService
) -> Iterator[SflowRtPoller]:
    """Events of sFlow-RT at ``url`` into their own reactor (rules ``auto-rt-*``)."""
    reactor = Reactor(services, setup.reaction_list(), id_prefix=RT_PREFIX)
    reactor.sweep(services.list_steering())
    client = SflowRtClient(url)
    monitoring.rt_client = client
    poller = SflowRtPoller(
        client,
        _Observed(reactor, monitoring),
        setup.flow_specs(),
        setup.threshold_specs(),
    )
    poller.start()
    log.info("taking threshold events from sFlow-RT at %s", url)
    try:
        yield poller
    finally:
        poller.close()
        reactor.close()


class _Observed:
    """A reactor whose events are also counted and listed by the monitoring service."""

    def __init__(self, reactor: Reactor, monitoring: MonitoringService) -> None:
        self._reactor = reactor
        self._monitoring = monitoring

    def on_event(self, ev: ThresholdEvent) -> SteeringRule | None:
        self._monitoring.on_rt_event(ev)
        return self._reactor.on_event(ev)

    def expire(self, now: float | None = None) -> list[str]:
        return self._reactor.expire(now)


def cluster_of(services: Services) -> Cluster:
    return Cluster.of(
        [h.host for h in services.list_hosts()],
        services.list_networks(),
        services.list_endpoints(),
    )


def cluster_view(
    services: Services, reconciler: Reconciler, monitoring: MonitoringService
) -> ClusterView:
    """What ``/metrics`` reads at each scrape."""

    def hosts() -> list[str]:
        return [h.host.name for h in services.list_hosts()]

    def sizes(host: str) -> tuple[int, int]:
        m = reconciler.metrics(host)
        return m.desired_flows, m.desired_groups

    def endpoints() -> list[tuple[Endpoint, Network | None]]:
        networks = {n.id: n for n in services.list_networks()}
        return [(e, networks.get(e.network_id)) for e in services.list_endpoints()]

    return ClusterView(
        hosts=hosts,
        connected=reconciler.is_connected,
        bridge_sizes=sizes,
        endpoints=endpoints,
        port_counters=reconciler.port_counters,
        sflow_sent=monitoring.sent_by_endpoint,
        sflow_datagrams=monitoring.datagrams_by_host,
        sflow_decode_errors=monitoring.decode_errors,
    )
