"""From a threshold event to a steering rule, and back once the flow goes quiet.

Both event sources share this path: sFlow-RT (``sflowrt.SflowRtPoller``) and the
controller's own embedded collector. Each turns what it saw into a
``ThresholdEvent``; the ``Reactor`` looks up the ``Reaction`` configured for the
event's threshold and asks a ``SteeringSink`` (the controller's ``Services``)
for one steering rule per distinct flow: drop it, or rate-limit it with an
OpenFlow meter. While events for the flow keep arriving the rule stays; once
none has come for ``quiet_seconds`` it is deleted.

Automatic rules live in a band of steering priorities reserved for them
(``Reaction.priority_base`` and the ``priority_slots`` above it, by default
3900-3999), so they win over the operator's ordinary rules but never take a
priority the operator chose: a taken priority (``Conflict``) is skipped.

The reactor only keeps state in memory. Its rules carry ids starting with
``id_prefix`` (``auto-`` by default), so that what a previous run left behind
can be found and removed with ``Reactor.sweep(services.list_steering())``.

The sink can fail (a bridge is away, the store is busy): the reactor logs it and
keeps what it knows, so a rule whose delete failed is deleted again at the next
``expire``. A rule an operator deleted by hand (``NotFound``) is simply
forgotten.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from qingluan.api_schema import ACL_PRIORITY_MAX, ACL_PRIORITY_MIN, AclSelectorBody, SteeringCreate
from qingluan.errors import Conflict, NotFound
from qingluan.model import AclProtocol, SteeringAction, SteeringRule

log = logging.getLogger(__name__)

DEFAULT_ID_PREFIX = "auto-"
_DESCRIPTION_MAX = 255
_PORTED = (AclProtocol.TCP, AclProtocol.UDP)


@dataclass(frozen=True)
class ThresholdEvent:
    """One "this flow crossed that threshold" report, whatever noticed it.

    ``protocol`` may be given as a string (``"udp"``); it is kept as an
    ``AclProtocol``. ``dst_port`` only counts for tcp and udp.
    """

    source: str
    threshold: str
    event_id: str
    ipv4_src: str | None = None
    ipv4_dst: str | None = None
    protocol: AclProtocol = AclProtocol.ANY
    dst_port: int | None = None
    value: float = 0.0
    agent: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "protocol", AclProtocol(self.protocol))


class Reaction(BaseModel):
    """What to do when the threshold named ``threshold`` fires for a flow.

    ``action`` is ``drop`` or ``rate_limit`` (then ``rate_kbps`` is required and
    ``burst_kbits`` optional, with the limits of ``SteeringCreate``). The rule is
    removed once no event for the flow came for ``quiet_seconds``. Its priority is
    the first free one of ``priority_base`` .. ``priority_base + priority_slots - 1``
    (inside 1-4000).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    threshold: str = Field(min_length=1, max_length=128)
    action: Literal["drop", "rate_limit"]
    rate_kbps: int | None = Field(default=None, ge=8, le=100_000_000)
    burst_kbits: int | None = Field(default=None, ge=1, le=100_000_000)
    quiet_seconds: float = Field(default=60.0, gt=0, le=86_400)
    priority_base: int = Field(default=3900, ge=ACL_PRIORITY_MIN, le=ACL_PRIORITY_MAX)
    priority_slots: int = Field(default=100, ge=1, le=ACL_PRIORITY_MAX)

    @model_validator(mode="after")
    def _consistent(self) -> Reaction:
        if self.action == "rate_limit" and self.rate_kbps is None:
            raise ValueError("rate_kbps: a rate_limit reaction needs the rate (kbit/s)")
        if self.action == "drop" and (self.rate_kbps is not None or self.burst_kbits is not None):
            raise ValueError("rate_kbps: only a rate_limit reaction has a rate")
        top = self.priority_base + self.priority_slots - 1
        if top > ACL_PRIORITY_MAX:
            raise ValueError(
                f"priority_slots: {self.priority_base}+{self.priority_slots} goes past "
                f"priority {ACL_PRIORITY_MAX}"
            )
        return self

    def priorities(self) -> range:
        return range(self.priority_base, self.priority_base + self.priority_slots)


class SteeringSink(Protocol):
    """Where automatic rules go: ``qingluan.controller.services.Services`` is one."""

    def create_steering(self, body: SteeringCreate) -> SteeringRule: ...

    def delete_steering(self, rule_id: str) -> None: ...


