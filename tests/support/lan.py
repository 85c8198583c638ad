"""The physical network of the cross-host modes, simulated: a switch and a router.

- the **switch** is a Linux bridge in a namespace of its own; a Linux bridge
  without VLAN filtering passes 802.1Q-tagged frames untouched, so every port
  behaves like a trunk port;
- every simulated host gets a NIC ``eth1`` on that switch (without an
  address: it is the NIC a host gives to its OVS bridge for flat/vlan);
- the **router** sits on the switch with the LAN's gateway address
  (``FLAT_GATEWAY``, the seed's ``--gateway 192.168.159.1``) and one more
  address playing "another machine on the LAN" (``LAN_HOST``).

Everything lives in namespaces this module creates; ``close()`` deletes them
(and every veth with them).
"""

from __future__ import annotations

import contextlib

from tests.support.ovs import Netns, veth
from tests.support.proc import run

FLAT_SUBNET = "192.168.159.0/24"
FLAT_GATEWAY = "192.168.159.1"
LAN_HOST = "192.168.159.254"
SWITCH = "lan0"


class Lan:
    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.switch = Netns(f"qll-{tag}")
        self.router = Netns(f"qlr-{tag}")
        self.ports: list[str] = []

    def start(self) -> Lan:
        try:
            self.switch.create()
            self.switch.run("ip", "link", "add", SWITCH, "type", "bridge")  # VLAN-unaware
            self.switch.run("ip", "link", "set", SWITCH, "up")
            self.router.create()
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
        veth(self.switch, port, ns, dev)
        self.switch.run("ip", "link", "set", port, "master", SWITCH)
        self.ports.append(port)

    def close(self) -> None:
        for ns in (self.router, self.switch):
            with contextlib.suppress(Exception):
                ns.delete()
        # a namespace that was never marked created (a failure half-way) by name, too
        for name in (self.router.name, self.switch.name):
            run(["ip", "netns", "delete", name], check=False)
