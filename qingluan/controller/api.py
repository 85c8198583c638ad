"""The controller's REST API (``/v1``), as documented in docs/rest-api.md.

Routes are thin: they validate (pydantic bodies from ``qingluan.api_schema``),
call one ``Services`` method and pick the status code. Route functions are
plain ``def``: they block on the bridge (a converge), and FastAPI runs them in
its thread pool. Every error leaves as ``{"error": "...", "code": "..."}``
with a 4xx/5xx status; nothing answers 200 with an error in it.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qingluan import __version__
from qingluan.api_schema import (
    API_PREFIX,
    AclCreate,
    AddressReply,
    AddressRequest,
    EndpointCreate,
    EndpointStatus,
    EndpointUpdate,
    ErrorBody,
    FlowDump,
    HostRegistration,
    HostStatus,
    Name,
    NetworkCreate,
    NetworkUpdate,
    PoolReply,
    PoolRequest,
    RawFlowCreate,
    ReconcileResult,
    Status,
    SteeringCreate,
)
from qingluan.controller.api_ids import ids_router
from qingluan.controller.auth import bearer_token, token_matches
from qingluan.controller.ids import IdsService
from qingluan.controller.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from qingluan.controller.metrics import Metrics
from qingluan.controller.services import Services
from qingluan.errors import QingluanError, Unauthorized
from qingluan.model import AclRule, Endpoint, Network, Pool, RawFlow, SteeringRule

log = logging.getLogger(__name__)

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})

_CODE_BY_STATUS = {
    400: "invalid",
    401: "unauthorized",
    404: "not_found",
    405: "invalid",
    409: "conflict",
    413: "invalid",
    415: "invalid",
    422: "invalid",
    503: "unavailable",
    504: "timeout",
}

_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
DockerId = Annotated[
    str,
    Path(min_length=1, max_length=128, pattern=_ID_PATTERN, description="Docker id"),
]
PoolId = Annotated[
    str,
    Path(min_length=1, max_length=128, pattern=_ID_PATTERN, description="e.g. nat_10.128.0.0_24"),
]
HostName = Annotated[Name, Path(description="the host's name (as the driver registered it)")]

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in (
        (400, "invalid request"),
        (401, "missing or wrong token"),
        (404, "no such object"),
        (409, "conflict or exhausted"),
        (422, "invalid body or parameter (names the field)"),
        (503, "the host's bridge is not connected"),
        (504, "the bridge or its port did not answer in time"),
    )
}


# ---- errors ------------------------------------------------------------------


def error_response(
    status: int, message: str, code: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = ErrorBody(error=message, code=code).model_dump()
    return JSONResponse(status_code=status, content=body, headers=headers)


_FIELD_PREFIX = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*): (.+)$", re.DOTALL)


def describe_validation_error(error: dict[str, Any]) -> str:
    """One pydantic error as ``body.vni: VLAN id 4095 is outside 1-4094``.

    A model validator names its field at the start of its message
    (``vni: ...``); that name joins the location.
    """
    loc = [str(part) for part in error.get("loc", ())]
    kind = str(error.get("type", ""))
    msg = str(error.get("msg", "invalid value"))
    if kind == "json_invalid":
        detail = (error.get("ctx") or {}).get("error")
        return f"body: invalid JSON ({detail})" if detail else "body: invalid JSON"
    for noise in ("Value error, ", "Assertion failed, "):
        if msg.startswith(noise):
            msg = msg[len(noise) :]
    if kind == "value_error":
        match = _FIELD_PREFIX.match(msg)
        if match is not None:
            loc.append(match.group(1))
            msg = match.group(2)
    return f"{'.'.join(loc)}: {msg}" if loc else msg


def _validation_message(errors: Sequence[Any]) -> str:
    parts = [describe_validation_error(dict(e)) for e in errors]
    return "; ".join(parts) or "invalid request"


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(QingluanError)
    async def _qingluan_error(request: Request, exc: QingluanError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, _validation_message(exc.errors()), "invalid")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code
        if status == 404:
            message = f"no such path: {request.method} {request.url.path}"
        elif status == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        code = _CODE_BY_STATUS.get(status, "internal" if status >= 500 else "invalid")
        return error_response(status, message, code, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}", "internal")


# ---- auth --------------------------------------------------------------------


def _unauthorized(presented: str | None) -> Unauthorized:
    if presented is None:
        return Unauthorized(
            "missing API token: send 'Authorization: Bearer <token>' "
            "with the token from <state-dir>/token"
        )
    return Unauthorized("wrong API token")


class TokenGuard:
    """Refuses every state-changing request without the right bearer token.

    An ASGI middleware, so it answers before the body is even read: an
    unauthenticated request can change nothing and learn nothing from
    validation errors.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in MUTATING:
            presented = bearer_token(Headers(scope=scope).get("authorization"))
            if not token_matches(self._token, presented):
                err = _unauthorized(presented)
                response = error_response(
                    err.status, err.message, err.code, {"WWW-Authenticate": "Bearer"}
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


_BEARER = HTTPBearer(auto_error=False, description="the token in <state-dir>/token")


class RequireToken:
    """The route-level check (a FastAPI dependency) that documents the scheme in OpenAPI.

    ``TokenGuard`` already refused a bad token before the body was read; this
    keeps the routes safe should they ever be mounted without it.
    """

    def __init__(self, token: str) -> None:
        self._token = token

    async def __call__(  # async: a plain comparison, no reason to hop to a worker thread
        self, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)]
    ) -> None:
        presented = credentials.credentials if credentials is not None else None
        if not token_matches(self._token, presented):
            raise _unauthorized(presented)


