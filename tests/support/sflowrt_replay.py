"""A stand-in for sFlow-RT's REST API that answers with recorded responses.

sFlow-RT itself (a Java application distributed by InMon) cannot run on this
machine, so the client and the poller are tested against this: a real HTTP
server on 127.0.0.1 (an ephemeral port, its own thread) that speaks the part of
the sFlow-RT 3.x REST API qingluan uses, with bodies shaped like sFlow-RT's
(stored in ``tests/data/sflowrt/*.json``):

- ``GET /version`` (plain text), ``GET /agents/json``;
- ``PUT/GET/DELETE /flow/{name}/json`` and ``/threshold/{name}/json``: what was
  PUT is kept (GET answers it over the defaults sFlow-RT fills in), an unknown
  name is 404;
- ``GET /activeflows/{agent}/{name}/json`` with ``maxFlows``, ``minValue``,
  ``aggMode``: the flows set with ``set_active_flows`` for a defined flow;
- ``GET /events/json`` with ``thresholdID``, ``maxEvents``, ``timeout`` and
  ``eventID``: the events queued with ``queue_event`` after ``eventID``, newest
  first; with none, the request waits up to ``timeout`` seconds for one.

Every request is recorded (method, path, query, body) for assertions. ``fail``
makes the next requests to a path answer an error (or a broken body);
``restart`` forgets definitions and events and starts event ids over, as an
sFlow-RT restart does.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

DATA = Path(__file__).resolve().parents[1] / "data" / "sflowrt"


def recorded(name: str) -> Any:
    """A recorded response body, ``tests/data/sflowrt/<name>.json``."""
    return json.loads((DATA / f"{name}.json").read_text())


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None


@dataclass(frozen=True)
class _Reply:
    status: int
    body: bytes
    content_type: str


class SflowRtReplay:
    """Use as a context manager; ``url`` is the base URL to give the client."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._requests: list[RecordedRequest] = []
        self._flows: dict[str, dict[str, Any]] = {}
        self._thresholds: dict[str, dict[str, Any]] = {}
        self._events: list[dict[str, Any]] = []
        self._next_event_id = 1
        self._active: dict[str, list[dict[str, Any]]] = {}
        self._faults: dict[str, deque[_Reply]] = {}
        self._version: str = recorded("version")
        self._closing = False
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- life ----------------------------------------------------------------

    def __enter__(self) -> SflowRtReplay:
        replay = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                replay._serve(self)

            def do_PUT(self) -> None:
                replay._serve(self)

            def do_DELETE(self) -> None:
                replay._serve(self)

            def do_POST(self) -> None:
                replay._serve(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    @property
    def url(self) -> str:
        assert self._server is not None, "use SflowRtReplay as a context manager"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # ---- what the test sets --------------------------------------------------

    def queue_event(self, event: Mapping[str, Any] | str, **overrides: Any) -> int:
        """Add an event (a dict, or the first entry of a recorded ``events_*`` file
        by name) and wake the long polls; its ``eventID`` and ``timestamp`` are
        assigned here. Returns the eventID."""
        base = dict(recorded(event)[0] if isinstance(event, str) else event)
        base.update(overrides)
        with self._cond:
            base["eventID"] = self._next_event_id
            base["timestamp"] = int(time.time() * 1000)
            self._next_event_id += 1
            self._events.append(base)
            self._cond.notify_all()
            return int(base["eventID"])

    def set_active_flows(self, name: str, flows: list[dict[str, Any]] | str) -> None:
        """What ``/activeflows/.../{name}/json`` lists (a recorded file by name)."""
        with self._cond:
            self._active[name] = list(recorded(flows) if isinstance(flows, str) else flows)

    def fail(
        self,
        path: str,
        status: int = 500,
        body: str = "Internal Server Error",
        content_type: str = "text/plain",
        times: int = 1,
    ) -> None:
        """The next ``times`` requests to ``path`` answer ``status`` with ``body``."""
        with self._cond:
            queue = self._faults.setdefault(path, deque())
            for _ in range(times):
                queue.append(_Reply(status, body.encode(), content_type))

    def set_version(self, version: str) -> None:
        """What ``/version`` answers from now on."""
        with self._cond:
            self._version = version
            self._cond.notify_all()

    def restart(self, version: str | None = None) -> None:
        """As after an sFlow-RT restart: no flows, thresholds or events; ids from 1."""
        with self._cond:
            self._flows.clear()
            self._thresholds.clear()
            self._events.clear()
            self._next_event_id = 1
            if version is not None:
                self._version = version
            self._cond.notify_all()

    # ---- what the test reads -------------------------------------------------

    @property
    def flows(self) -> dict[str, dict[str, Any]]:
        with self._cond:
            return {k: dict(v) for k, v in self._flows.items()}

    @property
    def thresholds(self) -> dict[str, dict[str, Any]]:
        with self._cond:
            return {k: dict(v) for k, v in self._thresholds.items()}

    def requests(self, method: str | None = None, path: str | None = None) -> list[RecordedRequest]:
        with self._cond:
            return [
                r
                for r in self._requests
                if (method is None or r.method == method) and (path is None or r.path == path)
            ]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Wait (bounded) until ``predicate()`` holds; it is re-checked on every
        request and every change."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.05))
            return True

    # ---- serving -------------------------------------------------------------

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        split = urlsplit(handler.path)
        path = unquote(split.path)
        query = parse_qs(split.query, keep_blank_values=True)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        request = RecordedRequest(handler.command, path, query, body)
        with self._cond:
            self._requests.append(request)
            self._cond.notify_all()
            fault = self._faults.get(path)
            reply = fault.popleft() if fault else None
        if reply is None:
            reply = self._route(request)
        handler.send_response(reply.status)
        if reply.status != 204:
            handler.send_header("Content-Type", reply.content_type)
            handler.send_header("Content-Length", str(len(reply.body)))
        handler.end_headers()
        if reply.status != 204:
            handler.wfile.write(reply.body)

    def _route(self, req: RecordedRequest) -> _Reply:
        parts = req.path.strip("/").split("/")
        if req.method == "GET" and req.path == "/version":
            return _Reply(200, self._version.encode(), "text/plain")
        if req.method == "GET" and req.path == "/agents/json":
            return _json(recorded("agents"))
        if req.method == "GET" and req.path == "/events/json":
            return _json(self._poll_events(req))
        if len(parts) == 3 and parts[2] == "json" and parts[0] in ("flow", "threshold"):
            return self._definition(req, parts[0], parts[1])
        if len(parts) == 4 and parts[0] == "activeflows" and parts[3] == "json":
            return _json(self._active_flows(req, parts[1], parts[2]))
        return _Reply(404, b"Not Found", "text/plain")

    def _definition(self, req: RecordedRequest, kind: str, name: str) -> _Reply:
        store = self._flows if kind == "flow" else self._thresholds
        required = ("keys", "value") if kind == "flow" else ("metric", "value")
        with self._cond:
            if req.method == "PUT":
                if not isinstance(req.body, dict) or any(k not in req.body for k in required):
                    return _Reply(400, b"Bad Request", "text/plain")
                store[name] = dict(req.body)
                self._cond.notify_all()
                return _Reply(204, b"", "text/plain")
            if name not in store:
                return _Reply(404, b"Not Found", "text/plain")
            if req.method == "DELETE":
                del store[name]
                self._cond.notify_all()
                return _Reply(204, b"", "text/plain")
            if req.method == "GET":
                defaults = recorded("flow_defaults" if kind == "flow" else "threshold_defaults")
                return _json({**defaults, **store[name]})
        return _Reply(405, b"Method Not Allowed", "text/plain")

    def _active_flows(self, req: RecordedRequest, agent: str, name: str) -> list[dict[str, Any]]:
        max_flows = int(req.param("maxFlows") or 100)
        min_value = float(req.param("minValue") or "-inf")
        agents = None if agent == "ALL" else set(agent.split(";"))
        with self._cond:
            if name not in self._flows:
                return []
            flows = [
                f
                for f in self._active.get(name, [])
                if f["value"] >= min_value and (agents is None or f.get("agent") in agents)
            ]
        flows.sort(key=lambda f: -float(f["value"]))
        return flows[:max_flows]

    def _poll_events(self, req: RecordedRequest) -> list[dict[str, Any]]:
        after = int(req.param("eventID") or -1)
        max_events = int(req.param("maxEvents") or 100)
        threshold = req.param("thresholdID")
        deadline = time.monotonic() + float(req.param("timeout") or 0)
        with self._cond:
            while True:
                found = [
                    e
                    for e in self._events
                    if e["eventID"] > after and threshold in (None, e.get("thresholdID"))
                ]
                remaining = deadline - time.monotonic()
                if found or remaining <= 0 or self._closing:
                    break
                self._cond.wait(remaining)
        found.sort(key=lambda e: -int(e["eventID"]))
        return [dict(e) for e in found[:max_events]]


def _json(value: Any) -> _Reply:
    return _Reply(200, json.dumps(value).encode(), "application/json")
