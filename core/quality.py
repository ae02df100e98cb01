"""Learning quality: the same model and budget trained federated, centrally and per device alone.

The data: a labelled data set, each device's series split in time (the first
``train_fraction`` trains, the later rest is held out). Labels are read only
to score the held-out parts: precision, recall, F1 at each approach's
threshold, and AUROC of the scores, pooled over all devices.

- **federated**: ``rounds`` rounds in which every device trains the global
  model ``local_epochs`` passes over its own training rows and
  :class:`server.aggregation.TimedAggregation` averages the updates (the evaluation
  apps in ``server/evaluation_app.py`` and ``clients/evaluation_app.py``, on
  Flower's simulation runtime); the threshold is the pooled quantile of the
  final model's scores, from the devices' histograms, or each device's own
  quantile (``per_device``);
- **central**: one model on all devices' training rows pooled;
- **local**: each device alone on its own rows, with its own threshold.

The rows are :func:`core.features.rows` over each device's whole series (its
context runs on across the split, as it does in the stream). Each model is
normalised as it is in the product: federated with the moments its devices
reported, central with the pooled rows', local with the device's own.

Every approach gets the same number of passes over its training data
(``rounds x local_epochs``) and the same threshold rule (the histogram
quantile of its scores on its training data, ``fl.model.threshold_quantile``).
This module holds the parts that need no Flower: the split, the per-device
partitions the ClientApps read, the central and local baselines, the metrics
and the settings both evaluation apps read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core import features, model, summaries
from core.config import ModelConfig

SETTINGS_ENV = "FL_APP_EVALUATION"  # the evaluation settings as JSON (the simulation API passes no run config)


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
    """Precision, recall, F1 of ``scores > thresholds`` against ``labels`` (True = anomaly), and AUROC."""
    flagged = scores > thresholds
    tp = int((flagged & labels).sum())
    precision = tp / flagged.sum() if flagged.sum() else 0.0
    recall = tp / labels.sum() if labels.sum() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Scores(precision, recall, f1, auroc(scores, labels), float(np.median(thresholds)) if len(thresholds)
                  else float("nan"), int(flagged.sum()), int(labels.sum()), len(labels))


@dataclass
class Partition:
    """One device's raw rows (:func:`core.features.rows`), split in time, and the held-out part's labels."""

    device: int
    train: np.ndarray
    test: np.ndarray
    test_labels: np.ndarray  # True = labelled anomaly


def split(frame: pd.DataFrame, spec: ModelConfig, train_fraction: float, normal: str = "normal") -> list[Partition]:
    """Each device's series in time order: the first ``train_fraction`` trains, the rest is held out.

    Raises
    ------
    ValueError
        If the held-out parts hold no labelled anomaly (nothing to measure).
    """
    partitions = []
    for device in sorted(frame["device_id"].unique()):
        part = frame[frame["device_id"] == device].sort_values("source_time")
        cut = int(len(part) * train_fraction)
        if cut == 0 or cut == len(part):
            continue  # too short to split: neither trains nor tests
        x, _ = features.rows(part.to_dict("records"), spec)
        partitions.append(Partition(int(device), x[:cut], x[cut:], (part["anomaly"] != normal).to_numpy()[cut:]))
    if not any(p.test_labels.any() for p in partitions):
        raise ValueError("the held-out parts of the data set hold no labelled anomaly: nothing to measure "
                         "(a CSV data set needs its 0/1 label column, stream.csv.label)")
    return partitions


def save_partitions(partitions: Sequence[Partition], folder: Path) -> None:
    """Each device's training rows as ``device-<id>.npy``: all a ClientApp of the evaluation reads."""
    folder.mkdir(parents=True, exist_ok=True)
    for p in partitions:
        np.save(folder / f"device-{p.device}.npy", p.train)


def load_training_rows(folder: str | Path, device: int) -> np.ndarray:
    return np.load(Path(folder) / f"device-{device}.npy")


def trained(spec: ModelConfig, rows: np.ndarray, epochs: int,
            seed: int) -> tuple[model.AutoEncoder, summaries.Normalisation]:
    """A model trained ``epochs`` passes over raw ``rows`` from the seeded initial weights, normalised
    with the rows' own moments."""
    net = model.build(spec)
    norm = summaries.Moments.of(rows, spec).normalisation()
    model.train(net, norm.inputs(rows), spec, epochs=epochs, seed=seed)
    return net, norm


