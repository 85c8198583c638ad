"""Regenerate ``flows/``: the flows each scenario programs, as a real bridge holds them.

``python -m tests.integration.flowdump_regen [--check] [--out DIR] [--scenario NAME]``
(``make flows`` runs it through ``scripts/regen-flows``).

For every scenario, in a network namespace of its own:

1. a private Open vSwitch (``tests.support.ovs``: its own ovsdb-server and
   ovs-vswitchd, userspace datapath) is started by this process;
2. a child process runs *inside* the namespace (``ip netns exec NS python -m
   tests.integration.flowdump_regen --inside SCENARIO ...``) and there
   - starts the real controller (``python -m qingluan controller``) on the
     namespace's loopback,
   - creates the integration bridge with the driver's own plumbing
     (``LinuxHost.ensure_bridge``) and a fixed datapath id; with an underlay
     (vxlan) that also makes ``br-qlphy`` on a veth ``NIC`` and the tunnel port,
   - registers the host (and any other host of the scenario: a bridge of its
     own in the same OVS, connected to the same controller, never dumped),
     then per network a pool with a fixed subnet, its gateway address, the
     network, its host side as the driver makes it (``ensure_uplink`` on a
     veth NIC for flat and vlan, ``ensure_gateway`` for the models with a
     gateway device), and per endpoint its address and veth
     (``LinuxHost.ensure_endpoint``) and the endpoint itself, through the
     driver's REST client, all with fixed ids, MACs and addresses; every
     bridge port (uplink and tunnel too) is pinned to a fixed OpenFlow number
     (``ofport_request``);
   - waits until the controller sees every port and a reconcile changes
     nothing, then renders ``ovs-ofctl dump-flows --no-stats`` and
     ``dump-groups`` of the bridge;
3. this process removes the OVS and the namespace (which takes the veths and
   any process still in it, the controller included), also after a failure.

Network keys, gateway MACs and cookies are derived from the fixed ids and the
order of creation, so the output is byte-for-byte reproducible. Nothing
outside the namespaces is touched. ``--check`` compares with the files in
``--out`` instead of writing them and exits 1 with a unified diff when they
differ.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "flows"

HOST = "h1"
BRIDGE = "br-ql"
DPID = 0x0000_0000_0000_0001
# the namespace is brand new and private: nothing else can hold these ports
API_PORT = 6680
OPENFLOW_PORT = 6653
# one scenario, start to finish, inside its namespace
SCENARIO_TIMEOUT = 45.0
CONVERGE_TIMEOUT = 15.0
CHAIN_PREFIX = "QLFLOWS"


# ---- scenarios (fixed ids, MACs, addresses, port numbers) -----------------------------


def docker_id(head: str) -> str:
    """A 64-hex Docker id; the 12-character ``head`` is what device names use."""
    if len(head) != 12:
        raise ValueError(f"{head!r}: the head of an id is 12 characters")
    return head + "0" * 52


def docker_mac(address: str) -> str:
    """The MAC Docker would give ``address``: 02:42 followed by the four address bytes."""
    octets = [int(o) for o in address.split(".")]
    return "02:42:" + ":".join(f"{o:02x}" for o in octets)


@dataclass(frozen=True)
class EndpointSpec:
    label: str
    id: str
    address: str
    ofport: int

    @property
    def mac(self) -> str:
        return docker_mac(self.address)


@dataclass(frozen=True)
class NetworkSpec:
    label: str
    id: str
    model: str  # a qingluan.model.NetworkModel value
    subnet: str
    # the gateway veth's bridge port; None: no gateway device (flat, vlan: the LAN's router)
    gateway_ofport: int | None
    endpoints: tuple[EndpointSpec, ...]
    vni: int | None = None  # VLAN id (vlan) or VNI (vxlan)
    uplink: bool = False  # flat, vlan: carried by the scenario's uplink NIC

    @property
    def gateway(self) -> str:
        return self.subnet.rsplit(".", 1)[0] + ".1"

    @property
    def pool_options(self) -> dict[str, str]:
        """The ``--ipam-opt`` values: ``pool=`` and ``vni=`` for a vlan or vxlan segment."""
        return {} if self.vni is None else {"pool": self.model, "vni": str(self.vni)}


@dataclass(frozen=True)
class UplinkSpec:
    """A NIC of the host on the bridge (``--uplink PHYSNET:NIC``): one end of a veth pair."""

    physnet: str
    nic: str
    peer: str  # the other end, left in the namespace as the "LAN"
    ofport: int


@dataclass(frozen=True)
class UnderlaySpec:
    """The host's VXLAN tunnel endpoint (``--underlay-address``, ``--underlay-nic``)."""

    address: str  # IP/LEN
    nic: str
    peer: str
    tunnel_ofport: int

    @property
    def ip(self) -> str:
        return self.address.split("/", 1)[0]