# ---- the app -----------------------------------------------------------------


def create_app(
    services: Services,
    token: str,
    *,
    ids: IdsService | None = None,
    metrics: Metrics | None = None,
    extra: Sequence[RouterFactory] = (),
) -> FastAPI:
    """The REST API over ``services``; state-changing calls need ``token``. With
    ``ids``, the IDS routes; with ``metrics``, ``GET /metrics`` and REST latencies;
    ``extra`` adds more routers (e.g. monitoring), each built with the auth dependency
    and the error responses."""
    if not token:
        raise ValueError("the API token must not be empty")
    app = FastAPI(
        title="qingluan controller",
        version=__version__,
        description="Hosts, IPAM, networks and endpoints of a qingluan cluster "
        "(see docs/rest-api.md).",
    )
    _install_error_handlers(app)
    app.add_middleware(TokenGuard, token=token)

    auth = [Depends(RequireToken(token))]
    router = APIRouter(prefix=API_PREFIX, responses=_ERRORS)

    def created(response: Response, is_new: bool) -> None:
        response.status_code = 201 if is_new else 200

    # ---- status ----

    @router.get("/status", response_model=Status, tags=["status"])
    def get_status() -> Status:
        """Everything the controller holds: hosts (with `connected`), networks,
        endpoints and pools."""
        return services.status()

    # ---- hosts ----

    @router.put("/hosts/{name}", response_model=HostStatus, dependencies=auth, tags=["hosts"])
    def put_host(name: HostName, body: HostRegistration) -> HostStatus:
        """Register a host's bridge or update it (idempotent), then converge the bridge.

        A bridge that has not connected yet is converged when it connects.
        """
        return services.register_host(name, body)

    @router.get("/hosts", response_model=list[HostStatus], tags=["hosts"])
    def list_hosts() -> list[HostStatus]:
        """Every registered host, with whether its bridge is connected and its ports."""
        return services.list_hosts()

    @router.get("/hosts/{name}", response_model=HostStatus, tags=["hosts"])
    def get_host(name: HostName) -> HostStatus:
        """One registered host."""
        return services.get_host(name)

    @router.delete("/hosts/{name}", status_code=204, dependencies=auth, tags=["hosts"])
    def delete_host(name: HostName, force: bool = False) -> Response:
        """Forget a host (unknown: 204). 409 while networks remain on it, unless
        `force=true`: then its networks and endpoints go too (a host gone for good), and
        it leaves every other host's tunnels and flood groups."""
        services.delete_host(name, force=force)
        return Response(status_code=204)

    @router.get("/hosts/{name}/flows", response_model=FlowDump, tags=["hosts"])
    def get_flows(name: HostName) -> FlowDump:
        """The flows and groups the host's switch holds now, as ovs-ofctl prints them."""
        return services.host_flows(name)

    @router.post(
        "/hosts/{name}/reconcile",
        response_model=ReconcileResult,
        dependencies=auth,
        tags=["hosts"],
    )
    def reconcile(name: HostName) -> ReconcileResult:
        """Diff the host's bridge against the desired state now and send the difference."""
        return services.reconcile_host(name)

    # ---- IPAM ----

    @router.post(
        "/ipam/pools",
        response_model=PoolReply,
        status_code=201,
        dependencies=auth,
        tags=["ipam"],
        responses={200: {"model": PoolReply, "description": "the same pool again"}},
    )
    def request_pool(body: PoolRequest, response: Response) -> PoolReply:
        """RequestPool: a subnet carved from the named pool's range, or the `--subnet`.

        201 for a new pool; 200 with the same `pool_id` for the exact subnet of
        an existing pool of the same name (Docker's replay, identical requests).
        409 when the subnet overlaps another qingluan subnet.
        """
        reply, is_new = services.request_pool(body)
        created(response, is_new)
        return reply

    @router.get("/ipam/pools", response_model=list[Pool], tags=["ipam"])
    def list_pools() -> list[Pool]:
        """Every pool with its gateway and the network bound to it."""
        return services.list_pools()

    @router.delete("/ipam/pools/{pool_id}", status_code=204, dependencies=auth, tags=["ipam"])
    def release_pool(pool_id: PoolId) -> Response:
        """ReleasePool (unknown: 204). A bound pool goes with its last network."""
        services.release_pool(pool_id)
        return Response(status_code=204)

    @router.post(
        "/ipam/pools/{pool_id}/addresses",
        response_model=AddressReply,
        status_code=201,
        dependencies=auth,
        tags=["ipam"],
        responses={200: {"model": AddressReply, "description": "the same allocation again"}},
    )
    def request_address(pool_id: PoolId, body: AddressRequest, response: Response) -> AddressReply:
        """RequestAddress: the gateway, a given address, or the lowest free one.

        201 for a new allocation; 200 for the same one again (the gateway, or an
        address requested with the MAC that holds it: Docker's replay). 409 when
        the address is in use or the pool is exhausted.
        """
        reply, is_new = services.request_address(pool_id, body)
        created(response, is_new)
        return reply

    @router.delete(
        "/ipam/pools/{pool_id}/addresses/{address}",
        status_code=204,
        dependencies=auth,
        tags=["ipam"],
    )
    def release_address(pool_id: PoolId, address: str) -> Response:
        """ReleaseAddress (unknown: 204). The gateway and aux addresses of a bound
        pool are kept."""
        services.release_address(pool_id, address)
        return Response(status_code=204)

    # ---- networks ----

    @router.put(
        "/networks/{network_id}",
        response_model=Network,
        status_code=201,
        dependencies=auth,
        tags=["networks"],
        responses={200: {"model": Network, "description": "identical repeat"}},
    )
    def put_network(network_id: DockerId, body: NetworkCreate, response: Response) -> Network:
        """CreateNetwork: bind the pool, allocate the network key, converge the host.

        201 created, 200 for an identical repeat. 409 for a subnet that overlaps
        another network, 400 for a pool without gateway; 503/504 when the host's
        bridge cannot be converged (the network is not created then).
        """
        network, is_new = services.create_network(network_id, body)
        created(response, is_new)
        return network

    @router.get("/networks", response_model=list[Network], tags=["networks"])
    def list_networks(
        host: Annotated[str | None, Query(description="only this host's networks")] = None,
    ) -> list[Network]:
        """Every network, or one host's."""
        return services.list_networks(host)

    @router.get("/networks/{network_id}", response_model=Network, tags=["networks"])
    def get_network(network_id: DockerId) -> Network:
        """One network."""
        return services.get_network(network_id)

    @router.patch(
        "/networks/{network_id}", response_model=Network, dependencies=auth, tags=["networks"]
    )
    def patch_network(network_id: DockerId, body: NetworkUpdate) -> Network:
        """Record the network's Docker name (learned after CreateNetwork)."""
        return services.update_network(network_id, body)

    @router.delete("/networks/{network_id}", status_code=204, dependencies=auth, tags=["networks"])
    def delete_network(network_id: DockerId) -> Response:
        """DeleteNetwork (unknown: 204; 409 while endpoints remain); unbinds the pool."""
        services.delete_network(network_id)
        return Response(status_code=204)

    # ---- endpoints ----

    @router.put(
        "/endpoints/{endpoint_id}",
        response_model=EndpointStatus,
        status_code=201,
        dependencies=auth,
        tags=["endpoints"],
        responses={200: {"model": EndpointStatus, "description": "identical repeat"}},
    )
    def put_endpoint(
        endpoint_id: DockerId, body: EndpointCreate, response: Response
    ) -> EndpointStatus:
        """CreateEndpoint: returns once the endpoint's flows are confirmed on its bridge.

        201 created, 200 for an identical repeat. 503 if the bridge is not
        connected, 504 if the port does not appear in time: the endpoint is then
        not created.
        """
        status, is_new = services.create_endpoint(endpoint_id, body)
        created(response, is_new)
        return status

    @router.get("/endpoints", response_model=list[Endpoint], tags=["endpoints"])
    def list_endpoints(
        host: Annotated[str | None, Query(description="only this host's endpoints")] = None,
        network_id: Annotated[str | None, Query(description="only this network's")] = None,
    ) -> list[Endpoint]:
        """Every endpoint, or those of one host and/or network."""
        return services.list_endpoints(host, network_id)

    @router.get("/endpoints/{endpoint_id}", response_model=Endpoint, tags=["endpoints"])
    def get_endpoint(endpoint_id: DockerId) -> Endpoint:
        """One endpoint."""
        return services.get_endpoint(endpoint_id)

    @router.patch(
        "/endpoints/{endpoint_id}",
        response_model=Endpoint,
        dependencies=auth,
        tags=["endpoints"],
    )
    def patch_endpoint(endpoint_id: DockerId, body: EndpointUpdate) -> Endpoint:
        """Record the container name and the published ports."""
        return services.update_endpoint(endpoint_id, body)

    @router.delete(
        "/endpoints/{endpoint_id}",
        status_code=200,
        response_model=Endpoint,
        dependencies=auth,
        tags=["endpoints"],
        responses={204: {"description": "unknown endpoint: nothing to delete"}},
    )
    def delete_endpoint(endpoint_id: DockerId) -> Endpoint | Response:
        """DeleteEndpoint: returns after its flows are gone, with the endpoint as it was
        (the driver learns its published ports from it); unknown: 204."""
        gone = services.delete_endpoint(endpoint_id)
        return Response(status_code=204) if gone is None else gone

    # ---- ACLs ----

    @router.post("/acls", status_code=201, response_model=AclRule, dependencies=auth, tags=["acls"])
    def create_acl(body: AclCreate) -> AclRule:
        """Add one ordered rule; returns once every connected bridge holds it."""
        return services.create_acl(body)

    @router.get("/acls", response_model=list[AclRule], tags=["acls"])
    def list_acls() -> list[AclRule]:
        """Every rule, highest priority first."""
        return services.list_acls()

    @router.get("/acls/{rule_id}", response_model=AclRule, tags=["acls"])
    def get_acl(rule_id: Name) -> AclRule:
        return services.get_acl(rule_id)

    @router.delete("/acls/{rule_id}", status_code=204, dependencies=auth, tags=["acls"])
    def delete_acl(rule_id: Name) -> Response:
        """Remove a rule (unknown: 204); returns once every connected bridge lost it."""
        services.delete_acl(rule_id)
        return Response(status_code=204)

    # ---- steering ----

    @router.post(
        "/steering",
        status_code=201,
        response_model=SteeringRule,
        dependencies=auth,
        tags=["steering"],
    )
    def create_steering(body: SteeringCreate) -> SteeringRule:
        """Add a steering rule (drop, dscp, mirror); returns once every bridge holds it."""
        return services.create_steering(body)

    @router.get("/steering", response_model=list[SteeringRule], tags=["steering"])
    def list_steering() -> list[SteeringRule]:
        return services.list_steering()

    @router.delete("/steering/{rule_id}", status_code=204, dependencies=auth, tags=["steering"])
    def delete_steering(rule_id: Name) -> Response:
        services.delete_steering(rule_id)
        return Response(status_code=204)

    # ---- raw flows ----

    @router.post(
        "/rawflows", status_code=201, response_model=RawFlow, dependencies=auth, tags=["rawflows"]
    )
    def create_raw_flow(body: RawFlowCreate) -> RawFlow:
        """An expert's flow in table EXPERT (drop, or continue maybe marking DSCP)."""
        return services.create_raw_flow(body)

    @router.get("/rawflows", response_model=list[RawFlow], tags=["rawflows"])
    def list_raw_flows() -> list[RawFlow]:
        return services.list_raw_flows()

    @router.delete("/rawflows/{flow_id}", status_code=204, dependencies=auth, tags=["rawflows"])
    def delete_raw_flow(flow_id: Name) -> Response:
        services.delete_raw_flow(flow_id)
        return Response(status_code=204)

    app.include_router(router)
    if ids is not None:
        app.include_router(ids_router(ids, auth, _ERRORS))
    for factory in extra:
        app.include_router(factory(auth, _ERRORS))
    if metrics is not None:
        _install_metrics(app, metrics)
    return app


RouterFactory = Callable[[Sequence[Any], dict[int | str, Any]], APIRouter]


class RestTimer:
    """Observes every REST call's latency by route template, method and status.

    A plain ASGI middleware (Starlette's ``@app.middleware("http")`` costs about
    a millisecond per call for its task group and streams). The route is read
    from the scope after the call: the router records the one it matched there.
    An exception that escapes is counted as the 500 the outer handler answers.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            self._metrics.rest(scope["method"], str(path), status, time.perf_counter() - started)


def _install_metrics(app: FastAPI, metrics: Metrics) -> None:
    app.add_middleware(RestTimer, metrics=metrics)

    @app.get("/metrics", include_in_schema=True, tags=["metrics"])
    def get_metrics() -> Response:
        """Prometheus metrics (text format); see docs/monitoring.md."""
        return Response(metrics.render(), media_type=METRICS_CONTENT_TYPE)
