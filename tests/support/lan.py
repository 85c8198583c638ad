"""The physical network of the cross-host modes, simulated: a switch, a router, an underlay.

- the **switch** is a Linux bridge (``lan0``) in a namespace of its own; a Linux
  bridge without VLAN filtering passes 802.1Q-tagged frames untouched, so every
  port behaves like a trunk port;
- every simulated host gets a NIC ``eth1`` on that switch (without an
  address: it is the NIC a host gives to its OVS bridge for flat/vlan);
- the **router** sits on the switch with the LAN's gateway address
  (``FLAT_GATEWAY``, the seed's ``--gateway 192.168.159.1``) on its untagged
  ``eth0``, and one more address playing "another machine on the LAN"
  (``LAN_HOST``). It forwards IPv4 between its interfaces.
- **VLANs**: the kernel has no 8021q module, so tagging is done by Open vSwitch.
  ``Lan.router_vlan(vid, cidr)`` makes the router the gateway of VLAN ``vid``: on
  first use it starts an OVS (userspace datapath) in the router namespace with a
  bridge ``brtrunk`` whose trunk port ``trunk`` is a second cable to switch port
  ``rtrunk``; every VLAN is an OVS internal port ``v<vid>`` (``tag=<vid>``) of
  that bridge carrying the router's address on that VLAN.
  ``Lan.vlan_host(vid, cidr, gateway)`` is "another machine on VLAN vid": a
  namespace with its own small OVS whose trunk ``eth1`` is on the switch (port
  ``vh<n>``) and whose only addressed interface, ``eth0``, is an access port of
  VLAN ``vid``. Frames between two VLAN hosts cross ``lan0`` tagged.
- the **underlay** (``Underlay``) is a second Linux bridge ``ul0`` (in the
  switch namespace, or in a namespace of its own) for VXLAN between hosts: every
  host gets a NIC ``eth2`` on it, MTU 1500 everywhere; host ``i``'s underlay
  address is ``172.31.<n>.<10+i>/24`` with ``n`` picked so that the /24 overlaps
  no route of the machine.

Every veth made here has TX checksum offload off on both ends (a userspace-datapath
OVS that reads a frame with a partial checksum forwards it broken: ICMP works, TCP
does not). Everything lives in namespaces this module creates; ``close()`` stops the
OVS instances and deletes the namespaces (and every veth with them).
"""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
import signal
import subprocess
import sys
from dataclasses import dataclass

from tests.support.ovs import Netns, OvsError, OvsInstance, veth
from tests.support.proc import run

FLAT_SUBNET = "192.168.159.0/24"
FLAT_GATEWAY = "192.168.159.1"
LAN_HOST = "192.168.159.254"
SWITCH = "lan0"
ROUTER_BRIDGE = "brtrunk"  # the router's VLAN-aware OVS bridge
ROUTER_TRUNK = "trunk"  # its trunk device in the router namespace ...
ROUTER_TRUNK_PORT = "rtrunk"  # ... on this switch port
UNDERLAY_BRIDGE = "ul0"
UNDERLAY_NIC = "eth2"
UNDERLAY_MTU = 1500


