"""The ServerApp's memory in MongoDB: every tick, global model and accepted update (through ``fl_app.storage``).

On restart :func:`resume` continues from the newest ``global_model`` document,
so round numbers go on and nothing is overwritten (``global_model.round`` is
unique: a second writer of the same round fails instead of replacing it).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fl_app.config import ModelConfig
from fl_app.federation import LocalUpdate
from fl_app.storage import Storage, decode_weights, encode_weights
from server.strategy import AGGREGATED, GlobalState, RoundOutcome


def initial_state(spec: ModelConfig) -> GlobalState:
    """Round 0: the seeded initial weights, and no threshold yet (infinity: nothing is an anomaly)."""
    from fl_app import model

    return GlobalState(round=0, weights=model.get_weights(model.build(spec)), threshold=float("inf"))


def resume(store: Storage, spec: ModelConfig) -> GlobalState:
    """The newest stored global model, or round 0 if there is none."""
    doc = store.latest_global_model()
    if doc is None:
        return initial_state(spec)
    return GlobalState(round=int(doc["round"]), weights=decode_weights(doc["weights"]),
                       threshold=float(doc["threshold"]))


def _time(text: str) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def local_doc(update: LocalUpdate, aggregated_into: int) -> dict[str, Any]:
    return {"device_id": update.device_id, "round": update.base_round, "aggregated_into": aggregated_into,
            "trained_at": update.received_at, "window_start": _time(update.window_start),
            "window_end": _time(update.window_end), "num_examples": update.num_examples,
            "metrics": dict(update.metrics), "weights": encode_weights(update.weights)}


def record(store: Storage, outcome: RoundOutcome, transport: dict[str, Any] | None = None) -> None:
    """Persist one tick: the global model and its local updates if it aggregated, the tick always
    (with the message layer's numbers since the previous tick, ``transport``)."""
    global_doc = None
    if outcome.status == AGGREGATED and outcome.state is not None:
        global_doc = {
            "round": outcome.round, "created_at": outcome.at, "num_devices": len(outcome.accepted),
            "device_ids": outcome.device_ids, "num_examples": outcome.num_examples,
            "metrics": {**outcome.metrics, "mean_loss": outcome.metrics.get("loss", float("nan"))},
            "rejected": len(outcome.rejected), "stale": len(outcome.stale),
            "threshold": outcome.state.threshold,
            "weights": encode_weights(outcome.state.weights),
        }
    # Every valid update of the tick, the superseded ones too: their readings count in num_examples.
    local_docs = [local_doc(u, outcome.round) for u in outcome.accepted + outcome.superseded] if global_doc else []
    tick = {"at": outcome.at, "status": outcome.status, "round": outcome.round, "reason": outcome.reason,
            "accepted": outcome.device_ids,
            "rejected": [{"device_id": u.device_id, "reason": why} for u, why in outcome.rejected],
            "stale": [u.device_id for u in outcome.stale], "idle": [u.device_id for u in outcome.idle],
            **({"transport": transport} if transport is not None else {})}
    store.record_round(global_doc, local_docs, tick)
