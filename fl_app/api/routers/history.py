"""``GET /api/history``: every aggregation tick, newest first, paginated, by time range."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query

from fl_app.api.deps import ServicesDep, page_bounds
from fl_app.api.schemas import HistoryItem, MessageLayer, Page, RejectedUpdate
from fl_app.api.values import PageNumber, PageSize, UtcTime, finite

router = APIRouter(prefix="/api", tags=["history"])


@router.get("/history", response_model=Page[HistoryItem])
def history(svc: ServicesDep, page: PageNumber = 1,
            page_size: Annotated[PageSize, Query(description="at most api.max_page_size")] = 50,
            since: UtcTime | None = None, until: UtcTime | None = None) -> Page[HistoryItem]:
    """Aggregation ticks (round, time, devices, readings, loss; skipped ones with why; rejected, stale and
    idle devices; the message layer since the tick before). ``since``/``until``: ISO 8601 times (UTC if no offset)."""
    skip, limit = page_bounds(svc, page, page_size)
    if since and until and since > until:
        raise HTTPException(400, "since must not be after until")
    query: dict[str, Any] = {}
    if since or until:
        query["at"] = {**({"$gte": since} if since else {}), **({"$lte": until} if until else {})}
    store = svc.store
    ticks = list(store.fl_rounds.find(query, sort=[("at", -1)], skip=skip, limit=limit))
    aggregated = [t["round"] for t in ticks if t["status"] == "aggregated"]
    models = {g["round"]: g for g in store.global_model.find({"round": {"$in": aggregated}},
                                                             {"round": 1, "num_examples": 1, "metrics": 1})}
    items = []
    for t in ticks:
        model = models.get(t["round"]) if t["status"] == "aggregated" else None
        items.append(HistoryItem(
            round=t["round"], at=t["at"], status=t["status"], reason=t.get("reason") or None,
            devices=list(t.get("accepted", [])), examples=(model or {}).get("num_examples"),
            loss=finite((model or {}).get("metrics", {}).get("loss")),
            rejected=[RejectedUpdate(**r) for r in t.get("rejected", [])], stale=list(t.get("stale", [])),
            idle=list(t.get("idle", [])), message_layer=MessageLayer.of_tick(t)))
    return Page(items=items, page=page, page_size=page_size, total=store.fl_rounds.count_documents(query))
