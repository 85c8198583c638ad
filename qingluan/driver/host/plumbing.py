"""``LinuxHost``: the real :class:`~qingluan.driver.interfaces.HostOps` (OVS + netlink + iptables).

Names come from ``qingluan.names`` (``qlv``/``qlc`` per endpoint, ``qlg``/``qlb``
per gateway), so what exists on the host can always be matched against the
controller's state. Each ``ensure_*`` undoes what it created itself when a
later step fails. The sweep only ever removes devices and ports with those
prefixes: other ports on the bridge (uplinks, tunnels) are someone else's.

Uplinks (flat networks): a host NIC named by ``--uplink PHYSNET:NIC`` is added
to the bridge as port ``NIC`` (``qingluan-uplink=<physnet>``). Its name has no
qingluan prefix, so the sweep never removes it; it is never removed at all
(other flat networks may share it), only re-ensured by the sweep. A NIC that
carries the namespace's default route is refused: never give the machine's own
interface to OVS.

TX offloads of the veths (see :func:`tx_offload_off_needed`): on the
userspace (netdev) datapath without userspace TSO, TCP only works with TX
checksum offload off, so the driver turns it off on both ends. With
``other_config:userspace-tso-enable=true`` ovs-vswitchd takes the kernel's
offload metadata along (virtio-net header), so offloads stay on (about 7x the
throughput), except on ports whose traffic is tunnelled: OVS 3.1 drops
tunnelled packets that carry offload flags. The driver reads the key when it
(re)ensures the bridge, i.e. at every start-up sync; change it together with
an ovs-vswitchd restart, then restart the driver (its sweep turns offloads off
on existing veths when TSO went off; it never turns them back on).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial

from qingluan import names
from qingluan.driver.host.commands import HostError, Runner
from qingluan.driver.host.iptables import DEFAULT_PREFIX, Iptables, desired_rules
from qingluan.driver.host.links import HostTuning, Links
from qingluan.driver.host.monitoring import export_commands
from qingluan.driver.host.ovs import (
    ENDPOINT_KEY,
    NETWORK_KEY,
    OWNER,
    OWNER_KEY,
    UPLINK_KEY,
    Ovs,
    detect_datapath_type,
)
from qingluan.driver.host.sockbuf import PacketSocketBuffers, vswitchd_pidfile
from qingluan.driver.host.tunnel import Tunnel, parse_underlay_address
from qingluan.driver.interfaces import SweepReport
from qingluan.driver.protocol import PHYSNET_OPTION, UPLINK_OPTION
from qingluan.driver.uplinks import DEFAULT_PHYSNET, carries_default_route
from qingluan.model import DatapathType, Endpoint, MonitoringSettings, Network
from qingluan.modes import UPLINK_MODELS, has_gateway_dev, is_natted, is_tunnelled

log = logging.getLogger(__name__)

IDS_MTU = 9000  # the mirror carries whatever any network sends
ROLE_KEY = "qingluan-role"
LINK_PREFIXES = (names.ENDPOINT_PORT, names.ENDPOINT_PEER, names.GATEWAY_DEV, names.GATEWAY_PORT)
PORT_PREFIXES = (names.ENDPOINT_PORT, names.GATEWAY_PORT)


def tx_offload_off_needed(
    datapath_type: DatapathType, *, userspace_tso: bool, tunnelled: bool
) -> bool:
    """Whether a veth plugged into the bridge must have TX checksum offload off.

    - ``system`` (kernel) datapath: never; the kernel finishes checksums itself.
    - ``netdev`` without userspace TSO: always; OVS reads packets without the
      kernel's "checksum still to do" mark and forwards them with a wrong
      TCP checksum (ICMP works, every TCP connection times out).
    - ``netdev`` with userspace TSO: only for tunnelled traffic (OVS 3.1
      drops tunnelled packets that carry offload flags); else offloads stay on.
    """
    if datapath_type is not DatapathType.NETDEV:
        return False
    return tunnelled or not userspace_tso


def network_uplink(network: Network) -> tuple[str, str] | None:
    """(physnet, NIC) a flat or vlan network was created with (its options), if any."""
    nic = network.options.get(UPLINK_OPTION)
    if network.model not in UPLINK_MODELS or not nic:
        return None
    return network.options.get(PHYSNET_OPTION) or DEFAULT_PHYSNET, nic


@dataclass
class SweepPlan:
    """What the start-up sweep must do; computed from names only (pure)."""

    ensure_gateways: list[Network] = field(default_factory=list)
    ensure_uplinks: list[tuple[str, str]] = field(default_factory=list)  # (physnet, NIC)
    reattach: list[tuple[Endpoint, Network]] = field(default_factory=list)
    missing: list[Endpoint] = field(default_factory=list)
    remove_links: list[str] = field(default_factory=list)
    remove_ports: list[str] = field(default_factory=list)


def plan_sweep(
    links: Iterable[str],
    ports: Iterable[str],
    networks: Sequence[Network],
    endpoints: Sequence[Endpoint],
) -> SweepPlan:
    """Given the qingluan-named veths and bridge ports present, what to fix and remove."""
    by_net = {n.id: n for n in networks}
    gateways = [n for n in networks if has_gateway_dev(n)]
    local_eps = [e for e in endpoints if e.network_id in by_net]
    keep_links = {names.gateway_dev(n.id) for n in gateways} | {
        names.gateway_port(n.id) for n in gateways
    }
    keep_ports = {names.gateway_port(n.id) for n in gateways}
    for ep in local_eps:
        keep_links |= {names.endpoint_port(ep.id), names.endpoint_peer(ep.id)}
        keep_ports.add(names.endpoint_port(ep.id))
    present = set(links)
    uplinks = sorted({u for u in map(network_uplink, networks) if u is not None})
    plan = SweepPlan(ensure_gateways=sorted(gateways, key=lambda n: n.id), ensure_uplinks=uplinks)
    for ep in sorted(local_eps, key=lambda e: e.id):
        if names.endpoint_port(ep.id) in present:
            plan.reattach.append((ep, by_net[ep.network_id]))
        else:
            plan.missing.append(ep)
    plan.remove_links = sorted(
        n for n in present if n.startswith(LINK_PREFIXES) and n not in keep_links
    )
    plan.remove_ports = sorted(
        p for p in set(ports) if p.startswith(PORT_PREFIXES) and p not in keep_ports
    )
    return plan


class LinuxHost:
    """Host plumbing of one driver: bridge, veths, gateway devices, sysctls, iptables."""

    def __init__(
        self,
        *,
        bridge: str = "br-ql",
        ovsdb: str | None = None,
        netns: str | None = None,
        chain_prefix: str = DEFAULT_PREFIX,
        datapath_type: DatapathType | None = None,
        underlay_address: str | None = None,
        underlay_nic: str | None = None,
        ovs_timeout: int = 10,
        userspace_tso: bool | None = None,
        ovs_rcvbuf: int = 0,
    ) -> None:
        """``userspace_tso``: None reads ``other_config:userspace-tso-enable`` from OVS
        (netdev datapath only) in every ``ensure_bridge`` and, if none ran yet,
        at the first veth; True/False fixes it. ``underlay_address`` (``IP/LEN``)
        and ``underlay_nic``: the VXLAN tunnel endpoint (``tunnel.Tunnel``).
        ``ovs_rcvbuf``: on the netdev datapath, the receive buffer of ovs-vswitchd's
        packet socket of every port put on the bridge (``sockbuf``); 0: untouched."""
        self._bridge = bridge
        self.runner = Runner(netns)
        self.ovs = Ovs(self.runner, db=ovsdb, timeout=ovs_timeout)
        self.links = Links(netns)
        self.tuning = HostTuning(self.runner)
        self.iptables = Iptables(self.runner, chain_prefix)
        self._datapath_type = datapath_type or detect_datapath_type()
        self.tunnel = (
            Tunnel(
                self.runner,
                self.ovs,
                self.links,
                bridge=bridge,
                address=parse_underlay_address(underlay_address),
                nic=underlay_nic,
                datapath_type=self._datapath_type,
            )
            if underlay_address
            else None
        )
        self._tso_fixed = userspace_tso
        self._tso: bool | None = userspace_tso
        self._buffers = (
            PacketSocketBuffers(vswitchd_pidfile(ovsdb), ovs_rcvbuf)
            if ovs_rcvbuf > 0 and self._datapath_type is DatapathType.NETDEV
            else None
        )
        self._buffers_failing = False

    @property
    def datapath_type(self) -> DatapathType:
        return self._datapath_type

    @property
    def bridge(self) -> str:
        return self._bridge

    # ---- bridge ----

    @property
    def userspace_tso(self) -> bool:
        """Whether the netdev datapath runs with userspace TSO (False on ``system``)."""
        if self._datapath_type is not DatapathType.NETDEV:
            return False
        if self._tso is None:
            self._tso = self._read_userspace_tso()
        return self._tso

    def _read_userspace_tso(self) -> bool:
        enabled = self.ovs.userspace_tso_enabled()
        log.info(
            "userspace TSO %s: veth TX offloads %s",
            "enabled" if enabled else "disabled",
            "stay on (off only for tunnelled ports)" if enabled else "off",
        )
        return enabled

    def ensure_bridge(self, controller_target: str) -> int:
        dpid = self.ovs.ensure_bridge(
            self._bridge, datapath_type=self._datapath_type, controller_target=controller_target
        )
        if self._tso_fixed is None and self._datapath_type is DatapathType.NETDEV:
            self._tso = self._read_userspace_tso()
        if self.tunnel is not None:
            self.tunnel.ensure()
        return dpid

    # ---- monitoring and IDS ----

    def apply_monitoring(
        self, settings: MonitoringSettings, controller_url: str, agent: str | None = None
    ) -> None:
        """sFlow/NetFlow/IPFIX export of the bridge exactly as ``settings`` say."""
        self.ovs.vsctl(*export_commands(self._bridge, settings, controller_url, agent))

    def ensure_ids_port(self) -> str:
        """The IDS mirror: a veth whose end ``names.IDS_PORT`` is on the bridge (the
        pipeline copies inspected networks there); returns the peer the IDS reads."""
        port, peer = names.IDS_PORT, names.IDS_PEER
        with contextlib.ExitStack() as undo:
            created = self.links.ensure_veth(port, peer, mtu=IDS_MTU)
            if created:
                undo.callback(self._silently, self.links.delete, port)
            for dev in (port, peer):
                self._quiet(dev)
                self.tuning.tx_offload_off(dev)
                self.links.set(dev, up=True)
            self._attach(port, {OWNER_KEY: OWNER, ROLE_KEY: "ids"}, created, undo)
            undo.pop_all()
        return peer

    def has_underlay(self) -> bool:
        return self.tunnel is not None

    def underlay_ok(self) -> bool:
        return self.tunnel is None or self.tunnel.intact()

    def warm_tunnels(self, addresses: Sequence[str]) -> None:
        if self.tunnel is not None:
            self.tunnel.warm(addresses)

    # ---- shared by gateways and endpoints ----

    def _quiet(self, dev: str, *, route_localnet: bool = False) -> None:
        """No IPv6 autoconf chatter (router solicitations, DAD) into the bridge, and no
        ARP answer from ``dev`` for an address that is not on ``dev`` itself.

        A bridge port is still a kernel interface: by default Linux answers ARP
        for any of the host's addresses on every interface, so a container asking
        for its gateway would also get the host end of its own veth as the answer
        (racing the flow table's answer), and its traffic would then reach the
        host's stack beside Open vSwitch instead of through it.

        ``route_localnet``: the kernel checks loopback routing on the device where a
        container's replies enter, needed for ``-p`` through 127.0.0.1."""
        values = {"ipv6/disable_ipv6": "1", "ipv4/arp_ignore": "1"}
        if route_localnet:
            values["ipv4/route_localnet"] = "1"
        self.tuning.device_sysctls(dev, values)

    def _offloads(self, *devs: str, tunnelled: bool = False) -> None:
        """TX checksum offload off on those of ``devs`` present here, if needed.

        ``tunnelled``: the ports' traffic goes through an OVS tunnel port
        (:func:`is_tunnelled`); with userspace TSO those need offloads off too.
        """
        if not tx_offload_off_needed(
            self._datapath_type, userspace_tso=self.userspace_tso, tunnelled=tunnelled
        ):
            return
        for dev in devs:
            if self.links.get(dev) is not None:
                self.tuning.tx_offload_off(dev)

    def _attach(
        self, port: str, external_ids: dict[str, str], created: bool, undo: contextlib.ExitStack
    ) -> None:
        """Put ``port`` on the bridge. A port whose device was just re-created (it
        vanished behind our back) is detached first: OVS still holds the old
        device under that name and would not open the new one."""
        on_bridge = self.ovs.has_port(self._bridge, port)
        if on_bridge and created:
            self.ovs.del_port(self._bridge, port, wait=True)
            on_bridge = False
        if not on_bridge:
            undo.callback(self._silently, self.ovs.del_port, self._bridge, port)
        ifindex = self.ovs.add_port(self._bridge, port, external_ids)
        self.raise_buffer(port, ifindex)

    def raise_buffer(self, port: str, ifindex: int | None = None) -> int:
        """The receive buffer of ovs-vswitchd's socket for ``port`` (netdev datapath,
        ``ovs_rcvbuf``); 1 if it was raised now. A failure is logged, never raised: it only
        costs throughput. ``ifindex``: the port's interface index, when OVS already said it."""
        if self._buffers is None:
            return 0
        if ifindex is None:
            link = self.links.get(port)
            if link is None:
                return 0
            ifindex = link.index
        try:
            raised = self._buffers.raise_for([ifindex])
        except (HostError, OSError) as exc:
            if not self._buffers_failing:
                log.warning("receive buffers of ovs-vswitchd's sockets left as they are: %s", exc)
            self._buffers_failing = True
            return 0
        if self._buffers_failing:
            log.info("receive buffers of ovs-vswitchd's sockets: raising them works again")
        self._buffers_failing = False
        return raised

    # ---- gateways ----

    def ensure_gateway(self, network: Network) -> None:
        dev, port = names.gateway_dev(network.id), names.gateway_port(network.id)
        prefix = ipaddress.IPv4Network(network.subnet).prefixlen
        with contextlib.ExitStack() as undo:
            created = self.links.ensure_veth(
                port, dev, mtu=network.mtu, peer_mac=network.gateway_mac
            )
            if created:
                undo.callback(self._silently, self.links.delete, port)
            self._offloads(port, dev, tunnelled=is_tunnelled(network))
            self._quiet(port)
            self._quiet(dev)
            self.links.set_addresses(dev, [f"{network.gateway}/{prefix}"])
            self.links.set(port, up=True)
            self.links.set(dev, up=True)
            self._attach(port, {OWNER_KEY: OWNER, NETWORK_KEY: network.id}, created, undo)
            if is_natted(network):
                self.tuning.sysctl("net.ipv4.ip_forward", "1")
                self.tuning.sysctl(f"net.ipv4.conf.{dev}.route_localnet", "1")
            undo.pop_all()

    def remove_gateway(self, network_id: str) -> None:
        port = names.gateway_port(network_id)
        self.ovs.del_port(self._bridge, port)
        self.links.delete(port)
        self.links.delete(names.gateway_dev(network_id))

    # ---- uplinks (flat) ----

    def ensure_uplink(self, physnet: str, nic: str) -> None:
        if self.links.get(nic) is None:
            raise HostError(
                f"uplink {nic} of physical network {physnet} does not exist on this host "
                f"(check --uplink {physnet}:{nic})"
            )
        routes = self.runner.run(["ip", "route", "show", "default"]).stdout
        # a kernel without IPv6 fails the listing: then there is no IPv6 default route
        routes += (
            "\n" + self.runner.run(["ip", "-6", "route", "show", "default"], check=False).stdout
        )
        if carries_default_route(routes, nic):
            raise HostError(
                f"uplink {nic} of physical network {physnet} carries this host's default "
                "route: qingluan never gives the machine's own interface to Open vSwitch; "
                "choose another NIC for --uplink"
            )
        self.links.set(nic, up=True)
        self._quiet(nic)
        self._offloads(nic)
        # --may-exist: a second flat network (or a repeat) reuses the port
        ifindex = self.ovs.add_port(self._bridge, nic, {OWNER_KEY: OWNER, UPLINK_KEY: physnet})
        self.raise_buffer(nic, ifindex)

    # ---- endpoints ----

    def ensure_endpoint(self, endpoint_id: str, network: Network, mac: str) -> str:
        port, peer = names.endpoint_port(endpoint_id), names.endpoint_peer(endpoint_id)
        with contextlib.ExitStack() as undo:
            created = self.links.ensure_veth(port, peer, mtu=network.mtu, peer_mac=mac)
            if created:
                undo.callback(self._silently, self.links.delete, port)
            self._offloads(port, peer, tunnelled=is_tunnelled(network))
            self._quiet(port, route_localnet=is_natted(network))
            if created:
                self.links.up(port)
            else:
                self.links.set(port, up=True)
            self._attach(
                port,
                {OWNER_KEY: OWNER, ENDPOINT_KEY: endpoint_id, NETWORK_KEY: network.id},
                created,
                undo,
            )
            undo.pop_all()
        return port

    def endpoint_plumbed(self, endpoint_id: str) -> bool:
        ends = (names.endpoint_port(endpoint_id), names.endpoint_peer(endpoint_id))
        return all(map(self.links.exists, ends))

    def remove_endpoint(self, endpoint_id: str) -> None:
        port = names.endpoint_port(endpoint_id)
        self.ovs.del_port(self._bridge, port)
        self.links.delete(port)
        self.links.delete(names.endpoint_peer(endpoint_id))

    # ---- NAT ----

    def sync_nat(self, networks: Sequence[Network], endpoints: Sequence[Endpoint]) -> bool:
        return self.iptables.apply(desired_rules(self.iptables.prefix, networks, endpoints))

    # ---- start-up ----

    def sweep(self, networks: Sequence[Network], endpoints: Sequence[Endpoint]) -> SweepReport:
        plan = plan_sweep(
            self.links.veths(LINK_PREFIXES), self.ovs.port_names(self._bridge), networks, endpoints
        )
        report = SweepReport()

        def attempt(what: str, fn: Callable[[], object]) -> bool:
            try:
                fn()
            except Exception as exc:
                report.errors.append(f"{what}: {exc}")
                log.error("sweep: %s: %s", what, exc)
                return False
            return True

        for port in plan.remove_ports:
            if attempt(f"remove port {port}", partial(self.ovs.del_port, self._bridge, port)):
                report.ports_removed.append(port)
        for link in plan.remove_links:
            if attempt(f"remove {link}", partial(self.links.delete, link)):
                report.links_removed.append(link)
        for net in plan.ensure_gateways:
            if attempt(f"gateway of network {net.id[:12]}", partial(self.ensure_gateway, net)):
                report.gateways_ensured.append(names.gateway_dev(net.id))
        for physnet, nic in plan.ensure_uplinks:
            if attempt(f"uplink {nic} of {physnet}", partial(self.ensure_uplink, physnet, nic)):
                report.uplinks_ensured.append(nic)
        for ep, net in plan.reattach:
            if attempt(f"endpoint {ep.id[:12]}", partial(self.ensure_endpoint, ep.id, net, ep.mac)):
                report.endpoints_reattached.append(names.endpoint_port(ep.id))
        report.endpoints_missing = [names.endpoint_port(e.id) for e in plan.missing]

        def resync() -> None:
            report.nat_changed = self.sync_nat(networks, endpoints)

        attempt("iptables", resync)

        return report

    def underlay_mtu(self) -> int | None:
        try:
            return self.links.route_mtu(self.tunnel.ip if self.tunnel else None)
        except Exception as exc:
            log.warning("cannot find the underlay MTU: %s", exc)
            return None

    @staticmethod
    def _silently(fn: Callable[..., object], *args: object) -> None:
        try:
            fn(*args)
        except Exception as exc:
            log.error("rollback failed: %s", exc)
