"""``--uplink PHYSNET:NIC``: parsing, the default-route refusal and ``LinuxHost.ensure_uplink``."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from qingluan import names
from qingluan.cli import build_parser
from qingluan.driver.host.commands import HostError, Runner
from qingluan.driver.host.plumbing import LinuxHost, network_uplink, plan_sweep
from qingluan.driver.main import config_from_args
from qingluan.driver.uplinks import carries_default_route, parse_uplink, parse_uplinks
from qingluan.model import DatapathType, Network, NetworkModel

# ---- parsing -------------------------------------------------------------------------


def test_parse_uplinks() -> None:
    assert parse_uplink("physnet1:eth1") == ("physnet1", "eth1")
    assert parse_uplinks(["physnet1:eth1", "lan-2:enp3s0f1"]) == {
        "physnet1": "eth1",
        "lan-2": "enp3s0f1",
    }
    assert parse_uplinks([]) == {}


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        (["eth1"], "--uplink 'eth1': expected PHYSNET:NIC, e.g. --uplink physnet1:eth1"),
        ([":eth1"], "--uplink ':eth1': physical network name '' must be 1-64 letters"),
        (["physnet1:"], "--uplink 'physnet1:': the NIC name is empty"),
        (["phys net:eth1"], "physical network name 'phys net' must be"),
        (["physnet1:eth1:2"], "NIC name 'eth1:2' is not a valid interface name"),
        (["physnet1:a/b"], "NIC name 'a/b' is not a valid interface name"),
        (["physnet1:" + "e" * 16], "is longer than 15 characters"),
        (["physnet1:qlv123"], "starts with a prefix qingluan uses for its own devices"),
        (
            ["physnet1:eth1", "physnet1:eth2"],
            "--uplink 'physnet1:eth2': physical network physnet1 already has uplink eth1",
        ),
        (["physnet1:eth1", "lan:eth1"], "--uplink 'lan:eth1': eth1 is already the uplink of "),
    ],
)
def test_malformed_uplinks_are_refused(specs: list[str], message: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_uplinks(specs)
    assert message in str(err.value)


def test_cli_uplink_flag_reaches_the_config() -> None:
    parser = build_parser()
    args = parser.parse_args(["driver", "--uplink", "physnet1:eth1", "--uplink", "lan2:eth2"])
    assert config_from_args(args).uplinks == {"physnet1": "eth1", "lan2": "eth2"}
    assert config_from_args(parser.parse_args(["driver"])).uplinks == {}


def test_cli_malformed_uplink_exits_with_the_reason() -> None:
    args = build_parser().parse_args(["driver", "--uplink", "eth1"])
    with pytest.raises(SystemExit, match="qingluan driver: --uplink 'eth1': expected PHYSNET:NIC"):
        config_from_args(args)


# ---- the default route ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("routes", "nic", "carries"),
    [
        ("default via 10.0.2.2 dev eth0 proto dhcp src 10.0.2.15 metric 100\n", "eth0", True),
        ("default via 10.0.2.2 dev eth0 proto dhcp metric 100\n", "eth1", False),
        ("default via 10.0.2.2 dev eth10\n", "eth1", False),  # whole words only
        ("", "eth0", False),
        (
            "default proto static metric 100\n"
            "\tnexthop via 10.0.0.1 dev eth0 weight 1\n"
            "\tnexthop via 10.0.1.1 dev eth1 weight 1\n",
            "eth1",
            True,
        ),
        ("default via fe80::1 dev eth2 proto ra metric 1024 pref medium\n", "eth2", True),
    ],
)
def test_carries_default_route(routes: str, nic: str, carries: bool) -> None:
    assert carries_default_route(routes, nic) is carries


# ---- LinuxHost.ensure_uplink with fakes ----------------------------------------------


class RouteRunner(Runner):
    def __init__(self, v4: str = "", v6: str = "") -> None:
        super().__init__()
        self.v4, self.v6 = v4, v6

    def run(self, cmd: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        assert list(cmd[-3:]) == ["route", "show", "default"], cmd
        out = self.v6 if "-6" in cmd else self.v4
        return subprocess.CompletedProcess(list(cmd), 0, out, "")


class FakeLinks:
    def __init__(self, present: set[str]) -> None:
        self.present = present
        self.up: list[str] = []

    def get(self, name: str) -> object | None:
        return object() if name in self.present else None

    def set(self, name: str, *, up: bool = False, **kw: object) -> None:
        if up:
            self.up.append(name)


class FakeOvs:
    def __init__(self) -> None:
        self.ports: dict[str, dict[str, str]] = {}

    def userspace_tso_enabled(self) -> bool:
        return False

    def add_port(self, bridge: str, port: str, external_ids: Mapping[str, str]) -> None:
        self.ports[port] = dict(external_ids)  # --may-exist: a repeat just sets them again


class FakeTuning:
    def __init__(self) -> None:
        self.off: list[str] = []
        self.sysctls: dict[str, str] = {}

    def tx_offload_off(self, dev: str) -> None:
        self.off.append(dev)

    def sysctl(self, key: str, value: str, *, missing_ok: bool = False) -> None:
        self.sysctls[key] = value

    def device_sysctls(self, dev: str, values: dict[str, str]) -> None:
        for name, value in values.items():
            family, _, leaf = name.partition("/")
            self.sysctls[f"net.{family}.conf.{dev}.{leaf}"] = value


def linux_host(
    present: set[str], *, v4: str = "", v6: str = "", datapath: DatapathType = DatapathType.NETDEV
) -> tuple[LinuxHost, FakeOvs, FakeLinks, FakeTuning]:
    host = LinuxHost(datapath_type=datapath, userspace_tso=False)
    ovs, links, tuning = FakeOvs(), FakeLinks(present), FakeTuning()
    host.runner = RouteRunner(v4, v6)
    host.ovs = ovs  # type: ignore[assignment]
    host.links = links  # type: ignore[assignment]
    host.tuning = tuning  # type: ignore[assignment]
    return host, ovs, links, tuning


def test_ensure_uplink_attaches_the_nic_idempotently() -> None:
    host, ovs, links, tuning = linux_host({"eth0", "eth1"}, v4="default via 10.0.2.2 dev eth0\n")
    host.ensure_uplink("physnet1", "eth1")
    host.ensure_uplink("physnet1", "eth1")
    assert ovs.ports == {"eth1": {"qingluan-owner": "qingluan", "qingluan-uplink": "physnet1"}}
    assert links.up == ["eth1", "eth1"]
    assert tuning.off == ["eth1", "eth1"]  # netdev without userspace TSO
    # the host's stack stays out of the NIC it gave to OVS
    assert tuning.sysctls["net.ipv4.conf.eth1.arp_ignore"] == "1"
    assert tuning.sysctls["net.ipv6.conf.eth1.disable_ipv6"] == "1"


def test_ensure_uplink_keeps_offloads_on_the_system_datapath() -> None:
    host, ovs, _, tuning = linux_host({"eth1"}, datapath=DatapathType.SYSTEM)
    host.ensure_uplink("physnet1", "eth1")
    assert "eth1" in ovs.ports and tuning.off == []


@pytest.mark.parametrize(
    ("v4", "v6"), [("default via 10.0.2.2 dev eth1\n", ""), ("", "default via fe80::1 dev eth1\n")]
)
def test_ensure_uplink_refuses_the_default_route_nic(v4: str, v6: str) -> None:
    host, ovs, links, _ = linux_host({"eth1"}, v4=v4, v6=v6)
    with pytest.raises(HostError, match="carries this host's default route"):
        host.ensure_uplink("physnet1", "eth1")
    assert ovs.ports == {} and links.up == []


def test_ensure_uplink_refuses_a_missing_nic() -> None:
    host, ovs, _, _ = linux_host(set())
    with pytest.raises(HostError, match="uplink eth1 of physical network physnet1 does not exist"):
        host.ensure_uplink("physnet1", "eth1")
    assert ovs.ports == {}


# ---- the sweep -----------------------------------------------------------------------


def flat(network_id: str, options: dict[str, str]) -> Network:
    return Network(
        id=network_id,
        key=1,
        host="h",
        model=NetworkModel.FLAT,
        pool_id="flat_192.168.159.0_24",
        subnet="192.168.159.0/24",
        gateway="192.168.159.1",
        gateway_mac="52:4c:00:00:00:01",
        options=options,
    )


def test_sweep_keeps_and_re_ensures_uplinks() -> None:
    a = flat("a" * 64, {"physnet": "physnet1", "uplink": "eth1"})
    b = flat("b" * 64, {"physnet": "physnet1", "uplink": "eth1"})
    c = flat("c" * 64, {})
    assert network_uplink(c) is None
    stray = names.endpoint_port("9" * 64)
    plan = plan_sweep([], ["eth1", "eth7", stray], [a, b, c], [])
    assert plan.ensure_uplinks == [("physnet1", "eth1")]  # once, though two networks use it
    assert plan.remove_ports == [stray]  # uplinks (and any non-qingluan port) are never removed
