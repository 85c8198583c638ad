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
from qingluan.controller.pipeline import compute_bridge
from qingluan.controller.reconciler import Reconciler
from qingluan.controller.services import Services, StoreState
from qingluan.controller.store import SqliteStore

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
    reconciler = Reconciler(
        StoreState(store),
        compute_bridge,
        resync_interval=config.resync_interval or None,
    )
    services = Services.from_config(store, reconciler, config)
    try:
        start_openflow(reconciler, config.openflow_host, config.openflow_port)
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(services, token),
                host=config.api_host,
                port=config.api_port,
                log_level="warning",
                access_log=False,
            )
        )
        log.info("REST API on %s", config.api_url)
        server.run()
    finally:
        reconciler.close()
        store.close()
