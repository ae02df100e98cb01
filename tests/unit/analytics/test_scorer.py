"""The scorer's three steps without Spark: validation, features keyed by device with their state, scoring
(the query itself: tests/integration/test_scorer.py)."""

from __future__ import annotations

import json
import random
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from analytics.scorer import Rules, ScoringModel, device_features, predictions, start_afresh_if_stateless, validated
from analytics.session import _artifact
from core import features, inference, model, summaries
from core.config import ModelConfig, load_config
from core.records import SENSOR_FIELDS, Reading, iso
from core.storage import encode_weights

RULES = Rules(frozenset({1, 2}), {f: (-1e6, 1e6) for f in SENSOR_FIELDS})


def reading(seq: int, device: int = 1, temperature: float | None = None) -> Reading:
    start = datetime(2004, 3, 1, 8, tzinfo=UTC)
    return Reading(event_id=f"0-{seq}", device_id=device, event_time="2026-11-28T10:00:00+00:00",
                   source_time=iso(start + timedelta(seconds=31 * seq + seq % 3)), loop=0, seq=seq,
                   temperature=20.0 + seq % 7 if temperature is None else temperature, humidity=38.0 + seq % 5,
                   light=100.0 + 13 * (seq % 11), voltage=2.6 + 0.001 * seq)


class FakeState:
    """What the features step uses of Spark's GroupState."""

    def __init__(self) -> None:
        self.value: tuple[Any, ...] | None = None

    @property
    def exists(self) -> bool:
        return self.value is not None

    @property
    def get(self) -> tuple[Any, ...]:
        assert self.value is not None
        return self.value

    def update(self, value: tuple[Any, ...]) -> None:
        self.value = value


def checked(readings: list[Reading], offsets: list[int] | None = None) -> pd.DataFrame:
    """Step 1's output for readings sent in this order (partition 0)."""
    offsets = list(range(len(readings))) if offsets is None else offsets
    return validated([r.to_json() for r in readings], [0] * len(readings), offsets, RULES)


def values(column: pd.Series) -> list[Any]:
    """A column as a list, missing values as None (pandas' string columns give NaN)."""
    return [None if v is None or (isinstance(v, float) and np.isnan(v)) else v for v in column.tolist()]


def features_of(frame: pd.DataFrame, state: FakeState, spec: ModelConfig) -> pd.DataFrame:
    device = frame["device_id"].iloc[0]
    state_: Any = state  # duck-typed: the step reads exists and get, calls update
    out: list[pd.DataFrame] = list(device_features(asdict(spec))((device,), iter([frame]), state_))
    return pd.concat(out, ignore_index=True)


def scoring_model(spec: ModelConfig, threshold: float = 0.3, per_device: bool = False,
                  device_thresholds: dict[str, float] | None = None) -> tuple[ScoringModel, summaries.Normalisation]:
    width = features.normalised_width(spec)
    norm = summaries.Normalisation(np.linspace(1.0, 2.0, width), np.linspace(0.5, 3.0, width))
    doc = {"round": 4, "threshold": threshold, "device_thresholds": device_thresholds or {},
           "normalisation": {"centre": norm.centre.tolist(), "scale": norm.scale.tolist()},
           "weights": encode_weights(model.get_weights(model.build(spec)))}
    return ScoringModel.from_doc(doc, spec, "per_device" if per_device else "global"), norm


def test_validation_gives_a_device_to_valid_readings_and_a_reason_to_the_rest() -> None:
    raw = [reading(1).to_json(), b"\xff{broken", None, float("nan"), reading(3, device=99).to_json(), b"[]"]
    out = validated(raw, [0, 0, 1, 1, 2, 2], [10, 11, 12, 13, 14, 15], RULES)
    assert out["device_id"].tolist()[0] == 1 and out["device_id"].isna().tolist() == [False] + [True] * 5
    assert json.loads(out["reading"][0])["event_id"] == "0-1"
    # malformed, empty (None, or NaN as Arrow gives it), unknown device, not an object
    assert values(out["reason"]) == [None, "bad json", "empty record", "empty record", "unknown device",
                                      "not a json object"]
    assert out["partition"].tolist() == [0, 0, 1, 1, 2, 2] and out["offset"].tolist()[-1] == 15


def test_features_across_two_micro_batches_equal_the_whole_series_in_offset_order() -> None:
    spec = load_config([]).fl.model
    series = [reading(seq) for seq in range(20)]
    expected, _ = features.rows([vars(r) for r in series], spec)
    assert np.abs(expected[1:, len(spec.features):-2]).sum() > 0  # the context columns say something
    state = FakeState()
    parts = []
    for start, end in ((0, 12), (12, 20)):  # two micro-batches, each handed over shuffled
        order = list(range(start, end))
        random.Random(start).shuffle(order)
        parts.append(features_of(checked([series[i] for i in order], order), state, spec))
        assert state.exists
    out = pd.concat(parts, ignore_index=True)
    assert out["event_id"].tolist() == [r.event_id for r in series]  # sorted back by offset
    assert out["reason"].isna().all() and out["n"].tolist() == [1] * 20
    assert np.array_equal(np.array(out["features"].tolist()), expected)  # exactly: same code, same floats


