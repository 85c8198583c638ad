"""The project's own small OpenFlow vocabulary: flows and groups as values.

Nothing here knows os-ken. ``qingluan.controller.ofvocab`` is the one module
that turns these values into os-ken messages and parses switch replies back
into them, so desired and actual state compare as plain values.

Match field names are the OpenFlow 1.3 OXM names os-ken uses (``in_port``,
``eth_dst``, ``arp_tpa``, ``metadata``...). Values are ints, lowercase MAC
strings or dotted IPv4 strings; a masked value is a ``(value, mask)`` tuple.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum

MatchValue = int | str | tuple[int, int] | tuple[str, str]

# Reserved OpenFlow port numbers (OpenFlow 1.3, 32-bit).
OFPP_IN_PORT = 0xFFFFFFF8
OFPP_LOCAL = 0xFFFFFFFE
OFPP_CONTROLLER = 0xFFFFFFFD

# vlan_vid values (OpenFlow 1.3): the "tag present" bit, and "no tag".
OFPVID_PRESENT = 0x1000
OFPVID_NONE = 0x0000
ETH_TYPE_8021Q = 0x8100

# ct_state bits (OVS): tracked, new, established, related, invalid, reply direction.
CT_NEW, CT_EST, CT_REL, CT_RPL, CT_INV, CT_TRK = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20

# OpenFlow metadata bits that carry the network key.
NETWORK_KEY_MASK = 0x0000_0000_00FF_FFFF
NETWORK_KEY_MAX = NETWORK_KEY_MASK
# Metadata bits beside the network key. FROM_OUTSIDE: the packet entered from the VLAN
# trunk or a tunnel; ARP requests with it are not answered from the table (the answer
# would leave untagged, or into the tunnel without a destination): the container
# answers. FROM_SERVICE: it came from a service container that forwards others'
# traffic (steering redirect): it is not redirected again.
FROM_OUTSIDE = 1 << 24
FROM_SERVICE = 1 << 25


class CookieKind(IntEnum):
    """Who owns a flow: the top byte of its cookie."""

    BASE = 0x01  # table-miss and other fixed pipeline flows
    NETWORK = 0x02  # per network: gateway port, flooding, ARP for the gateway
    ENDPOINT = 0x03  # per endpoint: port security, forwarding, ARP
    ACL = 0x04  # per ACL rule
    STEERING = 0x05  # per steering rule
    EXPERT = 0x06  # per raw flow
    QUARANTINE = 0x07  # per quarantine (IDS)


COOKIE_KIND_SHIFT = 56
COOKIE_OWNER_MASK = (1 << COOKIE_KIND_SHIFT) - 1


def cookie(kind: CookieKind, owner: str | int) -> int:
    """A cookie naming the owner of a flow: kind in the top byte, owner hash below."""
    if isinstance(owner, int):
        low = owner & COOKIE_OWNER_MASK
    else:
        low = int.from_bytes(hashlib.sha256(owner.encode()).digest()[:7], "big")
    return (int(kind) << COOKIE_KIND_SHIFT) | low


def cookie_kind(value: int) -> int:
    return value >> COOKIE_KIND_SHIFT


# ---- actions -----------------------------------------------------------------


@dataclass(frozen=True)
class Output:
    port: int


@dataclass(frozen=True)
class GroupAction:
    group_id: int


@dataclass(frozen=True)
class SetField:
    field: str
    value: int | str


@dataclass(frozen=True)
class Move:
    """Copy a whole field into another of the same width (OVS NXAST_REG_MOVE)."""

    src: str
    dst: str


@dataclass(frozen=True)
class PushVlan:
    """Push an 802.1Q header (then ``SetField("vlan_vid", OFPVID_PRESENT | vid)``)."""

    ethertype: int = ETH_TYPE_8021Q


@dataclass(frozen=True)
class PopVlan:
    """Remove the outermost 802.1Q header."""


@dataclass(frozen=True)
class Ct:
    """Through the connection tracker (OVS ``ct``): ``commit`` the connection in
    ``zone``; with ``table``, the packet continues there with its ``ct_state``."""

    commit: bool = False
    zone: int = 0
    table: int | None = None


@dataclass(frozen=True)
class Conjunction:
    """Clause ``clause`` (1-based) of ``n_clauses`` of conjunctive match ``id``."""

    id: int
    clause: int
    n_clauses: int


Action = Output | GroupAction | SetField | Move | PushVlan | PopVlan | Ct | Conjunction


# ---- flows and groups --------------------------------------------------------


def _freeze_match(match: Mapping[str, MatchValue]) -> tuple[tuple[str, MatchValue], ...]:
    return tuple(sorted(match.items()))


@dataclass(frozen=True)
class Flow:
    """One flow entry.

    ``actions`` are applied (OFPIT_APPLY_ACTIONS); ``write_metadata`` is a
    ``(value, mask)`` pair; ``goto`` names the next table. A flow with no
    actions and no goto drops.
    """

    table: int
    priority: int
    match: tuple[tuple[str, MatchValue], ...]
    actions: tuple[Action, ...] = ()
    write_metadata: tuple[int, int] | None = None
    goto: int | None = None
    cookie: int = 0
    meter: int | None = None  # OFPIT_METER: through this meter first

    @staticmethod
    def make(
        table: int,
        priority: int,
        match: Mapping[str, MatchValue],
        actions: tuple[Action, ...] | list[Action] = (),
        *,
        write_metadata: tuple[int, int] | None = None,
        goto: int | None = None,
        cookie: int = 0,
        meter: int | None = None,
    ) -> Flow:
        return Flow(
            table=table,
            priority=priority,
            match=_freeze_match(match),
            actions=tuple(actions),
            write_metadata=write_metadata,
            goto=goto,
            cookie=cookie,
            meter=meter,
        )

    @property
    def key(self) -> tuple[int, int, tuple[tuple[str, MatchValue], ...]]:
        """OpenFlow identity of a flow: a switch holds at most one per key."""
        return (self.table, self.priority, self.match)

    def match_dict(self) -> dict[str, MatchValue]:
        return dict(self.match)

    def with_cookie(self, value: int) -> Flow:
        return Flow(
            self.table,
            self.priority,
            self.match,
            self.actions,
            self.write_metadata,
            self.goto,
            value,
            self.meter,
        )


@dataclass(frozen=True)
class Group:
    """An OpenFlow group of type ALL (every bucket gets a copy)."""

    group_id: int
    buckets: tuple[tuple[Action, ...], ...]


@dataclass(frozen=True)
class Meter:
    """An OpenFlow meter with one drop band: above ``rate_kbps`` packets are dropped."""

    meter_id: int
    rate_kbps: int
    burst_kbits: int


@dataclass(frozen=True)
class BridgeState:
    """Everything a bridge should hold (desired) or holds (actual)."""

    flows: frozenset[Flow] = field(default_factory=frozenset)
    groups: frozenset[Group] = field(default_factory=frozenset)
    meters: frozenset[Meter] = field(default_factory=frozenset)

    def flows_by_key(self) -> dict[tuple[int, int, tuple[tuple[str, MatchValue], ...]], Flow]:
        return {f.key: f for f in self.flows}

    def groups_by_id(self) -> dict[int, Group]:
        return {g.group_id: g for g in self.groups}
