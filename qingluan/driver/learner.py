"""Learn Docker's names of networks and containers, in the background.

Docker never sends a remote driver a network's name or a container's name,
and a plugin must not ask Docker while it answers one of Docker's calls:
dockerd holds its locks while it waits for the plugin, so a plugin that calls
back synchronously deadlocks it (calico-libnetwork #49, moby #50586).

So the handlers only *notify* the learner ("network N changed", after
CreateNetwork and Join; the driver's start-up adds every network of the host
once its sweep is done) and return at once. The learner's own thread then:

1. waits ``debounce`` seconds (Docker finishes its own bookkeeping after our
   reply; notifications that arrive meanwhile coalesce into one pass, and a
   steady stream still gets a pass after ``max_delay``);
2. asks the local Docker API ``GET /v1.41/networks/{id}`` for the network's
   ``Name`` and its ``Containers`` map (``{container id: {"Name",
   "EndpointID", ...}}``);
3. PATCHes the controller with what differs from what it holds: the
   network's name, and ``container_name`` of each endpoint of that network
   that Docker lists.

A pass that cannot finish (Docker unreachable, e.g. dockerd not started yet;
the network or an endpoint not in Docker's answer yet; the controller failing)
is tried again with exponential backoff, at most ``attempts`` times in all,
then given up (logged). Nothing here raises into a caller: ``notify`` only
enqueues, and every failure is logged.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from qingluan.api_schema import EndpointUpdate, NetworkUpdate
from qingluan.errors import InvalidRequest, QingluanError, Unavailable
from qingluan.model import Endpoint, Network

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

DEFAULT_DOCKER_HOST = "unix:///run/docker.sock"
DOCKER_API_VERSION = "v1.41"  # Docker 20.10; newer daemons still serve it
UNIX_SCHEME = "unix://"


def default_docker_host(env: Mapping[str, str] | None = None) -> str:
    """``$DOCKER_HOST`` if it names a unix socket, else ``unix:///run/docker.sock``."""
    value = (os.environ if env is None else env).get("DOCKER_HOST", "").strip()
    if value.startswith(UNIX_SCHEME) and len(value) > len(UNIX_SCHEME):
        return value
    return DEFAULT_DOCKER_HOST


def docker_socket_path(docker_host: str) -> str:
    """The socket path of a ``unix://PATH`` Docker host; anything else is refused."""
    if not docker_host.startswith(UNIX_SCHEME) or len(docker_host) == len(UNIX_SCHEME):
        raise InvalidRequest(
            f"--docker-host {docker_host!r}: only a local socket like "
            f"{DEFAULT_DOCKER_HOST} is supported"
        )
    return docker_host[len(UNIX_SCHEME) :]


def _short(docker_id: str) -> str:
    return docker_id[:12]


# ---- the local Docker API ------------------------------------------------------


class DockerNetworkInfo(NamedTuple):
    name: str
    containers: dict[str, str]  # endpoint id -> container name
    container_ids: dict[str, str] = {}  # endpoint id -> container id (for its labels)


class DockerNetworks(Protocol):
    """What the learner asks Docker."""

    def inspect_network(self, network_id: str) -> DockerNetworkInfo | None:
        """Name and attached containers; ``None`` if Docker does not know the network.
        Raises ``Unavailable`` if Docker cannot be asked."""
        ...

    def container_labels(self, container_id: str) -> dict[str, str] | None:
        """The container's labels; ``None`` if Docker does not know it.
        Raises ``Unavailable`` if Docker cannot be asked."""
        ...


