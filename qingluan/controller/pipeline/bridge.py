"""The desired state of one host's bridge, computed from its networks and endpoints.

Pure: no switch, no store, no clock. ``compute_bridge`` is the only entry
point; the small builders below each make one kind of flow so that a reader
(and a test failure) can point at the piece that is wrong.

Every network on the bridge is a *segment*: the bridge ports that belong to
it (its gateway port and its endpoints' ports, as far as the switch already
reports them) plus, for the cross-host models that come later, uplink or
tunnel pieces. A segment yields flows and flood buckets; ``compute_bridge``
turns the buckets into the network's flood group and adds the broadcast flow
only when that group exists, so a flow never points at a missing group.

Flow count is linear: a fixed handful per endpoint, a fixed handful per
network, and the table-miss flows of the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from qingluan import names
from qingluan.controller.pipeline.acl import DEFAULT_OPTION as ACL_DEFAULT_OPTION
from qingluan.controller.pipeline.acl import Policy, acl_flows
from qingluan.controller.pipeline.flow import (
    FROM_OUTSIDE,
    FROM_SERVICE,
    NETWORK_KEY_MASK,
    NETWORK_KEY_MAX,
    OFPP_IN_PORT,
    OFPVID_NONE,
    OFPVID_PRESENT,
    Action,
    BridgeState,
    CookieKind,
    Flow,
    Group,
    GroupAction,
    MatchValue,
    Meter,
    Move,
    Output,
    PopVlan,
    PushVlan,
    SetField,
    cookie,
)
from qingluan.controller.pipeline.quarantine import ids_mirror_flows, quarantine_flows
from qingluan.controller.pipeline.raw import raw_flows
from qingluan.controller.pipeline.steering import (
    SERVICE_MASK,
    service_index,
    service_metadata,
    steering_flows,
    steering_meters,
)
from qingluan.controller.pipeline.tables import (
    PASS_THROUGH_PRIORITY,
    PIPELINE,
    Table,
    check_flow,
)
from qingluan.errors import Conflict
from qingluan.model import Endpoint, Network, NetworkModel

ETH_TYPE_IPV4 = 0x0800
ETH_TYPE_ARP = 0x0806
ARP_OP_REQUEST = 1
ARP_OP_REPLY = 2
# the group/multicast bit of the first octet: broadcast and every multicast
MULTICAST_BIT = "01:00:00:00:00:00"

# Priorities inside a table. Table-miss flows use PASS_THROUGH_PRIORITY (0).
PORT_PRIORITY = 100  # CLASSIFY: a port's own traffic
SERVICE_PRIORITY = 90  # CLASSIFY: what a service container forwards for others
ANSWER_PRIORITY = 100  # ARP: a request for a known address
IP_UNICAST_PRIORITY = 110  # L2: IPv4 for a known address (whatever the MAC)
UNICAST_PRIORITY = 100  # L2: a known destination MAC
FLOOD_PRIORITY = 50  # L2: broadcast/multicast
UPLINK_PRIORITY = 1  # L2: unknown unicast of a flat network goes out to its LAN
UPLINK_OPTION = "uplink"  # Network.options key: OVS port name of the network's uplink NIC

# Models whose traffic also enters from a VLAN trunk or a tunnel (see FROM_OUTSIDE).
OUTSIDE_MODELS = frozenset({NetworkModel.VLAN, NetworkModel.VXLAN})

Bucket = tuple[Action, ...]
FlowKey = tuple[int, int, tuple[tuple[str, MatchValue], ...]]


@dataclass(frozen=True)
class Member:
    """One bridge port of a network: a gateway or an endpoint the switch reports."""

    owner: str  # for messages: "gateway of network <id>" / "endpoint <id>"
    port: int
    mac: str
    ip: str
    cookie: int


@dataclass(frozen=True)
class Peer:
    """A vxlan network as another host has it: where to tunnel, and its endpoints there."""

    host: str
    address: str  # the host's underlay (VTEP) address
    vni: int
    endpoints: tuple[Endpoint, ...]


@dataclass(frozen=True)
class LocalNetwork:
    """A network as the bridge sees it: the network and its ports present on the switch."""

    network: Network
    gateway: Member | None
    endpoints: tuple[Member, ...]  # sorted by port number
    uplink: int | None = None  # OpenFlow port of the network's uplink NIC (flat), if on the bridge
    tunnel: int | None = None  # OpenFlow port of the bridge's VXLAN port (vxlan), if on it
    peers: tuple[Peer, ...] = ()  # vxlan: the other hosts that have the network

    @property
    def members(self) -> tuple[Member, ...]:
        gateway = (self.gateway,) if self.gateway else ()
        return tuple(sorted(gateway + self.endpoints, key=lambda m: m.port))


@dataclass(frozen=True)
class OwnedFlows:
    """Flows of one owner; ``owner`` names it in conflict messages."""

    owner: str
    flows: tuple[Flow, ...]


@dataclass(frozen=True)
class Segment:
    """What one network contributes: its flows and the buckets of its flood group."""

    flows: tuple[OwnedFlows, ...]
    flood_buckets: tuple[Bucket, ...]


# ---- fixed flows ---------------------------------------------------------------------


def table_miss_flows() -> list[Flow]:
    """One priority-0 flow per table: continue to the declared next table, or drop."""
    base = cookie(CookieKind.BASE, "table-miss")
    return [
        Flow.make(
            int(spec.table),
            PASS_THROUGH_PRIORITY,
            {},
            goto=None if spec.miss_goto is None else int(spec.miss_goto),
            cookie=base,
        )
        for spec in PIPELINE.values()
    ]


# ---- per port ------------------------------------------------------------------------


def network_metadata(network: Network) -> tuple[int, int]:
    return (network.key, NETWORK_KEY_MASK)


def outside_metadata(network: Network) -> tuple[int, int]:
    """What a flow classifying trunk or tunnel traffic into ``network`` writes."""
    return (network.key | FROM_OUTSIDE, NETWORK_KEY_MASK | FROM_OUTSIDE)


def responder_metadata(network: Network) -> tuple[int, int]:
    """The ARP responder's metadata match: inside traffic only, for tagged/tunnelled models."""
    if network.model in OUTSIDE_MODELS:
        return (network.key, NETWORK_KEY_MASK | FROM_OUTSIDE)
    return network_metadata(network)


