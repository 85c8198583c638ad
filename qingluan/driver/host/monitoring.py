"""The bridge's traffic export (OVSDB ``sFlow``, ``NetFlow``, ``IPFIX``) from the controller's
settings.

``export_commands`` is pure: the one ``ovs-vsctl`` transaction that makes the bridge
export exactly what the settings say (a new row per kind, or the column cleared).
sFlow with no targets of its own goes to the controller's embedded collector, at the
controller's address as this driver reaches it. The agent address (the source the
collector attributes samples to) is ``agent`` if given, else Open vSwitch's choice: the
address of the route towards the first target.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from qingluan.model import MonitoringSettings


def _quoted(targets: list[str]) -> str:
    return "[" + ",".join(f'"{t}"' for t in targets) + "]"


def _target(host: str, port: int) -> str:
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"


def collector_target(controller_url: str, port: int) -> str:
    """The embedded collector: the controller's host, the collector's UDP port."""
    host = urlsplit(controller_url).hostname or "127.0.0.1"
    if host == "localhost":
        host = "127.0.0.1"
    return _target(host, port)


def sflow_targets(settings: MonitoringSettings, controller_url: str) -> list[str]:
    if not settings.sflow.enabled:
        return []
    if settings.sflow.targets:
        return list(settings.sflow.targets)
    return [collector_target(controller_url, settings.collector_port)]


def export_commands(
    bridge: str, settings: MonitoringSettings, controller_url: str, agent: str | None = None
) -> list[str]:
    """``ovs-vsctl`` arguments (one transaction) for sFlow, NetFlow and IPFIX on ``bridge``."""
    s, n, i = settings.sflow, settings.netflow, settings.ipfix
    sflow_columns = [f"sampling={s.sampling}", f"polling={s.polling}", f"header={s.header}"]
    if agent:
        sflow_columns.append(f'agent="{agent}"')  # quoted: an IPv6 address has colons
    args: list[str] = []
    for table, targets, columns in (
        ("sflow", sflow_targets(settings, controller_url), sflow_columns),
        ("netflow", list(n.targets), [f"active_timeout={n.active_timeout}"]),
        ("ipfix", list(i.targets), [f"sampling={i.sampling}"]),
    ):
        if not targets:
            args += ["--", "clear", "bridge", bridge, table]
            continue
        args += ["--", f"--id=@{table}", "create", table, f"targets={_quoted(targets)}", *columns]
        args += ["--", "set", "bridge", bridge, f"{table}=@{table}"]
    return args