@dataclass(frozen=True)
class FlowKey:
    """What makes two events "the same flow" for one threshold."""

    threshold: str
    ipv4_src: str | None
    ipv4_dst: str | None
    protocol: AclProtocol
    dst_port: int | None

    def describe(self) -> str:
        port = f":{self.dst_port}" if self.dst_port is not None else ""
        return (
            f"{self.ipv4_src or '*'} -> {self.ipv4_dst or '*'}{port} {self.protocol.value} "
            f"({self.threshold})"
        )


@dataclass(frozen=True)
class ActiveReaction:
    """A snapshot of one rule the reactor holds (``Reactor.active``)."""

    flow: FlowKey
    rule: SteeringRule
    source: str
    first_seen: float
    last_seen: float
    events: int
    deleting: bool = False  # quiet, but its delete failed: retried at the next expire


@dataclass
class _Held:
    flow: FlowKey
    rule: SteeringRule
    source: str
    quiet_seconds: float
    first_seen: float
    last_seen: float
    events: int = 1
    deleting: bool = False

    def snapshot(self) -> ActiveReaction:
        return ActiveReaction(
            self.flow,
            self.rule,
            self.source,
            self.first_seen,
            self.last_seen,
            self.events,
            self.deleting,
        )


def _address(value: str | None, what: str, ev: ThresholdEvent) -> str | None:
    if value is None or value == "":
        return None
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise ValueError(
            f"{what} {value!r} of {ev.source} event {ev.event_id} is not IPv4"
        ) from None


def flow_key(ev: ThresholdEvent) -> FlowKey:
    """The flow an event is about, normalised; ``ValueError`` if it names none.

    A port only counts for tcp and udp; an event with neither address is refused,
    since a rule for it would match everything.
    """
    src = _address(ev.ipv4_src, "source", ev)
    dst = _address(ev.ipv4_dst, "destination", ev)
    if src is None and dst is None:
        raise ValueError(f"{ev.source} event {ev.event_id} names no IPv4 address")
    port = ev.dst_port if ev.protocol in _PORTED else None
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"port {port} of {ev.source} event {ev.event_id} is outside 1-65535")
    return FlowKey(ev.threshold, src, dst, ev.protocol, port)


def steering_body(
    reaction: Reaction, flow: FlowKey, ev: ThresholdEvent, priority: int, rule_id: str
) -> SteeringCreate:
    """The REST body of the automatic rule for ``flow`` at ``priority``."""
    description = (
        f"automatic {reaction.action}: {ev.source} threshold {ev.threshold} event {ev.event_id}"
    )
    return SteeringCreate(
        id=rule_id,
        priority=priority,
        src=AclSelectorBody(cidr=f"{flow.ipv4_src}/32") if flow.ipv4_src else None,
        dst=AclSelectorBody(cidr=f"{flow.ipv4_dst}/32") if flow.ipv4_dst else None,
        protocol=flow.protocol,
        ports=str(flow.dst_port) if flow.dst_port is not None else None,
        action=SteeringAction(reaction.action),
        rate_kbps=reaction.rate_kbps,
        burst_kbits=reaction.burst_kbits,
        description=description[:_DESCRIPTION_MAX],
    )


