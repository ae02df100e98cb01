"""Learning quality: federated vs central vs each device alone, same model, same budget.

On a labelled data set (the configured one: the generated stand-in by default,
or ``stream.dataset_path``), each device's series is split in time: the first
``--train-fraction`` trains, the rest is held out. Three ways to train the
anomaly model of ``fl_app/model.py`` with the same budget (``rounds x
local-epochs`` passes over the training data):

- **federated**: every round each device trains the global model on its own
  training data (``fl_app.model.train``, as the ClientApp does) and
  :class:`server.strategy.TimedFedAvg` averages the updates and the score
  quantiles into the next global model and threshold (the ServerApp's code;
  the message transport is left out, the integration tests cover it);
- **central**: one model on all devices' training data pooled;
- **local**: each device alone on its own training data, with its own threshold.

Labels are used only to score the held-out parts: precision, recall and F1 at
each approach's threshold, and AUROC of the scores, pooled over all devices.

    python -m benchmarks.learning_quality [--rounds 20] [--local-epochs 1] [KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from fl_app import model
from fl_app.config import ModelConfig, load_config
from fl_app.federation import LocalUpdate
from server.strategy import GlobalState, TimedFedAvg
from stream import data

console = Console()


@dataclass
class Scores:
    precision: float
    recall: float
    f1: float
    auroc: float
    threshold: float
    flagged: int
    anomalies: int
    readings: int


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: the chance an anomaly scores above a normal reading (ties count half)."""
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def score(scores: np.ndarray, labels: np.ndarray, thresholds: np.ndarray) -> Scores:
    flagged = scores > thresholds
    tp = int((flagged & labels).sum())
    precision = tp / flagged.sum() if flagged.sum() else 0.0
    recall = tp / labels.sum() if labels.sum() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Scores(precision, recall, f1, auroc(scores, labels), float(np.median(thresholds)), int(flagged.sum()),
                  int(labels.sum()), len(labels))


@dataclass
class Device:
    id: int
    train: np.ndarray  # features
    test: np.ndarray
    test_labels: np.ndarray  # True = labelled anomaly


def split(frame: pd.DataFrame, spec: ModelConfig, train_fraction: float) -> list[Device]:
    devices = []
    for device_id in sorted(frame["device_id"].unique()):
        part = frame[frame["device_id"] == device_id].sort_values("source_time")
        cut = int(len(part) * train_fraction)
        records: list[dict[str, Any]] = part.to_dict("records")
        x = model.features(records, spec)
        devices.append(Device(int(device_id), x[:cut], x[cut:], (part["anomaly"] != data.NORMAL).to_numpy()[cut:]))
    return devices


def trained(spec: ModelConfig, rows: np.ndarray, epochs: int, seed: int,
            start: list[np.ndarray] | None = None) -> tuple[model.AutoEncoder, model.TrainResult]:
    net = model.build(spec)
    if start is not None:
        model.set_weights(net, start)
    buffer = model.ReplayBuffer(len(rows), rows.shape[1], rows)
    return net, model.train(net, buffer, spec, epochs=epochs, seed=seed)


def federated(devices: list[Device], spec: ModelConfig, rounds: int,
              local_epochs: int) -> tuple[model.AutoEncoder, float]:
    """``rounds`` of the ClientApp's training and the ServerApp's aggregation, then one more
    round's score histograms for the final model (the ServerApp's threshold lags a round)."""
    strategy = TimedFedAvg(min_devices=1, max_staleness_rounds=0, max_update_norm=float("inf"),
                           threshold_quantile=spec.threshold_quantile)
    state = GlobalState(0, model.get_weights(model.build(spec)), float("inf"))
    for r in range(rounds + 1):
        updates = []
        for d in devices:
            start = model.build(spec)
            model.set_weights(start, state.weights)
            counts = model.score_histogram(start, d.train)
            net, result = trained(spec, d.train, local_epochs, seed=spec.seed + 1000 * r + d.id, start=state.weights)
            updates.append(LocalUpdate(d.id, state.round, len(d.train), model.get_weights(net),
                                       {"loss": result.loss}, counts))
        outcome = strategy.aggregate_round(updates, state)
        assert outcome.state is not None, outcome.reason
        if r == rounds:  # the votes were for the final model: keep its weights, take the threshold
            return start_model(spec, state.weights), outcome.state.threshold
        state = outcome.state
    raise AssertionError("unreachable")