@dataclass(frozen=True)
class RemoteHostSpec:
    """Another host, as the controller sees it: its own bridge in the same OVS (not dumped)."""

    name: str
    bridge: str
    dpid: int
    address: str  # its underlay (VTEP) address
    networks: tuple[NetworkSpec, ...]


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    networks: tuple[NetworkSpec, ...]
    uplink: UplinkSpec | None = None
    underlay: UnderlaySpec | None = None
    remotes: tuple[RemoteHostSpec, ...] = ()
    notes: tuple[str, ...] = ()  # legend lines before the networks


def _network(
    label: str,
    head: str,
    model: str,
    subnet: str,
    first_port: int,
    containers: int,
    *,
    gateway: bool = True,
    vni: int | None = None,
    uplink: bool = False,
    first_address: int = 2,
) -> NetworkSpec:
    """Container ``c<i>`` gets id ``eeee<last 4 of head><i>``, address ``first_address + i - 1``
    and port ``first_port + i``; the gateway (if any) port ``first_port``."""
    base = subnet.rsplit(".", 1)[0]
    endpoints = tuple(
        EndpointSpec(
            label=f"c{i}",
            id=docker_id(f"eeee{head[-4:]}{i:04d}"),
            address=f"{base}.{first_address + i - 1}",
            ofport=first_port + i,
        )
        for i in range(1, containers + 1)
    )
    return NetworkSpec(
        label,
        docker_id(head),
        model,
        subnet,
        first_port if gateway else None,
        endpoints,
        vni=vni,
        uplink=uplink,
    )


