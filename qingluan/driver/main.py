"""Glue between ``qingluan driver`` (``qingluan/cli.py``) and the driver process."""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

from qingluan.driver.client import DEFAULT_URL
from qingluan.driver.host.tunnel import parse_underlay_address
from qingluan.driver.learner import default_docker_host
from qingluan.driver.service import DriverConfig, run_driver
from qingluan.driver.uplinks import parse_uplinks
from qingluan.model import DatapathType

__all__ = ["DriverConfig", "config_from_args", "run_driver"]


def config_from_args(args: argparse.Namespace) -> DriverConfig:
    """A ``DriverConfig`` from the CLI's parsed flags; absent flags keep the defaults.
    A malformed ``--uplink`` exits with the reason."""
    defaults = DriverConfig(host="-")

    def get(name: str, default: object) -> object:
        value = getattr(args, name, None)
        return default if value is None else value

    datapath = str(get("datapath", "auto"))
    netns = getattr(args, "netns", None)
    address = getattr(args, "underlay_address", None)
    try:
        uplinks = parse_uplinks(getattr(args, "uplink", None) or [])
        if address:
            address = str(parse_underlay_address(str(address)))
    except ValueError as exc:
        raise SystemExit(f"qingluan driver: {exc}") from None
    nic = getattr(args, "underlay_nic", None)
    rules = tuple(Path(r) for r in (getattr(args, "ids_rules", None) or []))
    for rule_file in rules:
        if not rule_file.is_file():
            raise SystemExit(f"qingluan driver: --ids-rules {rule_file}: no such file")
    if rules and getattr(args, "ids", None) != "suricata":
        raise SystemExit("qingluan driver: --ids-rules is for --ids suricata")
    agent = getattr(args, "sflow_agent", None)
    return DriverConfig(
        host=str(get("host_name", socket.gethostname())),
        controller_url=str(get("controller", os.environ.get("QINGLUAN_CONTROLLER") or DEFAULT_URL)),
        token_file=Path(str(get("token_file", defaults.token_file))),
        openflow_target=str(get("openflow_target", defaults.openflow_target)),
        bridge=str(get("bridge", defaults.bridge)),
        ovsdb=getattr(args, "ovsdb", None),
        plugin_dir=Path(str(get("plugin_dir", defaults.plugin_dir))),
        chain_prefix=str(get("chain_prefix", defaults.chain_prefix)),
        datapath_type=None if datapath == "auto" else DatapathType(datapath),
        underlay_address=str(address) if address else None,
        underlay_nic=str(nic) if nic else None,
        netns=str(netns) if netns else None,
        docker_host=str(get("docker_host", default_docker_host())),
        resync_interval=float(str(get("resync_interval", defaults.resync_interval))),
        uplinks=uplinks,
        ids=getattr(args, "ids", None),
        ids_rules=rules,
        ids_dir=Path(str(get("ids_dir", defaults.ids_dir))),
        sflow_agent=str(agent) if agent else None,
        settings_interval=float(str(get("settings_interval", defaults.settings_interval))),
        ovs_rcvbuf=int(str(get("ovs_rcvbuf", defaults.ovs_rcvbuf))),
    )
