"""The host's VXLAN tunnel endpoint: the flow-based tunnel port and its underlay.

With the kernel datapath (``system``) the tunnel port sends through the
kernel's routing: the underlay address only has to be one of the host's
addresses. With the userspace datapath (``netdev``) OVS routes and resolves
the underlay itself, from an address that sits on an OVS bridge: the driver
puts the underlay NIC (``--underlay-nic``) on the bridge ``br-qlphy``, which
forwards by itself, and the underlay address on that bridge's own interface
(an address found on the NIC is moved there). A userspace bridge interface
loses its address when ovs-vswitchd restarts; every sync puts it back.
"""

from __future__ import annotations

import ipaddress
import logging
import sys
from collections.abc import Sequence

from qingluan import names
from qingluan.driver.host.commands import HostError, Runner
from qingluan.driver.host.links import Links
from qingluan.driver.host.ovs import OWNER, OWNER_KEY, Ovs
from qingluan.driver.uplinks import carries_default_route
from qingluan.model import DatapathType

log = logging.getLogger(__name__)

UNDERLAY_KEY = "qingluan-underlay"


def parse_underlay_address(text: str) -> ipaddress.IPv4Interface:
    """``--underlay-address A.B.C.D/LEN``: this host's VTEP address and its subnet."""
    try:
        iface = ipaddress.IPv4Interface(text.strip())
    except ValueError:
        raise ValueError(
            f"--underlay-address {text!r} is not an IPv4 address with a prefix length "
            "(e.g. 172.31.0.11/24)"
        ) from None
    if "/" not in text:
        raise ValueError(f"--underlay-address {text}: give the prefix length (e.g. {text}/24)")
    if iface.ip in (iface.network.network_address, iface.network.broadcast_address) and (
        iface.network.prefixlen < 31
    ):
        raise ValueError(f"--underlay-address {text}: not a host address of {iface.network}")
    if iface.ip.is_loopback or iface.ip.is_multicast or iface.ip.is_unspecified:
        raise ValueError(f"--underlay-address {text}: not a unicast host address")
    return iface


def underlay_mac(ip: ipaddress.IPv4Address) -> str:
    """The underlay bridge's MAC: locally administered, from the underlay address."""
    return names.mac_from_key(names.UNDERLAY_MAC_PREFIX, int(ip))


class Tunnel:
    def __init__(
        self,
        runner: Runner,
        ovs: Ovs,
        links: Links,
        *,
        bridge: str,
        address: ipaddress.IPv4Interface,
        nic: str | None,
        datapath_type: DatapathType,
    ) -> None:
        self._runner, self._ovs, self._links = runner, ovs, links
        self._bridge = bridge
        self.address = address
        self._nic = nic
        self._datapath_type = datapath_type

    @property
    def ip(self) -> str:
        return str(self.address.ip)

    def ensure(self) -> None:
        """The underlay (userspace datapath) and the tunnel port, created or repaired."""
        if self._datapath_type is DatapathType.NETDEV:
            self._ensure_userspace_underlay()
        elif self._nic is not None:
            log.info("--underlay-nic %s is not needed with the kernel datapath: ignored", self._nic)
        self._ovs.ensure_vxlan_port(
            self._bridge, names.TUNNEL_PORT, local_ip=self.ip, external_ids={OWNER_KEY: OWNER}
        )

    def _ensure_userspace_underlay(self) -> None:
        nic, bridge = self._nic, names.UNDERLAY_BRIDGE
        if nic is None:
            raise HostError(
                "the userspace datapath tunnels through an underlay NIC on an OVS bridge: "
                "start qingluan driver with --underlay-nic <nic> as well as --underlay-address"
            )
        if self._links.get(nic) is None:
            raise HostError(f"underlay NIC {nic} does not exist on this host (--underlay-nic)")
        routes = self._runner.run(["ip", "route", "show", "default"]).stdout
        if carries_default_route(routes, nic):
            raise HostError(
                f"underlay NIC {nic} carries this host's default route: qingluan never gives "
                "the machine's own interface to Open vSwitch; give it a NIC of its own"
            )
        # a MAC that survives an ovs-vswitchd restart, so that the other hosts'
        # resolution of this underlay address stays right
        self._ovs.ensure_plain_bridge(
            bridge, datapath_type=self._datapath_type, hwaddr=underlay_mac(self.address.ip)
        )
        mine = str(self.address)
        if mine in self._links.addresses(nic):  # moved to the bridge, as the NIC is its port now
            log.info("moving underlay address %s from %s to %s", mine, nic, bridge)
            keep = [a for a in self._links.addresses(nic) if a != mine]
            self._links.set_addresses(nic, keep)
        self._links.set(nic, up=True)
        # the address lives on the bridge: the NIC itself never answers ARP for it
        self._runner.run(["sysctl", "-q", "-w", f"net.ipv4.conf.{nic}.arp_ignore=1"])
        self._ovs.add_port(bridge, nic, {OWNER_KEY: OWNER, UNDERLAY_KEY: "nic"})
        if self._links.addresses(bridge) != [mine]:
            log.info("underlay address %s on %s", mine, bridge)
            self._links.set_addresses(bridge, [mine])
        self._links.set(bridge, up=True)

    def intact(self) -> bool:
        """Userspace datapath: the underlay address is still on the underlay bridge."""
        if self._datapath_type is not DatapathType.NETDEV:
            return True
        try:
            return str(self.address) in self._links.addresses(names.UNDERLAY_BRIDGE)
        except Exception:
            return False

    def warm(self, addresses: Sequence[str]) -> None:
        """Userspace datapath: have OVS learn these underlay neighbours now.

        OVS resolves a tunnel's next hop itself and drops the packet that
        found it unresolved; it also learns from ARP replies that cross the
        underlay bridge. So: forget the kernel's entry for each address on the
        same subnet and send it one UDP datagram (discard port) from the
        underlay address: the kernel ARPs, the reply passes OVS, OVS learns.
        One ARP per peer per sync.
        """
        if self._datapath_type is not DatapathType.NETDEV:
            return
        subnet = self.address.network
        peers = sorted(
            {a for a in addresses if a != self.ip and ipaddress.IPv4Address(a) in subnet}
        )
        if not peers:
            return
        bridge = names.UNDERLAY_BRIDGE
        for peer in peers:
            self._runner.run(["ip", "neigh", "del", peer, "dev", bridge], check=False)
        self._runner.run([sys.executable, "-c", _SEND_UDP, self.ip, *peers], check=False)


# one datagram to the discard port of every peer, from the underlay address
_SEND_UDP = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 0))
for peer in sys.argv[2:]:
    try:
        s.sendto(b"", (peer, 9))
    except OSError:
        pass
"""