PHYSNET = "physnet1"

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "nat-two-networks",
            "two NAT networks on one host, two containers each, with their gateways",
            (
                _network("nat-a", "aaaa00000001", "nat", "10.128.1.0/24", 10, 2),
                _network("nat-b", "aaaa00000002", "nat", "10.128.2.0/24", 20, 2),
            ),
        ),
        Scenario(
            "nonat-one-network",
            "one nonat network on one host with two containers and its gateway",
            (_network("nonat-a", "bbbb00000001", "nonat", "10.129.1.0/24", 10, 2),),
        ),
        Scenario(
            "empty-bridge",
            "a registered host without networks: only the base pipeline",
            (),
        ),
        Scenario(
            "vlan-two-vlans-and-flat",
            "two vlan networks (VLAN 100, 200; two containers each) and one flat network "
            "(one container), all on the uplink NIC eth1",
            (
                _network(
                    "vlan-100",
                    "cccc00000011",
                    "vlan",
                    "10.130.1.0/24",
                    10,
                    2,
                    gateway=False,
                    vni=100,
                    uplink=True,
                ),
                _network(
                    "vlan-200",
                    "cccc00000012",
                    "vlan",
                    "10.130.2.0/24",
                    20,
                    2,
                    gateway=False,
                    vni=200,
                    uplink=True,
                ),
                _network(
                    "flat-a",
                    "cccc00000013",
                    "flat",
                    "192.168.159.0/24",
                    30,
                    1,
                    gateway=False,
                    uplink=True,
                ),
            ),
            uplink=UplinkSpec(physnet=PHYSNET, nic="eth1", peer="eth1p", ofport=1),
            notes=(
                "vlan and flat networks have no gateway device on the host: their gateway",
                "address is the LAN's router, reached through eth1 like any other address of",
                "the LAN, so there is no gateway port and no gateway flow (the gateway MAC the",
                "controller keeps for them, 52:4c + key, is on no port).",
                "eth1 (physnet1) is the trunk of the vlan networks and the LAN of the flat one:",
                "dl_vlan=100 matches a frame tagged 100 (pop_vlan takes the tag off), and",
                "vlan_tci=0x0000/0x1fff an untagged frame; on the way out push_vlan and",
                "set_field:4196->vlan_vid put the tag on (4196 = 0x1000 'tag present' + 100).",
                "The trunk's and the uplink's flows carry the network's cookie. Metadata bit",
                "0x1000000 marks a frame that came in from the trunk: the ARP table (its match",
                "metadata=K/0x1ffffff) does not answer those; the flat network's LAN is answered.",
            ),
        ),
        Scenario(
            "vxlan-two-hosts",
            "one vxlan network (VNI 5000) with its gateway and two containers, and the same "
            "VNI on a second host with one container, reached through the tunnel",
            (_network("vx-a", "dddd00000021", "vxlan", "10.131.1.0/24", 10, 2, vni=5000),),
            underlay=UnderlaySpec(
                address="172.31.0.11/24", nic="eth2", peer="eth2p", tunnel_ofport=2
            ),
            remotes=(
                RemoteHostSpec(
                    name="remote",
                    bridge="br-remote",
                    dpid=0x0000_0000_0000_0002,
                    address="172.31.0.12",
                    # no gateway device here: it would change nothing on br-ql
                    networks=(
                        _network(
                            "vx-a",
                            "dddd00000022",
                            "vxlan",
                            "10.131.1.0/24",
                            10,
                            1,
                            gateway=False,
                            vni=5000,
                            first_address=10,
                        ),
                    ),
                ),
            ),
            notes=(
                "The gateway of a vxlan network is distributed: the same address and the same",
                "MAC on every host (52:56 + the VNI, here 0x1388 = 5000; not 52:4c + key).",
                "qltun is the bridge's one flow-based VXLAN port (remote_ip=flow, key=flow,",
                "local_ip 172.31.0.11, the underlay address, on the underlay bridge br-qlphy",
                "with the NIC eth2): tun_id=0x1388 matches VNI 5000 coming in; going out, a flow",
                "sets tun_id (the VNI) and tun_dst (the other host's underlay address), then",
                "output:2. The tunnel's flow carries the network's cookie. Metadata bit",
                "0x1000000 marks a frame that came in from the tunnel: the ARP table (its match",
                "metadata=K/0x1ffffff) does not answer those, the container does.",
            ),
        ),
    )
}


class RegenError(RuntimeError):
    """A scenario could not be generated; the message says where and why."""


# ---- rendering -------------------------------------------------------------------------

_TABLE = re.compile(r"\btable=(\d+)")
_PRIORITY = re.compile(r"\bpriority=(\d+)")
OFP_DEFAULT_PRIORITY = 32768


def flow_lines(dump: str) -> list[str]:
    """``dump-flows`` output as flow lines in reading order: table, priority (high first), text.

    Each line is kept exactly as ovs-ofctl formats it (leading blanks stripped);
    a header line (``OFPST_FLOW reply``) is dropped.
    """

    def key(line: str) -> tuple[int, int, str]:
        table = _TABLE.search(line)
        priority = _PRIORITY.search(line)
        return (
            int(table.group(1)) if table else 0,
            -(int(priority.group(1)) if priority else OFP_DEFAULT_PRIORITY),
            line,
        )

    lines = [line.strip() for line in dump.splitlines() if "actions=" in line]
    return sorted(lines, key=key)


def group_lines(dump: str) -> list[str]:
    """``dump-groups`` output as group lines, by group id (the header is dropped)."""

    def key(line: str) -> tuple[int, str]:
        match = re.match(r"group_id=(\d+)", line)
        return (int(match.group(1)) if match else 0, line)

    lines = [line.strip() for line in dump.splitlines() if line.strip().startswith("group_id=")]
    return sorted(lines, key=key)


