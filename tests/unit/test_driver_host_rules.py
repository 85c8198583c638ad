"""Pure parts of the host plumbing: iptables rules as data, the sweep plan, config glue."""

from __future__ import annotations

import argparse

import pytest

from qingluan import names
from qingluan.driver.host.iptables import Chains, desired_rules, restore_text
from qingluan.driver.host.plumbing import plan_sweep
from qingluan.driver.main import config_from_args
from qingluan.model import DatapathType, Endpoint, Network, NetworkModel, PortMapping, Protocol

NAT_ID = "a" * 64
NONAT_ID = "b" * 64
VLAN_ID = "c" * 64


def network(net_id: str, model: NetworkModel, subnet: str, **kw: object) -> Network:
    gw = subnet.rsplit(".", 1)[0] + ".1"
    return Network(
        id=net_id,
        key=1,
        host="h",
        model=model,
        pool_id="p",
        subnet=subnet,
        gateway=gw,
        gateway_mac="52:4c:00:00:00:01",
        **kw,
    )


def endpoint(ep_id: str, net_id: str, address: str, *maps: PortMapping) -> Endpoint:
    return Endpoint(
        id=ep_id,
        network_id=net_id,
        host="h",
        mac="52:45:00:00:00:01",
        address=address,
        port_name=names.endpoint_port(ep_id),
        port_mappings=maps,
    )


def tcp(host_port: int, port: int, host_ip: str = "", end: int | None = None) -> PortMapping:
    return PortMapping(
        proto=Protocol.TCP,
        container_port=port,
        host_port=host_port,
        host_port_end=end or host_port,
        host_ip=host_ip,
    )


NAT = network(NAT_ID, NetworkModel.NAT, "10.210.1.0/24")
NONAT = network(NONAT_ID, NetworkModel.NONAT, "10.210.2.0/24")
VLAN = network(VLAN_ID, NetworkModel.VLAN, "192.168.3.0/24", vni=100)


def test_chain_names_and_jumps():
    chains = Chains("QLTEST")
    assert [c for _, c in chains.all()] == [
        "QLTEST-POSTROUTING",
        "QLTEST-PREROUTING",
        "QLTEST-OUTPUT",
        "QLTEST-FORWARD",
        "QLTEST-INPUT",
    ]
    jumps = {(j.table, j.builtin): j.spec() for j in chains.jumps()}
    assert jumps[("nat", "PREROUTING")] == [
        "-m", "addrtype", "--dst-type", "LOCAL", "-j", "QLTEST-PREROUTING",
    ]  # fmt: skip
    assert jumps[("filter", "FORWARD")] == ["-j", "QLTEST-FORWARD"]
    with pytest.raises(ValueError):
        Chains("bad prefix")


def test_nothing_without_networks():
    rules = desired_rules("QL", [], [])
    assert all(v == [] for v in rules.values())


