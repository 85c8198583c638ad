"""The bridge's sFlow/NetFlow/IPFIX export: the exact ovs-vsctl arguments, then the same
arguments run against a real, throwaway ovsdb-server (no ovs-vswitchd: only the
database has to take them)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from qingluan.driver.host.monitoring import collector_target, export_commands, sflow_targets
from qingluan.model import MonitoringSettings
from tests.support.ovsdb_server import Vsctl, ovsdb_server

URL = "http://10.0.0.5:6680"


def settings(**doc: Any) -> MonitoringSettings:
    return MonitoringSettings.model_validate(doc)


# ---- targets -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("http://10.0.0.5:6680", "10.0.0.5:6343"),
        ("https://10.0.0.5", "10.0.0.5:6343"),
        ("http://localhost:6680", "127.0.0.1:6343"),
        ("http://LocalHost:6680", "127.0.0.1:6343"),
        ("http://[fd00::5]:6680", "[fd00::5]:6343"),
        ("http://controller.example:6680", "controller.example:6343"),
        ("", "127.0.0.1:6343"),
    ],
)
def test_the_embedded_collector_is_the_controllers_host(url: str, target: str) -> None:
    assert collector_target(url, 6343) == target


def test_sflow_targets() -> None:
    assert sflow_targets(settings(collector_port=16343), URL) == ["10.0.0.5:16343"]
    own = settings(sflow={"targets": ["192.0.2.7:6343", "[fd00::7]:6343"]})
    assert sflow_targets(own, URL) == ["192.0.2.7:6343", "[fd00::7]:6343"]
    assert (
        sflow_targets(settings(sflow={"enabled": False, "targets": ["192.0.2.7:6343"]}), URL) == []
    )


# ---- the arguments -------------------------------------------------------------------


def test_defaults_export_sflow_to_the_controller_and_clear_the_rest() -> None:
    assert export_commands("br-ql", MonitoringSettings(), URL) == [
        "--",
        "--id=@sflow",
        "create",
        "sflow",
        'targets=["10.0.0.5:6343"]',
        "sampling=400",
        "polling=10",
        "header=128",
        "--",
        "set",
        "bridge",
        "br-ql",
        "sflow=@sflow",
        "--",
        "clear",
        "bridge",
        "br-ql",
        "netflow",
        "--",
        "clear",
        "bridge",
        "br-ql",
        "ipfix",
    ]


def test_every_kind_with_its_targets_and_the_agent() -> None:
    wanted = settings(
        sflow={
            "targets": ["192.0.2.7:6343", "[fd00::7]:6343"],
            "sampling": 64,
            "polling": 2,
            "header": 96,
        },
        netflow={"targets": ["192.0.2.8:2055"], "active_timeout": 30},
        ipfix={"targets": ["192.0.2.9:4739", "192.0.2.10:4739"], "sampling": 100},
    )
    assert export_commands("br0", wanted, "http://localhost:6680", agent="fd00::9") == [
        "--",
        "--id=@sflow",
        "create",
        "sflow",
        'targets=["192.0.2.7:6343","[fd00::7]:6343"]',
        "sampling=64",
        "polling=2",
        "header=96",
        'agent="fd00::9"',
        "--",
        "set",
        "bridge",
        "br0",
        "sflow=@sflow",
        "--",
        "--id=@netflow",
        "create",
        "netflow",
        'targets=["192.0.2.8:2055"]',
        "active_timeout=30",
        "--",
        "set",
        "bridge",
        "br0",
        "netflow=@netflow",
        "--",
        "--id=@ipfix",
        "create",
        "ipfix",
        'targets=["192.0.2.9:4739","192.0.2.10:4739"]',
        "sampling=100",
        "--",
        "set",
        "bridge",
        "br0",
        "ipfix=@ipfix",
    ]


def test_disabled_sflow_is_cleared_even_with_targets() -> None:
    off = settings(sflow={"enabled": False, "targets": ["192.0.2.7:6343"]})
    assert export_commands("br0", off, URL, agent="eth0") == [
        "--",
        "clear",
        "bridge",
        "br0",
        "sflow",
        "--",
        "clear",
        "bridge",
        "br0",
        "netflow",
        "--",
        "clear",
        "bridge",
        "br0",
        "ipfix",
    ]


def test_an_ipv6_controller_gets_a_bracketed_default_target() -> None:
    args = export_commands("br0", settings(collector_port=7000), "http://[fd00::5]:6680")
    assert args[4] == 'targets=["[fd00::5]:7000"]'
    assert not any(a.startswith("agent=") for a in args)  # Open vSwitch's choice


# ---- a real OVSDB takes them ---------------------------------------------------------


@pytest.fixture
def vsctl() -> Iterator[Vsctl]:
    """``ovs-vsctl --no-wait`` against a fresh database with bridge br0."""
    with ovsdb_server("br0") as server:
        yield server.vsctl


def _value(cell: Any) -> Any:
    """An OVSDB JSON cell as Python: sets as sets, maps as dicts, uuids as strings."""
    if isinstance(cell, list) and cell and cell[0] == "set":
        return {_value(c) for c in cell[1]}
    if isinstance(cell, list) and cell and cell[0] == "map":
        return {_value(k): _value(v) for k, v in cell[1]}
    if isinstance(cell, list) and cell and cell[0] == "uuid":
        return cell[1]
    return cell


def rows(vsctl: Vsctl, table: str) -> list[dict[str, Any]]:
    doc = json.loads(vsctl("--format=json", "list", table))
    return [
        {h: _value(c) for h, c in zip(doc["headings"], row, strict=True)} for row in doc["data"]
    ]


def bridge_refs(vsctl: Vsctl) -> dict[str, Any]:
    (bridge,) = rows(vsctl, "bridge")
    return {k: bridge[k] for k in ("sflow", "netflow", "ipfix")}


def as_set(value: Any) -> set[Any]:
    return value if isinstance(value, set) else {value}


def test_ovsdb_takes_every_kind_with_an_ipv6_agent_and_targets(vsctl: Vsctl) -> None:
    wanted = settings(
        sflow={"targets": ["192.0.2.7:6343", "[fd00::7]:6343"], "sampling": 64, "polling": 2},
        netflow={"targets": ["192.0.2.8:2055"], "active_timeout": 30},
        ipfix={"targets": ["192.0.2.9:4739", "192.0.2.10:4739"], "sampling": 100},
    )
    vsctl(*export_commands("br0", wanted, URL, agent="fd00::9"))
    (sflow,) = rows(vsctl, "sflow")
    assert as_set(sflow["targets"]) == {"192.0.2.7:6343", "[fd00::7]:6343"}
    assert (sflow["sampling"], sflow["polling"], sflow["header"]) == (64, 2, 128)
    assert sflow["agent"] == "fd00::9"
    (netflow,) = rows(vsctl, "netflow")
    assert as_set(netflow["targets"]) == {"192.0.2.8:2055"} and netflow["active_timeout"] == 30
    (ipfix,) = rows(vsctl, "ipfix")
    assert as_set(ipfix["targets"]) == {"192.0.2.9:4739", "192.0.2.10:4739"}
    assert ipfix["sampling"] == 100
    assert bridge_refs(vsctl) == {
        "sflow": sflow["_uuid"],
        "netflow": netflow["_uuid"],
        "ipfix": ipfix["_uuid"],
    }


def test_ovsdb_takes_the_default_target_and_a_device_agent(vsctl: Vsctl) -> None:
    vsctl(
        *export_commands(
            "br0", settings(collector_port=16343), "http://[fd00::5]:6680", agent="eth0"
        )
    )
    (sflow,) = rows(vsctl, "sflow")
    assert as_set(sflow["targets"]) == {"[fd00::5]:16343"} and sflow["agent"] == "eth0"
    assert (sflow["sampling"], sflow["polling"], sflow["header"]) == (400, 10, 128)
    assert rows(vsctl, "netflow") == [] and rows(vsctl, "ipfix") == []


def test_applying_again_replaces_and_turning_off_clears(vsctl: Vsctl) -> None:
    on = settings(netflow={"targets": ["192.0.2.8:2055"]}, ipfix={"targets": ["192.0.2.9:4739"]})
    vsctl(*export_commands("br0", on, URL))
    first = bridge_refs(vsctl)["sflow"]
    vsctl(
        *export_commands(
            "br0",
            settings(sflow={"sampling": 32}, **on.model_dump(include={"netflow", "ipfix"})),
            URL,
        )
    )
    (sflow,) = rows(vsctl, "sflow")  # the old row went with its last reference
    assert sflow["sampling"] == 32 and sflow["_uuid"] != first
    assert len(rows(vsctl, "netflow")) == len(rows(vsctl, "ipfix")) == 1
    vsctl(*export_commands("br0", settings(sflow={"enabled": False}), URL))
    assert bridge_refs(vsctl) == {"sflow": set(), "netflow": set(), "ipfix": set()}
    assert rows(vsctl, "sflow") == rows(vsctl, "netflow") == rows(vsctl, "ipfix") == []
