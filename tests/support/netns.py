"""Network namespaces the tests create: simulated outside hosts, removed afterwards."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from tests.support.proc import run


class Namespace:
    """A namespace joined to the root namespace by one veth pair.

    The root end gets ``host_cidr``, the namespace end ``peer_cidr`` and a
    default route through the root end. Test traffic to the namespace never
    leaves the machine.
    """

    def __init__(self, name: str, host_dev: str, host_cidr: str, peer_cidr: str) -> None:
        self.name = name
        self.host_dev = host_dev
        self.host_cidr = host_cidr
        self.peer_cidr = peer_cidr
        self.host_ip = host_cidr.split("/")[0]
        self.ip = peer_cidr.split("/")[0]

    def create(self) -> Namespace:
        self.destroy()
        run(["ip", "netns", "add", self.name])
        peer = "eth0"
        run(["ip", "link", "add", self.host_dev, "type", "veth", "peer", "name", "qltmp-peer"])
        run(["ip", "link", "set", "qltmp-peer", "netns", self.name])
        self.exec(["ip", "link", "set", "qltmp-peer", "name", peer])
        run(["ip", "addr", "add", self.host_cidr, "dev", self.host_dev])
        run(["ip", "link", "set", self.host_dev, "up"])
        self.exec(["ip", "addr", "add", self.peer_cidr, "dev", peer])
        self.exec(["ip", "link", "set", peer, "up"])
        self.exec(["ip", "link", "set", "lo", "up"])
        self.exec(["ip", "route", "add", "default", "via", self.host_ip])
        return self

    def exec(self, argv: Sequence[str], timeout: float = 30.0, check: bool = True) -> str:
        return run(["ip", "netns", "exec", self.name, *argv], timeout=timeout, check=check)

    def popen(self, argv: Sequence[str]) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["ip", "netns", "exec", self.name, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def destroy(self) -> None:
        run(["ip", "link", "del", self.host_dev], check=False)
        run(["ip", "netns", "del", self.name], check=False)
