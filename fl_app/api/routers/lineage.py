"""Lineage: ``GET /api/models/{round}/lineage``, ``GET /api/predictions/{event_id}``,
``GET /api/devices/{id}/contributions``: which readings made a model, which model scored a reading."""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query

from core.validation import MAX_EVENT_ID_CHARS
from fl_app.api.deps import ServicesDep, page_bounds
from fl_app.api.schemas import (
    Contribution,
    LeftOut,
    Page,
    PredictionLineage,
    PredictionOut,
    RoundLineage,
    SourceOut,
    UpdateLineage,
)
from fl_app.api.values import DeviceId, PageNumber, PageSize, Round

router = APIRouter(prefix="/api", tags=["lineage"])
EventId = Annotated[str, Path(min_length=1, max_length=MAX_EVENT_ID_CHARS,
                              description="a reading's event_id, as the readings' validation lets one in")]
PageSizeQuery = Annotated[PageSize, Query(description="page size, at most api.max_page_size")]
UPDATE_FIELDS = {"weights": 0, "metrics": 0}


def _source(doc: dict[str, Any] | None) -> SourceOut | None:
    return SourceOut(**{k: doc[k] for k in SourceOut.model_fields}) if doc and "topic" in doc else None


@router.get("/models/{round}/lineage", response_model=RoundLineage)
def round_lineage(svc: ServicesDep, round: Round, page: PageNumber = 1, limit: PageSizeQuery = 100) -> RoundLineage:
    """The local updates one global model averaged (a page of them, each with the window records and
    readings it trained on), the readings per device, and the updates and replies its tick left out."""
    skip, limit = page_bounds(svc, page, limit)
    store = svc.store
    g = store.global_model.find_one({"round": round}, {"weights": 0})
    if g is None:
        raise HTTPException(404, f"no global model of round {round}")
    mine = {"aggregated_into": round}
    per_device = Counter[int]()
    for row in store.local_models.aggregate([{"$match": mine},
                                             {"$group": {"_id": "$device_id", "n": {"$sum": "$num_examples"}}}]):
        per_device[int(row["_id"])] += int(row["n"])
    docs = store.local_models.find(mine, UPDATE_FIELDS, sort=[("device_id", 1), ("_id", 1)], skip=skip, limit=limit)
    updates = [UpdateLineage(id=str(u["_id"]), device_id=u["device_id"], base_round=u["round"],
                             num_examples=u["num_examples"], trained_at=u["trained_at"],
                             window_start=u.get("window_start"), window_end=u.get("window_end"),
                             source=_source(u.get("source"))) for u in docs]
    tick = store.fl_rounds.find_one({"_id": g["tick_id"]}) if "tick_id" in g else None
    tick = tick or {}
    return RoundLineage(
        round=round, created_at=g["created_at"], num_examples=g.get("num_examples"),
        base_rounds=list(g.get("base_rounds", [])),
        readings_per_device={str(d): n for d, n in sorted(per_device.items())},
        updates=Page(items=updates, page=page, page_size=limit, total=store.local_models.count_documents(mine)),
        left_out=[LeftOut(device_id=x["device_id"], reason=x.get("reason", ""), source=_source(x.get("source")))
                  for x in tick.get("left_out", [])],
        refused=[LeftOut(device_id=x["device_id"], reason=x.get("reason", "")) for x in tick.get("rejected", [])
                 if isinstance(x.get("device_id"), int)],
        idle=[d for d in tick.get("idle", []) if isinstance(d, int)])


@router.get("/predictions/{event_id}", response_model=list[PredictionLineage])
def prediction_lineage(svc: ServicesDep, event_id: EventId) -> list[PredictionLineage]:
    """The predictions of one reading (one per model that scored it), each with its model's lineage."""
    docs = list(svc.store.predictions.find({"event_id": event_id}, {"actual": 0, "output": 0, "error": 0},
                                           sort=[("model_round", 1)], limit=100))
    if not docs:
        raise HTTPException(404, f"no prediction of reading {event_id!r}")
    return [PredictionLineage(prediction=PredictionOut(**{k: d.get(k) for k in PredictionOut.model_fields}),
                              lineage=f"/api/models/{d['model_round']}/lineage") for d in docs]


@router.get("/devices/{device_id}/contributions", response_model=Page[Contribution])
def contributions(svc: ServicesDep, device_id: DeviceId, page: PageNumber = 1,
                  limit: PageSizeQuery = 50) -> Page[Contribution]:
    """The rounds this device's readings went into, newest first, with what each update trained on."""
    if device_id not in svc.devices:
        raise HTTPException(404, f"no device {device_id} in the data set")
    skip, limit = page_bounds(svc, page, limit)
    mine = {"device_id": device_id}
    docs = svc.store.local_models.find(mine, UPDATE_FIELDS, sort=[("trained_at", -1)], skip=skip, limit=limit)
    items = [Contribution(round=u.get("aggregated_into", 0), base_round=u["round"], num_examples=u["num_examples"],
                          trained_at=u["trained_at"], source=_source(u.get("source"))) for u in docs]
    return Page(items=items, page=page, page_size=limit, total=svc.store.local_models.count_documents(mine))
