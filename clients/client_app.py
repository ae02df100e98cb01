"""The device's Flower ClientApp: train the global model on the device's own new windows.

On each train message (contract: ``core/messages.py``) the device

1. reads the window records that arrived in its own partition of the window
   topic since its last reply the server received (:class:`clients.windows.WindowReader`,
   from the message's ``read_from``);
2. with none, replies at once with zero examples;
3. otherwise makes the readings' rows (:func:`core.features.rows`, continuing
   the device's stream context) and adds them to its bounded replay buffer
   (both kept in the SuperNode's ``Context.state`` between messages), starts
   from the global weights and normalisation it was sent, trains
   ``local-epochs`` passes (:func:`core.model.train_locally`), and replies with
   the weights, the number of new readings and their moments, the loss, the
   received model's score histogram and the device's own threshold, and the
   windows' time span;
4. commits its read position only after the reply is built, so a crash
   re-reads those windows and never skips any; a reply lost on the way is
   read again from the server's account (server/positions.py).

A device talks to Kafka and to its SuperNode only; it holds no MongoDB address.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from clients.windows import WindowReader
from core import features, model, summaries
from core.kafka_auth import KAFKA_CREDENTIALS, Credentials
from core.messages import (
    ARRAYS,
    CONFIG,
    HISTOGRAM,
    METRICS,
    NUM_EXAMPLES,
    LocalUpdate,
    RunSettings,
    Source,
    TrainInstruction,
    utc_time,
)

log = logging.getLogger("clients.client_app")
REPLAY = "replay-buffer"  # the Context.state key of the device's replay buffer (raw rows)
STREAM = "stream-context"  # ... and of its stream context (core.features.StreamContext)
# A train message this close to its TTL is answered without reading the device's windows: the
# SuperLink refuses a reply to an expired message, and windows read (and committed) for it would be
# lost. Measured once in CI: two tasks picked up by a restarted executor just before their 20 s TTL
# ran out lost their devices' 16 readings. A reply takes ~1 s to return (benchmarks/fl_supernodes.py).
REPLY_MARGIN_SECONDS = 5.0

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    started = time.time()
    settings = RunSettings.from_context(context.run_config)
    device = settings.device_of(context.node_config)
    instruction = TrainInstruction.from_record(msg.content)
    if expires_soon(msg.metadata.created_at, msg.metadata.ttl, started):
        log.warning("device %d: the train message expires in under %gs; answered without reading windows",
                    device, REPLY_MARGIN_SECONDS)
        empty = LocalUpdate(device_id=device, base_round=instruction.server_round, num_examples=0, weights=[])
        return Message(empty.to_record(), reply_to=msg)
    if FORGE in context.node_config:
        return Message(forged(device, instruction, int(context.node_config[FORGE])).to_record(), reply_to=msg)
    topic, partition = settings.window_source(device)
    reader = WindowReader(settings.kafka_bootstrap, topic, partition, settings.group_of(device), device,
                          login=device_login(context.node_config))
    try:
        windows = reader.read_new(start=instruction.read_from)
        consumed = (topic, partition, reader.first_offset, reader.next_offset - 1) \
            if reader.first_offset is not None and reader.next_offset is not None else None
        update = local_update(settings, device, instruction, windows, context, consumed)
        update.delivery_seconds = started - msg.metadata.created_at  # wall clocks: the server's and ours
        update.work_seconds = time.time() - started
        content = update.to_record()
        if "chaos" in context.node_config:
            corrupt(content, str(context.node_config["chaos"]), context)
        reply = Message(content, reply_to=msg)
        reader.commit()  # only now: a crash before this re-reads the windows
    finally:
        reader.close()
    return reply


def device_login(node_config: Mapping[str, Any]) -> dict[str, Any]:
    """The device's own Kafka login (librdkafka settings) from the credentials file its node config
    names (``kafka-credentials``, given to the device's host); none without Kafka SASL."""
    path = node_config.get(KAFKA_CREDENTIALS)
    return Credentials.load(str(path)).librdkafka() if path else {}


def expires_soon(created_at: float, ttl: float, now: float, margin: float = REPLY_MARGIN_SECONDS) -> bool:
    """Whether a message created at ``created_at`` (epoch seconds) with ``ttl`` seconds to live has
    less than ``margin`` left at ``now``: too little for a reply to arrive before it expires."""
    return created_at + ttl - now < margin


# Failure testing only (SuperNode ``--node-config chaos=<kind>``): how a rogue device breaks its reply.
# Each must come back as a rejected or malformed update at the server, never stop it.
CHAOS = {
    "nan": lambda r: _set_weights(r, lambda w: np.full_like(w, np.nan)),  # finite check (strategy)
    "shape": lambda r: _set_weights(r, lambda w: w[:-1], fix_layout=True),  # shapes check (strategy)
    "bad-layout": lambda r: r.config_records[CONFIG].__setitem__("layout", [-1, 5]),  # looped forever once
    "huge-layout": lambda r: r.config_records[CONFIG].__setitem__("layout", [8, *[2**30] * 8]),
    "inf-examples": lambda r: r.metric_records[METRICS].__setitem__(NUM_EXAMPLES, math.inf),
    "negative-examples": lambda r: r.metric_records[METRICS].__setitem__(NUM_EXAMPLES, -5),
    "inf-round": lambda r: r.config_records[CONFIG].__setitem__("base-round", math.inf),
    "string-round": lambda r: r.config_records[CONFIG].__setitem__("base-round", "7"),
    "inf-device": lambda r: r.config_records[CONFIG].__setitem__("device-id", math.inf),
    "huge-device": lambda r: r.config_records[CONFIG].__setitem__("device-id", 2**63),
    "bool-device": lambda r: r.config_records[CONFIG].__setitem__("device-id", True),
    "bad-window": lambda r: r.config_records[CONFIG].__setitem__("window-start", "yesterday-ish"),
    "offset-window": lambda r: r.config_records[CONFIG].__setitem__("window-start", "0001-01-01T00:00:00+14:00"),
    "nan-histogram": lambda r: r.metric_records[METRICS].__setitem__(HISTOGRAM, [math.nan] * 8),
    "wrong-dtype": lambda r: _set_weights(r, lambda w: w.astype(np.int64)),
}
CYCLE = "cycle"  # every kind of CHAOS in turn, one per reply (the count kept in Context.state)


# Security testing only (SuperNode ``--node-config "device-id=<another's> forge=<readings>"``): a rogue
# that poses as the device its node config names and reads nothing (so that device loses no window):
# a well-formed reply of the weights it was sent, ``forge`` readings and a histogram of them all in
# the lowest bin. Only the transport can tell it from the real device (server/admission.py).
FORGE = "forge"


def forged(device: int, instruction: TrainInstruction, readings: int) -> LocalUpdate:
    counts = [0.0] * (len(summaries.HISTOGRAM_EDGES) - 1)
    counts[0] = float(readings)
    log.warning("forge: this node sends device %d a forged update of %d readings", device, readings)
    return LocalUpdate(device_id=device, base_round=instruction.server_round, num_examples=readings,
                       weights=instruction.weights, metrics={"loss": 0.0, "score-mean": 0.0}, histogram=counts)


def corrupt(content: RecordDict, how: str, context: Context) -> None:
    """Break the reply ``content`` the way ``how`` names (a kind of :data:`CHAOS`, or ``cycle``). Never
    set in a real deployment."""
    if how == CYCLE:
        sent = context.state.config_records.get("chaos", ConfigRecord({"sent": 0}))
        how = sorted(CHAOS)[int(sent["sent"]) % len(CHAOS)]  # type: ignore[arg-type]
        context.state["chaos"] = ConfigRecord({"sent": int(sent["sent"]) + 1})  # type: ignore[arg-type]
    CHAOS[how](content)
    log.warning("chaos=%s: this device sends a corrupted reply", how)


def _set_weights(content: RecordDict, change: Callable[[np.ndarray], np.ndarray], fix_layout: bool = False) -> None:
    """Replace the packed weights by ``change(flat)`` (a reply without weights stays as it is)."""
    arrays = content.array_records[ARRAYS].to_numpy_ndarrays()
    if arrays:
        flat = change(arrays[0])
        content[ARRAYS] = ArrayRecord([flat])
        if fix_layout:  # the first array loses values: a layout that fits, with the wrong shapes
            content.config_records[CONFIG]["layout"] = [1, flat.size]


def local_update(settings: RunSettings, device: int, instruction: TrainInstruction, windows: list[dict],
                 context: Context, consumed: tuple[str, int, int, int] | None = None) -> LocalUpdate:
    """Train on the new windows' readings (or report that there were none). ``consumed``: the topic,
    partition and first and last offset of the records read, for the update's lineage."""
    readings = [r for w in windows for r in w["readings"] if int(r["device_id"]) == device]
    if not readings:  # records consumed with none the model can take still name their source (lineage)
        return LocalUpdate(device_id=device, base_round=instruction.server_round, num_examples=0, weights=[],
                           source=Source(*consumed, windows=0, first_event_id="", last_event_id="", replayed=0,
                                         held_out=0) if consumed is not None else None)
    spec = settings.model_config()
    saved = context.state.array_records.get(STREAM)
    stream = features.StreamContext.from_list(saved.to_numpy_ndarrays()[0].tolist(), len(spec.features)) \
        if saved is not None else None
    rows, stream = features.rows(readings, spec, stream)
    stored = context.state.array_records.get(REPLAY)
    old = stored.to_numpy_ndarrays()[0] if stored is not None else None
    buffer = model.ReplayBuffer(spec.replay_size, rows.shape[1],
                                old if old is not None and old.ndim == 2 and old.shape[1] == rows.shape[1] else None)
    normalisation = summaries.Normalisation.from_lists(instruction.centre, instruction.scale, spec) \
        if instruction.centre else None
    result = model.train_locally(spec, instruction.weights, normalisation, buffer, rows, instruction.local_epochs,
                                 seed=model.client_seed(spec, instruction.server_round, device),
                                 threshold=instruction.threshold)
    context.state[REPLAY] = ArrayRecord([buffer.rows])
    context.state[STREAM] = ArrayRecord([np.asarray(stream.to_list(), dtype=np.float64)])
    log.info("device %d: %d new readings, buffer %d, loss %.4f", device, len(readings), len(buffer), result.loss)
    return LocalUpdate(
        device_id=device, base_round=instruction.server_round, num_examples=len(readings), weights=result.weights,
        metrics={"loss": result.loss, "score-mean": result.score_mean}, histogram=result.histogram,
        threshold=result.threshold, moments=result.moments.to_list(),
        source=Source(*consumed, windows=sum(1 for w in windows if w["readings"]),
                      first_event_id=readings[0]["event_id"], last_event_id=readings[-1]["event_id"],
                      replayed=result.replayed, held_out=result.held_out) if consumed is not None else None,
        window_start=min(_times(windows, "window_start"), default=None),
        window_end=max(_times(windows, "window_end"), default=None))


def _times(windows: list[dict], key: str) -> list[datetime]:
    """The windows' times ``key`` in UTC; one the contract cannot carry is left out (and logged)."""
    out = []
    for w in windows:
        try:
            if (t := utc_time(w.get(key, ""), key)) is not None:
                out.append(t)
        except ValueError as exc:
            log.warning("window of device %s: %s", w.get("device_id"), exc)
    return out
