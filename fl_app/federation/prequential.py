"""Prequential evaluation: score each window with the current model, then train on it, as the product runs.

The holdout split (:mod:`core.quality`) trains once and tests once; the
product trains continuously on a stream that drifts. Here the labelled data set
is replayed in time order, all devices interleaved, in ticks of the local
interval at the configured rate (``stream.records_per_second`` x
``fl.local_training_interval_seconds`` readings: each device's share of a
tick is its window). At every tick each device

1. makes its window's rows (:func:`core.features.rows`, its context running on);
2. scores them with the model it holds now, against its threshold (test);
3. trains on them (:func:`core.model.train_locally`, the live ClientApp's step: replay
   buffer, normalisation, seed) (then train).

Every ``global interval / local interval`` ticks the federated updates are
aggregated by :class:`server.aggregation.TimedAggregation` with the live
settings (staleness, minimum of devices), so the federated row lags the stream
exactly as the deployment does. The same loop runs **central** (one model and
one replay buffer as large as all devices' together, on every reading) and
**local** (each device's own model, normalisation and threshold).

This runs the apps' functions in-process, not on Flower's simulation runtime:
a data set is hundreds of ticks, and the runtime's per-round cost would be most
of the time; the holdout's federated row is the one on the runtime.

Readings of the first aggregation interval are not counted for any approach
(no global model exists yet); every approach is scored on the same readings.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from core import features, model, quality, summaries
from core.config import AppConfig, ModelConfig
from core.messages import LocalUpdate
from server.aggregation import GlobalState, TimedAggregation
from server.robust import Robustness

log = logging.getLogger(__name__)


def ticks(frame: pd.DataFrame, per_tick: int) -> Iterator[dict[int, list[dict[str, object]]]]:
    """The data set in time order, ``per_tick`` readings at a time, grouped by device (in order)."""
    ordered = frame.sort_values(["source_time", "device_id"], kind="stable").to_dict("records")
    for start in range(0, len(ordered), per_tick):
        windows: dict[int, list[dict[str, object]]] = {}
        for reading in ordered[start:start + per_tick]:
            windows.setdefault(int(reading["device_id"]), []).append(reading)  # type: ignore[arg-type]
        yield windows


@dataclass
class Tally:
    """Scores, thresholds and labels of the readings scored so far."""

    scores: list[np.ndarray] = field(default_factory=list)
    thresholds: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)

    def add(self, scores: np.ndarray, threshold: float, labels: np.ndarray) -> None:
        self.scores.append(scores)
        self.thresholds.append(np.full(len(scores), threshold))
        self.labels.append(labels)

    def result(self) -> quality.Scores:
        return quality.score(np.concatenate(self.scores), np.concatenate(self.labels),
                             np.concatenate(self.thresholds))


@dataclass
class Own:
    """A model a device (local) or the centre (central) trains on its own, tick after tick."""

    weights: list[np.ndarray]
    buffer: model.ReplayBuffer
    moments: summaries.Moments | None = None
    threshold: float = math.inf
    pooled: bool = False  # sees the whole stream (central): learns a change of it, as the federation does
    learn_flagged: bool = False

    def normalisation(self) -> summaries.Normalisation | None:
        return self.moments.normalisation() if self.moments is not None else None

    def step(self, spec: ModelConfig, rows: np.ndarray, epochs: int, seed: int) -> None:
        """Train on ``rows`` (the live step), then take the threshold of the trained model on the buffer."""
        result = model.train_locally(spec, self.weights, self.normalisation(), self.buffer, rows, epochs, seed,
                                     threshold=math.inf if self.learn_flagged else self.threshold)
        # the server's rule (server.aggregation.GlobalState.learn_flagged), on the pooled rows
        self.learn_flagged = self.pooled and len(rows) > 0 and result.moments.count < 0.5 * len(rows)
        self.moments = result.moments if self.moments is None else self.moments + result.moments
        self.weights = result.weights
        norm = self.normalisation()
        assert norm is not None
        self.threshold = quality.threshold_of(_net(spec, self.weights), norm.inputs(self.buffer.rows), spec)


def _net(spec: ModelConfig, weights: list[np.ndarray]) -> model.AutoEncoder:
    net = model.build(spec)
    model.set_weights(net, weights)
    return net


def _scores(net: model.AutoEncoder, norm: summaries.Normalisation | None, rows: np.ndarray) -> np.ndarray:
    return model.scores(net, norm.inputs(rows)) if norm is not None else np.zeros(len(rows))


def cadence(cfg: AppConfig) -> tuple[int, int]:
    """``(readings per tick, ticks per aggregation)`` of the configured rate and intervals."""
    fl = cfg.fl
    return (max(1, round(cfg.stream.records_per_second * fl.local_training_interval_seconds)),
            max(1, round(fl.global_update_interval_minutes * 60 / fl.local_training_interval_seconds)))


def warmup_readings(cfg: AppConfig) -> int:
    """How many readings, in time order, come before any is counted (the first aggregation interval)."""
    per_tick, every = cadence(cfg)
    return per_tick * every


def evaluate(cfg: AppConfig, frame: pd.DataFrame, normal: str = "normal") -> dict[str, quality.Scores]:
    """Federated (global and per-device thresholds), central and local, prequentially."""
    spec, fl = cfg.fl.model, cfg.fl
    per_tick, every = cadence(cfg)
    devices = sorted(int(d) for d in frame["device_id"].unique())
    aggregation = TimedAggregation(min(fl.min_devices_for_aggregation, len(devices)), fl.max_staleness_rounds,
                                   spec.threshold_quantile, features.normalised_width(spec), Robustness.of(fl))
    state = GlobalState(0, model.get_weights(model.build(spec)), math.inf)
    width = len(features.columns(spec))
    contexts: dict[int, features.StreamContext | None] = dict.fromkeys(devices)
    buffers = {d: model.ReplayBuffer(spec.replay_size, width) for d in devices}
    local = {d: Own(state.weights, model.ReplayBuffer(spec.replay_size, width)) for d in devices}
    central = Own(state.weights, model.ReplayBuffer(spec.replay_size * len(devices), width), pooled=True)
    tallies = {name: Tally() for name in ("federated", "federated per-device", "central", "local")}
    pending: list[LocalUpdate] = []
    global_net = _net(spec, state.weights)
    count = math.ceil(len(frame) / per_tick)
    log.info("prequential: %d readings in %d ticks of %d, aggregation every %d ticks", len(frame), count, per_tick,
             every)
    for tick, windows in enumerate(ticks(frame, per_tick)):
        counted = tick >= every  # the first aggregation interval only warms up
        central_rows = []
        for device, readings in windows.items():
            rows, contexts[device] = features.rows(readings, spec, contexts[device])
            labels = np.array([r["anomaly"] != normal for r in readings])
            if counted:
                norm = state.normalisation()
                s = _scores(global_net, norm, rows)
                tallies["federated"].add(s, state.threshold, labels)
                tallies["federated per-device"].add(s, state.device_thresholds.get(device, state.threshold), labels)
                own = local[device]
                tallies["local"].add(_scores(_net(spec, own.weights), own.normalisation(), rows),
                                     own.threshold, labels)
                tallies["central"].add(_scores(_net(spec, central.weights), central.normalisation(), rows),
                                       central.threshold, labels)
            seed = model.client_seed(spec, state.round, device)
            result = model.train_locally(spec, state.weights, state.normalisation(), buffers[device], rows,
                                         fl.local_epochs, seed, threshold=state.instruction(fl.local_epochs).threshold)
            pending.append(LocalUpdate(device, state.round, len(rows), result.weights,
                                       {"loss": result.loss, "score-mean": result.score_mean}, result.histogram,
                                       threshold=result.threshold, moments=result.moments.to_list()))
            local[device].step(spec, rows, fl.local_epochs, seed)
            central_rows.append(rows)
        if central_rows:
            central.step(spec, np.concatenate(central_rows), fl.local_epochs, model.client_seed(spec, tick, 0))
        if (tick + 1) % every == 0:
            outcome = aggregation.aggregate_round(pending, state)
            pending = outcome.carried_over
            if outcome.state is not None:
                state = outcome.state
                global_net = _net(spec, state.weights)
        if tick % max(1, count // 10) == 0:
            log.info("prequential: tick %d/%d, global round %d", tick + 1, count, state.round)
    return {name: tally.result() for name, tally in tallies.items()}