def test_nat_network_rules():
    ep = endpoint("e" * 64, NAT_ID, "10.210.1.7", tcp(8080, 80), tcp(53, 53, "127.0.0.1"))
    rules = desired_rules("QL", [NAT], [ep])
    gw = names.gateway_dev(NAT_ID)
    net_c = ("-m", "comment", "--comment", f"qingluan-network={NAT_ID[:12]}")
    ep_c = ("-m", "comment", "--comment", f"qingluan-endpoint={'e' * 12}")
    assert rules[("nat", "QL-POSTROUTING")] == [
        ("-s", "10.210.1.0/24", "!", "-o", gw, *net_c, "-j", "MASQUERADE"),
        ("-s", "10.210.1.0/24", "-o", gw, "-m", "conntrack", "--ctstate", "DNAT", *net_c,
         "-j", "MASQUERADE"),
        ("-s", "127.0.0.0/8", "-o", gw, *net_c, "-j", "MASQUERADE"),
    ]  # fmt: skip
    dnat = [
        ("-p", "tcp", "-m", "tcp", "--dport", "8080", *ep_c,
         "-j", "DNAT", "--to-destination", "10.210.1.7:80"),
        ("-d", "127.0.0.1/32", "-p", "tcp", "-m", "tcp", "--dport", "53", *ep_c,
         "-j", "DNAT", "--to-destination", "10.210.1.7:53"),
    ]  # fmt: skip
    assert rules[("nat", "QL-PREROUTING")] == dnat
    assert rules[("nat", "QL-OUTPUT")] == dnat
    fwd = rules[("filter", "QL-FORWARD")]
    assert fwd[0][:6] == ("-o", gw, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED")
    assert [r[-1] for r in fwd] == ["ACCEPT", "ACCEPT", "DROP", "ACCEPT"]


def test_port_range_uses_iptables_range_syntax():
    ep = endpoint("e" * 64, NAT_ID, "10.210.1.7", tcp(9000, 90, end=9010))
    rule = desired_rules("QL", [NAT], [ep])[("nat", "QL-PREROUTING")][0]
    assert rule[rule.index("--dport") + 1] == "9000:9010"


def test_nonat_internal_and_cross_host_models():
    internal = network("d" * 64, NetworkModel.NAT, "10.210.4.0/24", internal=True)
    ep = endpoint("f" * 64, internal.id, "10.210.4.5", tcp(8080, 80))
    rules = desired_rules("QL", [NAT, NONAT, VLAN, internal], [ep])
    fwd = rules[("filter", "QL-FORWARD")]
    for dev in (names.gateway_dev(NONAT_ID), names.gateway_dev(internal.id)):
        assert ("-i", dev) in [r[:2] for r in fwd if r[-1] == "DROP"]
        assert ("-o", dev) in [r[:2] for r in fwd if r[-1] == "DROP"]
    # isolation drops come before any nat egress accept
    first_accept_egress = next(i for i, r in enumerate(fwd) if r[0] == "-i" and r[-1] == "ACCEPT")
    assert all(i < first_accept_egress for i, r in enumerate(fwd) if r[-1] == "DROP")
    # no NAT for the internal network, nothing at all for vlan
    assert not rules[("nat", "QL-PREROUTING")]
    assert len(rules[("nat", "QL-POSTROUTING")]) == 3
    assert not any(names.gateway_dev(VLAN_ID) in r for rs in rules.values() for r in rs)


def test_rules_are_deterministic():
    eps = [endpoint(c * 64, NAT_ID, f"10.210.1.{i + 2}", tcp(8000 + i, 80)) for i, c in
           enumerate("fed")]  # fmt: skip
    one = desired_rules("QL", [NONAT, NAT], eps)
    two = desired_rules("QL", [NAT, NONAT], list(reversed(eps)))
    assert one == two


def test_restore_text_declares_only_changed_chains():
    text = restore_text({("nat", "QL-OUTPUT"): [("-p", "tcp", "-j", "ACCEPT")]})
    assert text == "*nat\n:QL-OUTPUT - [0:0]\n-A QL-OUTPUT -p tcp -j ACCEPT\nCOMMIT\n"
    with pytest.raises(ValueError, match="quoting"):
        restore_text({("nat", "QL-OUTPUT"): [("-m", "comment", "--comment", "two words")]})


# ---- sweep plan ----------------------------------------------------------------------


def test_plan_sweep_keeps_known_and_removes_strays():
    ep_present = endpoint("1" * 64, NAT_ID, "10.210.1.2")
    ep_gone = endpoint("2" * 64, NAT_ID, "10.210.1.3")
    links = [
        names.gateway_dev(NAT_ID),
        names.gateway_port(NAT_ID),
        names.endpoint_port(ep_present.id),
        names.endpoint_peer(ep_present.id),
        names.endpoint_port("9" * 64),  # unknown endpoint
        names.endpoint_peer("9" * 64),
        names.gateway_dev("8" * 64),  # unknown network
        "eth0",
        "vethabc",
    ]
    ports = [
        names.gateway_port(NAT_ID),
        names.endpoint_port(ep_present.id),
        names.endpoint_port("9" * 64),
        names.gateway_port("8" * 64),
        "vx0",  # a tunnel port: not the driver's to judge
        "uplink0",
    ]
    plan = plan_sweep(links, ports, [NAT, VLAN], [ep_present, ep_gone])
    assert [n.id for n in plan.ensure_gateways] == [NAT_ID]  # vlan has no gateway dev
    assert [(e.id, n.id) for e, n in plan.reattach] == [(ep_present.id, NAT_ID)]
    assert [e.id for e in plan.missing] == [ep_gone.id]
    assert plan.remove_links == sorted(
        [names.endpoint_port("9" * 64), names.endpoint_peer("9" * 64), names.gateway_dev("8" * 64)]
    )
    assert plan.remove_ports == sorted(
        [names.endpoint_port("9" * 64), names.gateway_port("8" * 64)]
    )


def test_plan_sweep_drops_endpoints_of_unknown_networks():
    stray = endpoint("3" * 64, "z" * 64, "10.9.9.9")
    plan = plan_sweep([names.endpoint_port(stray.id)], [], [], [stray])
    assert plan.reattach == [] and plan.remove_links == [names.endpoint_port(stray.id)]


# ---- CLI glue ---------------------------------------------------------------------------


def test_config_from_cli_args(tmp_path):
    args = argparse.Namespace(
        controller=None,
        host_name="node7",
        token_file=tmp_path / "token",
        openflow_target="tcp:10.0.0.1:6653",
        bridge="br-x",
        ovsdb="unix:/tmp/db.sock",
        plugin_dir=tmp_path,
        chain_prefix="QLX",
        datapath="netdev",
        log_level="info",
    )
    cfg = config_from_args(args)
    assert cfg.host == "node7"
    assert cfg.controller_url == "http://127.0.0.1:6680"
    assert cfg.datapath_type is DatapathType.NETDEV
    assert cfg.network_socket == tmp_path / "qingluan.sock"
    assert cfg.ipam_socket == tmp_path / "qingluanIpam.sock"
    assert cfg.chain_prefix == "QLX" and cfg.ovsdb == "unix:/tmp/db.sock"
    auto = config_from_args(argparse.Namespace(datapath="auto"))
    assert auto.datapath_type is None and auto.bridge == "br-ql"


def test_localhost_guard_only_while_nat_networks_exist():
    from qingluan.driver.host.iptables import LOCALHOST_GUARD

    chains = Chains("QL")
    with_nat = desired_rules("QL", [NAT], [])
    assert with_nat[chains.input] == [LOCALHOST_GUARD]
    guard = " ".join(LOCALHOST_GUARD)
    assert "-d 127.0.0.0/8" in guard and "-i ql+" in guard and guard.endswith("-j DROP")
    assert "! --ctstate RELATED,ESTABLISHED,DNAT" in guard
    assert desired_rules("QL", [NONAT], [])[chains.input] == []
