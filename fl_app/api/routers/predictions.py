"""``GET /api/predictions``: streaming anomaly scores, newest first, paginated."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from fl_app.api.deps import ServicesDep, page_bounds
from fl_app.api.schemas import Page, PredictionOut
from fl_app.api.values import DeviceId, PageNumber, PageSize, UtcTime

router = APIRouter(prefix="/api", tags=["predictions"])


@router.get("/predictions", response_model=Page[PredictionOut])
def predictions(svc: ServicesDep, device_id: DeviceId | None = None, anomalies_only: bool = False,
                since: UtcTime | None = None, page: PageNumber = 1,
                limit: Annotated[PageSize, Query(description="page size, at most api.max_page_size")] = 50,
                ) -> Page[PredictionOut]:
    """Predictions of one device (``device_id``) or all, only anomalies (``anomalies_only``), of readings
    from ``since`` on (ISO 8601, UTC if no offset)."""
    skip, limit = page_bounds(svc, page, limit)
    query: dict[str, Any] = {}
    if device_id is not None:
        query["device_id"] = device_id
    if anomalies_only:
        query["is_anomaly"] = True
    if since is not None:
        query["event_time"] = {"$gte": since}
    # With a device: its (device_id, event_time) index; else insertion order (the _id index), ~ newest first.
    order = [("event_time", -1)] if device_id is not None else [("_id", -1)]
    docs = svc.store.predictions.find(query, {"actual": 0, "output": 0, "error": 0}, sort=order, skip=skip,
                                      limit=limit)
    items = [PredictionOut(**{k: d.get(k) for k in PredictionOut.model_fields}) for d in docs]
    return Page(items=items, page=page, page_size=limit, total=svc.store.predictions.count_documents(query))
