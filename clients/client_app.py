"""The device's Flower ClientApp: train the global model on the device's own new windows.

On each train message (contract: ``fl_app/federation.py``) the device

1. reads the window records that arrived in its own partition of the window
   topic since its last reply (:class:`clients.windows.WindowReader`);
2. with none, replies at once with zero examples;
3. otherwise adds the readings to its bounded replay buffer (kept in the
   SuperNode's ``Context.state`` between messages), starts from the global
   weights it was sent, trains ``local-epochs`` passes, and replies with the
   weights, the number of new readings, the loss and score statistics, and
   the windows' time span;
4. commits its read position only after the reply is built, so a crash
   re-reads those windows and never skips any.

A device talks to Kafka and to its SuperNode only; it holds no MongoDB address.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from clients.windows import WindowReader
from fl_app import model
from fl_app.federation import LocalUpdate, RunSettings, TrainInstruction

log = logging.getLogger("clients.client_app")
REPLAY = "replay-buffer"  # the Context.state key of the device's replay buffer

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    started = time.time()
    settings = RunSettings.from_context(context.run_config)
    device = settings.device_of(context.node_config)
    instruction = TrainInstruction.from_record(msg.content)
    reader = WindowReader(settings.kafka_bootstrap, settings.windows_topic, settings.partition_of(device),
                          f"{settings.group_prefix}-{device}")
    try:
        windows = reader.read_new()
        update = local_update(settings, device, instruction, windows, context)
        if "chaos" in context.node_config:
            corrupt(update, str(context.node_config["chaos"]))
        update.delivery_seconds = started - msg.metadata.created_at  # wall clocks: the server's and ours
        update.work_seconds = time.time() - started
        reply = Message(update.to_record(), reply_to=msg)
        reader.commit()  # only now: a crash before this re-reads the windows
    finally:
        reader.close()
    return reply


def corrupt(update: LocalUpdate, how: str) -> None:
    """Failure testing only (SuperNode ``--node-config chaos=nan|shape``): send a broken update,
    which the server must reject and record. Never set in a real deployment."""
    if update.weights:
        if how == "nan":
            update.weights[0] = np.full_like(update.weights[0], np.nan)
        elif how == "shape":
            update.weights[0] = update.weights[0][:-1]
    log.warning("chaos=%s: device %d sends a corrupted update", how, update.device_id)


def local_update(settings: RunSettings, device: int, instruction: TrainInstruction, windows: list[dict],
                 context: Context) -> LocalUpdate:
    """Train on the new windows' readings (or report that there were none)."""
    readings = [r for w in windows for r in w["readings"] if int(r["device_id"]) == device]
    if not readings:
        return LocalUpdate(device_id=device, base_round=instruction.server_round, num_examples=0, weights=[])
    spec = settings.model_config()
    x = model.features(readings, spec)
    stored = context.state.array_records.get(REPLAY)
    buffer = model.ReplayBuffer(spec.replay_size, x.shape[1],
                                stored.to_numpy_ndarrays()[0] if stored is not None else None)
    seed = spec.seed * 1_000_003 + device * 10_007 + instruction.server_round
    buffer.add(x, np.random.default_rng(seed))
    net = model.build(spec)
    model.set_weights(net, instruction.weights)
    histogram = model.score_histogram(net, buffer.rows)  # of the global model: for the threshold
    result = model.train(net, buffer, spec, epochs=instruction.local_epochs, seed=seed)
    context.state[REPLAY] = ArrayRecord([buffer.rows])
    log.info("device %d: %d new readings, buffer %d, loss %.4f", device, len(readings), len(buffer), result.loss)
    return LocalUpdate(
        device_id=device, base_round=instruction.server_round, num_examples=len(readings),
        weights=model.get_weights(net),
        metrics={"loss": result.loss, "score-mean": result.score_mean}, histogram=histogram,
        window_start=min(w["window_start"] for w in windows), window_end=max(w["window_end"] for w in windows))