def _with_table_headings(flows: Sequence[str]) -> list[str]:
    """The flow lines with a ``# -- table N NAME`` line before each table's first flow."""
    from qingluan.controller.pipeline.tables import Table

    out: list[str] = []
    current: int | None = None
    for line in flows:
        match = _TABLE.search(line)
        table = int(match.group(1)) if match else 0
        if table != current:
            try:
                name = Table(table).name
            except ValueError:
                name = "(not in the pipeline)"
            out.append(f"# -- table {table} {name}")
            current = table
        out.append(line)
    return out


_LEGEND_ROW = "  {:>6}  {:<15}  {:<7}  {:<13}  {:<17}  {}"


def render(
    scenario: Scenario,
    legend: Sequence[str],
    flows: Sequence[str],
    groups: Sequence[str],
) -> str:
    out = [
        f"# flows/{scenario.name}.txt: generated by `make flows`; do not edit by hand.",
        f"# scenario: {scenario.description}.",
        f"# host {HOST}: bridge {BRIDGE}, dpid {DPID:#018x}, fail_mode=secure, OpenFlow 1.3.",
        "# Container MACs are Docker's (02:42 + the address), gateway MACs the controller's",
        "# (52:4c + network key). Cookies: top byte 0x01 base pipeline, 0x02 network (its",
        "# gateway port and flood flow), 0x03 endpoint; the rest is a hash of the owner's id.",
        "# See flows/README.md for how to read a line.",
    ]
    out += [f"# {line}" if line else "#" for line in legend]
    out += [
        "#",
        f"# == flows: ovs-ofctl -O OpenFlow13 dump-flows --no-stats {BRIDGE}",
        "# == (sorted by table, then priority from high to low, then text)",
        *_with_table_headings(flows),
        "#",
        f"# == groups: ovs-ofctl -O OpenFlow13 dump-groups {BRIDGE}"
        + ("" if groups else " (none)"),
        *groups,
    ]
    return "\n".join(out) + "\n"


# ---- inside the namespace: controller, plumbing, REST ---------------------------------


