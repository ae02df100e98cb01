"""The peer detectors of `fl-app evaluate`: they find injected spikes with label-free thresholds, give the same
numbers twice, and score exactly the rows :func:`core.quality.split` holds out."""

from __future__ import annotations

import importlib
from dataclasses import asdict, replace

import numpy as np
import pandas as pd
import pytest

from core import quality
from core.config import load_config
from fl_app.federation import peers

FIELDS = ["temperature", "humidity"]
TRAIN_FRACTION = 0.7


def spiky_frame(devices: int = 3, readings: int = 600, seed: int = 0) -> pd.DataFrame:
    """Daily-cycle sensors with 2 spikes in each device's training part and 5 in its held-out part, rows shuffled
    (the peers must put each series in time order themselves), and one device too short to split."""
    rng = np.random.default_rng(seed)
    cut = int(readings * TRAIN_FRACTION)
    parts = []
    for device in range(1, devices + 1):
        k = np.arange(readings)
        phase = 2 * np.pi * k / 150
        temperature = 20 + device + 2 * np.sin(phase) + rng.normal(0, 0.1, readings)
        spikes = np.concatenate([rng.choice(np.arange(20, cut - 5), 2, replace=False),
                                 rng.choice(np.arange(cut + 5, readings - 5), 5, replace=False)])
        temperature[spikes] += rng.choice([-1, 1], spikes.size) * 8
        anomaly = np.full(readings, "normal", dtype=object)
        anomaly[spikes] = "spike"
        parts.append(pd.DataFrame({
            "device_id": device,
            "source_time": pd.Timestamp("2004-02-28", tz="UTC") + pd.to_timedelta(k * 31 + rng.integers(0, 5, readings),
                                                                                   unit="s"),
            "temperature": temperature, "humidity": 40 - 3 * np.sin(phase) + rng.normal(0, 0.2, readings),
            "light": 100.0, "voltage": 2.7, "anomaly": anomaly}))
    short = parts[0].iloc[:1].assign(device_id=devices + 1, anomaly="normal")
    return pd.concat([*parts, short]).sample(frac=1, random_state=seed).reset_index(drop=True)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return spiky_frame()


@pytest.fixture(scope="module")
def results(frame: pd.DataFrame) -> dict[str, quality.Scores]:
    return peers.peers(frame, FIELDS, TRAIN_FRACTION, 0.99)


# Bounds from 10 seeds of spiky_frame. The reading after a spike jumps back (a large difference) and scores
# nearly as high, so precision is about 0.5 at best. Thresholds taken from the held-out scores instead of the
# training scores flag 1 % (2 %) of each device's 180 held-out readings: recall <= 0.36 (0.72).


def test_the_isolation_forests_find_the_spikes(results: dict[str, quality.Scores]) -> None:
    # Measured at 0.99 over 10 seeds: recall 0.93-1, F1 0.64-0.81, AUROC >= 0.996.
    for name in ("iforest-per-device", "iforest-global"):
        s = results[name]
        assert s.recall >= 0.9 and s.f1 >= 0.6 and s.auroc > 0.99, (name, s)


def test_half_space_trees_finds_most_spikes(frame: pd.DataFrame) -> None:
    # Measured at 0.98 over 10 seeds: recall 0.67-1, AUROC 0.89-0.99 (0.80 and 0.955 on this frame); lower than
    # the forests: the online min-max range widens with every spike and the model learns the held-out part too.
    s = peers.half_space_trees(frame, FIELDS, TRAIN_FRACTION, 0.98)
    assert s.recall >= 0.7 and s.auroc > 0.9, s


def test_the_global_forest_sees_each_device_in_its_own_units(frame: pd.DataFrame,
                                                             results: dict[str, quality.Scores]) -> None:
    # Each device is standardised by its own training part, so one device reading Fahrenheit changes
    # nothing (unstandardised, its readings would all sit far out of the others' range).
    other_units = frame.assign(temperature=frame["temperature"].where(frame["device_id"] != 2,
                                                                       frame["temperature"] * 9 / 5 + 32))
    s, before = peers.iforest_global(other_units, FIELDS, TRAIN_FRACTION, 0.99), results["iforest-global"]
    assert (s.flagged, s.recall, s.precision) == (before.flagged, before.recall, before.precision)
    assert s.auroc == pytest.approx(before.auroc, abs=1e-3)


def test_same_numbers_twice(frame: pd.DataFrame, results: dict[str, quality.Scores]) -> None:
    again = peers.peers(frame, FIELDS, TRAIN_FRACTION, 0.99)
    assert list(again) == ["iforest-per-device", "iforest-global", "half-space-trees"]
    assert {k: asdict(v) for k, v in again.items()} == {k: asdict(v) for k, v in results.items()}


def test_the_held_out_rows_are_those_of_quality_split(frame: pd.DataFrame,
                                                      results: dict[str, quality.Scores]) -> None:
    spec = replace(load_config().fl.model, features=FIELDS)
    partitions = quality.split(frame, spec, TRAIN_FRACTION)
    series = list(peers._series(frame, FIELDS, TRAIN_FRACTION))
    assert [s.device for s in series] == [p.device for p in partitions] == [1, 2, 3]  # the short device skipped
    for s, p in zip(series, partitions, strict=True):
        assert len(s.test) == len(p.test) and (s.test_labels == p.test_labels).all()
        held_out = frame[frame["device_id"] == s.device].sort_values("source_time").iloc[s.cut:]
        assert np.array_equal(s.test[:, :2], held_out[FIELDS].to_numpy())
        assert s.x[0, 2:].tolist() == [0.0, 0.0]  # a series' first reading has no difference
    for scores in results.values():
        assert scores.readings == sum(len(p.test) for p in partitions)
        assert scores.anomalies == sum(int(p.test_labels.sum()) for p in partitions) == 15


def test_missing_libraries_name_the_install_command(frame: pd.DataFrame, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.import_module

    def without_river(name: str, package: str | None = None) -> object:
        if name.startswith("river"):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", without_river)
    with pytest.raises(RuntimeError, match=r"need river .*`make setup-eval`"):
        peers.half_space_trees(frame, FIELDS, TRAIN_FRACTION, 0.99)