def _into_network(network: Network, match: Mapping[str, MatchValue], owner_cookie: int) -> Flow:
    return Flow.make(
        int(Table.CLASSIFY),
        PORT_PRIORITY,
        match,
        write_metadata=network_metadata(network),
        goto=int(Table.QUARANTINE),
        cookie=owner_cookie,
    )


def gateway_classify_flows(network: Network, gateway: Member) -> list[Flow]:
    """The gateway port is the host's side of the network: trusted, whatever it sends."""
    return [_into_network(network, {"in_port": gateway.port}, gateway.cookie)]


def endpoint_classify_flows(network: Network, endpoint: Member) -> list[Flow]:
    """Port security: an endpoint passes only IPv4 and ARP from its own MAC and address.

    Anything else from its port (a spoofed MAC or IP, IPv6, other ethertypes)
    matches nothing here and falls to the table's drop.
    """
    port: dict[str, MatchValue] = {"in_port": endpoint.port, "eth_src": endpoint.mac}
    ipv4 = {**port, "eth_type": ETH_TYPE_IPV4, "ipv4_src": endpoint.ip}
    arp = {**port, "eth_type": ETH_TYPE_ARP, "arp_spa": endpoint.ip, "arp_sha": endpoint.mac}
    return [
        _into_network(network, ipv4, endpoint.cookie),
        _into_network(network, arp, endpoint.cookie),
    ]


def arp_reply_actions(mac: str, ip: str) -> tuple[Action, ...]:
    """Turn an ARP request in place into the reply ``ip is-at mac`` and send it back."""
    return (
        Move("eth_src", "eth_dst"),
        SetField("eth_src", mac),
        SetField("arp_op", ARP_OP_REPLY),
        Move("arp_sha", "arp_tha"),
        Move("arp_spa", "arp_tpa"),
        SetField("arp_sha", mac),
        SetField("arp_spa", ip),
        Output(OFPP_IN_PORT),
    )


def arp_responder_flow(network: Network, member: Member) -> Flow:
    """Answer an ARP request for a known address of the network from the flow table."""
    return Flow.make(
        int(Table.ARP),
        ANSWER_PRIORITY,
        {
            "metadata": responder_metadata(network),
            "eth_type": ETH_TYPE_ARP,
            "arp_op": ARP_OP_REQUEST,
            "arp_tpa": member.ip,
        },
        arp_reply_actions(member.mac, member.ip),
        cookie=member.cookie,
    )