def _inside(scenario: Scenario, ovs_root: Path, state_dir: Path) -> str:
    """Build ``scenario`` on the bridge of the OVS at ``ovs_root``; return the file text.

    Runs in the scenario's namespace (as the child process): the controller
    listens on this namespace's loopback and the driver's plumbing works on
    this namespace's devices.
    """
    import httpx

    from qingluan import names
    from qingluan.api_schema import (
        AddressRequest,
        EndpointCreate,
        HostRegistration,
        HostStatus,
        NetworkCreate,
        PoolRequest,
        ReconcileResult,
    )
    from qingluan.controller.pipeline.flow import CookieKind, cookie
    from qingluan.driver.client import HttpControllerClient
    from qingluan.driver.host.plumbing import LinuxHost
    from qingluan.driver.protocol import PHYSNET_OPTION, UPLINK_OPTION
    from qingluan.model import DatapathType, Network, NetworkModel
    from tests.support.ovs import OvsInstance
    from tests.support.proc import Proc, wait_until

    api = f"http://127.0.0.1:{API_PORT}"
    target = f"tcp:127.0.0.1:{OPENFLOW_PORT}"
    # the instance's directories, without owning them: the parent stops and removes it
    ovs = OvsInstance(workdir=ovs_root)
    uplink, underlay = scenario.uplink, scenario.underlay

    def linux_host(bridge: str, underlay: UnderlaySpec | None = None) -> LinuxHost:
        return LinuxHost(
            bridge=bridge,
            ovsdb=f"unix:{ovs.sock}",
            chain_prefix=CHAIN_PREFIX,
            datapath_type=DatapathType.NETDEV,
            underlay_address=underlay.address if underlay else None,
            underlay_nic=underlay.nic if underlay else None,
        )

    host = linux_host(BRIDGE, underlay)
    controller = Proc(
        "controller",
        [
            sys.executable,
            "-m",
            "qingluan",
            "controller",
            "--state-dir",
            str(state_dir),
            "--api-host",
            "127.0.0.1",
            "--api-port",
            str(API_PORT),
            "--openflow-host",
            "127.0.0.1",
            "--openflow-port",
            str(OPENFLOW_PORT),
            "--sflow-port",
            "0",
            "--log-level",
            "info",
        ],
        state_dir / "controller.log",
        env={"PYTHONPATH": str(REPO)},
    )

    def api_up() -> bool:
        try:
            return httpx.get(f"{api}/v1/status", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def host_status(name: str = HOST) -> HostStatus:
        reply = httpx.get(f"{api}/v1/hosts/{name}", timeout=10)
        reply.raise_for_status()
        return HostStatus.model_validate(reply.json())

    def connected(name: str) -> bool:
        return host_status(name).connected

    def pin(port: str, ofport: int) -> None:
        """Renumber ``port`` to ``ofport`` (OVS re-adds it under the requested number)."""
        ovs.vsctl("set", "interface", port, f"ofport_request={ofport}")
        wait_until(
            lambda: ovs.vsctl("get", "interface", port, "ofport").strip() == str(ofport),
            10,
            f"{port} to become OpenFlow port {ofport}",
        )

    def nic(name: str, peer: str) -> None:
        """A veth pair in this namespace: ``name`` goes to OVS, ``peer`` stays (the wire)."""
        subprocess.run(
            ["ip", "link", "add", name, "type", "veth", "peer", "name", peer],
            check=True,
            timeout=10,
        )
        # no IPv6 autoconf chatter from the far end into the bridge
        subprocess.run(
            ["sysctl", "-q", "-w", f"net.ipv6.conf.{peer}.disable_ipv6=1"], check=False, timeout=10
        )
        for dev in (peer, name):
            subprocess.run(["ip", "link", "set", dev, "up"], check=True, timeout=10)

    def bridge(on: LinuxHost, name: str, want: int) -> int:
        """The bridge exactly as the driver makes it, with the datapath id pinned first."""
        ovs.vsctl(
            "add-br",
            name,
            "--",
            "set",
            "bridge",
            name,
            "datapath_type=netdev",
            "fail_mode=secure",
            f"other_config:datapath-id={want:016x}",
        )
        dpid = on.ensure_bridge(target)
        if dpid != want:
            raise RegenError(f"bridge {name} has dpid {dpid:#x}, not {want:#x}")
        return dpid

    controller.start()
    try:
        controller.wait_ready(api_up, timeout=20)
        client = HttpControllerClient(api, token_file=state_dir / "token")
        token = (state_dir / "token").read_text().strip()

        expected: dict[str, int] = {}
        if uplink is not None:
            nic(uplink.nic, uplink.peer)
        if underlay is not None:
            nic(underlay.nic, underlay.peer)
        # with an underlay this also makes br-qlphy and the tunnel port
        dpid = bridge(host, BRIDGE, DPID)
        if underlay is not None:
            pin(names.TUNNEL_PORT, underlay.tunnel_ofport)
            expected[names.TUNNEL_PORT] = underlay.tunnel_ofport
        client.register_host(
            HOST,
            HostRegistration(
                dpid=dpid,
                bridge=BRIDGE,
                datapath_type=DatapathType.NETDEV,
                address=underlay.ip if underlay else None,
            ),
        )
        wait_until(partial(connected, HOST), 15, f"bridge {BRIDGE} to connect")
        remote_hosts: dict[str, LinuxHost] = {}
        for remote in scenario.remotes:
            other = remote_hosts[remote.name] = linux_host(remote.bridge)
            client.register_host(
                remote.name,
                HostRegistration(
                    dpid=bridge(other, remote.bridge, remote.dpid),
                    bridge=remote.bridge,
                    datapath_type=DatapathType.NETDEV,
                    address=remote.address,
                ),
            )
            wait_until(
                partial(connected, remote.name),
                15,
                f"bridge {remote.bridge} of host {remote.name} to connect",
            )

        def build(spec: NetworkSpec, name: str, on: LinuxHost) -> tuple[Network, list[str]]:
            """One network as the driver makes it (pool, gateway address, network, host
            side, endpoints); its ports pinned; the legend rows of its endpoints."""
            pool = client.request_pool(
                PoolRequest(pool=spec.model, subnet=spec.subnet, options=spec.pool_options)
            )
            client.request_address(pool.pool_id, AddressRequest(address=spec.gateway, gateway=True))
            options = {}
            if spec.uplink:
                if uplink is None:
                    raise RegenError(f"{spec.label}: the scenario has no uplink NIC")
                options = {PHYSNET_OPTION: uplink.physnet, UPLINK_OPTION: uplink.nic}
            network = client.create_network(
                spec.id,
                NetworkCreate(
                    host=name,
                    model=NetworkModel(spec.model),
                    pool_id=pool.pool_id,
                    vni=spec.vni,
                    options=options,
                ),
            ).network
            if spec.uplink and uplink is not None:
                on.ensure_uplink(uplink.physnet, uplink.nic)
                pin(uplink.nic, uplink.ofport)
                if name == HOST:
                    expected[uplink.nic] = uplink.ofport
            if spec.gateway_ofport is not None:
                on.ensure_gateway(network)
                pin(names.gateway_port(network.id), spec.gateway_ofport)
                if name == HOST:
                    expected[names.gateway_port(network.id)] = spec.gateway_ofport
            rows: list[str] = []
            for ep in spec.endpoints:
                client.request_address(pool.pool_id, AddressRequest(address=ep.address, mac=ep.mac))
                port = on.ensure_endpoint(ep.id, network, ep.mac)
                pin(port, ep.ofport)
                if name == HOST:
                    expected[port] = ep.ofport
                status = client.create_endpoint(
                    ep.id,
                    EndpointCreate(
                        network_id=network.id,
                        host=name,
                        mac=ep.mac,
                        address=ep.address,
                        port_name=port,
                    ),
                )
                if not status.flows_confirmed:
                    raise RegenError(f"{spec.label} {ep.label}: flows not confirmed")
                rows.append(
                    _LEGEND_ROW.format(
                        ep.ofport,
                        port,
                        ep.label,
                        ep.address,
                        ep.mac,
                        f"{cookie(CookieKind.ENDPOINT, ep.id):#x}",
                    )
                )
            return network, rows

        def segment(spec: NetworkSpec) -> str:
            if spec.model == NetworkModel.VLAN and uplink is not None:
                return f", VLAN {spec.vni} on {uplink.nic}"
            if spec.model == NetworkModel.FLAT and uplink is not None:
                return f", untagged on {uplink.nic}"
            if spec.vni is not None:
                return f", VNI {spec.vni}"
            return ""

        legend: list[str] = ["", *scenario.notes] if scenario.notes else []
        for spec in scenario.networks:
            network, rows = build(spec, HOST, host)
            network_cookie = f"{cookie(CookieKind.NETWORK, network.id):#x}"
            legend += [
                "",
                f"network {spec.label}: {spec.model} {network.subnet}{segment(spec)}, "
                f"id {spec.id[:12]}..., "
                f"key {network.key} (metadata {network.key:#x}, flood group {network.key})",
                _LEGEND_ROW.format("ofport", "port", "owner", "address", "MAC", "cookie"),
            ]
            if spec.gateway_ofport is not None:
                legend.append(
                    _LEGEND_ROW.format(
                        spec.gateway_ofport,
                        names.gateway_port(network.id),
                        "gateway",
                        network.gateway,
                        network.gateway_mac,
                        network_cookie,
                    )
                )
            else:
                legend.append(
                    _LEGEND_ROW.format(
                        "-", "-", "gateway", network.gateway, "-", "(the LAN's router: no port)"
                    )
                )
            if spec.uplink and uplink is not None:
                owner = "trunk" if spec.model == NetworkModel.VLAN else "uplink"
                legend.append(
                    _LEGEND_ROW.format(uplink.ofport, uplink.nic, owner, "-", "-", network_cookie)
                )
            if spec.model == NetworkModel.VXLAN and underlay is not None:
                legend.append(
                    _LEGEND_ROW.format(
                        underlay.tunnel_ofport,
                        names.TUNNEL_PORT,
                        "tunnel",
                        underlay.ip,
                        "-",
                        network_cookie,
                    )
                )
            legend += rows

        for remote in scenario.remotes:
            legend += [
                "",
                f"host {remote.name} (not dumped): bridge {remote.bridge}, "
                f"dpid {remote.dpid:#018x}, underlay address {remote.address}",
            ]
            tunnel = underlay.tunnel_ofport if underlay else "?"
            for spec in remote.networks:
                network, rows = build(spec, remote.name, remote_hosts[remote.name])
                legend += [
                    f"network {spec.label} there: {spec.model} {network.subnet}{segment(spec)}, "
                    f"id {spec.id[:12]}..., key {network.key} on {remote.name}",
                    f"Each container there (ofport and port on {remote.bridge}) has three flows "
                    f"on {BRIDGE}:",
                    "the ARP answer, and unicast by address and by MAC into the tunnel "
                    f"(tun_id {spec.vni}, tun_dst",
                    f"{remote.address}, output:{tunnel}); the flood group has one such bucket "
                    f"for host {remote.name}.",
                    _LEGEND_ROW.format("ofport", "port", "owner", "address", "MAC", "cookie"),
                    *rows,
                ]

        def ports_known() -> bool:
            ports = host_status().ports
            ours = {n: p for n, p in ports.items() if n.startswith(names.PREFIX) or n in expected}
            return ours == expected

        wait_until(ports_known, CONVERGE_TIMEOUT, f"the controller to see ports {expected}")

        def reconcile() -> ReconcileResult:
            reply = httpx.post(
                f"{api}/v1/hosts/{HOST}/reconcile",
                headers={"Authorization": f"Bearer {token}"},
                timeout=CONVERGE_TIMEOUT,
            )
            reply.raise_for_status()
            return ReconcileResult.model_validate(reply.json())

        def changes(result: ReconcileResult) -> int:
            return (
                result.flows_added
                + result.flows_deleted
                + result.groups_added
                + result.groups_modified
                + result.groups_deleted
            )

        wait_until(lambda: changes(reconcile()) == 0, CONVERGE_TIMEOUT, "0 changes", interval=0.1)
        flows = flow_lines(ovs.ofctl("dump-flows", "--no-stats", BRIDGE))
        groups = group_lines(ovs.ofctl("dump-groups", BRIDGE))
        # nothing moved while we looked
        after = reconcile()
        if changes(after) != 0:
            raise RegenError(f"the bridge changed while it was dumped: {after}")
        client.close()
        return render(scenario, legend, flows, groups)
    except Exception as exc:
        raise RegenError(f"{exc}\n--- controller log ---\n{controller.tail(30)}") from exc
    finally:
        controller.stop()


# ---- outside: namespace, OVS, the child, cleanup --------------------------------------


def generate(scenario: Scenario, timeout: float = SCENARIO_TIMEOUT) -> str:
    """The text of ``flows/<scenario>.txt``, built on a real bridge in a fresh namespace."""
    from tests.support.ovs import ovs_in_netns

    with (
        tempfile.TemporaryDirectory(prefix="qlflows-") as tmp,
        ovs_in_netns() as (ns, ovs),
    ):
        result = Path(tmp) / "result.txt"
        state_dir = Path(tmp) / "controller"
        state_dir.mkdir()
        argv = [
            *ns.prefix(),
            sys.executable,
            "-m",
            "tests.integration.flowdump_regen",
            "--inside",
            scenario.name,
            "--ovs-root",
            str(ovs.root),
            "--state-dir",
            str(state_dir),
            "--result",
            str(result),
        ]
        # the REST API is on the namespace's loopback: never through a proxy
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env["PYTHONPATH"] = str(REPO)
        try:
            done = subprocess.run(
                argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired as exc:
            log = (state_dir / "controller.log").read_text(errors="replace")[-3000:]
            raise RegenError(
                f"{scenario.name}: not done in {timeout:.0f} s\n"
                f"--- controller log ---\n{log}\n--- ovs-vswitchd log ---\n{ovs.log()[-2000:]}"
            ) from exc
        if done.returncode != 0:
            raise RegenError(
                f"{scenario.name}: failed ({done.returncode})\n{done.stderr[-6000:]}"
                f"\n--- ovs-vswitchd log ---\n{ovs.log()[-2000:]}"
            )
        return result.read_text()


def generate_all(names: Sequence[str], out: Path) -> dict[str, Path]:
    """Generate the named scenarios (in parallel: each has its own namespace) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
        texts = dict(zip(names, pool.map(lambda n: generate(SCENARIOS[n]), names), strict=True))
    written = {}
    for name, text in texts.items():
        path = out / f"{name}.txt"
        path.write_text(text)
        written[name] = path
    return written


def compare(expected_dir: Path, actual_dir: Path, names: Sequence[str]) -> str:
    """A unified diff from the committed files to the regenerated ones ('' when equal)."""
    parts: list[str] = []
    for name in names:
        expected = expected_dir / f"{name}.txt"
        actual = actual_dir / f"{name}.txt"
        old = expected.read_text().splitlines(keepends=True) if expected.exists() else []
        new = actual.read_text().splitlines(keepends=True)
        parts += difflib.unified_diff(
            old,
            new,
            f"{expected} (committed)" if expected.exists() else f"{expected} (missing)",
            f"{name}.txt (regenerated)",
        )
    if set(names) == set(SCENARIOS):
        for stale in sorted(expected_dir.glob("*.txt")):
            if stale.stem not in SCENARIOS:
                parts.append(f"--- {stale}: no scenario {stale.stem!r} generates this file\n")
    return "".join(parts)


# ---- command line ----------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tests.integration.flowdump_regen",
        description="Regenerate flows/ from real bridges (needs root and Open vSwitch).",
    )
    p.add_argument("--check", action="store_true", help="compare with --out, write nothing")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory of the files")
    p.add_argument(
        "--scenario",
        action="append",
        choices=sorted(SCENARIOS),
        help="only this scenario (repeatable; default: all)",
    )
    # the child that runs inside a scenario's namespace
    p.add_argument("--inside", choices=sorted(SCENARIOS), help=argparse.SUPPRESS)
    p.add_argument("--ovs-root", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--state-dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.inside:
        if not (args.ovs_root and args.state_dir and args.result):
            raise SystemExit("--inside needs --ovs-root, --state-dir and --result")
        text = _inside(SCENARIOS[args.inside], args.ovs_root, args.state_dir)
        args.result.write_text(text)
        return 0
    if os.geteuid() != 0 or shutil.which("ovs-vswitchd") is None:
        print("flowdump_regen: needs root and Open vSwitch", file=sys.stderr)
        return 2
    names = list(dict.fromkeys(args.scenario or SCENARIOS))
    started = time.monotonic()
    try:
        if args.check:
            with tempfile.TemporaryDirectory(prefix="qlflows-check-") as tmp:
                generate_all(names, Path(tmp))
                diff = compare(args.out, Path(tmp), names)
            if diff:
                sys.stdout.write(diff)
                print(f"\n{args.out} is out of date: run `make flows` and review the diff")
                return 1
            print(f"{args.out}: up to date ({len(names)} scenarios, {_took(started)})")
            return 0
        written = generate_all(names, args.out)
    except RegenError as exc:
        print(f"flowdump_regen: {exc}", file=sys.stderr)
        return 1
    for path in written.values():
        print(f"wrote {_relative(path)}")
    print(f"{len(written)} scenarios in {_took(started)}")
    return 0


def _took(started: float) -> str:
    return f"{time.monotonic() - started:.1f} s"


def _relative(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(Path.cwd()))
    return str(path)


def _terminate(signum: int, frame: FrameType | None) -> None:
    # turn SIGTERM into SystemExit so every finally (cleanup) runs
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    sys.exit(main())