def test_readings_the_producer_sends_again_are_counted_and_leave_the_context_as_it_was() -> None:
    """A restarted producer resends from its checkpoint: the Flink job drops the copies before the
    ClientApp's windows, so the scorer must not fold them into the device's context either."""
    spec = load_config([]).fl.model
    series = [reading(seq) for seq in range(20)]
    expected, _ = features.rows([vars(r) for r in series], spec)
    state = FakeState()
    first = features_of(checked(series[:12]), state, spec)
    # The next micro-batch: readings 7..11 again (later offsets), then the new ones; one new copy too.
    again = [*series[7:12], *series[12:16], series[15], *series[16:]]
    second = features_of(checked(again, list(range(12, 12 + len(again)))), state, spec)
    scored = second[second["reason"].isna()]
    assert dict(zip(second["reason"].dropna(), second["n"][second["reason"].notna()], strict=True)) == {
        "sent again": 6}
    out = pd.concat([first, scored], ignore_index=True)
    assert out["event_id"].tolist() == [r.event_id for r in series]  # each reading once
    assert np.array_equal(np.array(out["features"].tolist()), expected)


def test_a_state_written_before_positions_were_kept_is_read_as_a_bare_context() -> None:
    spec = load_config([]).fl.model
    series = [reading(seq) for seq in range(10)]
    expected, context = features.rows([vars(r) for r in series], spec)
    state = FakeState()
    state.update((np.asarray(context.to_list(), dtype=np.float64).tobytes(),))  # the old layout
    more = [reading(seq) for seq in range(10, 14)]
    out = features_of(checked(more), state, spec)
    whole, _ = features.rows([vars(r) for r in series + more], spec)
    assert np.array_equal(np.array(out["features"].tolist()), whole[10:])


def test_the_invalid_records_group_is_a_count_per_reason_and_keeps_no_state() -> None:
    spec = load_config([]).fl.model
    frame = validated([b"nope", None, b"nope", reading(1, device=99).to_json()], [0] * 4, [0, 1, 2, 3], RULES)
    state = FakeState()
    out = features_of(frame, state, spec)
    assert dict(zip(out["reason"], out["n"], strict=True)) == {"bad json": 2, "empty record": 1, "unknown device": 1}
    assert out["device_id"].isna().all() and not state.exists
    scoring, _ = scoring_model(spec)
    docs, skipped = predictions(out, scoring)
    assert docs == [] and skipped == {"bad json": 2, "empty record": 1, "unknown device": 1}


def test_scores_are_the_global_models_with_its_normalisation_and_the_chosen_threshold() -> None:
    spec = load_config([]).fl.model
    rows = pd.concat([features_of(checked([reading(s, device=d) for s in range(5)]), FakeState(), spec)
                      for d in (1, 2)], ignore_index=True)
    raw = np.array(rows["features"].tolist())
    for per_device, wanted in ((False, {1: 0.3, 2: 0.3}), (True, {1: 0.3, 2: 0.05})):
        scoring, norm = scoring_model(spec, 0.3, per_device, {"2": 0.05})  # device 1 sent none of its own
        docs, skipped = predictions(rows, scoring)
        assert skipped == {} and [d["event_id"] for d in docs] == rows["event_id"].tolist()
        net = model.build(spec)
        model.set_weights(net, scoring.weights)
        expected = model.scores(net, norm.inputs(raw))  # torch's forward pass; the scorer's is numpy
        assert np.allclose([d["score"] for d in docs], expected, rtol=1e-5)
        for d, s in zip(docs, expected, strict=True):
            assert d["threshold"] == wanted[d["device_id"]] and d["is_anomaly"] == bool(s > d["threshold"])
            assert d["model_round"] == 4 and d["prediction_type"] == "streaming"
            assert d["event_time"] == datetime(2026, 11, 28, 10, tzinfo=UTC)
            assert all(d["error"][f] == pytest.approx(abs(d["actual"][f] - d["output"][f])) for f in spec.features)
    assert docs[0]["actual"] == {f: float(getattr(reading(0), f)) for f in spec.features}


