"""sFlow-RT as an event source: a REST client and a poller feeding the ``Reactor``.

sFlow-RT (InMon's sFlow analytics engine, REST API on port 8008) is told what to
watch with *flow definitions* (``PUT /flow/{name}/json``: which packet fields
make a flow's key, what to count) and *thresholds* on them (``PUT
/threshold/{name}/json``, ``byFlow`` for one event per flow crossing it). It
reports crossings as *events*, read with a long poll on ``GET /events/json``:
each has an increasing ``eventID``, the ``thresholdID``, the ``metric`` (the
flow's name), ``value`` and ``threshold``, the ``agent`` and ``dataSource`` that
saw it, a ``timestamp`` (ms) and, for flow thresholds, the ``flowKey``: the
flow's key values joined by commas, in the order of the definition's ``keys``.
The list comes newest first; the next call passes the highest ``eventID`` seen
to get only what followed (``-1`` at the start).

sFlow-RT keeps definitions in memory only: after it restarts they are gone and
its event ids start over. ``SflowRtPoller`` therefore checks now and then that
its definitions are still there (and that ``/version`` did not change, and the
event ids did not go backwards) and pushes them again when they are not.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, urlencode

import requests

from qingluan.controller.monitor.reactions import ThresholdEvent
from qingluan.errors import Unavailable
from qingluan.model import AclProtocol, SteeringRule

log = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8008"
_BODY_EXCERPT = 200

# sFlow-RT flow key names this module understands, and what they mean here
_IP_PROTOCOLS = {"6": AclProtocol.TCP, "17": AclProtocol.UDP, "1": AclProtocol.ICMP}
_PORT_KEYS = {"tcpdestinationport": AclProtocol.TCP, "udpdestinationport": AclProtocol.UDP}
_PROTOCOL_KEYS = {
    "tcpsourceport": AclProtocol.TCP,
    "udpsourceport": AclProtocol.UDP,
    "icmptype": AclProtocol.ICMP,
    **_PORT_KEYS,
}


class SflowRtError(Unavailable):
    """sFlow-RT could not be reached or answered something unusable. ``url`` is
    the request's; ``http_status`` the status it answered, if it answered."""

    def __init__(self, message: str, *, url: str, http_status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.http_status = http_status


@dataclass(frozen=True)
class ActiveFlow:
    """One entry of ``/activeflows``: ``parts`` is ``key`` split by the separator."""

    key: str
    parts: tuple[str, ...]
    value: float
    agent: str | None = None
    data_source: str | None = None
    flow_n: int | None = None


@dataclass(frozen=True)
class RtEvent:
    """One entry of ``/events/json``."""

    event_id: int
    threshold_id: str
    metric: str
    value: float
    threshold: float
    flow_key: str | None = None
    agent: str | None = None
    data_source: str | None = None
    timestamp: int | None = None


@dataclass(frozen=True)
class FlowSpec:
    """A flow definition to push: ``keys`` in the order its flowKey lists them."""

    name: str
    keys: tuple[str, ...]
    value: str = "bytes"
    filter: str | None = None
    log: bool = False
    n: int | None = None
    t: float | None = None


@dataclass(frozen=True)
class ThresholdSpec:
    """A threshold to push; ``metric`` is the name of one of the poller's flows."""

    name: str
    metric: str
    value: float
    by_flow: bool = True
    timeout: float | None = None


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)


