"""Peer anomaly detectors for `fl-app evaluate`: what a user could pick instead of the federated autoencoder.

Each peer sees the same split as :func:`core.quality.split` (each device's
series in time order, the first ``train_fraction`` trains, the rest is held
out), is scored on exactly the held-out rows, and sets its threshold without
labels: the ``quantile`` quantile of the scores it gave its training part.

- **iforest-per-device**: one PyOD ``IForest`` per device, fitted on its
  training part; a device's threshold is the quantile of its own training
  scores (each device has its own cut, as ``local`` in :mod:`core.quality`).
- **iforest-global**: one ``IForest`` for all devices' training parts pooled,
  each device's columns standardised with the mean and std of its own
  training part (so one forest serves motes with different offsets); one
  threshold, the quantile of the pooled training scores.
- **half-space-trees**: River's streaming isolation forest, in River's
  documented recipe ``MinMaxScaler() | HalfSpaceTrees()``, test-then-train
  (``score_one`` then ``learn_one``) over each device's whole series in time
  order, held-out part included, as River's own progressive validation does.
  One model per device, as ``local`` and iforest-per-device: a River
  detector learns one stream's normal, and the motes' levels differ. Measured
  on the generated data set against one model over the interleaved stream:
  per device F1 0.23 (quantile 0.995) and 0.25 (0.999), AUROC 0.79; one
  model F1 0.41 and 0.15, AUROC 0.98, but it catches 3 % of the spikes (a
  spike on one mote stays inside the others' range) against 7 %.

Inputs: the raw values of ``fields`` plus their first differences within the
device's series (0 for its first reading): a spike inside a device's normal
range is a jump from its neighbours, not an extreme value. Measured: raw
values alone give iforest-per-device precision 0.04 (0.995), not 0.40: the
battery drains, and 71 % of the normal held-out readings have a voltage
below every training value of their device. Cost: the reading after a spike
jumps back and scores nearly as high.

Parameters are the libraries' defaults (PyOD ``IForest``: 100 trees,
``max_samples=min(256, n)``, all features; River ``HalfSpaceTrees``: 10 trees
of height 8, window 250), with fixed seeds (:data:`SEED`) so two runs give
the same numbers. PyOD's ``contamination`` is left at its default: it only
sets PyOD's own threshold, which is not used. HalfSpaceTrees variants measured
no better (F1 at 0.995): window 1000 0.12, 25 trees of height 15 0.10 (and
140 times slower), limits from the training part 0.003, a StandardScaler 0.07.

pyod and river are in the ``eval`` dependency group (``make setup-eval``),
imported only when a peer runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd

from core import quality
from core.dataset import NORMAL

SEED = 42
INSTALL = "`make setup-eval` (uv sync --group dev --group eval)"


def _library(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise RuntimeError(f"the peer detectors need {name.split('.')[0]} (the eval dependency group): "
                           f"run {INSTALL}") from exc


@dataclass
class _Series:
    """One device's inputs in time order (values then differences), its cut and its held-out labels."""

    device: int
    x: np.ndarray
    cut: int
    test_labels: np.ndarray

    @property
    def train(self) -> np.ndarray:
        return self.x[:self.cut]

    @property
    def test(self) -> np.ndarray:
        return self.x[self.cut:]


def _series(frame: pd.DataFrame, fields: Sequence[str], train_fraction: float) -> Iterator[_Series]:
    """The devices and cuts of :func:`core.quality.split` (same sort, same cut, same devices skipped)."""
    for device in sorted(frame["device_id"].unique()):
        part = frame[frame["device_id"] == device].sort_values("source_time")
        cut = int(len(part) * train_fraction)
        if cut == 0 or cut == len(part):
            continue
        values = part[list(fields)].to_numpy(dtype=np.float64)
        differences = np.diff(values, axis=0, prepend=values[:1])
        yield _Series(int(device), np.hstack([values, differences]), cut,
                      (part["anomaly"] != NORMAL).to_numpy()[cut:])


def _pooled(series: Sequence[_Series], scores: Sequence[np.ndarray], thresholds: Sequence[float]) -> quality.Scores:
    """Held-out scores of every device against its threshold, pooled."""
    return quality.score(np.concatenate(scores), np.concatenate([s.test_labels for s in series]),
                         np.concatenate([np.full(len(s.test), t) for s, t in zip(series, thresholds, strict=True)]))


def _forest(seed: int) -> Any:
    return _library("pyod.models.iforest").IForest(random_state=seed, n_jobs=1)


