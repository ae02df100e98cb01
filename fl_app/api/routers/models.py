"""``GET /api/models/latest`` and ``GET /api/models/{round}``: global models, weights on request."""

from __future__ import annotations

import base64
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query

from core.storage import decode_weights
from fl_app.api.deps import ServicesDep
from fl_app.api.schemas import ModelResponse, Weights
from fl_app.api.values import Round, finite

router = APIRouter(prefix="/api/models", tags=["models"])


class WeightsFormat(StrEnum):
    none = "none"  # metadata only
    binary = "binary"  # the stored bytes, base64
    json = "json"  # nested lists


WeightsQuery = Annotated[WeightsFormat, Query(description="none: metadata only; binary: the stored bytes "
                                                          "(base64) with shapes and dtype; json: nested lists")]


def _fields(weights: WeightsFormat) -> dict[str, int] | None:
    """The projection: the weights are read only when asked for."""
    return {"weights": 0} if weights is WeightsFormat.none else None


def _response(doc: dict[str, Any], weights: WeightsFormat) -> ModelResponse:
    out = ModelResponse(round=doc["round"], created_at=doc["created_at"], num_devices=doc["num_devices"],
                        device_ids=list(doc.get("device_ids", [])), num_examples=doc.get("num_examples"),
                        loss=finite(doc.get("metrics", {}).get("loss")), threshold=finite(doc["threshold"]) or 0.0,
                        rejected=doc.get("rejected", 0), stale=doc.get("stale", 0))
    stored = doc.get("weights")
    if weights is not WeightsFormat.none and stored is not None:
        shapes = [list(s) for s in stored["shapes"]]
        out.weights = Weights(dtype=stored["dtype"], shapes=shapes)
        if weights is WeightsFormat.binary:
            out.weights.data_base64 = base64.b64encode(bytes(stored["data"])).decode()
        else:
            out.weights.arrays = [a.tolist() for a in decode_weights(stored)]
    return out


@router.get("/latest", response_model=ModelResponse)
def latest(svc: ServicesDep, weights: WeightsQuery = WeightsFormat.none) -> ModelResponse:
    """The newest global model (404 before the first aggregation)."""
    doc = svc.store.latest_global_model(_fields(weights))
    if doc is None:
        raise HTTPException(404, "no global model yet: the first aggregation has not happened")
    return _response(doc, weights)


@router.get("/{round}", response_model=ModelResponse)
def by_round(svc: ServicesDep, round: Round,
             weights: WeightsQuery = WeightsFormat.none) -> ModelResponse:
    """The global model of one round (404 if there is none)."""
    doc = svc.store.global_model.find_one({"round": round}, _fields(weights))
    if doc is None:
        raise HTTPException(404, f"no global model of round {round}")
    return _response(doc, weights)