def threshold_of(net: model.AutoEncoder, inputs: np.ndarray, spec: ModelConfig) -> float:
    """The threshold rule of every approach: the histogram quantile the ServerApp computes."""
    return summaries.histogram_quantile(np.asarray(summaries.histogram_of(model.scores(net, inputs))),
                                    spec.threshold_quantile)


def scored(net: model.AutoEncoder, norm: summaries.Normalisation, thresholds: Mapping[int, float] | float,
           partitions: Sequence[Partition]) -> Scores:
    """Scores on the held-out parts, at one threshold or one per device."""
    test = np.concatenate([p.test for p in partitions])
    labels = np.concatenate([p.test_labels for p in partitions])
    per_row = np.concatenate([np.full(len(p.test), thresholds if isinstance(thresholds, float) else
                                      thresholds[p.device]) for p in partitions])
    return score(model.scores(net, norm.inputs(test)), labels, per_row)


def central(partitions: Sequence[Partition], spec: ModelConfig, epochs: int) -> Scores:
    """One model on every device's training rows pooled."""
    pooled = np.concatenate([p.train for p in partitions])
    net, norm = trained(spec, pooled, epochs, seed=spec.seed)
    return scored(net, norm, threshold_of(net, norm.inputs(pooled), spec), partitions)


def local(partitions: Sequence[Partition], spec: ModelConfig, epochs: int) -> tuple[Scores, float]:
    """Each device alone, own model, normalisation and threshold: pooled scores, and the mean of the
    devices' own F1 (over the devices whose held-out part has an anomaly)."""
    all_scores, thresholds, own_f1 = [], [], []
    for p in partitions:
        net, norm = trained(spec, p.train, epochs, seed=spec.seed + p.device)
        s = model.scores(net, norm.inputs(p.test))
        t = np.full(len(p.test), threshold_of(net, norm.inputs(p.train), spec))
        all_scores.append(s)
        thresholds.append(t)
        if p.test_labels.any():
            own_f1.append(score(s, p.test_labels, t).f1)
    labels = np.concatenate([p.test_labels for p in partitions])
    return score(np.concatenate(all_scores), labels, np.concatenate(thresholds)), float(np.mean(own_f1))


@dataclass
class EvaluationSettings:
    """What the evaluation ServerApp and ClientApps read (``$FL_APP_EVALUATION``)."""

    partitions_dir: str
    devices: list[int]  # partition-id i of the simulation is devices[i]
    rounds: int
    local_epochs: int
    model: dict[str, Any]
    result_path: str  # where the ServerApp writes the final weights and threshold (.npz)

    def to_env(self) -> dict[str, str]:
        return {SETTINGS_ENV: json.dumps(asdict(self))}

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> EvaluationSettings:
        try:
            return cls(**json.loads(env[SETTINGS_ENV]))
        except KeyError:
            raise RuntimeError(f"no evaluation settings: run `fl-app evaluate` (it sets {SETTINGS_ENV})") from None

    def model_config(self) -> ModelConfig:
        return ModelConfig(**self.model)


@dataclass
class FederatedResult:
    """What the evaluation ServerApp hands back: the final global model and its thresholds."""

    weights: list[np.ndarray]
    normalisation: summaries.Normalisation
    threshold: float
    device_thresholds: dict[int, float]

    def save(self, path: str | Path) -> None:
        tmp = Path(f"{path}.tmp.npz")
        arrays: dict[str, Any] = {f"w{i}": w for i, w in enumerate(self.weights)}
        devices = sorted(self.device_thresholds)
        np.savez(tmp, threshold=np.float64(self.threshold), centre=self.normalisation.centre,
                 scale=self.normalisation.scale, devices=np.asarray(devices, dtype=np.int64),
                 device_thresholds=np.asarray([self.device_thresholds[d] for d in devices], dtype=np.float64),
                 **arrays)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> FederatedResult:
        with np.load(path) as saved:
            weights = [saved[f"w{i}"] for i in range(sum(k.startswith("w") for k in saved.files))]
            return cls(weights, summaries.Normalisation(saved["centre"], saved["scale"]), float(saved["threshold"]),
                       dict(zip(saved["devices"].tolist(), saved["device_thresholds"].tolist(), strict=True)))
