"""The driver's client of the controller's REST API (docs/rest-api.md).

Error replies ``{"error": ..., "code": ...}`` become the ``qingluan.errors``
type of that code with the controller's message unchanged, so a message like
``body.vni: VLAN id 4095 is outside 1-4094`` reaches ``docker`` as it was
written. Transport failures become ``Unavailable``/``Timeout`` naming the
controller's URL.

The bearer token is read from the token file lazily and read again after a
401, so a driver started before the controller's first start (which writes
the token) recovers by itself.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from qingluan.api_schema import (
    API_PREFIX,
    AddressReply,
    AddressRequest,
    AlertReport,
    EndpointCreate,
    EndpointStatus,
    EndpointUpdate,
    ErrorBody,
    HostRegistration,
    HostStatus,
    NetworkCreate,
    NetworkUpdate,
    PoolReply,
    PoolRequest,
)
from qingluan.driver.interfaces import NetworkCreated
from qingluan.errors import (
    BY_CODE,
    Conflict,
    InvalidRequest,
    NotFound,
    QingluanError,
    Timeout,
    Unauthorized,
    Unavailable,
)
from qingluan.model import AlertOutcome, Endpoint, MonitoringSettings, Network, Pool

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

DEFAULT_URL = "http://127.0.0.1:6680"
DEFAULT_TIMEOUT = 10.0
# PUT /v1/endpoints waits until the flows are confirmed on the bridge.
ENDPOINT_TIMEOUT = 25.0

_BY_STATUS: dict[int, type[QingluanError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    422: InvalidRequest,
    503: Unavailable,
    504: Timeout,
}


def _seg(value: str) -> str:
    return quote(value, safe="")


def error_from_reply(status: int, content: bytes) -> QingluanError:
    """The ``qingluan.errors`` exception for one error reply of the controller."""
    try:
        body = ErrorBody.model_validate_json(content)
    except ValidationError:
        text = content.decode(errors="replace").strip()[:300] or "(empty body)"
        cls = _BY_STATUS.get(status, QingluanError)
        return cls(f"the qingluan controller answered {status}: {text}")
    cls = BY_CODE.get(body.code) or _BY_STATUS.get(status, QingluanError)
    return cls(body.error)


class HttpControllerClient:
    """``ControllerClient`` over HTTP (thread-safe: one pooled ``httpx.Client``)."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        token_file: Path | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        endpoint_timeout: float = ENDPOINT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token_file = token_file
        self._token = token
        self._token_lock = threading.Lock()
        self._timeout = timeout
        self._endpoint_timeout = endpoint_timeout
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 3.0)),
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    # ---- transport ----

    def _read_token(self) -> str | None:
        if self._token_file is None:
            return self._token
        try:
            text = self._token_file.read_text().strip()
        except OSError:
            return None
        return text or None

    def _current_token(self, *, reload: bool = False) -> str | None:
        with self._token_lock:
            if reload or (self._token is None and self._token_file is not None):
                fresh = self._read_token()
                if fresh is not None:
                    self._token = fresh
            return self._token

    def _send(
        self,
        method: str,
        path: str,
        *,
        body: BaseModel | None = None,
        params: dict[str, str] | None = None,
        timeout: float | None = None,
        missing_ok: bool = False,
    ) -> httpx.Response | None:
        content = body.model_dump_json(exclude_none=True).encode() if body is not None else None
        response = self._once(method, path, content, params, timeout)
        if response.status_code == 401 and method != "GET":
            used = self._token
            if self._current_token(reload=True) != used:
                response = self._once(method, path, content, params, timeout)
        if response.status_code == 404 and missing_ok:
            return None
        if response.status_code >= 400:
            err = error_from_reply(response.status_code, response.content)
            if isinstance(err, Unauthorized) and self._token_file is not None and not self._token:
                err = Unauthorized(
                    f"{err.message} (no token: {self._token_file} is missing or empty; "
                    "it is written by the controller's first start, see --token-file)"
                )
            raise err
        return response

    def _once(
        self,
        method: str,
        path: str,
        content: bytes | None,
        params: dict[str, str] | None,
        timeout: float | None,
    ) -> httpx.Response:
        headers = {"Accept": "application/json"}
        if content is not None:
            headers["Content-Type"] = "application/json"
        if method != "GET":
            token = self._current_token()
            if token:
                headers["Authorization"] = f"Bearer {token}"
        url = API_PREFIX + path
        try:
            return self._http.request(
                method,
                url,
                content=content,
                params=params,
                headers=headers,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.TimeoutException:
            wait = timeout if timeout is not None else self._timeout
            raise Timeout(
                f"the qingluan controller at {self.base_url} did not answer {method} {url} "
                f"within {wait:.0f} s"
            ) from None
        except httpx.HTTPError as exc:
            raise Unavailable(
                f"the qingluan controller at {self.base_url} is not reachable ({exc}); "
                "is `qingluan controller` running?"
            ) from None

    def _json(self, response: httpx.Response | None, model: type[M]) -> M:
        assert response is not None
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise QingluanError(
                f"the qingluan controller sent an unexpected {model.__name__}: {exc}"
            ) from None

    def _json_list(self, response: httpx.Response | None, model: type[M]) -> list[M]:
        assert response is not None
        adapter: TypeAdapter[list[Any]] = TypeAdapter(list[model])  # type: ignore[valid-type]
        try:
            return list(adapter.validate_json(response.content))
        except ValidationError as exc:
            raise QingluanError(
                f"the qingluan controller sent an unexpected list of {model.__name__}: {exc}"
            ) from None

    # ---- hosts ----

    def register_host(self, name: str, body: HostRegistration) -> HostStatus:
        return self._json(self._send("PUT", f"/hosts/{_seg(name)}", body=body), HostStatus)

    def list_hosts(self) -> list[HostStatus]:
        return self._json_list(self._send("GET", "/hosts"), HostStatus)

    # ---- IPAM ----

    def request_pool(self, body: PoolRequest) -> PoolReply:
        return self._json(self._send("POST", "/ipam/pools", body=body), PoolReply)

    def list_pools(self) -> list[Pool]:
        return self._json_list(self._send("GET", "/ipam/pools"), Pool)

    def release_pool(self, pool_id: str) -> None:
        self._send("DELETE", f"/ipam/pools/{_seg(pool_id)}", missing_ok=True)

    def request_address(self, pool_id: str, body: AddressRequest) -> AddressReply:
        response = self._send("POST", f"/ipam/pools/{_seg(pool_id)}/addresses", body=body)
        return self._json(response, AddressReply)

    def release_address(self, pool_id: str, address: str) -> None:
        path = f"/ipam/pools/{_seg(pool_id)}/addresses/{_seg(address)}"
        self._send("DELETE", path, missing_ok=True)

    # ---- networks ----

    def create_network(self, network_id: str, body: NetworkCreate) -> NetworkCreated:
        response = self._send("PUT", f"/networks/{_seg(network_id)}", body=body)
        assert response is not None
        return NetworkCreated(self._json(response, Network), response.status_code == 201)

    def get_network(self, network_id: str) -> Network | None:
        response = self._send("GET", f"/networks/{_seg(network_id)}", missing_ok=True)
        return None if response is None else self._json(response, Network)

    def list_networks(self, host: str) -> list[Network]:
        return self._json_list(self._send("GET", "/networks", params={"host": host}), Network)

    def update_network(self, network_id: str, body: NetworkUpdate) -> Network:
        response = self._send("PATCH", f"/networks/{_seg(network_id)}", body=body)
        return self._json(response, Network)

    def delete_network(self, network_id: str) -> None:
        self._send("DELETE", f"/networks/{_seg(network_id)}", missing_ok=True)

    # ---- endpoints ----

    def create_endpoint(self, endpoint_id: str, body: EndpointCreate) -> EndpointStatus:
        response = self._send(
            "PUT",
            f"/endpoints/{_seg(endpoint_id)}",
            body=body,
            timeout=self._endpoint_timeout,
        )
        return self._json(response, EndpointStatus)

    def get_endpoint(self, endpoint_id: str) -> Endpoint | None:
        response = self._send("GET", f"/endpoints/{_seg(endpoint_id)}", missing_ok=True)
        return None if response is None else self._json(response, Endpoint)

    def list_endpoints(self, host: str) -> list[Endpoint]:
        response = self._send("GET", "/endpoints", params={"host": host})
        return self._json_list(response, Endpoint)

    def update_endpoint(self, endpoint_id: str, body: EndpointUpdate) -> Endpoint:
        response = self._send("PATCH", f"/endpoints/{_seg(endpoint_id)}", body=body)
        return self._json(response, Endpoint)

    def delete_endpoint(self, endpoint_id: str) -> Endpoint | None:
        """The endpoint as it was before the deletion (None: it was not there)."""
        response = self._send(
            "DELETE",
            f"/endpoints/{_seg(endpoint_id)}",
            missing_ok=True,
            timeout=self._endpoint_timeout,
        )
        if response is None or response.status_code == 204:
            return None
        return self._json(response, Endpoint)

    # ---- monitoring and IDS ----

    def monitoring_settings(self) -> MonitoringSettings:
        return self._json(self._send("GET", "/monitoring/settings"), MonitoringSettings)

    def report_alert(self, body: AlertReport) -> AlertOutcome:
        return self._json(self._send("POST", "/ids/alerts", body=body), AlertOutcome)
