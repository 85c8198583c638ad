"""The two plugin sockets: ``qingluan.sock`` (NetworkDriver) and ``qingluanIpam.sock`` (IpamDriver).

dockerd POSTs ``/<Interface>.<Method>`` with ``Accept:
application/vnd.docker.plugins.v1.2+json``, **no Content-Type**, and an empty
body for Activate/GetCapabilities/GetDefaultAddressSpaces. So the app is a
small hand-written ASGI callable that reads the raw body, validates it with
the request's pydantic model and answers JSON in Docker's media type. Every
error is a non-2xx ``{"Err": message}``: the message is what ``docker``
prints (an IPAM 200 with ``Err`` would count as success).

Handlers are synchronous (they wait on the controller and on host commands)
and run in a thread pool, so calls proceed concurrently. Both sockets are
served by two uvicorn servers in one asyncio loop; the socket files are
created mode 0600 (root only), replace stale files, and are removed on stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import BaseModel, ValidationError
from starlette.types import Receive, Scope, Send

from qingluan.driver.handlers import IpamDriver, NetworkDriver
from qingluan.driver.protocol import (
    CONTENT_TYPE,
    ActivateReply,
    AllocateNetworkRequest,
    CreateEndpointRequest,
    CreateNetworkRequest,
    DiscoveryRequest,
    EndpointRequest,
    ExternalConnectivityRequest,
    JoinRequest,
    NetworkRequest,
    ReleaseAddressRequest,
    ReleasePoolRequest,
    RequestAddressRequest,
    RequestPoolRequest,
    validation_message,
)
from qingluan.errors import InvalidRequest, NotFound, QingluanError

log = logging.getLogger(__name__)

NETWORK_DRIVER = "NetworkDriver"
IPAM_DRIVER = "IpamDriver"
MAX_BODY = 1 << 20


@dataclass(frozen=True)
class Route:
    """One plugin call: its request model (None: no body) and the handler."""

    request: type[BaseModel] | None
    call: Callable[..., BaseModel]


def network_driver_routes(driver: NetworkDriver) -> dict[str, Route]:
    d = driver
    p = f"/{NETWORK_DRIVER}."
    return {
        "/Plugin.Activate": Route(None, lambda: ActivateReply(implements=[NETWORK_DRIVER])),
        p + "GetCapabilities": Route(None, d.get_capabilities),
        p + "CreateNetwork": Route(CreateNetworkRequest, d.create_network),
        p + "DeleteNetwork": Route(NetworkRequest, d.delete_network),
        p + "CreateEndpoint": Route(CreateEndpointRequest, d.create_endpoint),
        p + "EndpointOperInfo": Route(EndpointRequest, d.endpoint_oper_info),
        p + "DeleteEndpoint": Route(EndpointRequest, d.delete_endpoint),
        p + "Join": Route(JoinRequest, d.join),
        p + "Leave": Route(EndpointRequest, d.leave),
        p + "ProgramExternalConnectivity": Route(
            ExternalConnectivityRequest, d.program_external_connectivity
        ),
        p + "RevokeExternalConnectivity": Route(EndpointRequest, d.revoke_external_connectivity),
        p + "DiscoverNew": Route(DiscoveryRequest, d.discover_new),
        p + "DiscoverDelete": Route(DiscoveryRequest, d.discover_delete),
        p + "AllocateNetwork": Route(AllocateNetworkRequest, d.allocate_network),
        p + "FreeNetwork": Route(NetworkRequest, d.free_network),
    }


def ipam_driver_routes(ipam: IpamDriver) -> dict[str, Route]:
    p = f"/{IPAM_DRIVER}."
    return {
        "/Plugin.Activate": Route(None, lambda: ActivateReply(implements=[IPAM_DRIVER])),
        p + "GetCapabilities": Route(None, ipam.get_capabilities),
        p + "GetDefaultAddressSpaces": Route(None, ipam.get_default_address_spaces),
        p + "RequestPool": Route(RequestPoolRequest, ipam.request_pool),
        p + "ReleasePool": Route(ReleasePoolRequest, ipam.release_pool),
        p + "RequestAddress": Route(RequestAddressRequest, ipam.request_address),
        p + "ReleaseAddress": Route(ReleaseAddressRequest, ipam.release_address),
    }


def _reply_bytes(model: BaseModel) -> bytes:
    return model.model_dump_json(by_alias=True, exclude_none=True).encode()


def _error_bytes(message: str) -> bytes:
    return json.dumps({"Err": message}).encode()


class PluginApp:
    """ASGI app for one plugin socket."""

    def __init__(
        self,
        name: str,
        routes: Mapping[str, Route],
        executor: Executor | None = None,
    ) -> None:
        self.name = name
        self.routes = dict(routes)
        self._executor = executor

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        status, body = await self._handle(scope["method"], path, receive)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", CONTENT_TYPE.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _read(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY:
                raise InvalidRequest(f"request body larger than {MAX_BODY} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _handle(self, method: str, path: str, receive: Receive) -> tuple[int, bytes]:
        started = time.monotonic()
        call = path.lstrip("/")
        try:
            route = self.routes.get(path)
            if route is None:
                raise NotFound(f"{self.name} plugin: unknown call {call}")
            if method != "POST":
                return 405, _error_bytes(f"{call} takes POST, not {method}")
            raw = await self._read(receive)
            args: tuple[Any, ...] = ()
            if route.request is not None:
                args = (self._parse(call, route.request, raw),)
            loop = asyncio.get_running_loop()
            reply = await loop.run_in_executor(self._executor, route.call, *args)
        except QingluanError as exc:
            status = exc.status if 400 <= exc.status <= 599 else 500
            log.warning("%s -> %d: %s", call, status, exc.message)
            return status, _error_bytes(exc.message)
        except Exception as exc:
            log.exception("%s failed", call)
            return 500, _error_bytes(f"qingluan driver internal error in {call}: {exc!r}")
        log.info("%s ok (%.3f s)", call, time.monotonic() - started)
        return 200, _reply_bytes(reply)

    @staticmethod
    def _parse(call: str, model: type[BaseModel], raw: bytes) -> BaseModel:
        try:
            return model.model_validate_json(raw.strip() or b"{}")
        except ValidationError as exc:
            if any(e["type"] == "json_invalid" for e in exc.errors()):
                raise InvalidRequest(f"{call}: the request body is not JSON") from None
            raise InvalidRequest(f"{call}: {validation_message(exc)}") from None


# ---- sockets ----------------------------------------------------------------


def _is_live_socket(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def bind_plugin_socket(path: Path) -> socket.socket:
    """A listening unix socket at ``path``, mode 0600, replacing a stale file.

    A socket that still answers belongs to a running driver: refuse rather
    than steal it. The mode is set before ``listen``, so nobody can connect
    while it is wider.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise QingluanError(f"{path} exists and is not a socket: remove it")
        if _is_live_socket(path):
            raise QingluanError(f"{path} is served by another running process (a second driver?)")
        log.info("removing stale socket %s", path)
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o600)
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    return sock