class _DockerContainer(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(default="", alias="Name")
    endpoint_id: str = Field(default="", alias="EndpointID")


class _DockerNetwork(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(alias="Name")
    containers: dict[str, _DockerContainer] | None = Field(default=None, alias="Containers")


class _DockerConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")

    labels: dict[str, str] | None = Field(default=None, alias="Labels")


class _DockerContainerInfo(BaseModel):
    model_config = ConfigDict(extra="ignore")

    config: _DockerConfig = Field(default_factory=_DockerConfig, alias="Config")


class DockerApi:
    """The few calls of the Docker Engine API the learner needs, over its unix socket."""

    def __init__(
        self,
        docker_host: str = DEFAULT_DOCKER_HOST,
        *,
        timeout: float = 5.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.docker_host = docker_host
        path = docker_socket_path(docker_host)
        self._http = httpx.Client(
            base_url="http://docker",
            timeout=httpx.Timeout(timeout, connect=min(timeout, 2.0)),
            transport=transport or httpx.HTTPTransport(uds=path),
        )

    def close(self) -> None:
        self._http.close()

    def _get(self, url: str, model: type[M]) -> M | None:
        """GET ``url`` as ``model``; None for a 404, ``Unavailable`` if Docker cannot say."""
        try:
            reply = self._http.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise Unavailable(
                f"the Docker API at {self.docker_host} is not reachable ({exc})"
            ) from None
        if reply.status_code == 404:
            return None
        if reply.status_code >= 400:
            text = reply.text.strip()[:200]
            raise Unavailable(f"the Docker API answered GET {url} with {reply.status_code}: {text}")
        try:
            return model.model_validate_json(reply.content)
        except ValidationError as exc:
            raise QingluanError(
                f"unexpected answer of the Docker API to GET {url}: {exc}"
            ) from None

    def inspect_network(self, network_id: str) -> DockerNetworkInfo | None:
        url = f"/{DOCKER_API_VERSION}/networks/{quote(network_id, safe='')}"
        body = self._get(url, _DockerNetwork)
        if body is None:
            return None
        members = {cid: c for cid, c in (body.containers or {}).items() if c.endpoint_id and c.name}
        containers = {c.endpoint_id: c.name.lstrip("/") for c in members.values()}
        ids = {c.endpoint_id: cid for cid, c in members.items()}
        return DockerNetworkInfo(body.name, containers, ids)

    def container_labels(self, container_id: str) -> dict[str, str] | None:
        url = f"/{DOCKER_API_VERSION}/containers/{quote(container_id, safe='')}/json"
        body = self._get(url, _DockerContainerInfo)
        return None if body is None else dict(body.config.labels or {})


# ---- the learner ---------------------------------------------------------------


class NameSink(Protocol):
    """The part of the controller's REST API the learner uses."""

    def list_networks(self, host: str) -> list[Network]: ...

    def list_endpoints(self, host: str) -> list[Endpoint]: ...

    def update_network(self, network_id: str, body: NetworkUpdate) -> Network: ...

    def update_endpoint(self, endpoint_id: str, body: EndpointUpdate) -> Endpoint: ...


@dataclass(frozen=True)
class LearnerTiming:
    debounce: float = 0.5  # quiet time after the last notification before a pass
    max_delay: float = 2.0  # a pass at the latest this long after the first notification
    first_retry: float = 0.5  # pause before the second attempt; doubles each time
    retry_max: float = 30.0  # longest pause between attempts
    attempts: int = 10  # attempts per notification (about 2.5 minutes with the defaults)


@dataclass
class _Pending:
    due: float
    deadline: float  # latest ``due`` while debouncing (attempt 0)
    attempt: int = 0


class NameLearner:
    """One background thread that fills in network and container names (module docstring)."""

    def __init__(
        self,
        *,
        host: str,
        controller: NameSink,
        docker: DockerNetworks,
        timing: LearnerTiming | None = None,
    ) -> None:
        self.host = host
        self._controller = controller
        self._docker = docker
        self.timing = timing or LearnerTiming()
        self._cond = threading.Condition()
        self._pending: dict[str, _Pending] = {}
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.passes = 0  # finished passes over batches (for tests and debugging)

    # ---- called from anywhere (handlers, start-up); never blocks ----

    def notify(self, network_id: str) -> None:
        """Network ``network_id`` changed: learn its names soon. Only enqueues."""
        self.notify_many((network_id,))

    def notify_many(self, network_ids: Iterable[str]) -> None:
        now = time.monotonic()
        t = self.timing
        with self._cond:
            for network_id in network_ids:
                pending = self._pending.get(network_id)
                if pending is None or pending.attempt > 0:
                    # new, or waiting to retry: fresh news resets the attempts
                    self._pending[network_id] = _Pending(
                        due=now + t.debounce, deadline=now + t.max_delay
                    )
                else:
                    pending.due = min(now + t.debounce, pending.deadline)
            self._cond.notify_all()

    def pending(self) -> list[str]:
        with self._cond:
            return sorted(self._pending)

    # ---- life cycle ----

    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="ql-names", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            thread, self._thread = self._thread, None
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # ---- the worker ----

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._pass(batch)
            except Exception:  # a bug here must not end the thread
                log.exception("name learning pass failed")
            self.passes += 1

    def _next_batch(self) -> dict[str, _Pending] | None:
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                due = [k for k, p in self._pending.items() if p.due <= now]
                if due:
                    return {k: self._pending.pop(k) for k in due}
                wait = min((p.due for p in self._pending.values()), default=now + 3600) - now
                self._cond.wait(max(wait, 0.001))
            return None

    def _pass(self, batch: dict[str, _Pending]) -> None:
        try:
            networks = {n.id: n for n in self._controller.list_networks(self.host)}
            endpoints = self._controller.list_endpoints(self.host)
        except Exception as exc:
            reason = _reason(exc)
            for network_id, pending in batch.items():
                self._retry(network_id, pending, f"controller: {reason}")
            return
        todo = list(batch.items())
        while todo:
            network_id, pending = todo.pop(0)
            network = networks.get(network_id)
            if network is None:
                continue  # deleted meanwhile, or not a network of this host
            mine = [e for e in endpoints if e.network_id == network_id]
            try:
                unfinished = self._learn(network, mine)
            except Unavailable as exc:
                # Docker (or the controller) is away: don't ask again for each network
                for nid, p in [(network_id, pending), *todo]:
                    self._retry(nid, p, _reason(exc))
                return
            except Exception as exc:
                unfinished = _reason(exc)
            if unfinished is not None:
                self._retry(network_id, pending, unfinished)

    def _learn(self, network: Network, endpoints: Sequence[Endpoint]) -> str | None:
        """One network: PATCH what Docker knows; why it is not finished, or None."""
        info = self._docker.inspect_network(network.id)
        if info is None:
            return "Docker does not list the network (yet)"
        if info.name != network.name:
            try:
                body = NetworkUpdate(name=info.name)
            except ValidationError:
                log.warning(
                    "network %s: Docker's name %r cannot be recorded (letters, digits, "
                    "'_', '.', '-'; at most 63)",
                    _short(network.id),
                    info.name,
                )
            else:
                self._controller.update_network(network.id, body)
                log.info("network %s is %r", _short(network.id), info.name)
        missing: list[str] = []
        for ep in endpoints:
            container = info.containers.get(ep.id)
            if container is None:
                missing.append(_short(ep.id))
                continue
            labels = self._labels(info.container_ids.get(ep.id))
            renamed = container != ep.container_name
            relabelled = labels is not None and labels != ep.labels
            if not renamed and not relabelled:
                continue
            try:
                update = EndpointUpdate(
                    container_name=container if renamed else None,
                    labels=labels if relabelled else None,
                )
            except ValidationError:
                log.warning("endpoint %s: container name %r is too long", _short(ep.id), container)
                continue
            self._controller.update_endpoint(ep.id, update)
            log.info("endpoint %s is container %r", _short(ep.id), container)
        if missing:
            return f"Docker lists no container for endpoints {', '.join(missing)} (yet)"
        return None

    def _labels(self, container_id: str | None) -> dict[str, str] | None:
        """The container's labels, or None when they cannot be had now (kept as they are)."""
        if not container_id:
            return None
        try:
            return self._docker.container_labels(container_id)
        except QingluanError as exc:
            log.info("labels of container %s not learnt now: %s", container_id[:12], exc)
            return None

    def _retry(self, network_id: str, pending: _Pending, reason: str) -> None:
        t = self.timing
        attempt = pending.attempt + 1
        if attempt >= t.attempts:
            log.info(
                "network %s: names not learned after %d attempts: %s",
                _short(network_id),
                attempt,
                reason,
            )
            return
        pause = min(t.first_retry * 2 ** (attempt - 1), t.retry_max)
        log.debug("network %s: %s; again in %.1f s", _short(network_id), reason, pause)
        with self._cond:
            if network_id in self._pending:
                return  # notified again during the pass: that one is fresher
            due = time.monotonic() + pause
            self._pending[network_id] = _Pending(due=due, deadline=due, attempt=attempt)
            self._cond.notify_all()


def _reason(exc: BaseException) -> str:
    return exc.message if isinstance(exc, QingluanError) else repr(exc)