def used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 route destination of the machine (root namespace, all tables)."""
    out = run(["ip", "-4", "route", "show", "table", "all"])
    nets = []
    for line in out.splitlines():
        word = line.split()[0] if line.split() else ""
        with contextlib.suppress(ValueError):
            if word not in ("default", "broadcast", "local", "unreachable"):
                nets.append(ipaddress.IPv4Network(word, strict=False))
    return nets


def free_subnet(template: str) -> ipaddress.IPv4Network:
    """A random ``template.format(n)`` /24 (n in 1..250) that overlaps no route here."""
    used = used_networks()
    for _ in range(200):
        cand = ipaddress.IPv4Network(template.format(secrets.randbelow(250) + 1))
        if not any(cand.overlaps(u) for u in used):
            return cand
    raise RuntimeError(f"no free {template.format('x')} subnet")


def tx_off(ns: Netns | None, dev: str) -> None:
    """``ethtool -K DEV tx off`` (in ``ns``; None: this namespace)."""
    prefix = ns.prefix() if ns else []
    run([*prefix, "ethtool", "-K", dev, "tx", "off"], timeout=10)


def cable(left: Netns, left_dev: str, right: Netns, right_dev: str, mtu: int = 1500) -> None:
    """A veth ``left_dev`` (in ``left``) -- ``right_dev`` (in ``right``): both up, MTU
    ``mtu``, TX checksum offload off on both ends."""
    veth(left, left_dev, right, right_dev)
    for ns, dev in ((left, left_dev), (right, right_dev)):
        ns.run("ip", "link", "set", dev, "mtu", str(mtu))
        tx_off(ns, dev)


def link_mac(ns: Netns, dev: str) -> str:
    """The MAC address of ``dev`` in ``ns``."""
    return ns.run("cat", f"/sys/class/net/{dev}/address").strip()


class VlanHost(Netns):
    """A machine on VLAN ``vid`` (see ``Lan.vlan_host``): a namespace with its own OVS."""

    DEV = "eth0"  # the access port of the VLAN, with the address
    TRUNK = "eth1"  # the trunk NIC on the switch
    BRIDGE = "br0"

    def __init__(self, name: str, vid: int, address: str, port: str) -> None:
        super().__init__(name)
        self.vid = vid
        self.address = address  # "192.168.100.10/24"
        self.port = port  # its switch port
        self.ovs: OvsInstance | None = None

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]

    @property
    def mac(self) -> str:
        return link_mac(self, self.DEV)

    def delete(self) -> None:
        if self.ovs is not None:
            with contextlib.suppress(Exception):
                self.ovs.stop()
        super().delete()
        run(["ip", "netns", "delete", self.name], check=False)


def _access_port(ovs: OvsInstance, bridge: str, name: str, vid: int) -> None:
    """An OVS internal port ``name`` of ``bridge``, access port of VLAN ``vid``."""
    if not 1 <= vid <= 4094:
        raise ValueError(f"VLAN id {vid} is not in 1..4094")
    ovs.vsctl(
        "add-port", bridge, name, f"tag={vid}", "--", "set", "interface", name, "type=internal"
    )
    ovs.ofport(name)  # vswitchd made the tap


def _learning_switch(ovs: OvsInstance, bridge: str) -> None:
    """A VLAN-aware MAC-learning bridge (``fail_mode=standalone``, no controller: NORMAL)."""
    ovs.add_bridge(bridge, dpid=secrets.randbits(48) | 1, fail_mode="standalone")


class Lan:
    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.switch = Netns(f"qll-{tag}")
        self.router = Netns(f"qlr-{tag}")
        self.ports: list[str] = []
        self.router_ovs: OvsInstance | None = None
        self.router_vlans: dict[int, str] = {}  # vid -> the router's "address/prefix"
        self.vlan_hosts: list[VlanHost] = []

    def start(self) -> Lan:
        try:
            self.switch.create()
            self.switch.run("ip", "link", "add", SWITCH, "type", "bridge")  # VLAN-unaware
            self.switch.run("ip", "link", "set", SWITCH, "up")
            self.router.create()
            self.router.run("sysctl", "-qw", "net.ipv4.ip_forward=1")  # this namespace only
            self.attach(self.router, "eth0", "router")
            prefix = FLAT_SUBNET.split("/")[1]
            for address in (FLAT_GATEWAY, LAN_HOST):
                self.router.run("ip", "addr", "add", f"{address}/{prefix}", "dev", "eth0")
        except BaseException:
            self.close()
            raise
        return self

    def attach(self, ns: Netns, dev: str, port: str) -> None:
        """A cable from ``ns`` (device ``dev``, up, no address) to switch port ``port``."""
        self.ports.append(port)
        cable(self.switch, port, ns, dev)
        self.switch.run("ip", "link", "set", port, "master", SWITCH)

    # ---- VLANs ----

    def _router_switch(self) -> OvsInstance:
        """The router's OVS, its bridge and trunk cable, made on first use."""
        if self.router_ovs is None:
            self.router_ovs = OvsInstance(netns=self.router.name)
            self.router_ovs.start()
            _learning_switch(self.router_ovs, ROUTER_BRIDGE)
            self.attach(self.router, ROUTER_TRUNK, ROUTER_TRUNK_PORT)
            self.router_ovs.add_port(ROUTER_BRIDGE, ROUTER_TRUNK)
        return self.router_ovs

    def router_vlan(self, vid: int, address_cidr: str) -> None:
        """Make the router the gateway of VLAN ``vid``: an access port ``v<vid>`` on its
        OVS, up, with ``address_cidr`` (e.g. "192.168.100.1/24")."""
        if vid in self.router_vlans:
            raise ValueError(f"the router is already on VLAN {vid}")
        ovs = self._router_switch()
        dev = f"v{vid}"
        _access_port(ovs, ROUTER_BRIDGE, dev, vid)
        self.router_vlans[vid] = address_cidr
        self.router.run("ip", "addr", "add", address_cidr, "dev", dev)
        self.router.run("ip", "link", "set", dev, "up")

    def router_vlan_remove(self, vid: int) -> None:
        """Take the router off VLAN ``vid`` (its port and address go)."""
        if self.router_vlans.pop(vid, None) is not None and self.router_ovs is not None:
            self.router_ovs.vsctl("--if-exists", "del-port", ROUTER_BRIDGE, f"v{vid}")

    def vlan_host(self, vid: int, address_cidr: str, gateway: str | None = None) -> VlanHost:
        """A machine on VLAN ``vid`` of the switch: a namespace whose interface ``eth0``
        (an OVS access port of VLAN ``vid``) carries ``address_cidr`` and, if given, a
        default route via ``gateway``. Its trunk ``eth1`` sits on switch port ``vh<n>``.
        Removed by ``close()`` (or by its own ``delete()``)."""
        n = len(self.vlan_hosts)
        host = VlanHost(f"qlv-{self.tag}-{n}", vid, address_cidr, f"vh{n}")
        self.vlan_hosts.append(host)
        try:
            host.create()
            host.ovs = OvsInstance(netns=host.name)
            host.ovs.start()
            _learning_switch(host.ovs, host.BRIDGE)
            self.attach(host, host.TRUNK, host.port)
            host.ovs.add_port(host.BRIDGE, host.TRUNK)
            _access_port(host.ovs, host.BRIDGE, host.DEV, vid)
            host.run("ip", "addr", "add", address_cidr, "dev", host.DEV)
            host.run("ip", "link", "set", host.DEV, "up")
            if gateway is not None:
                host.run("ip", "route", "add", "default", "via", gateway)
        except BaseException:
            host.delete()
            raise
        return host

    def close(self) -> None:
        for host in self.vlan_hosts:
            with contextlib.suppress(Exception):
                host.delete()
        if self.router_ovs is not None:
            with contextlib.suppress(Exception):
                self.router_ovs.stop()
        for ns in (self.router, self.switch):
            with contextlib.suppress(Exception):
                ns.delete()
        # a namespace that was never marked created (a failure half-way) by name, too
        for name in (self.router.name, self.switch.name):
            run(["ip", "netns", "delete", name], check=False)