def l2_unicast_flow(network: Network, member: Member) -> Flow:
    return Flow.make(
        int(Table.L2),
        UNICAST_PRIORITY,
        {"metadata": network_metadata(network), "eth_dst": member.mac},
        (Output(member.port),),
        cookie=member.cookie,
    )


def ip_unicast_flow(network: Network, member: Member) -> Flow:
    """Deliver IPv4 for the member's address to it, with its current MAC.

    When Docker hands a released address to a new container, that container
    gets a new MAC while its peers (and the host) may still cache the old one
    for a few seconds; unknown unicast is dropped, so their first packets
    would be lost. Forwarding IPv4 by destination address and rewriting the
    destination MAC makes stale ARP caches harmless. Still one flow per port.
    """
    return Flow.make(
        int(Table.L2),
        IP_UNICAST_PRIORITY,
        {"metadata": network_metadata(network), "eth_type": ETH_TYPE_IPV4, "ipv4_dst": member.ip},
        (SetField("eth_dst", member.mac), Output(member.port)),
        cookie=member.cookie,
    )


def member_flows(network: Network, member: Member, classify: list[Flow]) -> OwnedFlows:
    """A port's flows: classify it, answer ARP for its address, deliver to it."""
    flows = (
        *classify,
        arp_responder_flow(network, member),
        ip_unicast_flow(network, member),
        l2_unicast_flow(network, member),
    )
    return OwnedFlows(member.owner, flows)


# ---- per network ---------------------------------------------------------------------


def local_port_buckets(local: LocalNetwork) -> tuple[Bucket, ...]:
    """One bucket per port of the network on this bridge, by port number."""
    return tuple((Output(m.port),) for m in local.members)


def local_segment(local: LocalNetwork) -> Segment:
    """The part every model has: the network's ports on this bridge."""
    network = local.network
    flows: list[OwnedFlows] = []
    if local.gateway is not None:
        gateway_classify = gateway_classify_flows(network, local.gateway)
        flows.append(member_flows(network, local.gateway, gateway_classify))
    for endpoint in local.endpoints:
        flows.append(member_flows(network, endpoint, endpoint_classify_flows(network, endpoint)))
    return Segment(tuple(flows), local_port_buckets(local))


def flat_segment(local: LocalNetwork) -> Segment:
    """A flat network: the local part plus the host's NIC on the LAN, untagged.

    Traffic from the NIC belongs to the network (the LAN is trusted: no port
    security); unknown unicast goes out to the LAN (other hosts' containers,
    the LAN's router and machines), and so does one copy of every broadcast.
    Nothing from the NIC goes back out of it: OpenFlow never outputs to the
    in_port, and an ALL group skips its bucket.
    """
    base = local_segment(local)
    if local.uplink is None:
        return base
    network, uplink = local.network, local.uplink
    owner_cookie = cookie(CookieKind.NETWORK, network.id)
    flows = (
        Flow.make(
            int(Table.CLASSIFY),
            PORT_PRIORITY,
            {"in_port": uplink, "vlan_vid": OFPVID_NONE},  # tagged frames are vlan networks'
            write_metadata=network_metadata(network),
            goto=int(Table.QUARANTINE),
            cookie=owner_cookie,
        ),
        Flow.make(
            int(Table.L2),
            UPLINK_PRIORITY,
            {"metadata": network_metadata(network)},
            (Output(uplink),),
            cookie=owner_cookie,
        ),
    )
    buckets = tuple(sorted((*base.flood_buckets, (Output(uplink),)), key=_bucket_port))
    return Segment((*base.flows, OwnedFlows(f"uplink of network {network.id}", flows)), buckets)


def _bucket_port(bucket: Bucket) -> int:
    last = bucket[-1]
    return last.port if isinstance(last, Output) else -1


def vlan_tag(network: Network) -> int:
    if network.vni is None:
        raise ValueError(f"vlan network {network.id} has no VLAN id")
    return OFPVID_PRESENT | network.vni


