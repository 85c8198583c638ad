"""REST routes of intrusion detection: alerts in, policies, quarantines (docs/rest-api.md)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Query, Response

from qingluan.api_schema import API_PREFIX, AlertReport, IdsPolicyCreate, Name
from qingluan.controller.ids import IdsService
from qingluan.model import AlertOutcome, IdsPolicy, Quarantine


def ids_router(ids: IdsService, auth: Sequence[Any], responses: dict[int | str, Any]) -> APIRouter:
    router = APIRouter(prefix=API_PREFIX, responses=responses, tags=["ids"])

    @router.post("/ids/alerts", response_model=AlertOutcome, dependencies=list(auth))
    def report_alert(body: AlertReport) -> AlertOutcome:
        """One alert of a host's IDS. The matching policy decides; a quarantine returns
        once the endpoint's bridge confirmed the drop (`confirm_seconds`)."""
        return ids.report(body, received=time.perf_counter())

    @router.get("/ids/alerts", response_model=list[AlertOutcome])
    def recent_alerts(limit: int = Query(default=50, ge=1, le=200)) -> list[AlertOutcome]:
        """The latest alerts and what was done with each, newest first."""
        return ids.recent_alerts(limit)

    @router.post(
        "/ids/policies", status_code=201, response_model=IdsPolicy, dependencies=list(auth)
    )
    def create_policy(body: IdsPolicyCreate) -> IdsPolicy:
        return ids.create_policy(body)

    @router.get("/ids/policies", response_model=list[IdsPolicy])
    def list_policies() -> list[IdsPolicy]:
        return ids.list_policies()

    @router.delete("/ids/policies/{policy_id}", status_code=204, dependencies=list(auth))
    def delete_policy(policy_id: Name) -> Response:
        ids.delete_policy(policy_id)
        return Response(status_code=204)

    @router.get("/quarantines", response_model=list[Quarantine])
    def list_quarantines() -> list[Quarantine]:
        return ids.list_quarantines()

    @router.get("/quarantines/{quarantine_id}", response_model=Quarantine)
    def get_quarantine(quarantine_id: Name) -> Quarantine:
        return ids.get_quarantine(quarantine_id)

    @router.delete("/quarantines/{quarantine_id}", status_code=204, dependencies=list(auth))
    def lift_quarantine(quarantine_id: Name) -> Response:
        """Lift a quarantine now (unknown: 204); returns once its bridge confirmed."""
        ids.lift(quarantine_id)
        return Response(status_code=204)

    return router
