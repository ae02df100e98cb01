"""Admin actions (``X-API-Key``): aggregate now, change the aggregation interval at run time.

They reach the running ServerApp through MongoDB (``fl_server`` "control"),
which it reads every second; a new run starts from the configuration again.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Depends

from fl_app.api.deps import ServicesDep, require_admin
from fl_app.api.schemas import ControlResponse, IntervalRequest

router = APIRouter(prefix="/api/admin", tags=["admin"], dependencies=[Depends(require_admin)])


def _response(control: dict, note: str) -> ControlResponse:
    return ControlResponse(aggregate_now_requested_at=control.get("aggregate_now_requested_at"),
                           aggregate_every_seconds=control.get("aggregate_every_seconds"), note=note)


@router.post("/aggregate", response_model=ControlResponse, status_code=202)
def aggregate_now(svc: ServicesDep) -> ControlResponse:
    """Ask the ServerApp to aggregate at once (it still needs fl.min_devices_for_aggregation devices)."""
    control = svc.store.request_control(aggregate_now_requested_at=datetime.now(UTC))
    return _response(control, "the ServerApp aggregates within a second or two; see /api/history")


@router.put("/aggregation-interval", response_model=ControlResponse)
def set_interval(svc: ServicesDep, body: IntervalRequest) -> ControlResponse:
    """Aggregate every ``seconds`` from now on (null: the configured interval again)."""
    control = svc.store.request_control(aggregate_every_seconds=body.seconds)
    configured = svc.cfg.fl.global_update_interval_minutes * 60
    return _response(control, f"aggregating every {body.seconds or configured:g} s "
                              f"({'set by an operator' if body.seconds else 'the configured interval'})")