def vlan_segment(local: LocalNetwork) -> Segment:
    """A vlan network: the local part plus the host's trunk NIC, tagged with the VLAN id.

    Frames from the trunk with the network's tag enter it untagged (the LAN is
    trusted, as for flat); unknown unicast and one copy of every broadcast
    leave through the trunk with the tag pushed. Other tags, and untagged
    frames, are other networks' (or nobody's: dropped in CLASSIFY).
    """
    base = local_segment(local)
    if local.uplink is None:
        return base
    network, uplink = local.network, local.uplink
    owner_cookie = cookie(CookieKind.NETWORK, network.id)
    tag = vlan_tag(network)
    out: Bucket = (PushVlan(), SetField("vlan_vid", tag), Output(uplink))
    flows = (
        Flow.make(
            int(Table.CLASSIFY),
            PORT_PRIORITY,
            {"in_port": uplink, "vlan_vid": tag},
            (PopVlan(),),
            write_metadata=outside_metadata(network),
            goto=int(Table.QUARANTINE),
            cookie=owner_cookie,
        ),
        Flow.make(
            int(Table.L2),
            UPLINK_PRIORITY,
            {"metadata": network_metadata(network)},
            out,
            cookie=owner_cookie,
        ),
    )
    buckets = tuple(sorted((*base.flood_buckets, out), key=_bucket_port))
    return Segment((*base.flows, OwnedFlows(f"trunk of network {network.id}", flows)), buckets)


def tunnel_to(peer: Peer, tunnel: int) -> tuple[Action, ...]:
    return (
        SetField("tunnel_id", peer.vni),
        SetField("tun_ipv4_dst", peer.address),
        Output(tunnel),
    )


def remote_endpoint_flows(
    network: Network, endpoint: Endpoint, peer: Peer, tunnel: int
) -> OwnedFlows:
    """An endpoint of another host, as this bridge serves it: ARP answered here,
    unicast (by address, and by MAC) straight into the tunnel to its host."""
    member = Member(
        owner=f"endpoint {endpoint.id} on host {peer.host}",
        port=tunnel,
        mac=endpoint.mac.lower(),
        ip=endpoint.address,
        cookie=cookie(CookieKind.ENDPOINT, endpoint.id),
    )
    to_peer = tunnel_to(peer, tunnel)
    meta = network_metadata(network)
    flows = (
        arp_responder_flow(network, member),
        Flow.make(
            int(Table.L2),
            IP_UNICAST_PRIORITY,
            {"metadata": meta, "eth_type": ETH_TYPE_IPV4, "ipv4_dst": member.ip},
            (SetField("eth_dst", member.mac), *to_peer),
            cookie=member.cookie,
        ),
        Flow.make(
            int(Table.L2),
            UNICAST_PRIORITY,
            {"metadata": meta, "eth_dst": member.mac},
            to_peer,
            cookie=member.cookie,
        ),
    )
    return OwnedFlows(member.owner, flows)


def vxlan_segment(local: LocalNetwork) -> Segment:
    """A vxlan network: the local part, plus the tunnel to every other host that has it.

    Traffic from the tunnel port with the network's VNI enters the network.
    Every endpoint of another host gets three flows here (ARP answer, unicast
    by address and by MAC into the tunnel to its host), so ARP for known
    addresses never crosses the underlay. Broadcast goes once to each other
    host (one bucket per host: head-end replication); a copy that came in from
    the tunnel is never sent back into it (an ALL group skips the in_port), so
    each host floods only its own ports. Unknown unicast is dropped: every
    address of the network is known.
    """
    base = local_segment(local)
    network, tunnel, vni = local.network, local.tunnel, local.network.vni
    if tunnel is None or vni is None:
        return base
    classify = Flow.make(
        int(Table.CLASSIFY),
        PORT_PRIORITY,
        {"in_port": tunnel, "tunnel_id": vni},
        write_metadata=outside_metadata(network),
        goto=int(Table.QUARANTINE),
        cookie=cookie(CookieKind.NETWORK, network.id),
    )
    flows = [*base.flows, OwnedFlows(f"tunnel of network {network.id}", (classify,))]
    buckets = list(base.flood_buckets)
    for peer in sorted(local.peers, key=lambda p: (p.address, p.host)):
        buckets.append(tunnel_to(peer, tunnel))
        for endpoint in sorted(peer.endpoints, key=lambda e: e.id):
            flows.append(remote_endpoint_flows(network, endpoint, peer, tunnel))
    return Segment(tuple(flows), tuple(buckets))