def threshold_of(net: model.AutoEncoder, rows: np.ndarray, spec: ModelConfig) -> float:
    """The same threshold rule for every approach: the histogram quantile the ServerApp uses."""
    return model.histogram_quantile(np.asarray(model.score_histogram(net, rows)), spec.threshold_quantile)


def start_model(spec: ModelConfig, weights: list[np.ndarray]) -> model.AutoEncoder:
    net = model.build(spec)
    model.set_weights(net, weights)
    return net


def evaluate(frame: pd.DataFrame, spec: ModelConfig, rounds: int, local_epochs: int,
             train_fraction: float) -> dict[str, Scores]:
    devices = split(frame, spec, train_fraction)
    budget = rounds * local_epochs
    test = np.concatenate([d.test for d in devices])
    labels = np.concatenate([d.test_labels for d in devices])
    results = {}

    started = time.monotonic()
    net, threshold = federated(devices, spec, rounds, local_epochs)
    results["federated"] = score(model.scores(net, test), labels, np.full(len(test), threshold))
    console.print(f"  federated: {time.monotonic() - started:.0f}s")

    started = time.monotonic()
    pooled = np.concatenate([d.train for d in devices])
    net, _ = trained(spec, pooled, budget, seed=spec.seed)
    results["central"] = score(model.scores(net, test), labels, np.full(len(test), threshold_of(net, pooled, spec)))
    console.print(f"  central: {time.monotonic() - started:.0f}s")

    started = time.monotonic()
    local_scores, local_thresholds = [], []
    for d in devices:
        net, _ = trained(spec, d.train, budget, seed=spec.seed + d.id)
        local_scores.append(model.scores(net, d.test))
        local_thresholds.append(np.full(len(d.test), threshold_of(net, d.train, spec)))
    results["local"] = score(np.concatenate(local_scores), labels, np.concatenate(local_thresholds))
    # The mean over devices of each device's own F1 (the "mean of local-only").
    per_device = [score(s, d.test_labels, t).f1 for s, t, d in zip(local_scores, local_thresholds, devices, strict=True)
                  if d.test_labels.any()]
    results["local (mean of devices)"] = Scores(float("nan"), float("nan"), float(np.mean(per_device)), float("nan"),
                                                float("nan"), 0, 0, 0)
    console.print(f"  local: {time.monotonic() - started:.0f}s")
    return results


def main(argv: list[str] | None = None) -> dict[str, Scores]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--train-fraction", type=float, default=0.7)
    parser.add_argument("--json", type=Path, default=None, help="where to write the results (default: logs/)")
    parser.add_argument("overrides", nargs="*",
                        help="Hydra overrides, e.g. stream.dataset_path=... fl.model.hidden=[32,8]")
    args = parser.parse_args(argv)
    cfg = load_config(args.overrides)
    frame = data.load(cfg.stream, cfg.paths.cache_dir)
    console.print(f"[bold]learning quality[/]: {len(frame):,} readings, {frame['device_id'].nunique()} devices, "
                  f"{args.rounds} rounds x {args.local_epochs} epoch(s), first {args.train_fraction:.0%} of each "
                  "device's series trains")
    results = evaluate(frame, cfg.fl.model, args.rounds, args.local_epochs, args.train_fraction)
    table = Table(title="Held-out anomaly detection (pooled over devices)", title_justify="left")
    for col in ("approach", "precision", "recall", "F1", "AUROC", "flagged", "anomalies"):
        table.add_column(col, justify="left" if col == "approach" else "right")
    for name, s in results.items():
        table.add_row(name, f"{s.precision:.3f}", f"{s.recall:.3f}", f"{s.f1:.3f}", f"{s.auroc:.3f}",
                      f"{s.flagged:,}", f"{s.anomalies:,}")
    console.print(table)
    out = args.json or Path(cfg.paths.logs_dir) / "learning_quality.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rounds": args.rounds, "local_epochs": args.local_epochs,
                               "train_fraction": args.train_fraction,
                               "results": {k: asdict(v) for k, v in results.items()}}, indent=2))
    console.print(f"written: {out}")
    return results


if __name__ == "__main__":
    main()
