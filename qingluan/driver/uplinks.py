"""Uplinks: which host NIC carries which physical network (``--uplink PHYSNET:NIC``).

A flat network (``--opt model=flat``) is the bridge joined to a physical LAN
through a NIC of the host. The driver is told at its start which NIC belongs to
which physical network; ``--opt physnet=NAME`` (default ``physnet1``) picks one
per network. Everything here is pure: parsing and the default-route check on
``ip route show default`` output (the real look-up is in
``qingluan.driver.host.plumbing``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from itertools import pairwise

from qingluan import names

DEFAULT_PHYSNET = "physnet1"
IFNAME_MAX = names.IFNAME_MAX

_PHYSNET = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# what the sweep treats as its own: an uplink with such a name would be removed by it
_OWN_PREFIXES = (names.ENDPOINT_PORT, names.ENDPOINT_PEER, names.GATEWAY_DEV, names.GATEWAY_PORT)


def physnet_problem(physnet: str) -> str | None:
    """Why ``physnet`` is not a physical network name, or None."""
    if not _PHYSNET.fullmatch(physnet):
        return (
            f"physical network name {physnet!r} must be 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return None


def nic_problem(nic: str) -> str | None:
    """Why ``nic`` cannot be a Linux interface name usable as an uplink, or None."""
    if not nic:
        return "the NIC name is empty"
    if len(nic) > IFNAME_MAX:
        return f"NIC name {nic!r} is longer than {IFNAME_MAX} characters"
    if nic in (".", "..") or any(c in nic for c in "/:") or any(c.isspace() for c in nic):
        return f"NIC name {nic!r} is not a valid interface name"
    if nic.startswith(_OWN_PREFIXES):
        return f"NIC name {nic!r} starts with a prefix qingluan uses for its own devices"
    return None


def parse_uplink(spec: str) -> tuple[str, str]:
    """``physnet1:eth1`` -> ``("physnet1", "eth1")``; ValueError with the reason."""
    physnet, sep, nic = spec.strip().partition(":")
    if not sep:
        raise ValueError(f"--uplink {spec!r}: expected PHYSNET:NIC, e.g. --uplink physnet1:eth1")
    problem = physnet_problem(physnet) or nic_problem(nic)
    if problem:
        raise ValueError(f"--uplink {spec!r}: {problem}")
    return physnet, nic


def parse_uplinks(specs: Iterable[str]) -> dict[str, str]:
    """Every ``--uplink`` as physnet -> NIC; one NIC per physnet and one physnet per NIC."""
    uplinks: dict[str, str] = {}
    for spec in specs:
        physnet, nic = parse_uplink(spec)
        if physnet in uplinks:
            raise ValueError(
                f"--uplink {spec!r}: physical network {physnet} already has uplink "
                f"{uplinks[physnet]}"
            )
        owner = next((p for p, n in uplinks.items() if n == nic), None)
        if owner is not None:
            raise ValueError(f"--uplink {spec!r}: {nic} is already the uplink of {owner}")
        uplinks[physnet] = nic
    return uplinks


def carries_default_route(routes_output: str, nic: str) -> bool:
    """Whether ``ip route show default`` output (IPv4 or IPv6, one-line or multipath
    ``nexthop`` lines) has a default route leaving through ``nic``."""
    words = routes_output.split()
    return any(a == "dev" and b == nic for a, b in pairwise(words))