# One builder per model: the local part, plus uplink (flat) or tunnel pieces on top.
SEGMENT_BUILDERS: Mapping[NetworkModel, Callable[[LocalNetwork], Segment]] = {
    NetworkModel.NONAT: local_segment,
    NetworkModel.NAT: local_segment,
    NetworkModel.FLAT: flat_segment,
    NetworkModel.VLAN: vlan_segment,
    NetworkModel.VXLAN: vxlan_segment,
}


def network_segment(local: LocalNetwork) -> Segment:
    return SEGMENT_BUILDERS.get(local.network.model, local_segment)(local)


def flood_group(network: Network, buckets: Sequence[Bucket]) -> Group | None:
    """The network's flood group (id = network key), or None when it has no bucket."""
    if not buckets:
        return None
    return Group(group_id=network.key, buckets=tuple(buckets))


def flood_flow(network: Network, group: Group) -> Flow:
    """Broadcast and multicast of the network go to its flood group."""
    return Flow.make(
        int(Table.L2),
        FLOOD_PRIORITY,
        {
            "metadata": network_metadata(network),
            "eth_dst": (MULTICAST_BIT, MULTICAST_BIT),
        },
        (GroupAction(group.group_id),),
        cookie=cookie(CookieKind.NETWORK, network.id),
    )


# ---- assembling ----------------------------------------------------------------------


def gateway_member(network: Network, ports: Mapping[str, int]) -> Member | None:
    port = ports.get(names.gateway_port(network.id))
    if port is None:
        return None
    return Member(
        owner=f"gateway of network {network.id}",
        port=port,
        mac=network.gateway_mac.lower(),
        ip=network.gateway,
        cookie=cookie(CookieKind.NETWORK, network.id),
    )


def endpoint_member(endpoint: Endpoint, ports: Mapping[str, int]) -> Member | None:
    port = ports.get(endpoint.port_name)
    if port is None:
        return None
    return Member(
        owner=f"endpoint {endpoint.id}",
        port=port,
        mac=endpoint.mac.lower(),
        ip=endpoint.address,
        cookie=cookie(CookieKind.ENDPOINT, endpoint.id),
    )


def local_networks(
    networks: Sequence[Network],
    endpoints: Sequence[Endpoint],
    ports: Mapping[str, int],
    peers: Sequence[Peer] = (),
) -> list[LocalNetwork]:
    """Group the endpoints by network, keeping only ports the switch reports.

    An endpoint of a network not in ``networks`` gets nothing: without its
    network there is no key to classify it into.
    """
    members: dict[str, list[Member]] = {n.id: [] for n in networks}
    for endpoint in endpoints:
        member = endpoint_member(endpoint, ports)
        if member is not None and endpoint.network_id in members:
            members[endpoint.network_id].append(member)
    return [
        LocalNetwork(
            network=n,
            gateway=gateway_member(n, ports),
            endpoints=tuple(sorted(members[n.id], key=lambda m: (m.port, m.owner))),
            uplink=ports.get(n.options.get(UPLINK_OPTION, "")),
            tunnel=ports.get(names.TUNNEL_PORT) if n.model is NetworkModel.VXLAN else None,
            peers=tuple(p for p in peers if n.model is NetworkModel.VXLAN and p.vni == n.vni),
        )
        for n in sorted(networks, key=lambda n: n.key)
    ]


def service_classify_flows(
    networks: Sequence[Network],
    endpoints: Sequence[Endpoint],
    ports: Mapping[str, int],
    policy: Policy,
) -> list[Flow]:
    """A service container (the ``via`` of a redirect) forwards others' packets: from its
    port (its own MAC), IPv4 with any source enters its network, marked FROM_SERVICE."""
    index = service_index(policy)
    by_id = {n.id: n for n in networks}
    flows: list[Flow] = []
    for endpoint in endpoints:
        network = by_id.get(endpoint.network_id)
        port = ports.get(endpoint.port_name)
        number = index.get(endpoint.container_name or "")
        if number is None or network is None or port is None:
            continue
        mark = FROM_SERVICE | service_metadata(number)
        flows.append(
            Flow.make(
                int(Table.CLASSIFY),
                SERVICE_PRIORITY,
                {"in_port": port, "eth_src": endpoint.mac.lower(), "eth_type": ETH_TYPE_IPV4},
                write_metadata=(network.key | mark, NETWORK_KEY_MASK | FROM_SERVICE | SERVICE_MASK),
                goto=int(Table.QUARANTINE),
                cookie=cookie(CookieKind.ENDPOINT, endpoint.id),
            )
        )
    return flows