def iforest_per_device(frame: pd.DataFrame, fields: Sequence[str], train_fraction: float, quantile: float,
                       seed: int = SEED) -> quality.Scores:
    """One IForest per device on its training part; its threshold, the quantile of its training scores."""
    series = list(_series(frame, fields, train_fraction))
    scores, thresholds = [], []
    for s in series:
        forest = _forest(seed).fit(s.train)
        thresholds.append(float(np.quantile(forest.decision_function(s.train), quantile)))
        scores.append(forest.decision_function(s.test))
    return _pooled(series, scores, thresholds)


def iforest_global(frame: pd.DataFrame, fields: Sequence[str], train_fraction: float, quantile: float,
                   seed: int = SEED) -> quality.Scores:
    """One IForest on every device's training part pooled, each device standardised by its own training part."""
    series = list(_series(frame, fields, train_fraction))
    for s in series:
        mean, std = s.train.mean(axis=0), s.train.std(axis=0)
        s.x = (s.x - mean) / np.where(std > 0, std, 1.0)  # a constant column stays 0, not NaN
    pooled = np.concatenate([s.train for s in series])
    forest = _forest(seed).fit(pooled)
    threshold = float(np.quantile(forest.decision_function(pooled), quantile))
    return _pooled(series, [forest.decision_function(s.test) for s in series], [threshold] * len(series))


def half_space_trees(frame: pd.DataFrame, fields: Sequence[str], train_fraction: float, quantile: float,
                     seed: int = SEED) -> quality.Scores:
    """River's HalfSpaceTrees per device, test-then-train over its whole series in time order; the
    threshold, the quantile of the scores it gave the training part (the first window scores 0)."""
    anomaly, preprocessing = _library("river.anomaly"), _library("river.preprocessing")
    names = [*fields, *(f"diff_{f}" for f in fields)]
    series = list(_series(frame, fields, train_fraction))
    scores, thresholds = [], []
    for s in series:
        detector = preprocessing.MinMaxScaler() | anomaly.HalfSpaceTrees(seed=seed)
        out = np.empty(len(s.x))
        for i, row in enumerate(s.x.tolist()):
            reading = dict(zip(names, row, strict=True))
            out[i] = detector.score_one(reading)
            detector.learn_one(reading)
        thresholds.append(float(np.quantile(out[:s.cut], quantile)))
        scores.append(out[s.cut:])
    return _pooled(series, scores, thresholds)


def half_space_trees_prequential(frame: pd.DataFrame, fields: Sequence[str], warmup: int, quantile: float,
                                 seed: int = SEED, refresh: int = 50) -> quality.Scores:
    """HalfSpaceTrees per device, test-then-train over its series, scored as the prequential protocol
    scores ours (:mod:`fl_app.federation.prequential`): every reading after the first ``warmup`` of the
    data set in time order counts; its threshold, the quantile of the scores the device's detector gave
    its earlier readings (recomputed every ``refresh`` readings)."""
    anomaly, preprocessing = _library("river.anomaly"), _library("river.preprocessing")
    names = [*fields, *(f"diff_{f}" for f in fields)]
    ordered = frame.sort_values(["source_time", "device_id"], kind="stable").reset_index(drop=True)
    scores, thresholds = np.zeros(len(ordered)), np.full(len(ordered), np.inf)
    for _, part in ordered.groupby("device_id", sort=True):
        values = part[list(fields)].to_numpy(dtype=np.float64)
        x = np.hstack([values, np.diff(values, axis=0, prepend=values[:1])])
        detector = preprocessing.MinMaxScaler() | anomaly.HalfSpaceTrees(seed=seed)
        out, limit = np.empty(len(x)), np.inf
        for i, row in enumerate(x.tolist()):
            if i and i % refresh == 0:
                limit = float(np.quantile(out[:i], quantile))
            reading = dict(zip(names, row, strict=True))
            out[i] = detector.score_one(reading)
            detector.learn_one(reading)
            thresholds[part.index[i]] = limit
        scores[part.index.to_numpy()] = out
    counted = np.arange(len(ordered)) >= warmup
    labels = (ordered["anomaly"] != NORMAL).to_numpy()
    return quality.score(scores[counted], labels[counted], thresholds[counted])


def require() -> None:
    """Raise the RuntimeError that says how to install the peers' libraries, if they are missing."""
    for name in ("pyod", "river"):
        _library(name)


# name -> peer, per protocol of `fl-app evaluate`
HOLDOUT = {"iforest-per-device": iforest_per_device, "iforest-global": iforest_global,
           "half-space-trees": half_space_trees}
PREQUENTIAL = {"half-space-trees": half_space_trees_prequential}


def peers(frame: pd.DataFrame, fields: Sequence[str], train_fraction: float,
          quantile: float) -> dict[str, quality.Scores]:
    """Every holdout peer's scores on the held-out parts, by its stable name."""
    return {name: peer(frame, fields, train_fraction, quantile) for name, peer in HOLDOUT.items()}