def test_a_row_the_model_cannot_score_is_skipped_and_the_others_scored(monkeypatch) -> None:
    spec = load_config([]).fl.model
    rows = features_of(checked([reading(i) for i in (1, 2, 3)]), FakeState(), spec)
    scoring, _ = scoring_model(spec)
    real = inference.predict

    def fussy(weights, rows, normalisation, spec):  # a model that chokes on one particular reading
        if np.any(rows[:, 0] == reading(2).temperature):
            raise FloatingPointError("boom")
        return real(weights, rows, normalisation, spec)

    monkeypatch.setattr(inference, "predict", fussy)
    docs, skipped = predictions(rows, scoring)
    assert [d["event_id"] for d in docs] == ["0-1", "0-3"]
    assert skipped == {"cannot score: FloatingPointError": 1}


def test_a_reading_the_features_cannot_take_is_counted_and_the_context_goes_on(monkeypatch) -> None:
    spec = load_config([]).fl.model
    real = features.rows

    def fussy(readings, spec, context=None):
        if any(r["seq"] == 2 for r in readings):
            raise OverflowError("boom")
        return real(readings, spec, context)

    monkeypatch.setattr(features, "rows", fussy)
    out = features_of(checked([reading(i) for i in (1, 2, 3)]), FakeState(), spec)
    assert values(out["event_id"]) == ["0-1", "0-3", None]
    assert out["reason"].tolist()[-1] == "cannot score: OverflowError" and out["n"].tolist() == [1, 1, 1]
    expected, _ = real([vars(reading(i)) for i in (1, 3)], spec)
    assert np.array_equal(np.array(out["features"].tolist()[:2]), expected)


def test_a_global_model_without_normalisation_is_refused() -> None:
    spec = load_config([]).fl.model
    doc = {"round": 1, "threshold": 0.3, "weights": encode_weights(model.get_weights(model.build(spec)))}
    with pytest.raises(ValueError, match="no normalisation"):
        ScoringModel.from_doc(doc, spec)
    with pytest.raises(ValueError, match="finite centres"):
        ScoringModel.from_doc({**doc, "normalisation": {"centre": [0.0], "scale": [1.0]}}, spec)
    # A round of the previous version (6 inputs) fits no task of this model: refused on the driver,
    # not raised in every Spark task of the query.
    width = features.normalised_width(spec)
    old = {**doc, "normalisation": {"centre": [0.0] * width, "scale": [1.0] * width},
           "weights": encode_weights(model.get_weights(model.build(load_config(
               ["fl.model.context=[]"]).fl.model)))}
    with pytest.raises(ValueError, match="do not fit the configured model"):
        ScoringModel.from_doc(old, spec)
    # Weights that are not numbers a reading can be scored with: refused too (torch took them before).
    fresh = model.initial_weights(spec)
    for bad in (float("nan"), float("inf")):
        poisoned = {**old, "weights": encode_weights([np.full_like(fresh[0], bad), *fresh[1:]])}
        with pytest.raises(ValueError, match="not finite"):
            ScoringModel.from_doc(poisoned, spec)


def test_a_stateless_checkpoint_is_started_afresh_and_a_stateful_one_kept(tmp_path: Path) -> None:
    old, new, empty = tmp_path / "old", tmp_path / "new", tmp_path / "empty"
    for path in (old, new):
        (path / "commits").mkdir(parents=True)
        (path / "commits" / "0").write_text("v1")
    (new / "state" / "0").mkdir(parents=True)
    (empty / "offsets").mkdir(parents=True)
    assert start_afresh_if_stateless(old) and not old.exists()
    assert not start_afresh_if_stateless(new) and (new / "commits" / "0").exists()
    assert not start_afresh_if_stateless(empty) and empty.exists()  # nothing done yet: no state to miss
    assert not start_afresh_if_stateless(tmp_path / "none")


def test_jar_names_without_versions() -> None:
    assert _artifact("kafka-clients-3.9.2.jar") == "kafka-clients"
    assert _artifact("spark-sql-kafka-0-10_2.13-4.2.0.jar") == "spark-sql-kafka-0-10_2.13"
    assert _artifact("scala-library-2.13.15.jar") == "scala-library"


def test_a_position_past_what_a_float_holds_exactly_still_tells_the_next_reading_from_a_copy() -> None:
    """loop and seq go up to 2**63 - 1; a float64 rounds 2**60 + 200 up past 2**60 + 201, and the
    next reading would be counted as sent again and never scored."""
    spec = load_config([]).fl.model
    big = 2 ** 60
    first = replace(reading(1), loop=big, seq=big + 200)  # a float64 makes it 2**60 + 256
    second = replace(reading(2), loop=big, seq=big + 201)
    state = FakeState()
    features_of(checked([first]), state, spec)
    out = features_of(checked([second, first], [1, 2]), state, spec)
    assert out["event_id"].dropna().tolist() == [second.event_id]
    assert dict(zip(out["reason"].dropna(), out["n"][out["reason"].notna()], strict=True)) == {"sent again": 1}
