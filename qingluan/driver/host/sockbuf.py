"""Receive buffers of ovs-vswitchd's packet sockets on the userspace (netdev) datapath.

On the userspace datapath ovs-vswitchd reads every veth through an
``AF_PACKET`` socket and leaves its receive buffer at the system default
(``net.core.rmem_default``, 208 KiB here). With userspace TSO a TCP sender's
segments arrive as 64 KiB packets, so three of them fill it: whenever the
datapath thread is a little late the kernel drops the next ones and TCP
retransmits (about 300,000 retransmits in a 5 s iperf3 stream, measured).

The global sysctl is the machine's, not ours to change. Instead the driver
raises the limit of exactly the sockets that read its bridge's ports: it takes
a duplicate of each descriptor from ovs-vswitchd (``pidfd_getfd``, Linux 5.6,
root) and sets ``SO_RCVBUFFORCE`` on it, which changes that one socket (the
duplicate is then closed; ovs-vswitchd's own descriptor is untouched). A
buffer is a limit, not an allocation: memory is only used while packets wait.

Sockets are found through ``/proc/<pid>/net/packet`` (inode and interface index
of every packet socket in ovs-vswitchd's network namespace) and the socket
inodes behind ``/proc/<pid>/fd``. A socket re-created by ovs-vswitchd (a port
re-added, a restart) comes back at the default; the driver applies this to
every port it adds or re-attaches, which every periodic sync does for all of
its ports.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import socket
from collections.abc import Iterable
from pathlib import Path

from qingluan.driver.host.commands import HostError

log = logging.getLogger(__name__)

DEFAULT_RCVBUF = 4 << 20  # what the kernel then reports (and allows) is twice this
SO_RCVBUFFORCE = 33  # <asm-generic/socket.h>; not in Python's socket module
SYS_PIDFD_GETFD = 438  # the same number on every architecture (added in Linux 5.6)
_SOCKET_LINK = re.compile(r"socket:\[(\d+)\]$")


def parse_packet_table(text: str) -> dict[int, int]:
    """``/proc/net/packet`` as {socket inode: interface index}, bound sockets only.

    Columns: sk RefCnt Type Proto Iface R Rmem User Inode (a socket that is not
    bound to one interface has Iface 0)."""
    table: dict[int, int] = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 9 or not fields[4].isdigit() or not fields[8].isdigit():
            continue
        ifindex = int(fields[4])
        if ifindex:
            table[int(fields[8])] = ifindex
    return table


def socket_inode(link: str) -> int | None:
    """The inode of a ``/proc/<pid>/fd`` link that is a socket (``socket:[123]``)."""
    m = _SOCKET_LINK.match(link)
    return int(m.group(1)) if m else None


def vswitchd_pidfile(ovsdb: str | None) -> Path:
    """Where ovs-vswitchd's pid file is: beside a ``unix:`` database socket (both live in
    the OVS run directory), else in ``$OVS_RUNDIR`` (default /var/run/openvswitch)."""
    if ovsdb and ovsdb.startswith("unix:"):
        return Path(ovsdb[len("unix:") :]).parent / "ovs-vswitchd.pid"
    return Path(os.environ.get("OVS_RUNDIR", "/var/run/openvswitch")) / "ovs-vswitchd.pid"


def read_pid(pidfile: Path) -> int:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError) as exc:
        raise HostError(f"cannot read ovs-vswitchd's pid from {pidfile}: {exc}") from None


class PacketSocketBuffers:
    """Raises the receive buffer of ovs-vswitchd's packet sockets for given interfaces."""

    def __init__(self, pidfile: Path, size: int = DEFAULT_RCVBUF) -> None:
        if size <= 0:
            raise ValueError("size must be positive")
        self.pidfile = pidfile
        self.size = size
        self._libc = ctypes.CDLL(None, use_errno=True)

    def raise_for(self, ifindexes: Iterable[int]) -> int:
        """Raise the sockets that read these interfaces; return how many were below.

        Raises :class:`HostError` when ovs-vswitchd cannot be found or inspected."""
        wanted = set(ifindexes)
        if not wanted:
            return 0
        pid = read_pid(self.pidfile)
        proc = Path(f"/proc/{pid}")
        try:
            table = parse_packet_table((proc / "net" / "packet").read_text())
        except OSError as exc:
            raise HostError(f"cannot read ovs-vswitchd's packet sockets: {exc}") from None
        inodes = {inode for inode, ifindex in table.items() if ifindex in wanted}
        if not inodes:
            return 0
        fds = self._fds_of(proc, inodes)
        if not fds:
            return 0
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as exc:
            raise HostError(f"cannot open ovs-vswitchd (pid {pid}): {exc}") from None
        raised = 0
        try:
            for fd in fds:
                raised += self._raise_one(pidfd, fd)
        finally:
            os.close(pidfd)
        return raised

    @staticmethod
    def _fds_of(proc: Path, inodes: set[int]) -> list[int]:
        """The descriptors of these socket inodes. Newest first (a port just added has
        one of the highest numbers), stopping once all are found: with a thousand
        ports ovs-vswitchd holds thousands of descriptors."""
        fds = []
        try:
            entries = sorted((int(e) for e in os.listdir(proc / "fd") if e.isdigit()), reverse=True)
        except OSError as exc:
            raise HostError(f"cannot list ovs-vswitchd's descriptors: {exc}") from None
        left = set(inodes)
        for fd in entries:
            try:
                inode = socket_inode(os.readlink(proc / "fd" / str(fd)))
            except OSError:
                continue  # closed meanwhile
            if inode in left:
                fds.append(fd)
                left.discard(inode)
                if not left:
                    break
        return fds

    def _raise_one(self, pidfd: int, fd: int) -> int:
        dup = self._libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
        if dup < 0:
            err = ctypes.get_errno()
            raise HostError(f"cannot take ovs-vswitchd's socket {fd}: {os.strerror(err)}")
        sock = socket.socket(fileno=dup)
        try:
            # the kernel doubles what is set (bookkeeping overhead) and reports that
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 2 * self.size:
                return 0
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, self.size)
            return 1
        finally:
            sock.close()  # only the duplicate: ovs-vswitchd's descriptor stays open