# ---- the underlay of VXLAN ----------------------------------------------------------


class Underlay:
    """A Linux bridge ``ul0`` joining every host's ``eth2`` (MTU 1500), for VXLAN.

    It lives in ``switch`` (the Lan's switch namespace: pass it before the Lan is
    started, it is only used from ``start()`` on) or, if None, in a namespace of its
    own (``qlu-<tag>``). ``address(i)`` is host ``i``'s underlay address; the hosts'
    ``eth2`` carry none (the driver puts it on its OVS bridge)."""

    def __init__(self, tag: str, switch: Netns | None = None) -> None:
        self.tag = tag
        self._own_ns = switch is None
        self.ns = switch or Netns(f"qlu-{tag}")
        self.subnet = free_subnet("172.31.{}.0/24")
        self.ports: list[str] = []

    def address(self, index: int) -> str:
        """Host ``index``'s underlay address, "172.31.<n>.<10+index>/24"."""
        return f"{self.subnet[10 + index]}/{self.subnet.prefixlen}"

    def start(self) -> Underlay:
        try:
            if self._own_ns:
                self.ns.create()
            self.ns.run("ip", "link", "add", UNDERLAY_BRIDGE, "type", "bridge")
            self.ns.run("ip", "link", "set", UNDERLAY_BRIDGE, "mtu", str(UNDERLAY_MTU))
            self.ns.run("ip", "link", "set", UNDERLAY_BRIDGE, "up")
        except BaseException:
            self.close()
            raise
        return self

    def attach(self, ns: Netns, port: str, dev: str = UNDERLAY_NIC) -> None:
        """A cable from ``ns`` (device ``dev``, up, no address) to bridge port ``port``."""
        self.ports.append(port)
        cable(self.ns, port, ns, dev, mtu=UNDERLAY_MTU)
        self.ns.run("ip", "link", "set", port, "master", UNDERLAY_BRIDGE)

    def bridge_ports(self) -> set[str]:
        out = self.ns.run("ip", "-o", "link", "show", "master", UNDERLAY_BRIDGE)
        return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}

    def mtu(self, ns: Netns | None = None, dev: str = UNDERLAY_BRIDGE) -> int:
        return int((ns or self.ns).run("cat", f"/sys/class/net/{dev}/mtu").strip())

    def close(self) -> None:
        if self._own_ns:
            with contextlib.suppress(Exception):
                self.ns.delete()
            run(["ip", "netns", "delete", self.ns.name], check=False)
        else:  # the Lan deletes its switch namespace; the bridge (and its veths) go now
            with contextlib.suppress(Exception):
                self.ns.run("ip", "link", "del", UNDERLAY_BRIDGE, check=False)
                for port in self.ports:
                    self.ns.run("ip", "link", "del", port, check=False)


