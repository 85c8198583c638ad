"""IDS alerts in, quarantines out: policies, the offending endpoint, the drop, its expiry.

A host's driver forwards each alert of its IDS (``POST /v1/ids/alerts``). The
highest-priority policy that matches decides (``decide``); with none, the alert is
only logged. A quarantine names the endpoint that sent the offending packet (the
alert's source address, on an inspected network) and is stored, then the
endpoint's bridge is converged: the call returns once a barrier confirmed the
drop flow, and the time from the alert's arrival to that confirmation is kept
on the quarantine and in the metrics.

Quarantines are stored, so a controller restart keeps them; ``expire`` (called
every half second by the controller) lifts those whose time is up and
those whose endpoint is gone.

Store layout: ``idspolicies/<id>`` IdsPolicy, ``quarantines/<id>`` Quarantine.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from qingluan.api_schema import AlertReport, IdsPolicyCreate
from qingluan.controller.interfaces import Converger
from qingluan.controller.pipeline.quarantine import inspected
from qingluan.controller.rule_ids import claim_id, claim_priority
from qingluan.controller.services import ENDPOINTS, NETWORKS, QUARANTINES, endpoint_key
from qingluan.controller.store import Store, load, load_all
from qingluan.errors import NotFound, QingluanError, Unavailable
from qingluan.model import (
    AclProtocol,
    AlertOutcome,
    Endpoint,
    IdsAction,
    IdsAlert,
    IdsPolicy,
    Network,
    Quarantine,
    QuarantineScope,
)

log = logging.getLogger(__name__)

POLICIES = "idspolicies/"


class IdsObserver(Protocol):
    """What the metrics want to hear about."""

    def alert(self, host: str, severity: int, action: IdsAction) -> None: ...

    def quarantined(self, scope: QuarantineScope, confirm_seconds: float | None) -> None: ...

    def quarantines_active(self, count: int) -> None: ...


# ---- pure decisions ------------------------------------------------------------------


def policy_matches(policy: IdsPolicy, alert: IdsAlert) -> bool:
    if policy.signature_id is not None and policy.signature_id != alert.signature_id:
        return False
    return policy.max_severity is None or alert.severity <= policy.max_severity


def decide(policies: Sequence[IdsPolicy], alert: IdsAlert) -> IdsPolicy | None:
    """The highest-priority policy that matches ``alert`` (None: log only)."""
    for policy in sorted(policies, key=lambda p: -p.priority):
        if policy_matches(policy, alert):
            return policy
    return None


def offender(
    alert: IdsAlert, endpoints: Sequence[Endpoint], networks: Sequence[Network]
) -> tuple[Endpoint | None, str]:
    """The endpoint that sent the alert's packet: its source address on an inspected
    network, preferring the reporting host's. (None, why) when there is none or it is
    ambiguous."""
    watched = {n.id for n in networks if inspected(n)}
    found = [e for e in endpoints if e.address == alert.src_ip and e.network_id in watched]
    local = [e for e in found if e.host == alert.host]
    if len(local) == 1:
        return local[0], ""
    if len(found) == 1:
        return found[0], ""
    if not found:
        return None, f"no endpoint of an inspected network has the source address {alert.src_ip}"
    return None, f"{len(found)} endpoints have the source address {alert.src_ip}: not guessing"


_PROTOCOLS = {"tcp": AclProtocol.TCP, "udp": AclProtocol.UDP, "icmp": AclProtocol.ICMP}


def quarantine_id(endpoint: Endpoint, scope: QuarantineScope, alert: IdsAlert) -> str:
    base = f"q-{endpoint.id[:12]}"
    if scope is QuarantineScope.ENDPOINT:
        return base
    flow = f"{alert.proto.lower()}|{alert.dest_ip}|{alert.src_port}|{alert.dest_port}"
    return f"{base}-{hashlib.sha256(flow.encode()).hexdigest()[:8]}"


def new_quarantine(
    endpoint: Endpoint, policy: IdsPolicy, alert: IdsAlert, now: float
) -> Quarantine:
    protocol = _PROTOCOLS.get(alert.proto.lower(), AclProtocol.ANY)
    flow = policy.scope is QuarantineScope.FLOW
    ports = flow and protocol in (AclProtocol.TCP, AclProtocol.UDP)
    return Quarantine(
        id=quarantine_id(endpoint, policy.scope, alert),
        endpoint_id=endpoint.id,
        host=endpoint.host,
        network_id=endpoint.network_id,
        mac=endpoint.mac,
        address=endpoint.address,
        scope=policy.scope,
        protocol=protocol if flow else AclProtocol.ANY,
        ipv4_dst=alert.dest_ip if flow else None,
        src_port=alert.src_port if ports else None,
        dst_port=alert.dest_port if ports else None,
        reason=f"{alert.source} {alert.gid}:{alert.signature_id}:{alert.rev} {alert.signature}",
        policy_id=policy.id,
        signature_id=alert.signature_id,
        severity=alert.severity,
        created_at=now,
        expires_at=now + policy.duration if policy.duration else None,
    )


def refreshed(held: Quarantine, fresh: Quarantine) -> Quarantine:
    """Another alert for what is already in quarantine: it lasts at least as long as the
    new one would, and counts the alert."""
    if held.expires_at is None or fresh.expires_at is None:
        expires = None
    else:
        expires = max(held.expires_at, fresh.expires_at)
    return held.model_copy(update={"alerts": held.alerts + 1, "expires_at": expires})


# ---- the use cases ---------------------------------------------------------------------


class IdsService:
    def __init__(
        self,
        store: Store,
        converger: Converger,
        *,
        converge_timeout: float = 5.0,
        observer: IdsObserver | None = None,
        wall_clock: Callable[[], float] = time.time,
        recent: int = 200,
    ) -> None:
        self._store = store
        self._converger = converger
        self._timeout = converge_timeout
        self._observer = observer
        self._now = wall_clock
        self._recent: list[AlertOutcome] = []
        self._recent_max = recent
        self._lock = threading.Lock()

    # ---- policies ----

    def create_policy(self, body: IdsPolicyCreate) -> IdsPolicy:
        with self._store.transaction() as tx:
            policies = load_all(tx, POLICIES, IdsPolicy)
            policy_id = claim_id(body.id, "ids", (p.id for p in policies), "IDS policy")
            claim_priority(body.priority, policies, "IDS policy",
                           "every policy has its own priority (they decide the order)")  # fmt: skip
            policy = IdsPolicy(id=policy_id, **body.model_dump(exclude={"id"}))
            tx.put(POLICIES + policy_id, policy)
        return policy

    def list_policies(self) -> list[IdsPolicy]:
        return sorted(load_all(self._store, POLICIES, IdsPolicy), key=lambda p: -p.priority)

    def delete_policy(self, policy_id: str) -> None:
        with self._store.transaction() as tx:
            tx.delete(POLICIES + policy_id)

    # ---- alerts ----

    def report(self, report: AlertReport, received: float | None = None) -> AlertOutcome:
        """Decide and act on one alert. ``received``: ``time.perf_counter()`` when it
        arrived (default: now), the start of the confirm time."""
        started = time.perf_counter() if received is None else received
        now = self._now()
        alert = IdsAlert(**report.model_dump())
        held: Quarantine | None = None
        quarantine: Quarantine | None = None
        with self._store.transaction() as tx:
            policy = decide(load_all(tx, POLICIES, IdsPolicy), alert)
            why = "no policy matches: logged only" if policy is None else ""
            if policy is not None and policy.action is IdsAction.QUARANTINE:
                endpoints = load_all(tx, ENDPOINTS, Endpoint)
                endpoint, why = offender(alert, endpoints, load_all(tx, NETWORKS, Network))
                if endpoint is not None:
                    fresh = new_quarantine(endpoint, policy, alert, now)
                    held = load(tx, QUARANTINES + fresh.id, Quarantine)
                    quarantine = refreshed(held, fresh) if held is not None else fresh
                    tx.put(QUARANTINES + quarantine.id, quarantine)
        if policy is None or quarantine is None:
            return self._done(
                AlertOutcome(
                    alert=alert,
                    action=IdsAction.LOG,
                    policy_id=policy.id if policy else None,
                    reason=why,
                    received_at=now,
                )
            )
        confirm: float | None = None
        if held is None:
            confirm = self._apply(quarantine.host, started)
            if confirm is not None:
                quarantine = quarantine.model_copy(update={"confirm_seconds": confirm})
                self._update_if_present(quarantine)
            if self._observer is not None:
                self._observer.quarantined(quarantine.scope, confirm)
                self._observer.quarantines_active(len(self._store.scan(QUARANTINES)))
        return self._done(
            AlertOutcome(
                alert=alert,
                action=IdsAction.QUARANTINE,
                policy_id=policy.id,
                quarantine=quarantine,
                reason="" if held is None else "already in quarantine: refreshed",
                received_at=now,
                confirm_seconds=confirm,
            )
        )

    def _apply(self, host: str, started: float) -> float | None:
        """Converge ``host``; the seconds from ``started`` to the confirming barrier, or None
        when the bridge is not connected now (it gets the drop when it connects)."""
        try:
            self._converger.converge(host, timeout=self._timeout)
        except Unavailable as exc:
            log.warning("host %s: quarantine stored, bridge not connected (%s)", host, exc)
            return None
        return time.perf_counter() - started

    def _update_if_present(self, quarantine: Quarantine) -> None:
        with self._store.transaction() as tx:
            if tx.get(QUARANTINES + quarantine.id) is not None:
                tx.put(QUARANTINES + quarantine.id, quarantine)

    def _done(self, outcome: AlertOutcome) -> AlertOutcome:
        a = outcome.alert
        log.info(
            "IDS alert from %s: %s:%s %s %s:%s -> %s:%s severity %d: %s%s",
            a.host,
            a.gid,
            a.signature_id,
            a.proto,
            a.src_ip,
            a.src_port,
            a.dest_ip,
            a.dest_port,
            a.severity,
            outcome.action.value,
            f" ({outcome.reason})" if outcome.reason else "",
        )
        with self._lock:
            self._recent.append(outcome)
            del self._recent[: -self._recent_max]
        if self._observer is not None:
            self._observer.alert(a.host, a.severity, outcome.action)
        return outcome

    def recent_alerts(self, limit: int = 50) -> list[AlertOutcome]:
        with self._lock:
            return list(reversed(self._recent[-limit:]))

    # ---- quarantines ----

    def list_quarantines(self) -> list[Quarantine]:
        return sorted(
            load_all(self._store, QUARANTINES, Quarantine), key=lambda q: (q.created_at, q.id)
        )

    def get_quarantine(self, quarantine_id: str) -> Quarantine:
        doc = self._store.get(QUARANTINES + quarantine_id)
        if doc is None:
            raise NotFound(f"quarantine {quarantine_id} not found")
        return Quarantine.model_validate(doc)

    def lift(self, quarantine_id: str) -> None:
        """End one quarantine now (unknown: fine); returns once its bridge confirmed."""
        with self._store.transaction() as tx:
            doc = tx.get(QUARANTINES + quarantine_id)
            if doc is None:
                return
            tx.delete(QUARANTINES + quarantine_id)
        self._converge_lifted([Quarantine.model_validate(doc)])

    def expire(self, now: float | None = None) -> list[str]:
        """Lift the quarantines whose time is up or whose endpoint is gone."""
        at = self._now() if now is None else now
        with self._store.transaction() as tx:  # twice a second: read only what it needs
            gone = [
                q
                for q in load_all(tx, QUARANTINES, Quarantine)
                if (q.expires_at is not None and q.expires_at <= at)
                or tx.get(endpoint_key(q.endpoint_id)) is None
            ]
            for q in gone:
                tx.delete(QUARANTINES + q.id)
        if gone:
            self._converge_lifted(gone)
        return [q.id for q in gone]

    def _converge_lifted(self, lifted: Sequence[Quarantine]) -> None:
        for host in sorted({q.host for q in lifted}):
            try:
                self._converger.converge(host, timeout=self._timeout)
            except Unavailable:
                pass  # it converges on connect
            except QingluanError as exc:
                log.warning("host %s: lifting quarantines not confirmed: %s", host, exc)
        log.info("quarantine lifted: %s", ", ".join(q.id for q in lifted))
        if self._observer is not None:
            self._observer.quarantines_active(len(self._store.scan(QUARANTINES)))
