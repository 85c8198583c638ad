"""What the sFlow samples say about the traffic: per-flow estimates and interface rates.

``TrafficTable.add`` takes decoded datagrams (``qingluan.controller.monitor.sflow``)
with the time they arrived; nothing here reads a clock, so every ``now`` is the
caller's (monotonic seconds, non-decreasing).

Flow estimates: a packet sample stands for ``sampling_rate`` packets of
``frame_length`` bytes. Per ``FlowKey`` the table keeps the totals since the
flow was first seen and per-second buckets over the last ``window`` seconds; a
rate over ``w`` seconds is what the buckets that overlap ``(now - w, now]`` hold,
divided by ``w``. A flow with no sample for longer than ``window`` is
forgotten, and when there are more than ``max_flows`` the least recently seen
go first.

Losses: sample sequence numbers are counted per agent, sub-agent, data source
and kind (flow or counter samples); a gap is that many lost samples, and so is
a growth of a flow sample's ``drops`` counter. A sequence number that goes
back is taken as an agent restart (nothing lost); one repeated is a duplicate.
Datagram sequence numbers are tracked the same way per agent and sub-agent.

Interface rates come from the last two counter samples of each
(agent, ifIndex), over the time between their arrivals. A counter that went
down was reset (or wrapped): its value since then is taken as the increase,
as if it had restarted from zero. Interfaces without a counter sample for
``interface_timeout`` seconds are forgotten.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from qingluan.controller.monitor.sflow import Datagram, InterfaceCounters, PacketSample

__all__ = [
    "AgentStats",
    "FlowEstimate",
    "FlowKey",
    "InterfaceRate",
    "TrafficTable",
]

_SEQ_MOD = 1 << 32
_SEQ_HALF = 1 << 31


@dataclass(frozen=True, slots=True)
class FlowKey:
    """A flow as the samples can tell it apart; None where the header had no such field."""

    agent: str
    eth_src: str
    eth_dst: str
    ipv4_src: str | None
    ipv4_dst: str | None
    ip_proto: int | None
    src_port: int | None
    dst_port: int | None

    @classmethod
    def of(cls, sample: PacketSample) -> FlowKey:
        return cls(
            agent=sample.agent,
            eth_src=sample.eth_src,
            eth_dst=sample.eth_dst,
            ipv4_src=sample.ipv4_src,
            ipv4_dst=sample.ipv4_dst,
            ip_proto=sample.ip_proto,
            src_port=sample.src_port,
            dst_port=sample.dst_port,
        )


@dataclass(frozen=True, slots=True)
class FlowEstimate:
    """Estimated totals since ``first_seen`` and rates over the window asked for;
    ``input_if`` and ``output_if`` are those of the last sample."""

    key: FlowKey
    bytes: int
    packets: int
    bytes_per_second: float
    packets_per_second: float
    first_seen: float
    last_seen: float
    input_if: int
    output_if: int


@dataclass(frozen=True, slots=True)
class InterfaceRate:
    """Rates between the last two counter samples of one interface (None while
    there is only one), and the last sample itself."""

    agent: str
    if_index: int
    port_name: str | None
    dpid: int | None
    of_port: int | None
    in_bits_per_second: float | None
    out_bits_per_second: float | None
    in_packets_per_second: float | None
    out_packets_per_second: float | None
    interval: float | None
    updated: float
    counters: InterfaceCounters


@dataclass(frozen=True, slots=True)
class AgentStats:
    """What one agent (address) sent."""

    datagrams: int
    packet_samples: int
    counter_samples: int
    lost_samples: int
    lost_datagrams: int
    last_seen: float


@dataclass(slots=True)
class _Flow:
    first_seen: float
    last_seen: float
    input_if: int
    output_if: int
    bytes: int = 0
    packets: int = 0
    # per-second buckets, oldest first: [second, bytes, packets]
    buckets: deque[list[int]] = field(default_factory=deque)


@dataclass(slots=True)
class _Agent:
    datagrams: int = 0
    packet_samples: int = 0
    counter_samples: int = 0
    lost_samples: int = 0
    lost_datagrams: int = 0
    last_seen: float = 0.0
    dpids: dict[int, int] = field(default_factory=dict)
    last_dpid: int | None = None
    port_names: dict[int, str] = field(default_factory=dict)


@dataclass(slots=True)
class _Sequence:
    last: int
    drops: int = 0


def _advance(seq: _Sequence, number: int) -> int:
    """Lost numbers between the last one seen and ``number``; moves the sequence on."""
    ahead = (number - seq.last) % _SEQ_MOD
    if ahead == 0:
        return 0
    seq.last = number
    if ahead < _SEQ_HALF:
        return ahead - 1
    return 0


def _increase(old: int, new: int) -> int:
    return new - old if new >= old else new


class TrafficTable:
    """Thread-safe flow and interface table fed with decoded sFlow datagrams."""

    def __init__(
        self,
        window: float = 60.0,
        max_flows: int = 100_000,
        interface_timeout: float = 300.0,
    ) -> None:
        if not window > 0:
            raise ValueError(f"window must be positive, not {window}")
        if max_flows < 1:
            raise ValueError(f"max_flows must be at least 1, not {max_flows}")
        self.window = float(window)
        self.max_flows = max_flows
        self.interface_timeout = float(interface_timeout)
        self._lock = threading.Lock()
        self._flows: OrderedDict[FlowKey, _Flow] = OrderedDict()
        self._agents: dict[str, _Agent] = {}
        self._sequences: dict[tuple[str, int, str, int], _Sequence] = {}
        self._datagram_seq: dict[tuple[str, int], _Sequence] = {}
        self._interfaces: dict[tuple[str, int], deque[tuple[float, InterfaceCounters]]] = {}
        self._datagrams = 0
        self._packet_samples = 0
        self._counter_samples = 0
        self._lost = 0
        self._lost_datagrams = 0
        self._evicted = 0

    # ---- input ----

    def add(self, datagram: Datagram, now: float) -> None:
        with self._lock:
            agent = self._agents.get(datagram.agent)
            if agent is None:
                agent = self._agents[datagram.agent] = _Agent()
            agent.datagrams += 1
            agent.last_seen = now
            self._datagrams += 1
            dseq = self._datagram_seq.get((datagram.agent, datagram.sub_agent_id))
            if dseq is None:
                self._datagram_seq[(datagram.agent, datagram.sub_agent_id)] = _Sequence(
                    datagram.sequence
                )
            else:
                missed = _advance(dseq, datagram.sequence)
                agent.lost_datagrams += missed
                self._lost_datagrams += missed
            for sample in datagram.packets:
                lost = self._track(
                    datagram, "flow", sample.source_id, sample.sequence, sample.drops
                )
                agent.lost_samples += lost
                self._lost += lost
                agent.packet_samples += 1
                self._packet_samples += 1
                self._add_packet(sample, now)
            for counters in datagram.counters:
                lost = self._track(datagram, "counters", counters.source_id, counters.sequence, 0)
                agent.lost_samples += lost
                self._lost += lost
                agent.counter_samples += 1
                self._counter_samples += 1
                self._add_counters(agent, datagram.sub_agent_id, counters, now)
            self._expire_flows(now)

    def _track(self, datagram: Datagram, kind: str, source: int, number: int, drops: int) -> int:
        key = (datagram.agent, datagram.sub_agent_id, kind, source)
        seq = self._sequences.get(key)
        if seq is None:
            self._sequences[key] = _Sequence(number, drops)
            return 0
        lost = _advance(seq, number) + _increase(seq.drops, drops)
        seq.drops = drops
        return lost

    def _add_packet(self, sample: PacketSample, now: float) -> None:
        key = FlowKey.of(sample)
        flow = self._flows.get(key)
        if flow is None:
            flow = _Flow(now, now, sample.input_if, sample.output_if)
            self._flows[key] = flow
        else:
            self._flows.move_to_end(key)
            flow.last_seen = max(flow.last_seen, now)
            flow.input_if, flow.output_if = sample.input_if, sample.output_if
        packets = sample.sampling_rate
        size = sample.sampling_rate * sample.frame_length
        flow.packets += packets
        flow.bytes += size
        second = math.floor(now)
        if flow.buckets and flow.buckets[-1][0] == second:
            bucket = flow.buckets[-1]
            bucket[1] += size
            bucket[2] += packets
        else:
            flow.buckets.append([second, size, packets])
        horizon = math.floor(now - self.window)
        while flow.buckets and flow.buckets[0][0] < horizon:
            flow.buckets.popleft()
        while len(self._flows) > self.max_flows:
            self._flows.popitem(last=False)
            self._evicted += 1

    def _add_counters(
        self, agent: _Agent, sub_agent: int, counters: InterfaceCounters, now: float
    ) -> None:
        key = (counters.agent, counters.if_index)
        history = self._interfaces.get(key)
        if history is None:
            history = self._interfaces[key] = deque(maxlen=2)
        history.append((now, counters))
        if counters.port_name is not None:
            agent.port_names[counters.if_index] = counters.port_name
        if counters.dpid is not None:
            agent.dpids[sub_agent] = counters.dpid
            agent.last_dpid = counters.dpid

    def _expire_flows(self, now: float) -> None:
        limit = now - self.window
        while self._flows:
            key, flow = next(iter(self._flows.items()))
            if flow.last_seen >= limit:
                break
            del self._flows[key]
            self._evicted += 1

    # ---- flows ----

    def top_flows(
        self,
        now: float,
        *,
        by: Literal["bytes", "packets"] = "bytes",
        limit: int = 10,
        window: float | None = None,
        predicate: Callable[[FlowKey], bool] | None = None,
    ) -> list[FlowEstimate]:
        """The flows with the highest rate of ``by`` over the last ``window``
        seconds (the table's window when None, and at most that), highest first."""
        if by not in ("bytes", "packets"):
            raise ValueError(f"by must be 'bytes' or 'packets', not {by!r}")
        span = self.window if window is None else float(window)
        if not 0 < span <= self.window:
            raise ValueError(f"window must be in (0, {self.window}], not {window}")
        with self._lock:
            self._expire_flows(now)
            estimates = [
                self._estimate(key, flow, now, span)
                for key, flow in self._flows.items()
                if predicate is None or predicate(key)
            ]
        if by == "bytes":
            estimates.sort(key=lambda e: (e.bytes_per_second, e.bytes), reverse=True)
        else:
            estimates.sort(key=lambda e: (e.packets_per_second, e.packets), reverse=True)
        return estimates[: max(limit, 0)]

    @staticmethod
    def _estimate(key: FlowKey, flow: _Flow, now: float, span: float) -> FlowEstimate:
        start = now - span
        in_bytes = 0
        in_packets = 0
        for second, size, packets in flow.buckets:
            if second + 1 > start and second <= now:
                in_bytes += size
                in_packets += packets
        return FlowEstimate(
            key=key,
            bytes=flow.bytes,
            packets=flow.packets,
            bytes_per_second=in_bytes / span,
            packets_per_second=in_packets / span,
            first_seen=flow.first_seen,
            last_seen=flow.last_seen,
            input_if=flow.input_if,
            output_if=flow.output_if,
        )

    def flow_count(self) -> int:
        with self._lock:
            return len(self._flows)

    # ---- interfaces ----

    def interface_rates(self, now: float) -> list[InterfaceRate]:
        """One entry per (agent, ifIndex) with a recent counter sample, sorted by both."""
        with self._lock:
            for key in [
                k for k, h in self._interfaces.items() if now - h[-1][0] > self.interface_timeout
            ]:
                del self._interfaces[key]
            out = [self._rate(key, h) for key, h in sorted(self._interfaces.items())]
        return out

    def _rate(
        self, key: tuple[str, int], history: deque[tuple[float, InterfaceCounters]]
    ) -> InterfaceRate:
        updated, last = history[-1]
        agent = self._agents.get(key[0])
        port_name = last.port_name
        if port_name is None and agent is not None:
            port_name = agent.port_names.get(key[1])
        rates: list[float | None] = [None, None, None, None]
        interval: float | None = None
        if len(history) == 2 and updated > history[0][0]:
            then, first = history[0]
            interval = updated - then
            rates = [
                8 * _increase(first.in_octets, last.in_octets) / interval,
                8 * _increase(first.out_octets, last.out_octets) / interval,
                _increase(first.in_packets, last.in_packets) / interval,
                _increase(first.out_packets, last.out_packets) / interval,
            ]
        return InterfaceRate(
            agent=key[0],
            if_index=key[1],
            port_name=port_name,
            dpid=last.dpid,
            of_port=last.of_port,
            in_bits_per_second=rates[0],
            out_bits_per_second=rates[1],
            in_packets_per_second=rates[2],
            out_packets_per_second=rates[3],
            interval=interval,
            updated=updated,
            counters=last,
        )

    def port_names(self, agent: str) -> dict[int, str]:
        """ifIndex -> port name, as the agent's port name records said."""
        with self._lock:
            a = self._agents.get(agent)
            return dict(a.port_names) if a is not None else {}

    def agent_dpid(self, agent: str) -> int | None:
        """The datapath id of the agent's last OpenFlow port record (an agent that
        exports several bridges has one per sub-agent: ``agent_dpids``)."""
        with self._lock:
            a = self._agents.get(agent)
            return a.last_dpid if a is not None else None

    def agent_dpids(self, agent: str) -> dict[int, int]:
        """Sub-agent id -> datapath id."""
        with self._lock:
            a = self._agents.get(agent)
            return dict(a.dpids) if a is not None else {}

    # ---- counts ----

    def agents(self) -> dict[str, AgentStats]:
        with self._lock:
            return {
                name: AgentStats(
                    datagrams=a.datagrams,
                    packet_samples=a.packet_samples,
                    counter_samples=a.counter_samples,
                    lost_samples=a.lost_samples,
                    lost_datagrams=a.lost_datagrams,
                    last_seen=a.last_seen,
                )
                for name, a in self._agents.items()
            }

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "datagrams": self._datagrams,
                "packet_samples": self._packet_samples,
                "counter_samples": self._counter_samples,
                "lost_samples": self._lost,
                "lost_datagrams": self._lost_datagrams,
                "flows": len(self._flows),
                "evicted_flows": self._evicted,
                "interfaces": len(self._interfaces),
                "agents": len(self._agents),
            }