class SflowRtClient:
    """The sFlow-RT REST calls qingluan uses, each one request.

    Errors are ``SflowRtError`` naming the URL (and the status, for an HTTP
    error). ``events`` remembers the highest ``eventID`` it saw, so consecutive
    calls continue where the previous one stopped.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        timeout: float = 5.0,
        session: requests.Session | None = None,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._timeout = timeout
        self._session = session or requests.Session()
        self._own_session = session is None
        self._lock = threading.Lock()
        self._last_event_id = -1

    @property
    def base_url(self) -> str:
        return self._base

    @property
    def last_event_id(self) -> int:
        with self._lock:
            return self._last_event_id

    def reset_events(self, event_id: int = -1) -> None:
        """Continue the event stream after ``event_id`` (-1: from the start)."""
        with self._lock:
            self._last_event_id = event_id

    def close(self) -> None:
        if self._own_session:
            self._session.close()

    # ---- the calls -----------------------------------------------------------

    def version(self) -> str:
        """``GET /version``: the software version, as plain text (e.g. ``3.0-1712``)."""
        return str(self._request("GET", "/version", json_reply=False)).strip()

    def agents(self) -> dict[str, dict[str, Any]]:
        """``GET /agents/json``: statistics of each sFlow agent, by agent address."""
        url, data = self._get_json("/agents/json")
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise SflowRtError(f"sFlow-RT {url}: expected an object of agents", url=url)
        return data

    def define_flow(
        self,
        name: str,
        keys: str | Sequence[str],
        value: str,
        filter: str | None = None,
        log: bool = False,
        n: int | None = None,
        t: float | None = None,
    ) -> None:
        """``PUT /flow/{name}/json``: define (or redefine) a flow."""
        body: dict[str, Any] = {
            "keys": keys if isinstance(keys, str) else ",".join(keys),
            "value": value,
            "log": log,
        }
        if filter is not None:
            body["filter"] = filter
        if n is not None:
            body["n"] = n
        if t is not None:
            body["t"] = t
        self._request("PUT", f"/flow/{quote(name, safe='')}/json", body=body)

    def flow(self, name: str) -> dict[str, Any] | None:
        """``GET /flow/{name}/json``: the definition, None if sFlow-RT has none."""
        return self._get_object(f"/flow/{quote(name, safe='')}/json")

    def delete_flow(self, name: str, missing_ok: bool = True) -> None:
        """``DELETE /flow/{name}/json``."""
        self._request("DELETE", f"/flow/{quote(name, safe='')}/json", missing_ok=missing_ok)

    def set_threshold(
        self,
        name: str,
        metric: str,
        value: float,
        by_flow: bool = True,
        timeout: float | None = None,
    ) -> None:
        """``PUT /threshold/{name}/json``: ``timeout`` is the seconds the metric must
        stay below the threshold before it re-arms."""
        body: dict[str, Any] = {"metric": metric, "value": value, "byFlow": by_flow}
        if timeout is not None:
            body["timeout"] = timeout
        self._request("PUT", f"/threshold/{quote(name, safe='')}/json", body=body)

    def threshold(self, name: str) -> dict[str, Any] | None:
        """``GET /threshold/{name}/json``: the threshold, None if sFlow-RT has none."""
        return self._get_object(f"/threshold/{quote(name, safe='')}/json")

    def delete_threshold(self, name: str, missing_ok: bool = True) -> None:
        """``DELETE /threshold/{name}/json``."""
        self._request("DELETE", f"/threshold/{quote(name, safe='')}/json", missing_ok=missing_ok)

    def active_flows(
        self,
        name: str,
        agent: str = "ALL",
        max_flows: int = 100,
        min_value: float | None = None,
        agg_mode: str = "max",
        separator: str = ",",
    ) -> list[ActiveFlow]:
        """``GET /activeflows/{agent}/{name}/json``: the largest active flows."""
        params: dict[str, Any] = {"maxFlows": max_flows, "aggMode": agg_mode}
        if min_value is not None:
            params["minValue"] = min_value
        path = f"/activeflows/{quote(agent, safe=';')}/{quote(name, safe='')}/json"
        url, data = self._get_json(path, params)
        if not isinstance(data, list):
            raise SflowRtError(f"sFlow-RT {url}: expected a list of flows", url=url)
        try:
            return [
                ActiveFlow(
                    key=str(f["key"]),
                    parts=tuple(str(f["key"]).split(separator)),
                    value=float(f["value"]),
                    agent=_str_or_none(f.get("agent")),
                    data_source=_str_or_none(f.get("dataSource")),
                    flow_n=None if f.get("flowN") is None else int(f["flowN"]),
                )
                for f in data
            ]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SflowRtError(
                f"sFlow-RT {url}: unexpected flow entry ({exc!r})", url=url
            ) from None

    def events(
        self,
        threshold_id: str | None = None,
        max_events: int = 100,
        timeout: int | None = None,
        event_id: int | None = None,
    ) -> list[RtEvent]:
        """``GET /events/json``: events after ``event_id`` (default: the last one
        seen), oldest first. With ``timeout`` (seconds) sFlow-RT holds the request
        until an event comes or the time is up (then the list is empty)."""
        after = self.last_event_id if event_id is None else event_id
        params: dict[str, Any] = {"maxEvents": max_events, "eventID": after}
        if threshold_id is not None:
            params["thresholdID"] = threshold_id
        if timeout is not None:
            params["timeout"] = timeout
        read = self._timeout + (timeout or 0)
        url, data = self._get_json("/events/json", params, read_timeout=read)
        if not isinstance(data, list):
            raise SflowRtError(f"sFlow-RT {url}: expected a list of events", url=url)
        try:
            events = sorted((self._event(e) for e in data), key=lambda e: e.event_id)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SflowRtError(f"sFlow-RT {url}: unexpected event ({exc!r})", url=url) from None
        if events:
            with self._lock:
                self._last_event_id = events[-1].event_id
        return events

    @staticmethod
    def _event(e: Mapping[str, Any]) -> RtEvent:
        return RtEvent(
            event_id=int(e["eventID"]),
            threshold_id=str(e["thresholdID"]),
            metric=str(e.get("metric", "")),
            value=float(e.get("value", 0.0)),
            threshold=float(e.get("threshold", 0.0)),
            flow_key=_str_or_none(e.get("flowKey")),
            agent=_str_or_none(e.get("agent")),
            data_source=_str_or_none(e.get("dataSource")),
            timestamp=None if e.get("timestamp") is None else int(e["timestamp"]),
        )

    # ---- plumbing ------------------------------------------------------------

    def _get_object(self, path: str) -> dict[str, Any] | None:
        url = self._url(path)
        data = self._request("GET", path, missing_ok=True)
        if data is None:
            return None
        if not isinstance(data, dict):
            raise SflowRtError(f"sFlow-RT {url}: expected an object", url=url)
        return data

    def _get_json(
        self, path: str, params: Mapping[str, Any] | None = None, read_timeout: float | None = None
    ) -> tuple[str, Any]:
        url = self._url(path, params)
        data = self._request("GET", path, params=params, read_timeout=read_timeout)
        if data is None:
            raise SflowRtError(f"sFlow-RT GET {url} answered an empty body", url=url)
        return url, data

    def _url(self, path: str, params: Mapping[str, Any] | None = None) -> str:
        query = f"?{urlencode(params)}" if params else ""
        return f"{self._base}{path}{query}"

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: object = None,
        read_timeout: float | None = None,
        json_reply: bool = True,
        missing_ok: bool = False,
    ) -> Any:
        url = self._url(path, params)
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = "application/json"
        read = self._timeout if read_timeout is None else read_timeout
        try:
            resp = self._session.request(
                method, url, data=data, headers=headers, timeout=(self._timeout, read)
            )
        except requests.Timeout as exc:
            raise SflowRtError(
                f"sFlow-RT {method} {url} did not answer in time ({exc.__class__.__name__})",
                url=url,
            ) from None
        except requests.ConnectionError as exc:
            raise SflowRtError(f"cannot reach sFlow-RT at {url}: {exc}", url=url) from None
        except requests.RequestException as exc:
            raise SflowRtError(f"sFlow-RT {method} {url} failed: {exc}", url=url) from None
        with resp:
            if resp.status_code == 404 and missing_ok:
                return None
            if resp.status_code >= 400:
                excerpt = resp.text[:_BODY_EXCERPT].strip()
                raise SflowRtError(
                    f"sFlow-RT {method} {url} answered {resp.status_code} {resp.reason}"
                    + (f": {excerpt}" if excerpt else ""),
                    url=url,
                    http_status=resp.status_code,
                )
            if not json_reply:
                return resp.text
            if not resp.content.strip():
                return None
            try:
                return resp.json()
            except ValueError:
                raise SflowRtError(
                    f"sFlow-RT {method} {url} answered {resp.status_code} with a body that is "
                    f"not JSON: {resp.text[:80]!r}",
                    url=url,
                    http_status=resp.status_code,
                ) from None


class ThresholdReactor(Protocol):
    """What the poller feeds: ``reactions.Reactor`` is one."""

    def on_event(self, ev: ThresholdEvent) -> SteeringRule | None: ...

    def expire(self, now: float | None = None) -> list[str]: ...


def threshold_event(
    ev: RtEvent, keys: Sequence[str], source: str = "sflow-rt"
) -> ThresholdEvent | None:
    """The ``ThresholdEvent`` for an sFlow-RT event of a flow with ``keys``; None if
    its flowKey does not have one value per key.

    ``ipsource``/``ipdestination`` are the addresses, ``ipprotocol`` the protocol
    (6 tcp, 17 udp, 1 icmp, anything else: any), ``tcpdestinationport`` /
    ``udpdestinationport`` the port; a tcp/udp/icmp key implies its protocol. Other
    keys (source ports among them: steering matches destination ports) only make the
    flow distinct in sFlow-RT.
    """
    if ev.flow_key is None:
        return None
    parts = ev.flow_key.split(",")
    if len(parts) != len(keys):
        return None
    fields = dict(zip(keys, parts, strict=True))
    protocol = AclProtocol.ANY
    if "ipprotocol" in fields:
        protocol = _IP_PROTOCOLS.get(fields["ipprotocol"].strip(), AclProtocol.ANY)
    for key, implied in _PROTOCOL_KEYS.items():
        if key in fields and protocol is AclProtocol.ANY:
            protocol = implied
    port: int | None = None
    for key, proto in _PORT_KEYS.items():
        if key in fields and protocol is proto:
            try:
                port = int(fields[key])
            except ValueError:
                port = None
    return ThresholdEvent(
        source=source,
        threshold=ev.threshold_id,
        event_id=str(ev.event_id),
        ipv4_src=fields.get("ipsource") or None,
        ipv4_dst=fields.get("ipdestination") or None,
        protocol=protocol,
        dst_port=port,
        value=ev.value,
        agent=ev.agent,
    )


class SflowRtPoller:
    """Keeps sFlow-RT's definitions in place and hands its events to a reactor.

    ``start`` starts two daemon threads: one pushes the flows and thresholds and
    long-polls ``/events`` (``poll_seconds`` per request, so ``close`` returns
    within about that), the other calls ``reactor.expire()`` every
    ``expire_every`` seconds, also while sFlow-RT is away. Every ``check_every``
    seconds, and after any error, the poller checks that sFlow-RT still has its
    definitions and runs the same version; when not (it restarted) it pushes them
    again and reads events from the start. Errors back off from
    ``backoff_initial`` doubling up to ``backoff_max`` seconds.
    """

    def __init__(
        self,
        client: SflowRtClient,
        reactor: ThresholdReactor,
        flows: Sequence[FlowSpec],
        thresholds: Sequence[ThresholdSpec],
        *,
        source: str = "sflow-rt",
        poll_seconds: int = 1,
        max_events: int = 100,
        expire_every: float = 1.0,
        check_every: float = 10.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        self._flows = {f.name: f for f in flows}
        if len(self._flows) != len(flows):
            raise ValueError("two flow definitions with the same name")
        self._thresholds = {t.name: t for t in thresholds}
        if len(self._thresholds) != len(thresholds):
            raise ValueError("two thresholds with the same name")
        for t in thresholds:
            if t.metric not in self._flows:
                raise ValueError(f"threshold {t.name}: metric {t.metric!r} is not one of the flows")
        if poll_seconds < 1:
            raise ValueError("poll_seconds: at least 1 (sFlow-RT counts whole seconds)")
        self._client = client
        self._reactor = reactor
        self._source = source
        self._poll = poll_seconds
        self._max_events = max_events
        self._expire_every = expire_every
        self._check_every = check_every
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._version: str | None = None
        self._pushes = 0
        self._handled = 0

    @property
    def pushes(self) -> int:
        """How many times the definitions were pushed."""
        return self._pushes

    @property
    def handled(self) -> int:
        """How many of sFlow-RT's events went to the reactor."""
        return self._handled

    def start(self) -> None:
        if self._threads:
            raise RuntimeError("the sFlow-RT poller is already started")
        self._threads = [
            threading.Thread(target=self._poll_loop, name="sflowrt-poll", daemon=True),
            threading.Thread(target=self._expire_loop, name="sflowrt-expire", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def close(self, timeout: float | None = None) -> None:
        """Stop both threads; waits at most ``timeout`` (default: one poll + 1 s)."""
        self._stop.set()
        limit = self._poll + 1.0 if timeout is None else timeout
        deadline = time.monotonic() + limit
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("%s did not stop within %.1f s", thread.name, limit)

    def __enter__(self) -> SflowRtPoller:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the threads ---------------------------------------------------------

    def _expire_loop(self) -> None:
        while not self._stop.wait(self._expire_every):
            try:
                self._reactor.expire()
            except Exception:
                log.exception("expiring automatic steering rules failed")

    def _poll_loop(self) -> None:
        delay = self._backoff_initial
        verify = True
        next_check = 0.0
        first = True
        while not self._stop.is_set():
            try:
                if verify or time.monotonic() >= next_check:
                    if self._definitions_lost(first):
                        self._client.reset_events()
                        self._push()
                    first = False
                    verify = False
                    next_check = time.monotonic() + self._check_every
                self._poll_once()
                delay = self._backoff_initial
            except Exception as exc:
                if isinstance(exc, SflowRtError):
                    log.warning("sFlow-RT: %s (retrying in %.1f s)", exc, delay)
                else:
                    log.exception("sFlow-RT poller failed (retrying in %.1f s)", delay)
                verify = True
                self._stop.wait(delay)
                delay = min(delay * 2, self._backoff_max)

    def _definitions_lost(self, first: bool) -> bool:
        version = self._client.version()
        changed = self._version is not None and version != self._version
        self._version = version
        missing = [n for n in self._flows if self._client.flow(n) is None]
        missing += [n for n in self._thresholds if self._client.threshold(n) is None]
        if changed or missing:
            if not first:
                log.warning(
                    "sFlow-RT at %s restarted (version %s, missing %s): pushing definitions",
                    self._client.base_url,
                    version,
                    ", ".join(missing) or "nothing",
                )
            return True
        return False

    def _push(self) -> None:
        for f in self._flows.values():
            self._client.define_flow(f.name, f.keys, f.value, f.filter, f.log, f.n, f.t)
        for t in self._thresholds.values():
            self._client.set_threshold(t.name, t.metric, t.value, t.by_flow, t.timeout)
        self._pushes += 1
        log.info(
            "pushed %d flow definitions and %d thresholds to sFlow-RT at %s",
            len(self._flows),
            len(self._thresholds),
            self._client.base_url,
        )

    def _poll_once(self) -> None:
        before = self._client.last_event_id
        events = self._client.events(max_events=self._max_events, timeout=self._poll)
        if events and before >= 0 and events[-1].event_id <= before:
            log.warning(
                "sFlow-RT event ids went backwards (%d after %d): restarted, pushing definitions",
                events[-1].event_id,
                before,
            )
            self._push()
        for ev in events:
            if self._stop.is_set():
                return
            self._handle(ev)

    def _handle(self, ev: RtEvent) -> None:
        spec = self._thresholds.get(ev.threshold_id)
        if spec is None:
            return  # someone else's threshold
        flow = self._flows[spec.metric]
        tev = threshold_event(ev, flow.keys, self._source)
        if tev is None:
            log.warning(
                "sFlow-RT event %d: flowKey %r does not match keys %s of flow %s",
                ev.event_id,
                ev.flow_key,
                ",".join(flow.keys),
                flow.name,
            )
            return
        self._handled += 1
        try:
            self._reactor.on_event(tev)
        except Exception:
            log.exception("reacting to sFlow-RT event %d failed", ev.event_id)
