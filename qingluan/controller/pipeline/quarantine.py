"""Table QUARANTINE: quarantined endpoints and flows dropped, inspected networks mirrored. Pure.

Every packet that classification let into a network passes here first. A
quarantine of an endpoint drops what its MAC sends in its network; a
quarantine of a flow drops only IPv4 from its address matching the 5-tuple
the alert named. Both are on the endpoint's own bridge, the first one its
packets meet, so nothing of them reaches another port or host.

Networks with ``ids=true`` have every packet that enters the bridge copied to
the host's IDS port (``names.IDS_PORT``) before going on: what their local
endpoints send and what reaches them from the trunk, a tunnel or the gateway.
A host therefore sees both directions of its containers' conversations.
Packets a service container hands back (steering redirect) are not copied
twice. If the IDS port is not on the bridge, nothing is mirrored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from qingluan import names
from qingluan.controller.pipeline.flow import (
    FROM_SERVICE,
    NETWORK_KEY_MASK,
    CookieKind,
    Flow,
    MatchValue,
    Output,
    cookie,
)
from qingluan.controller.pipeline.tables import Table
from qingluan.model import IDS_OPTION, AclProtocol, Network, Quarantine, QuarantineScope

ENDPOINT_PRIORITY = 200
FLOW_PRIORITY = 300  # above the endpoint's: the narrower drop is its own flow
MIRROR_PRIORITY = 10

_IP_PROTO = {AclProtocol.TCP: 6, AclProtocol.UDP: 17, AclProtocol.ICMP: 1}
_TRUE = frozenset({"1", "true", "yes", "on"})


def inspected(network: Network) -> bool:
    return network.options.get(IDS_OPTION, "").lower() in _TRUE


def quarantine_match(quarantine: Quarantine, network: Network) -> dict[str, MatchValue]:
    match: dict[str, MatchValue] = {
        "metadata": (network.key, NETWORK_KEY_MASK),
        "eth_src": quarantine.mac,
    }
    if quarantine.scope is QuarantineScope.ENDPOINT:
        return match
    match.update({"eth_type": 0x0800, "ipv4_src": quarantine.address})
    if quarantine.ipv4_dst is not None:
        match["ipv4_dst"] = quarantine.ipv4_dst
    proto = _IP_PROTO.get(quarantine.protocol)
    if proto is not None:
        match["ip_proto"] = proto
        if quarantine.protocol in (AclProtocol.TCP, AclProtocol.UDP):
            kind = quarantine.protocol.value
            if quarantine.src_port is not None:
                match[f"{kind}_src"] = quarantine.src_port
            if quarantine.dst_port is not None:
                match[f"{kind}_dst"] = quarantine.dst_port
    return match


def quarantine_flows(
    host: str, quarantines: Sequence[Quarantine], networks: Sequence[Network]
) -> list[Flow]:
    """One drop flow per quarantine of an endpoint of this host's networks."""
    by_id = {n.id: n for n in networks if n.host == host}
    flows = []
    for quarantine in quarantines:
        network = by_id.get(quarantine.network_id)
        if network is None or quarantine.host != host:
            continue
        priority = (
            ENDPOINT_PRIORITY if quarantine.scope is QuarantineScope.ENDPOINT else FLOW_PRIORITY
        )
        flows.append(
            Flow.make(
                int(Table.QUARANTINE),
                priority,
                quarantine_match(quarantine, network),
                cookie=cookie(CookieKind.QUARANTINE, quarantine.id),
            )
        )
    return flows


def ids_mirror_flows(networks: Sequence[Network], ports: Mapping[str, int]) -> list[Flow]:
    """Copy each inspected network's packets to the IDS port, then go on."""
    port = ports.get(names.IDS_PORT)
    if port is None:
        return []
    return [
        Flow.make(
            int(Table.QUARANTINE),
            MIRROR_PRIORITY,
            {"metadata": (network.key, NETWORK_KEY_MASK | FROM_SERVICE)},
            (Output(port),),
            goto=int(Table.ACL),
            cookie=cookie(CookieKind.NETWORK, network.id),
        )
        for network in networks
        if inspected(network)
    ]