def _check_key(network: Network) -> None:
    if not 0 <= network.key <= NETWORK_KEY_MAX:
        raise ValueError(f"network {network.id}: key {network.key} out of 0..{NETWORK_KEY_MAX}")


class _Collector:
    """Flows and groups by OpenFlow identity; two different values for one identity conflict.

    A switch holds one flow per (table, priority, match) and one group per id,
    so two owners that need the same identity (two endpoints with one MAC in a
    network, two networks with one key...) cannot both be served. That is
    refused loudly rather than resolved by whichever came last.
    """

    def __init__(self) -> None:
        self.flows: dict[FlowKey, tuple[Flow, str]] = {}
        self.groups: dict[int, tuple[Group, str]] = {}

    def add_flows(self, flows: Iterable[Flow], owner: str) -> None:
        for flow in flows:
            check_flow(flow)
            held = self.flows.setdefault(flow.key, (flow, owner))
            if held[0] != flow:
                raise Conflict(
                    f"{owner} conflicts with {held[1]}: both need the flow "
                    f"table={flow.table} priority={flow.priority} match={dict(flow.match)}"
                )

    def add_group(self, group: Group, owner: str) -> None:
        held = self.groups.setdefault(group.group_id, (group, owner))
        if held[0] != group:
            raise Conflict(f"{owner} conflicts with {held[1]}: both need group {group.group_id}")

    def state(self, meters: Iterable[Meter] = ()) -> BridgeState:
        return BridgeState(
            flows=frozenset(f for f, _ in self.flows.values()),
            groups=frozenset(g for g, _ in self.groups.values()),
            meters=frozenset(meters),
        )


def compute_bridge(
    networks: Sequence[Network],
    endpoints: Sequence[Endpoint],
    ports: Mapping[str, int],
    peers: Sequence[Peer] = (),
    policy: Policy | None = None,
) -> BridgeState:
    """The flows and groups one host's bridge must hold.

    ``networks`` and ``endpoints`` are this host's; ``ports`` maps port names
    to OpenFlow port numbers as the switch reports them; ``peers`` are the
    other hosts' sides of this host's vxlan networks (matched by VNI); ``policy``
    the ACL rules with the cluster they refer to (``acl.acl_flows``). A gateway or an
    endpoint whose port is not on the bridge yet gets no flow and no bucket;
    its network still gets the rest. Raises ``Conflict`` when two owners need
    the same flow identity or group id, ``ValueError`` for a key that does not
    fit the metadata bits.
    """
    out = _Collector()
    out.add_flows(table_miss_flows(), "the pipeline")
    for local in local_networks(networks, endpoints, ports, peers):
        network = local.network
        _check_key(network)
        owner = f"network {network.id}"
        segment = network_segment(local)
        for owned in segment.flows:
            out.add_flows(owned.flows, owned.owner)
        group = flood_group(network, segment.flood_buckets)
        if group is not None:
            out.add_group(group, owner)
            out.add_flows([flood_flow(network, group)], owner)
    if (policy is not None and policy.rules) or any(
        n.options.get(ACL_DEFAULT_OPTION) for n in networks
    ):
        out.add_flows(acl_flows(networks, endpoints, policy or Policy()), "the ACL rules")
    if policy is not None and policy.steering:
        out.add_flows(service_classify_flows(networks, endpoints, ports, policy), "services")
    host = networks[0].host if networks else None
    meters: list[Meter] = []
    if policy is not None and policy.steering and host is not None:
        steered = steering_flows(host, endpoints, ports, policy)
        out.add_flows(steered, "the steering rules")
        meters = steering_meters(steered, policy)
    if policy is not None and policy.raw and host is not None:
        out.add_flows(raw_flows(host, policy.raw), "the raw flows")
    if policy is not None and policy.quarantines and host is not None:
        out.add_flows(quarantine_flows(host, policy.quarantines, networks), "the quarantines")
    out.add_flows(ids_mirror_flows(networks, ports), "the IDS mirror")
    return out.state(meters)
