"""The scorer's per-partition work without Spark (the query itself: tests/integration/test_scorer.py)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime

import numpy as np

from analytics.scorer import ScoringModel, Sink, predictions
from analytics.session import _artifact
from core import model
from core.config import load_config
from core.records import SENSOR_FIELDS, Reading


def reading(seq: int, device: int = 1, temperature: float = 21.0) -> Reading:
    return Reading(event_id=f"0-{seq}", device_id=device, event_time="2026-11-28T10:00:00+00:00",
                   source_time="2004-03-01T08:00:00+00:00", loop=0, seq=seq, temperature=temperature,
                   humidity=40.0, light=200.0, voltage=2.7)


def test_valid_readings_get_the_models_scores_and_invalid_records_none() -> None:
    spec = load_config([]).fl.model
    net = model.build(spec)
    scoring = ScoringModel(round=4, threshold=0.3, weights=model.get_weights(net), spec=asdict(spec))
    sink = Sink("mongodb://unused", "db", 1000, frozenset({1, 2}),
                {f: (-1e6, 1e6) for f in SENSOR_FIELDS})
    good = [reading(1), reading(2, device=2, temperature=35.0)]
    unknown_device = reading(3, device=99).to_json().decode()
    raw = [good[0].to_json().decode(), good[1].to_json()] + [b"\xff{broken", None, float("nan"), unknown_device]
    docs, skipped = predictions(raw, scoring, sink)
    # malformed, empty (None, or NaN as Arrow gives it), unknown device
    assert skipped == {"bad json": 1, "empty record": 2, "unknown device": 1}
    assert [d["event_id"] for d in docs] == ["0-1", "0-2"]
    expected = model.predict(net, [vars(r) for r in good], spec)
    assert np.allclose([d["score"] for d in docs], expected.scores)
    for d, s in zip(docs, expected.scores, strict=True):
        assert d["model_round"] == 4 and d["threshold"] == 0.3 and d["is_anomaly"] == bool(s > 0.3)
        assert d["prediction_type"] == "streaming" and d["event_time"] == datetime(2026, 11, 28, 10, tzinfo=UTC)
        assert set(d["actual"]) == set(d["output"]) == set(d["error"]) == set(spec.features)
        assert all(d["error"][f] == abs(d["actual"][f] - d["output"][f]) for f in spec.features)
    assert docs[1]["actual"]["temperature"] == 35.0


def test_a_batch_of_only_bad_records_scores_nothing() -> None:
    spec = load_config([]).fl.model
    scoring = ScoringModel(1, 0.3, model.get_weights(model.build(spec)), asdict(spec))
    sink = Sink("mongodb://unused", "db", 1000, frozenset({1}), {f: (-1e6, 1e6) for f in SENSOR_FIELDS})
    assert predictions(["", "[]"], scoring, sink) == ([], {"empty record": 1, "not a json object": 1})


def test_a_record_the_model_cannot_score_is_skipped_and_the_others_scored(monkeypatch) -> None:
    spec = load_config([]).fl.model
    scoring = ScoringModel(1, 0.3, model.get_weights(model.build(spec)), asdict(spec))
    sink = Sink("mongodb://unused", "db", 1000, frozenset({1}), {f: (-1e6, 1e6) for f in SENSOR_FIELDS})
    real = model.predict

    def fussy(net, readings, spec):  # a model that chokes on one particular reading
        if any(r["seq"] == 2 for r in readings):
            raise FloatingPointError("boom")
        return real(net, readings, spec)

    monkeypatch.setattr(model, "predict", fussy)
    docs, skipped = predictions([reading(i).to_json().decode() for i in (1, 2, 3)], scoring, sink)
    assert [d["event_id"] for d in docs] == ["0-1", "0-3"]
    assert skipped == {"cannot score: FloatingPointError": 1}


def test_jar_names_without_versions() -> None:
    assert _artifact("kafka-clients-3.9.2.jar") == "kafka-clients"
    assert _artifact("spark-sql-kafka-0-10_2.13-4.2.0.jar") == "spark-sql-kafka-0-10_2.13"
    assert _artifact("scala-library-2.13.15.jar") == "scala-library"
