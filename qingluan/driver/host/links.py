"""veth pairs, MTU, MAC, addresses (pyroute2) plus offloads and sysctls (ethtool, sysctl).

Everything is create-or-reuse: a pair that exists with the right kind is kept
(its container end may already live in a container's namespace), anything
half-made is replaced, and a name that belongs to a non-veth device is an
error rather than something to delete.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from qingluan.driver.host.commands import HostError, Runner

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Link:
    name: str
    index: int
    kind: str | None
    mtu: int
    mac: str
    up: bool
    peer_index: int | None
    peer_elsewhere: bool  # the peer lives in another namespace


def _link(msg: Any) -> Link:
    info = msg.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    peer = msg.get_attr("IFLA_LINK")
    return Link(
        name=msg.get_attr("IFLA_IFNAME"),
        index=int(msg["index"]),
        kind=kind,
        mtu=int(msg.get_attr("IFLA_MTU") or 0),
        mac=str(msg.get_attr("IFLA_ADDRESS") or ""),
        up=bool(msg["flags"] & 1),
        peer_index=int(peer) if peer else None,
        peer_elsewhere=msg.get_attr("IFLA_LINK_NETNSID") is not None,
    )


class Links:
    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns

    @contextmanager
    def _ipr(self, what: str) -> Iterator[IPRoute]:
        try:
            with IPRoute(netns=self.netns) if self.netns else IPRoute() as ipr:
                yield ipr
        except NetlinkError as exc:
            raise HostError(f"{what}: {exc.args[1] if len(exc.args) > 1 else exc}") from None

    @staticmethod
    def _lookup(ipr: IPRoute, **key: Any) -> Any:
        """The link message for ``ifname=`` or ``index=``; None when there is no such device."""
        try:
            return ipr.link("get", **key)[0]
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise

    def exists(self, name: str) -> bool:
        """Whether ``name`` is a device here. In this process's own namespace that is one
        ``SIOCGIFINDEX`` ioctl (microseconds, against ~1 ms for a netlink look-up)."""
        if self.netns is None:
            try:
                socket.if_nametoindex(name)
            except OSError:
                return False
            return True
        with self._ipr(f"look up {name}") as ipr:
            return self._lookup(ipr, ifname=name) is not None

    def get(self, name: str) -> Link | None:
        if self.netns is None and not self.exists(name):
            return None  # the common "not there (yet)" answer without netlink
        with self._ipr(f"look up {name}") as ipr:
            msg = self._lookup(ipr, ifname=name)
            return None if msg is None else _link(msg)

    def get_by_index(self, index: int) -> Link | None:
        with self._ipr(f"look up interface {index}") as ipr:
            msg = self._lookup(ipr, index=index)
            return None if msg is None else _link(msg)

    def all(self) -> list[Link]:
        with self._ipr("list interfaces") as ipr:
            return [_link(m) for m in ipr.get_links()]

    def veths(self, prefixes: Sequence[str]) -> list[str]:
        return sorted(
            link.name
            for link in self.all()
            if link.kind == "veth" and link.name.startswith(tuple(prefixes))
        )

    def ensure_veth(self, name: str, peer: str, *, mtu: int, peer_mac: str | None = None) -> bool:
        """A veth pair ``name``/``peer``; True if it was created now.

        ``name`` stays in this namespace; ``peer`` may already have been moved
        away (a container's interface), which is fine. MTU (both ends) and the
        peer's MAC are set while the peer is here.
        """
        mine = self.get(name)
        if mine is not None and mine.kind != "veth":
            raise HostError(f"{name} exists and is not a veth ({mine.kind}): remove it")
        if mine is not None and not mine.peer_elsewhere and self._foreign_peer(mine, peer):
            log.info("veth %s has a foreign peer: re-creating it", name)
            self.delete(name)
            mine = None
        if mine is None:
            spec: dict[str, Any] = {"ifname": peer, "mtu": mtu}
            if peer_mac:
                spec["address"] = peer_mac
            with self._ipr(f"create veth {name}/{peer}") as ipr:
                try:
                    ipr.link("add", ifname=name, kind="veth", mtu=mtu, peer=spec)
                except NetlinkError as exc:
                    if exc.code != errno.EEXIST:
                        raise
                    self._remove_stray(peer)  # a half-made pair left its peer behind
                    ipr.link("add", ifname=name, kind="veth", mtu=mtu, peer=spec)
            return True  # made with the MTU and MAC asked for: nothing to check
        self.set(name, mtu=mtu)
        if self.get(peer) is not None:
            try:
                self.set(peer, mtu=mtu, mac=peer_mac)
            except HostError:
                if self.get(peer) is not None:
                    raise
                # Docker moved it into the container meanwhile: it set the MAC itself
        return False

    def _remove_stray(self, peer: str) -> None:
        stray = self.get(peer)
        if stray is None:
            raise HostError(f"cannot create the veth peer {peer}: the name is taken")
        if stray.kind != "veth":
            raise HostError(f"{peer} exists and is not a veth ({stray.kind}): remove it")
        self.delete(peer)

    def up(self, name: str) -> None:
        """Bring ``name`` up (one request, no lookup: for a device just created)."""
        with self._ipr(f"bring {name} up") as ipr:
            ipr.link("set", ifname=name, state="up")

    def _foreign_peer(self, mine: Link, peer: str) -> bool:
        """Is the other end of ``mine`` (whose peer was in this namespace) not ``peer``?

        A veth always has its peer, so when ``peer`` is not here the other end is
        either a device of another name here (half-made: foreign) or it has just
        been moved into a container (Docker does that right after Join, without
        asking us): not foreign.
        """
        other = self.get(peer)
        if other is not None:
            return other.index != mine.peer_index
        if mine.peer_index is None:
            return True
        return self.get_by_index(mine.peer_index) is not None

    def set(
        self, name: str, *, mtu: int | None = None, mac: str | None = None, up: bool = False
    ) -> None:
        """Change only what differs (a MAC change needs the device down on some kernels)."""
        link = self.get(name)
        if link is None:
            raise HostError(f"{name} does not exist")
        changes: dict[str, Any] = {}
        if mtu is not None and link.mtu != mtu:
            changes["mtu"] = mtu
        if mac is not None and link.mac.lower() != mac.lower():
            changes["address"] = mac
        if up and not link.up:
            changes["state"] = "up"
        if changes:
            with self._ipr(f"configure {name}") as ipr:
                ipr.link("set", index=link.index, **changes)

    def set_addresses(self, name: str, cidrs: Sequence[str]) -> None:
        """Exactly these IPv4 addresses on ``name`` (others are removed)."""
        want = {ipaddress.IPv4Interface(c) for c in cidrs}
        link = self.get(name)
        if link is None:
            raise HostError(f"{name} does not exist")
        with self._ipr(f"set addresses of {name}") as ipr:
            have = {
                ipaddress.IPv4Interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
                for a in ipr.get_addr(index=link.index, family=socket.AF_INET)
            }
            for extra in have - want:
                ipr.addr(
                    "del",
                    index=link.index,
                    address=str(extra.ip),
                    prefixlen=extra.network.prefixlen,
                )
            for miss in want - have:
                ipr.addr(
                    "add", index=link.index, address=str(miss.ip), prefixlen=miss.network.prefixlen
                )

    def addresses(self, name: str) -> list[str]:
        link = self.get(name)
        if link is None:
            return []
        with self._ipr(f"addresses of {name}") as ipr:
            return sorted(
                f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
                for a in ipr.get_addr(index=link.index, family=socket.AF_INET)
            )

    def delete(self, name: str) -> bool:
        """Delete ``name`` (a veth takes its peer along); False if it was not there."""
        with self._ipr(f"delete {name}") as ipr:
            try:
                ipr.link("del", ifname=name)
            except NetlinkError as exc:
                if exc.code == errno.ENODEV:
                    return False
                raise
        return True

    def route_mtu(self, address: str | None = None) -> int | None:
        """MTU of the interface holding ``address``, else of the default route's."""
        with self._ipr("find the underlay interface") as ipr:
            index: int | None = None
            if address:
                for a in ipr.get_addr(family=socket.AF_INET):
                    if a.get_attr("IFA_ADDRESS") == address:
                        index = int(a["index"])
                        break
            if index is None:
                for route in ipr.get_default_routes(family=socket.AF_INET):
                    oif = route.get_attr("RTA_OIF")
                    if oif:
                        index = int(oif)
                        break
            if index is None:
                return None
            msgs = ipr.link("get", index=index)
            return int(msgs[0].get_attr("IFLA_MTU"))


PROC_SYS = Path("/proc/sys")
IPV6_SYSCTLS = PROC_SYS / "net" / "ipv6"  # kernel-wide: IPv6 is there or not


class HostTuning:
    """ethtool offloads and sysctls (through the runner, so they land in its netns)."""

    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    def tx_offload_off(self, dev: str) -> None:
        """The userspace datapath with veths: TCP only works with TX checksum offload off."""
        self._runner.run(["ethtool", "-K", dev, "tx", "off"])

    def device_sysctls(self, dev: str, values: Mapping[str, str]) -> None:
        """Set per-device sysctls of ``dev`` (``{"ipv4/arp_ignore": "1", ...}``, under
        ``net/<family>/conf/<dev>/``) in one go: written straight into ``/proc/sys`` in the
        root namespace, one ``sysctl -w`` process for all of them in another. IPv6 keys
        are skipped when the kernel has no IPv6."""
        keys = {}
        for name, value in values.items():
            family, _, leaf = name.partition("/")
            if family == "ipv6" and not IPV6_SYSCTLS.exists():
                continue
            keys[f"net/{family}/conf/{dev}/{leaf}"] = value
        if not keys:
            return
        if self._runner.netns is None:
            for key, value in keys.items():
                try:
                    (PROC_SYS / key).write_text(value)
                except OSError as exc:
                    raise HostError(f"sysctl {key}: {exc.strerror or exc}") from None
            return
        self._runner.run(["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in keys.items())])

    def sysctl(self, key: str, value: str, *, missing_ok: bool = False) -> None:
        done = self._runner.run(["sysctl", "-n", key], check=False)
        if done.returncode != 0:
            if missing_ok:
                return
            raise HostError(f"sysctl {key}: {done.stderr.strip()}")
        if done.stdout.strip() != value:
            log.info("sysctl %s=%s", key, value)
            self._runner.run(["sysctl", "-q", "-w", f"{key}={value}"])
