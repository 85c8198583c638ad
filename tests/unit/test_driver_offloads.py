"""The veth TX offload decision: userspace datapath, userspace TSO, tunnelled ports.

The decision itself is pure (``tx_offload_off_needed``); the rest checks with
recording fakes that ``LinuxHost`` reads the OVS key once per bridge ensure
and turns offloads off exactly when the decision says so.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from typing import Any

import pytest

from qingluan.driver.host.commands import Runner
from qingluan.driver.host.ovs import Ovs, parse_ovs_bool
from qingluan.driver.host.plumbing import LinuxHost, tx_offload_off_needed
from qingluan.model import DatapathType, Network, NetworkModel
from qingluan.modes import is_tunnelled

NETDEV, SYSTEM = DatapathType.NETDEV, DatapathType.SYSTEM


@pytest.mark.parametrize(
    ("datapath", "tso", "tunnelled", "off"),
    [
        (NETDEV, False, False, True),  # the checksum trap: TCP needs tx off
        (NETDEV, False, True, True),
        (NETDEV, True, False, False),  # userspace TSO: offloads stay on
        (NETDEV, True, True, True),  # OVS 3.1 drops tunnelled packets with offload flags
        (SYSTEM, False, False, False),  # the kernel datapath needs nothing
        (SYSTEM, True, True, False),
    ],
)
def test_decision(datapath: DatapathType, tso: bool, tunnelled: bool, off: bool) -> None:
    assert tx_offload_off_needed(datapath, userspace_tso=tso, tunnelled=tunnelled) is off


def network(model: NetworkModel) -> Network:
    return Network(
        id="a" * 64,
        key=1,
        host="h",
        model=model,
        pool_id="p",
        subnet="10.210.1.0/24",
        gateway="10.210.1.1",
        gateway_mac="52:4c:00:00:00:01",
    )


def test_only_vxlan_is_tunnelled() -> None:
    assert is_tunnelled(network(NetworkModel.VXLAN))
    for model in (NetworkModel.NAT, NetworkModel.NONAT, NetworkModel.FLAT, NetworkModel.VLAN):
        assert not is_tunnelled(network(model))


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("", False),  # key missing: ovs-vsctl --if-exists prints nothing
        ("\n", False),
        ('"true"\n', True),
        ("true", True),
        ('"TRUE"', True),
        ('"false"', False),
        ('"yes"', False),  # like OVS's smap_get_bool: only "true" is true
        ('"1"', False),
    ],
)
def test_parse_ovs_bool(raw: str, value: bool) -> None:
    assert parse_ovs_bool(raw) is value


def test_parse_ovs_bool_with_a_true_default() -> None:
    assert parse_ovs_bool("", default=True)
    assert parse_ovs_bool('"yes"', default=True)
    assert not parse_ovs_bool('"False"', default=True)


class FakeRunner(Runner):
    """Answers ``ovs-vsctl ... get Open_vSwitch . other_config:...`` with ``value``."""

    def __init__(self, value: str) -> None:
        super().__init__()
        self.value = value
        self.calls: list[list[str]] = []

    def run(self, cmd: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(cmd))
        return subprocess.CompletedProcess(list(cmd), 0, self.value, "")


def test_ovs_reads_the_key_and_a_missing_key_is_false() -> None:
    runner = FakeRunner('"true"\n')
    assert Ovs(runner, db="unix:/x.sock").userspace_tso_enabled()
    (cmd,) = runner.calls
    assert cmd[0] == "ovs-vsctl" and "--db=unix:/x.sock" in cmd
    assert cmd[-5:] == [
        "--if-exists",
        "get",
        "Open_vSwitch",
        ".",
        "other_config:userspace-tso-enable",
    ]
    assert not Ovs(FakeRunner("\n")).userspace_tso_enabled()


class FakeOvs:
    def __init__(self, tso: bool) -> None:
        self.tso = tso
        self.reads = 0

    def userspace_tso_enabled(self) -> bool:
        self.reads += 1
        return self.tso

    def ensure_bridge(self, name: str, **kw: object) -> int:
        return 1


class FakeLinks:
    def get(self, name: str) -> object | None:
        return None if name.startswith("gone") else object()


class FakeTuning:
    def __init__(self) -> None:
        self.off: list[str] = []

    def tx_offload_off(self, dev: str) -> None:
        self.off.append(dev)


def linux_host(
    datapath: DatapathType, ovs_tso: bool, fixed: bool | None = None
) -> tuple[LinuxHost, FakeOvs, FakeTuning]:
    host = LinuxHost(datapath_type=datapath, userspace_tso=fixed)
    fake_ovs, tuning = FakeOvs(ovs_tso), FakeTuning()
    host.ovs = fake_ovs  # type: ignore[assignment]
    host.links = FakeLinks()  # type: ignore[assignment]
    host.tuning = tuning  # type: ignore[assignment]
    return host, fake_ovs, tuning


def test_tso_off_turns_offloads_off_on_present_devices() -> None:
    host, ovs, tuning = linux_host(NETDEV, ovs_tso=False)
    host.ensure_bridge("tcp:127.0.0.1:6653")
    host._offloads("qlvA", "gone-peer")
    assert tuning.off == ["qlvA"]
    assert ovs.reads == 1 and not host.userspace_tso


def test_tso_on_keeps_offloads_except_for_tunnelled_ports() -> None:
    host, ovs, tuning = linux_host(NETDEV, ovs_tso=True)
    host.ensure_bridge("tcp:127.0.0.1:6653")
    host._offloads("qlvA", "qlcA")
    assert tuning.off == []
    host._offloads("qlvB", "qlcB", tunnelled=True)
    assert tuning.off == ["qlvB", "qlcB"]
    assert ovs.reads == 1  # read at the bridge ensure, not per veth


def test_the_key_is_read_again_at_every_bridge_ensure() -> None:
    host, ovs, _ = linux_host(NETDEV, ovs_tso=False)
    host.ensure_bridge("t")
    ovs.tso = True
    host.ensure_bridge("t")
    assert ovs.reads == 2 and host.userspace_tso


def test_read_lazily_without_a_bridge_ensure() -> None:
    host, ovs, tuning = linux_host(NETDEV, ovs_tso=True)
    host._offloads("qlvA")
    host._offloads("qlvB")
    assert tuning.off == [] and ovs.reads == 1


def test_a_fixed_value_is_never_read() -> None:
    host, ovs, tuning = linux_host(NETDEV, ovs_tso=True, fixed=False)
    host.ensure_bridge("t")
    host._offloads("qlvA")
    assert tuning.off == ["qlvA"] and ovs.reads == 0


def test_system_datapath_neither_reads_nor_touches_offloads() -> None:
    host, ovs, tuning = linux_host(SYSTEM, ovs_tso=False)
    host.ensure_bridge("t")
    host._offloads("qlvA", tunnelled=True)
    assert tuning.off == [] and ovs.reads == 0 and not host.userspace_tso
