"""REST routes of traffic monitoring: export settings, top flows, interfaces, thresholds
(docs/rest-api.md)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from fastapi import APIRouter, Query, Response

from qingluan.api_schema import (
    API_PREFIX,
    FlowView,
    InterfaceView,
    Name,
    RtFlowView,
    ThresholdCreate,
)
from qingluan.controller.monitoring import MonitoringService
from qingluan.model import MonitoringSettings, Threshold


def monitoring_router(
    monitoring: MonitoringService, auth: Sequence[Any], responses: dict[int | str, Any]
) -> APIRouter:
    router = APIRouter(prefix=API_PREFIX + "/monitoring", responses=responses, tags=["monitoring"])

    @router.get("/settings", response_model=MonitoringSettings)
    def get_settings() -> MonitoringSettings:
        """What every bridge exports (drivers apply changes within seconds)."""
        return monitoring.settings()

    @router.put("/settings", response_model=MonitoringSettings, dependencies=list(auth))
    def put_settings(body: MonitoringSettings) -> MonitoringSettings:
        return monitoring.update_settings(body)

    @router.get("/flows", response_model=list[FlowView])
    def top_flows(
        by: Literal["bytes", "packets"] = "bytes",
        limit: int = Query(default=10, ge=1, le=1000),
        network: str | None = Query(default=None, max_length=128),
        endpoint: str | None = Query(default=None, max_length=128),
        host: str | None = Query(default=None, max_length=63),
        window: float | None = Query(default=None, gt=0, le=3600),
    ) -> list[FlowView]:
        """Top flows of the embedded sFlow collector by rate over the last `window`
        seconds (default: the table's window), attributed to hosts, networks, endpoints
        and containers. `endpoint` takes an endpoint id (12+ characters) or a container
        name."""
        return monitoring.top_flows(
            by=by, limit=limit, network=network, endpoint=endpoint, host=host, window=window
        )

    @router.get("/interfaces", response_model=list[InterfaceView])
    def interfaces() -> list[InterfaceView]:
        """Bridge port rates from the sFlow counter samples."""
        return monitoring.interfaces()

    @router.get("/status")
    def status() -> dict[str, object]:
        """The collector's counters and the automatic rules thresholds hold now."""
        return monitoring.status()

    @router.get("/sflow-rt/activeflows/{name}", response_model=list[RtFlowView])
    def rt_active_flows(
        name: Name,
        max_flows: int = Query(default=20, ge=1, le=1000),
        agent: str = Query(default="ALL", max_length=64),
    ) -> list[RtFlowView]:
        """sFlow-RT's `/activeflows/{agent}/{name}/json`, through the controller (503 when
        sFlow-RT does not answer; 404 without `--sflow-rt`)."""
        return monitoring.rt_active_flows(name, agent=agent, max_flows=max_flows)

    @router.get("/thresholds", response_model=list[Threshold])
    def list_thresholds() -> list[Threshold]:
        return monitoring.list_thresholds()

    @router.post("/thresholds", status_code=201, response_model=Threshold, dependencies=list(auth))
    def create_threshold(body: ThresholdCreate) -> Threshold:
        return monitoring.create_threshold(body)

    @router.delete("/thresholds/{threshold_id}", status_code=204, dependencies=list(auth))
    def delete_threshold(threshold_id: Name) -> Response:
        monitoring.delete_threshold(threshold_id)
        return Response(status_code=204)

    return router
