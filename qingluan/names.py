"""Deterministic names of everything qingluan creates on a host.

Linux interface names are limited to 15 characters. Every name is derived
from a Docker id so that a restarted driver finds its own devices again and
so that a sweep can tell qingluan's devices from everybody else's.
"""

from __future__ import annotations

import hashlib

IFNAME_MAX = 15
PREFIX = "ql"
# host end of an endpoint veth (attached to the bridge) / container end
ENDPOINT_PORT = "qlv"
ENDPOINT_PEER = "qlc"
# gateway veth of a network: host end carries the gateway address / bridge end
GATEWAY_DEV = "qlg"
GATEWAY_PORT = "qlb"

# the bridge's one flow-based VXLAN port (remote_ip=flow, key=flow)
TUNNEL_PORT = "qltun"
# the underlay bridge of the userspace datapath: the underlay NIC, the VTEP address
UNDERLAY_BRIDGE = "br-qlphy"

# the IDS mirror: this end on the bridge, the peer is where the IDS (Suricata) listens
IDS_PORT = "qlids0"
IDS_PEER = "qlids1"

ID_CHARS = IFNAME_MAX - 3


def _short(docker_id: str) -> str:
    if not docker_id:
        raise ValueError("empty id")
    return docker_id[:ID_CHARS]


def endpoint_port(endpoint_id: str) -> str:
    return ENDPOINT_PORT + _short(endpoint_id)


def endpoint_peer(endpoint_id: str) -> str:
    return ENDPOINT_PEER + _short(endpoint_id)


def gateway_dev(network_id: str) -> str:
    return GATEWAY_DEV + _short(network_id)


def gateway_port(network_id: str) -> str:
    return GATEWAY_PORT + _short(network_id)


def mac_from_key(prefix: bytes, key: int) -> str:
    """A locally administered unicast MAC: two fixed bytes then 32 bits of ``key``."""
    if len(prefix) != 2 or not prefix[0] & 0x02 or prefix[0] & 0x01:
        raise ValueError("prefix must be two bytes, locally administered, unicast")
    raw = prefix + (key & 0xFFFFFFFF).to_bytes(4, "big")
    return ":".join(f"{b:02x}" for b in raw)


# 'Q' | 0x02 clear of multicast: 0x52 is locally administered and unicast.
GATEWAY_MAC_PREFIX = b"\x52\x4c"  # "RL"
ENDPOINT_MAC_PREFIX = b"\x52\x45"  # "RE"
ANYCAST_MAC_PREFIX = b"\x52\x56"  # "RV"
UNDERLAY_MAC_PREFIX = b"\x52\x55"  # "RU"


def gateway_mac(network_key: int) -> str:
    return mac_from_key(GATEWAY_MAC_PREFIX, network_key)


def anycast_gateway_mac(vni: int) -> str:
    """The gateway MAC of a vxlan network: the same on every host (distributed gateway)."""
    return mac_from_key(ANYCAST_MAC_PREFIX, vni)


def endpoint_mac(endpoint_id: str) -> str:
    """The MAC of an endpoint when Docker did not choose one."""
    digest = hashlib.sha256(endpoint_id.encode()).digest()
    return mac_from_key(ENDPOINT_MAC_PREFIX, int.from_bytes(digest[:4], "big"))