class Reactor:
    """Turns threshold events into automatic steering rules and removes them again.

    Thread-safe: events, ``expire``, ``active`` and ``close`` may come from
    different threads; calls into the sink are made one at a time.
    """

    def __init__(
        self,
        sink: SteeringSink,
        reactions: Sequence[Reaction],
        clock: Callable[[], float] = time.monotonic,
        id_prefix: str = DEFAULT_ID_PREFIX,
    ) -> None:
        by_name: dict[str, Reaction] = {}
        for reaction in reactions:
            if reaction.threshold in by_name:
                raise ValueError(f"two reactions for threshold {reaction.threshold!r}")
            by_name[reaction.threshold] = reaction
        self._sink = sink
        self._reactions = by_name
        self._clock = clock
        self._prefix = id_prefix
        self._lock = threading.Lock()
        self._held: dict[FlowKey, _Held] = {}
        self._closed = False

    @property
    def thresholds(self) -> list[str]:
        return sorted(self._reactions)

    def set_reactions(self, reactions: Sequence[Reaction]) -> None:
        """Replace the reactions (e.g. a threshold was added or removed). Rules already
        held stay until their flow is quiet, with the quiet time they were made with."""
        by_name: dict[str, Reaction] = {}
        for reaction in reactions:
            if reaction.threshold in by_name:
                raise ValueError(f"two reactions for threshold {reaction.threshold!r}")
            by_name[reaction.threshold] = reaction
        with self._lock:
            self._reactions = by_name

    def on_event(self, ev: ThresholdEvent) -> SteeringRule | None:
        """The rule now in force for the event's flow: created for a new flow, the
        existing one (its quiet time restarted) for a known flow. None when the event
        is ignored (no reaction for its threshold, no address, reactor closed) or the
        rule could not be created (logged; the next event tries again)."""
        reaction = self._reactions.get(ev.threshold)
        if reaction is None:
            log.debug(
                "no reaction for threshold %s (%s event %s)", ev.threshold, ev.source, ev.event_id
            )
            return None
        try:
            key = flow_key(ev)
        except ValueError as exc:
            log.warning("ignoring threshold event: %s", exc)
            return None
        with self._lock:
            if self._closed:
                return None
            now = self._clock()
            held = self._held.get(key)
            if held is not None:
                held.last_seen = now
                held.events += 1
                held.deleting = False
                return held.rule
            rule = self._create(reaction, key, ev)
            if rule is None:
                return None
            self._held[key] = _Held(key, rule, ev.source, reaction.quiet_seconds, now, now)
            log.info(
                "%s rule %s (priority %d) for %s after %s event %s (value %g)",
                reaction.action,
                rule.id,
                rule.priority,
                key.describe(),
                ev.source,
                ev.event_id,
                ev.value,
            )
            return rule

    def _create(self, reaction: Reaction, key: FlowKey, ev: ThresholdEvent) -> SteeringRule | None:
        ours = {h.rule.priority for h in self._held.values()}
        for priority in reaction.priorities():
            if priority in ours:
                continue
            rule_id = f"{self._prefix}{priority}"
            try:
                body = steering_body(reaction, key, ev, priority, rule_id)
            except ValueError as exc:
                log.warning("cannot react to %s event %s: %s", ev.source, ev.event_id, exc)
                return None
            try:
                return self._sink.create_steering(body)
            except Conflict:
                continue  # the operator's rule (or a leftover) has it: next one
            except Exception as exc:
                log.warning(
                    "creating the %s rule for %s failed (next event retries): %s",
                    reaction.action,
                    key.describe(),
                    exc,
                )
                return None
        log.warning(
            "no free steering priority in %d-%d for %s: not reacting",
            reaction.priority_base,
            reaction.priority_base + reaction.priority_slots - 1,
            key.describe(),
        )
        return None

    def expire(self, now: float | None = None) -> list[str]:
        """Delete the rules whose flow sent no event for longer than its
        ``quiet_seconds``; returns the ids no longer held (deleted, or already gone).
        A failed delete is logged and retried at the next call."""
        with self._lock:
            when = self._clock() if now is None else now
            quiet = [h for h in self._held.values() if when - h.last_seen > h.quiet_seconds]
            return [h.rule.id for h in quiet if self._remove(h, "quiet")]

    def close(self) -> list[str]:
        """Remove every rule the reactor created and take no more events; returns
        the ids removed. Rules whose delete failed stay listed in ``active``."""
        with self._lock:
            self._closed = True
            return [h.rule.id for h in list(self._held.values()) if self._remove(h, "closing")]

    def _remove(self, held: _Held, why: str) -> bool:
        try:
            self._sink.delete_steering(held.rule.id)
        except NotFound:
            log.info("rule %s for %s was already deleted", held.rule.id, held.flow.describe())
        except Exception as exc:
            held.deleting = True
            log.warning("deleting rule %s (%s) failed, will retry: %s", held.rule.id, why, exc)
            return False
        else:
            log.info("removed rule %s for %s (%s)", held.rule.id, held.flow.describe(), why)
        del self._held[held.flow]
        return True

    def active(self) -> list[ActiveReaction]:
        """The rules held now, highest priority first."""
        with self._lock:
            snaps = [h.snapshot() for h in self._held.values()]
        return sorted(snaps, key=lambda a: -a.rule.priority)

    def sweep(self, existing: Iterable[SteeringRule]) -> list[str]:
        """Delete rules carrying this reactor's id prefix that it does not hold (left
        by an earlier run); pass ``services.list_steering()``. Returns the ids deleted."""
        with self._lock:
            mine = {h.rule.id for h in self._held.values()}
            gone: list[str] = []
            for rule in existing:
                if not rule.id.startswith(self._prefix) or rule.id in mine:
                    continue
                try:
                    self._sink.delete_steering(rule.id)
                except NotFound:
                    pass
                except Exception as exc:
                    log.warning("removing leftover rule %s failed: %s", rule.id, exc)
                    continue
                gone.append(rule.id)
            return gone