def _file_id(path: Path) -> tuple[int, int]:
    st = path.lstat()
    return st.st_dev, st.st_ino


def _remove_socket_file(path: Path, bound_id: tuple[int, int]) -> None:
    """Remove ``path`` only if it is still the file this process bound."""
    with contextlib.suppress(OSError):
        if _file_id(path) == bound_id:
            path.unlink()


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals to its owner (two run in one loop)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_plugins(
    apps: Mapping[Path, PluginApp],
    stop: asyncio.Event,
    *,
    ready: Callable[[], None] | None = None,
) -> None:
    """Serve each app on its socket path until ``stop`` is set; remove the files after."""
    bound: list[tuple[Path, socket.socket, tuple[int, int]]] = []
    try:
        for path in apps:
            sock = bind_plugin_socket(path)
            bound.append((path, sock, _file_id(path)))
    except BaseException:
        for path, sock, file_id in bound:
            sock.close()
            _remove_socket_file(path, file_id)
        raise
    servers: list[_Server] = []
    try:
        for path, _, _ in bound:
            config = uvicorn.Config(
                apps[path],
                lifespan="off",
                log_config=None,
                access_log=False,
                http="auto",  # httptools when installed (requirements.txt), else h11
                timeout_graceful_shutdown=5,
                timeout_keep_alive=30,
            )
            servers.append(_Server(config))
        tasks = [
            asyncio.create_task(server.serve(sockets=[sock]))
            for server, (_, sock, _) in zip(servers, bound, strict=True)
        ]
        while not all(s.started for s in servers):
            if any(t.done() for t in tasks):
                break
            await asyncio.sleep(0.01)
        for task in tasks:
            if task.done():
                task.result()  # a server that died at start: raise its error
        log.info("serving %s", ", ".join(str(p) for p in apps))
        if ready is not None:
            ready()
        await stop.wait()
        for server in servers:
            server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for server in servers:
            server.should_exit = True
        for path, sock, file_id in bound:
            _remove_socket_file(path, file_id)
            sock.close()
