"""The shared feature function: the same numbers for the same readings wherever they are cut.

The ClientApp folds a device's readings window by window (and its context
survives a restart in Context.state), the scorer micro-batch by micro-batch
(tests/unit/analytics/test_scorer.py), `fl-app evaluate` over the whole
series at once: all three must give each reading the same row.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from flwr.app import Context, RecordDict

from clients import client_app
from core import features, quality
from core.config import ModelConfig, load_config
from core.dataset import synthetic
from core.messages import RunSettings, TrainInstruction
from core.model import build, get_weights


@pytest.fixture(scope="module")
def spec() -> ModelConfig:
    return load_config().fl.model


@pytest.fixture(scope="module")
def series() -> list[dict]:
    frame = synthetic.generate(3000, 3, seed=5)
    part = frame[frame["device_id"] == frame["device_id"].iloc[0]].sort_values("source_time")
    return part.head(60).to_dict("records")


def test_columns_follow_the_configured_context() -> None:
    spec = load_config(["fl.model.features=[temperature]", "fl.model.context=[delta,gap]",
                        "fl.model.hidden=[3,2]"]).fl.model
    assert features.columns(spec) == ["temperature", "temperature_delta", "gap", "time_sin", "time_cos"]
    rows, _ = features.rows([{"temperature": 20.0, "source_time": "2004-03-01T00:00:00+00:00"},
                             {"temperature": 23.5, "source_time": "2004-03-01T00:00:30+00:00"}], spec)
    np.testing.assert_allclose(rows[:, :3], [[20.0, 0.0, 0.0], [23.5, 3.5, math.log1p(30)]])


def test_deviation_and_spread_look_back_on_the_window(spec: ModelConfig) -> None:
    small = load_config(["fl.model.features=[temperature]", "fl.model.context=[deviation,spread]",
                         "fl.model.context_window=3", "fl.model.hidden=[3,2]"]).fl.model
    values = [10.0, 11.0, 12.0, 30.0]
    rows, context = features.rows([{"temperature": v, "source_time": f"2004-03-01T00:00:0{i}+00:00"}
                                   for i, v in enumerate(values)], small)
    np.testing.assert_allclose(rows[3, 1], 30.0 - np.mean([10.0, 11.0, 12.0]))  # previous 3
    np.testing.assert_allclose(rows[3, 2], np.std([11.0, 12.0, 30.0]))  # last 3, this one included
    assert context.values == [[11.0], [12.0], [30.0]]


def test_repeat_counts_the_unbroken_run_of_the_same_value_within_the_window() -> None:
    small = load_config(["fl.model.features=[temperature,humidity]", "fl.model.context=[repeat]",
                         "fl.model.context_window=3", "fl.model.hidden=[3,2]"]).fl.model
    values = [(20.0, 40.0), (20.0, 41.0), (20.0, 41.0), (20.0, 41.0), (20.0, 41.0), (20.5, 41.0), (20.0, 41.0)]
    rows, _ = features.rows([{"temperature": t, "humidity": h, "source_time": f"2004-03-01T00:00:0{i}+00:00"}
                             for i, (t, h) in enumerate(values)], small)
    assert features.columns(small)[2:4] == ["temperature_repeat", "humidity_repeat"]
    # capped at the window (3); a value seen before, but not just before, is no run
    assert rows[:, 2:4].tolist() == [[0, 0], [1, 0], [2, 1], [3, 2], [3, 3], [0, 3], [0, 3]]


@pytest.mark.parametrize("cuts", [[1], [7, 8, 30], [59]])
def test_a_series_cut_anywhere_gives_the_rows_of_the_whole(spec: ModelConfig, series: list[dict],
                                                           cuts: list[int]) -> None:
    whole, _ = features.rows(series, spec)
    parts, context, start = [], None, 0
    for cut in [*cuts, len(series)]:
        rows, context = features.rows(series[start:cut], spec, context)
        context = features.StreamContext.from_list(context.to_list(), len(spec.features))  # as stored
        parts.append(rows)
        start = cut
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=0, atol=0)


def test_an_unreadable_stored_context_starts_afresh(spec: ModelConfig) -> None:
    assert features.StreamContext.from_list([1.0, 3.0, 2.0], 4) == features.StreamContext()
    assert features.StreamContext.from_list([], 4) == features.StreamContext()


def _window(readings: list[dict]) -> dict:
    return {"readings": [{**r, "source_time": pd.Timestamp(r["source_time"]).isoformat()} for r in readings]}


def test_the_client_app_and_evaluate_give_a_reading_the_same_row(spec: ModelConfig, series: list[dict]) -> None:
    """Windows of the ClientApp (its context in Context.state, kept across a restart of the ClientApp
    process: a new Context built from the stored records) against evaluate's split of the series."""
    device = int(series[0]["device_id"])
    settings = RunSettings("localhost:1", "w", [device], False, spec.__dict__ | {}, 1, 30.0, 60.0, 1, 2, "fedavg", 0.2,
                           3.0, 3.0, 0.0, 60.0, 0.0, "")
    instruction = TrainInstruction(get_weights(build(spec)), 0, math.inf, 1)
    state = RecordDict()
    rows_seen = []
    for start, stop in [(0, 6), (6, 13), (13, 60)]:
        context = Context(run_id=1, node_id=1, node_config={}, state=state, run_config={})
        client_app.local_update(settings, device, instruction, [_window(series[start:stop])], context)
        stored = context.state.array_records[client_app.STREAM].to_numpy_ndarrays()[0].tolist()
        rows_seen.append(features.StreamContext.from_list(stored, len(spec.features)))
        state = RecordDict(dict(context.state.items()))  # what the SuperNode keeps for the next task
    frame = pd.DataFrame(series).assign(anomaly=lambda f: f["anomaly"].where(f.index != f.index[-1], "spike"))
    partition = quality.split(frame, spec, 0.5)[0]
    evaluated = np.concatenate([partition.train, partition.test])
    buffer = state.array_records[client_app.REPLAY].to_numpy_ndarrays()[0]
    np.testing.assert_allclose(buffer, evaluated[-len(buffer):], rtol=0, atol=1e-12)
    _, context_after = features.rows(series, spec)
    assert rows_seen[-1] == context_after
