"""The ServerApp's memory in MongoDB: every tick, global model and accepted update (through ``core.storage``).

On restart :func:`resume` continues from the newest ``global_model`` document,
so round numbers go on and nothing is overwritten (``global_model.round`` is
unique: a second writer of the same round fails instead of replacing it). A
tick's documents are made once (:func:`documents`) and written until they are
in (:func:`write`): a tick retried after a lost connection is the same tick,
never a second one.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from bson import ObjectId

from core import inference
from core.config import ModelConfig
from core.features import normalised_width
from core.messages import LocalUpdate
from core.storage import Storage, decode_weights, encode_weights
from core.summaries import Moments
from server.aggregation import AGGREGATED, GlobalState, RoundOutcome

log = logging.getLogger(__name__)
NO_READINGS = "no readings the model can take"  # a tick's left-out reply that consumed only such records


def initial_state(spec: ModelConfig) -> GlobalState:
    """Round 0: the seeded initial weights (torch's, :func:`core.model.initial_weights`), and no threshold
    yet (infinity: nothing is an anomaly).

    Unless this process has torch already, they are made in a child process: torch imported here would
    stay in the ServerApp for its whole life (~300 MB of private memory, measured; issue 22), and after
    round 0 it only adds up arrays and statistics. The child costs 2-3 s once per fresh federation.
    """
    if "torch" in sys.modules:
        weights = _initial_weights(spec)
    else:
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
            weights = child.submit(_initial_weights, spec).result()
    return GlobalState(round=0, weights=weights, threshold=float("inf"))


def _initial_weights(spec: ModelConfig) -> list[np.ndarray]:
    from core import model  # imports torch, in whichever process runs this

    return model.initial_weights(spec)


def resume(doc: Mapping[str, Any] | None, spec: ModelConfig) -> GlobalState:
    """The state to go on from: the newest stored global model ``doc``
    (:meth:`core.storage.Storage.latest_global_model`), or round 0 if there is none.

    A stored model this configuration cannot use (weights of other shapes, moments of another width:
    written by an earlier version, or before ``fl.model.features`` or ``context`` changed) is not
    resumed: the federation starts from fresh weights, and its round numbers go on from the stored one
    (they are unique), with a warning that says why. No I/O: round 0's weights take a child process
    (:func:`initial_state`), which must not run inside a MongoDB operation's time limit.
    """
    if doc is None:
        return initial_state(spec)
    weights = decode_weights(doc["weights"])
    moments = doc.get("moments")
    width = normalised_width(spec)
    why = ""
    shapes, expected = [list(w.shape) for w in weights], [list(s) for s in inference.weight_shapes(spec)]
    if shapes != expected:
        why = f"its first weights have shapes {shapes[:2]}, this model's {expected[:2]}"
    else:
        try:  # the same checks as a device's moments: a stored document is input too
            totals = Moments.from_list([moments["count"], *moments["sums"], *moments["squares"]], width) \
                if moments else None
        except (KeyError, TypeError, ValueError) as exc:
            why = f"its normalisation cannot be used: {str(exc)[:200]}"
    if why:
        log.warning("global round %s does not fit the configured model (%s): starting from fresh weights, "
                    "rounds going on from %s", doc["round"], why, doc["round"])
        fresh = initial_state(spec)
        return GlobalState(round=int(doc["round"]), weights=fresh.weights, threshold=fresh.threshold)
    return GlobalState(round=int(doc["round"]), weights=weights, threshold=float(doc["threshold"]), moments=totals,
                       device_thresholds={int(k): float(v) for k, v in doc.get("device_thresholds", {}).items()})


def normalisation_fields(state: GlobalState) -> dict[str, Any]:
    """What a global model document holds of its normalisation: the running moments (to resume
    them) and the centre and scale they give (what the scorer applies)."""
    norm = state.normalisation()
    if state.moments is None or norm is None:
        return {}
    return {"moments": {"count": state.moments.count, "sums": state.moments.sums.tolist(),
                        "squares": state.moments.squares.tolist()},
            "normalisation": {"centre": norm.centre.tolist(), "scale": norm.scale.tolist()}}


def local_doc(update: LocalUpdate, aggregated_into: int, stored_at: datetime) -> dict[str, Any]:
    return {"_id": ObjectId(), "device_id": update.device_id, "round": update.base_round,
            "aggregated_into": aggregated_into, "trained_at": update.received_at, "stored_at": stored_at,
            "window_start": update.window_start, "window_end": update.window_end,
            "source": update.source.to_doc() if update.source is not None else None,  # its lineage
            "num_examples": update.num_examples, "metrics": dict(update.metrics),
            "weights": encode_weights(update.weights)}


@dataclass
class TickDocuments:
    """One tick's documents. Each carries the ``_id`` it is first sent with, so a retried write
    (:func:`write`) recognises what an earlier attempt did write."""

    global_doc: dict[str, Any] | None
    local_docs: list[dict[str, Any]]
    tick: dict[str, Any]


def documents(outcome: RoundOutcome, transport: dict[str, Any] | None = None,
              refused: Sequence[tuple[int, str]] = (), malformed: int = 0,
              capped: Sequence[dict[str, Any]] = ()) -> TickDocuments:
    """The documents of one tick: the global model and its local updates if it aggregated, the tick
    always (with the message layer's numbers since the previous tick, ``transport``; the replies
    refused as malformed or by ``server.admission``, per device where it was known, ``refused``, and
    the others, ``malformed``; the updates whose readings were capped, ``capped``: device, claimed,
    counted, reason)."""
    global_doc = None
    if outcome.status == AGGREGATED and outcome.state is not None:
        global_doc = {
            "_id": ObjectId(), "round": outcome.round, "created_at": outcome.at, "num_devices": len(outcome.accepted),
            "device_ids": outcome.device_ids, "num_examples": outcome.num_examples,
            "metrics": {**outcome.metrics, "mean_loss": outcome.metrics.get("loss", float("nan"))},
            "rejected": len(outcome.rejected) + len(refused), "stale": len(outcome.stale),
            "threshold": outcome.state.threshold,
            "device_thresholds": {str(k): v for k, v in sorted(outcome.state.device_thresholds.items())},
            **normalisation_fields(outcome.state),
            "weights": encode_weights(outcome.state.weights),
        }
    # Every valid update of the tick, the superseded ones too: their readings count in num_examples.
    local_docs = ([local_doc(u, outcome.round, outcome.at) for u in outcome.accepted + outcome.superseded]
                  if global_doc else [])
    tick_id = ObjectId()
    if global_doc is not None:  # its lineage: the updates it averaged, and the tick with those left out
        global_doc |= {"local_model_ids": [d["_id"] for d in local_docs], "tick_id": tick_id,
                       "base_rounds": sorted({d["round"] for d in local_docs})}
    rejected = [*((u.device_id, why) for u, why in outcome.rejected), *refused]
    tick = {"_id": tick_id, "at": outcome.at, "status": outcome.status, "round": outcome.round,
            "reason": outcome.reason, "accepted": outcome.device_ids,
            "rejected": [{"device_id": device, "reason": why} for device, why in rejected],
            "stale": [u.device_id for u in outcome.stale], "idle": [u.device_id for u in outcome.idle],
            "malformed": malformed, "capped": [dict(c) for c in capped],
            # The window records of the updates left out: consumed, trained into no round (lineage).
            "left_out": [{"device_id": u.device_id, "reason": why[:200], "source": u.source.to_doc()}
                         for u, why in [*((u, "stale") for u in outcome.stale), *outcome.rejected,
                                        *((u, NO_READINGS) for u in outcome.idle)]
                         if u.source is not None],
            **({"transport": transport} if transport is not None else {})}
    return TickDocuments(global_doc, local_docs, tick)


def write(store: Storage, docs: TickDocuments, again: bool = False) -> None:
    """Persist one tick (:meth:`Storage.record_round`). ``again``: an earlier attempt failed, perhaps
    after the server had written all or part of it (the connection lost before the reply); then
    only what is missing is written (:meth:`Storage.complete_round`), so a retry never duplicates a
    document nor trips the unique global round."""
    if again:
        store.complete_round(docs.global_doc, docs.local_docs, docs.tick)
    else:
        store.record_round(docs.global_doc, docs.local_docs, docs.tick)


def record(store: Storage, outcome: RoundOutcome, transport: dict[str, Any] | None = None) -> None:
    """Persist one tick at once (:func:`documents`, :func:`write`)."""
    write(store, documents(outcome, transport))