# ---- seeing frames on a wire ---------------------------------------------------------

_SNIFF = r"""
import socket, struct, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
s.bind((sys.argv[1], 0))
s.setsockopt(263, 8, 1)  # SOL_PACKET, PACKET_AUXDATA: the tag the kernel took off
print("ready", flush=True)
while True:
    data, anc, _, addr = s.recvmsg(65535, socket.CMSG_SPACE(20))
    vid, etype = -1, struct.unpack("!H", data[12:14])[0]
    for level, kind, aux in anc:
        if level == 263 and kind == 8 and len(aux) >= 20:
            status, _, _, _, _, tci, _ = struct.unpack("IIIHHHH", aux[:20])
            if status & 0x10:  # TP_STATUS_VLAN_VALID
                vid = tci & 0xFFF
    if vid < 0 and etype == 0x8100:  # still in the frame
        vid, etype = struct.unpack("!HH", data[14:18])
        vid &= 0xFFF
    print(addr[2], vid, data[6:12].hex(":"), data[0:6].hex(":"), hex(etype), flush=True)
"""


@dataclass(frozen=True)
class Frame:
    outgoing: bool  # sent out of the device (else received on it)
    vlan: int | None  # the 802.1Q VLAN id, None: untagged
    src: str
    dst: str
    ethertype: int  # the (inner) EtherType


class Sniffer:
    """Every frame that crosses ``dev`` in ``ns`` (AF_PACKET, with 802.1Q tags), while
    running. ``with Sniffer(ns, dev) as s: ...; frames = s.frames()``."""

    def __init__(self, ns: Netns, dev: str) -> None:
        self.ns = ns
        self.dev = dev
        self._proc: subprocess.Popen[str] | None = None
        self._lines: list[str] = []

    def start(self) -> Sniffer:
        self._proc = subprocess.Popen(
            [*self.ns.prefix(), sys.executable, "-c", _SNIFF, self.dev],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        first = self._proc.stdout.readline()  # the socket is bound before "ready"
        if first.strip() != "ready":
            self.stop()
            raise OvsError(f"sniffer on {self.dev} did not start: {first}")
        return self

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self._proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            out, _ = self._proc.communicate(timeout=10)
        self._lines += out.splitlines()
        self._proc = None

    def frames(self) -> list[Frame]:
        """The frames seen so far (stops the capture)."""
        self.stop()
        frames = []
        for line in self._lines:
            kind, vid, src, dst, etype = line.split()
            frames.append(
                Frame(int(kind) == 4, None if int(vid) < 0 else int(vid), src, dst, int(etype, 16))
            )
        return frames

    def __enter__(self) -> Sniffer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
