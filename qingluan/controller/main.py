"""The controller process: store, services, reconciler, os-ken and the REST API.

os-ken's AppManager runs in a daemon thread (OpenFlow listener); uvicorn
serves the REST API in the main thread and owns SIGTERM/SIGINT. Both share
one ``Services`` and one ``Reconciler``; nothing lives in module globals.
"""

from __future__ import annotations

import argparse
import logging

import uvicorn
from pydantic import ValidationError

from qingluan.controller.api import create_app
from qingluan.controller.app import start_openflow
from qingluan.controller.auth import load_or_create_token
from qingluan.controller.config import ControllerConfig, parse_pool_ranges
from qingluan.controller.ids import IdsService, QuarantineKeeper
from qingluan.controller.metrics import ClusterView, Metrics
from qingluan.controller.pipeline import compute_bridge
from qingluan.controller.reconciler import Reconciler
from qingluan.controller.services import Services, StoreState
from qingluan.controller.store import SqliteStore
from qingluan.model import Endpoint, Network

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
        )
    except (ValidationError, ValueError) as exc:
        raise SystemExit(f"qingluan controller: invalid configuration: {exc}") from None


def run_controller(config: ControllerConfig) -> None:
    config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = load_or_create_token(config.token_path)
    store = SqliteStore.in_state_dir(config.state_dir)
    metrics = Metrics()
    reconciler = Reconciler(
        StoreState(store),
        compute_bridge,
        resync_interval=config.resync_interval or None,
        on_reconcile=metrics.reconcile,
    )
    services = Services.from_config(store, reconciler, config)
    ids = IdsService(store, reconciler, converge_timeout=config.converge_timeout, observer=metrics)
    metrics.quarantines_active(len(ids.list_quarantines()))
    keeper = QuarantineKeeper(ids)
    metrics.watch_cluster(cluster_view(services, reconciler))
    try:
        start_openflow(reconciler, config.openflow_host, config.openflow_port)
        keeper.start()
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(services, token, ids=ids, metrics=metrics),
                host=config.api_host,
                port=config.api_port,
                log_level="warning",
                access_log=False,
            )
        )
        log.info("REST API on %s", config.api_url)
        server.run()
    finally:
        keeper.close()
        reconciler.close()
        store.close()


def cluster_view(services: Services, reconciler: Reconciler) -> ClusterView:
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
    )
