"""A demo of the cross-host modes on this one machine: three simulated Docker hosts.

Starts the test rig (tests/support/stack.py): a controller, three hosts (each a
network namespace with its own Open vSwitch, dockerd and qingluan driver), a
simulated LAN with a router that carries VLAN 100, and an underlay for VXLAN.
Then, on every host, the seed's commands: a vlan network (VLAN 100) and a vxlan
network (VNI 5000), one container on each; it prints the addresses, pings
across hosts, `qingluan status`, and waits. Press Enter (or Ctrl-C) to remove
everything it made.

    make demo        # or: sudo PYTHONPATH=. .venv/bin/python scripts/rig-demo.py
"""

from __future__ import annotations

import contextlib
import ipaddress
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration.conftest import pings, run_sleeper, running_stack
from tests.integration.test_e2e_crosshost import VLAN100, VXLAN
from tests.support.stack import QL, cli


def main() -> None:
    with running_stack("qldemo-", host_names=("h1", "h2", "h3"), lan=True, underlay=True) as s:
        assert s.lan is not None
        ips: dict[str, str] = {}
        for h in s.hosts:
            h.docker("network", "create", *QL, *VLAN100, "vlan100")
            h.docker("network", "create", *QL, *VXLAN, "vx5000")
            ips[f"{h.name}/vlan"] = run_sleeper(h, "c-vlan", "vlan100")
            ips[f"{h.name}/vxlan"] = run_sleeper(h, "c-vxlan", "vx5000")
        h1 = s.hosts[0]
        subnet = ipaddress.IPv4Network(
            h1.docker("network", "inspect", "-f", "{{(index .IPAM.Config 0).Subnet}}", "vlan100")
        )
        s.lan.router_vlan(100, f"{subnet[1]}/{subnet.prefixlen}")
        for where, ip in sorted(ips.items()):
            print(f"{where:10} {ip}")
        for h in s.hosts[1:]:
            for mode in ("vlan", "vxlan"):
                ok = pings(h1, f"c-{mode}", ips[f"{h.name}/{mode}"], count=2)
                print(f"h1 -> {h.name} over {mode}: {'ok' if ok else 'FAILED'}")
        print(f"h1 -> the VLAN's router {subnet[1]}: {pings(h1, 'c-vlan', str(subnet[1]))}")
        print(cli(s, "status").stdout)
        print(f"controller API {s.api_url}, token {s.token_file}; host namespaces:",
              " ".join(h.netns.name for h in s.hosts))  # fmt: skip
        with contextlib.suppress(KeyboardInterrupt, EOFError):
            input("Enter (or Ctrl-C) removes everything ... ")


if __name__ == "__main__":
    main()
