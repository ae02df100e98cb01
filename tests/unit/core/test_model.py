"""The anomaly model: features, replay buffer, deterministic training, scores that separate anomalies."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core import features, model, summaries
from core.config import ModelConfig, load_config
from core.dataset import synthetic


@pytest.fixture(scope="module")
def spec() -> ModelConfig:
    return load_config().fl.model


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return synthetic.generate(20_000, 53, seed=3)


def rows(frame: pd.DataFrame) -> list[dict]:
    return frame.to_dict("records")


def test_inputs_are_standardised_columns_then_time_of_day(spec: ModelConfig) -> None:
    reading = {"temperature": 24.0, "humidity": 39.0, "light": 800.0, "voltage": 2.5,
               "source_time": "2004-03-01T06:00:00+00:00", "anomaly": "spike"}
    raw, _ = features.rows([reading], spec)
    width = features.normalised_width(spec)
    norm = summaries.Normalisation(np.full(width, 1.0), np.full(width, 2.0))
    x = norm.inputs(raw)
    assert x.shape == (1, model.input_size(spec)) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, :4], [11.5, 19.0, 399.5, 0.75])  # (value - 1) / 2
    np.testing.assert_allclose(x[0, -2:], [1.0, 0.0], atol=1e-6)  # 6 h: sin 1, cos 0, not normalised


def test_a_subset_of_sensors_and_no_context_is_configuration() -> None:
    spec = load_config(["fl.model.features=[temperature,voltage]", "fl.model.context=[]",
                        "fl.model.hidden=[8,3]"]).fl.model
    net = model.build(spec)
    raw, _ = features.rows([{"temperature": 21.0, "voltage": 2.7, "source_time": "2004-03-01T00:00:00+00:00"}], spec)
    x = summaries.Moments.of(raw, spec).normalisation().inputs(raw)
    assert x.shape == (1, 4) and model.scores(net, x).shape == (1,)


def test_moments_add_up_to_the_pooled_mean_and_spread(spec: ModelConfig, frame: pd.DataFrame) -> None:
    raw, _ = features.rows(rows(frame[frame["device_id"] == 1].head(400)), spec)
    parts = [raw[:7], raw[7:150], raw[150:]]
    summed = sum((summaries.Moments.of(part, spec) for part in parts[1:]), summaries.Moments.of(parts[0], spec))
    pooled = raw[:, :features.normalised_width(spec)]
    norm = summed.normalisation()
    np.testing.assert_allclose(norm.centre, pooled.mean(axis=0), rtol=1e-9, atol=1e-12)
    spread = pooled.std(axis=0)
    floor = summaries.MIN_RELATIVE_SCALE * (1 + np.abs(pooled.mean(axis=0)))
    np.testing.assert_allclose(norm.scale, np.maximum(spread, floor), rtol=1e-6)
    back = summaries.Moments.from_list(summed.to_list(), features.normalised_width(spec))
    assert back.to_list() == summed.to_list()
    with pytest.raises(ValueError, match="finite"):
        summaries.Moments.from_list([float("nan")] * len(summed.to_list()), features.normalised_width(spec))
    with pytest.raises(ValueError, match="numbers"):
        summaries.Moments.from_list(summed.to_list()[:-1], features.normalised_width(spec))


def test_replay_buffer_is_bounded_and_keeps_the_newest_window() -> None:
    rng = np.random.default_rng(0)
    buffer = model.ReplayBuffer(capacity=50, width=2)
    for start in range(0, 200, 6):
        window = np.arange(start, start + 6, dtype=np.float32).repeat(2).reshape(-1, 2)
        buffer.add(window, rng)
        assert len(buffer) <= 50
        np.testing.assert_array_equal(buffer.rows[-6:], window)  # the newest window is always whole
    assert len(buffer) == 50 and buffer.rows[:, 0].min() < 150  # and some of the past stays


def test_training_is_deterministic_under_a_seed_and_lowers_the_loss(spec: ModelConfig, frame: pd.DataFrame) -> None:
    raw, _ = features.rows(rows(frame[frame["device_id"] == 1].head(300)), spec)
    x = summaries.Moments.of(raw, spec).normalisation().inputs(raw)

    def run() -> tuple[list[np.ndarray], float, float]:
        net = model.build(spec)
        before = float(model.scores(net, x).mean())
        result = model.train(net, x, spec, epochs=5, seed=7)
        return model.get_weights(net), before, result.loss

    (w1, before, loss1), (w2, _, loss2) = run(), run()
    for a, b in zip(w1, w2, strict=True):
        np.testing.assert_array_equal(a, b)
    assert loss1 == loss2 and loss1 < 0.9 * before


def test_scores_separate_labelled_anomalies_without_seeing_labels(spec: ModelConfig, frame: pd.DataFrame) -> None:
    series = {d: features.rows(rows(part.sort_values("source_time")), spec)[0]
              for d, part in frame.groupby("device_id")}
    raw = np.concatenate(list(series.values()))
    odd = np.concatenate([(part.sort_values("source_time")["anomaly"] != "normal").to_numpy()
                          for _, part in frame.groupby("device_id")])
    norm = summaries.Moments.of(raw, spec).normalisation()  # labels never used: anomalies are in the moments too
    net = model.build(spec)
    train = np.random.default_rng(0).choice(len(raw), 5000, replace=False)
    model.train(net, norm.inputs(raw[train]), spec, epochs=10, seed=0)
    s = model.scores(net, norm.inputs(raw))
    assert odd.sum() > 20
    assert np.median(s[odd]) > 5 * np.median(s[~odd])


def test_train_locally_reports_the_received_models_scores_and_the_new_rows_moments(spec: ModelConfig,
                                                                                   frame: pd.DataFrame) -> None:
    raw, _ = features.rows(rows(frame[frame["device_id"] == 2].head(200)), spec)
    start = model.get_weights(model.build(spec))
    buffer = model.ReplayBuffer(spec.replay_size, raw.shape[1], raw[:150])
    norm = summaries.Moments.of(raw, spec).normalisation()
    result = model.train_locally(spec, start, norm, buffer, raw[150:], epochs=1, seed=3)
    received = model.scores(model.build(spec), norm.inputs(buffer.rows))  # the seeded start = `start`
    assert sum(result.histogram) == len(buffer) == 200
    # the global threshold's rule on the device's own histogram: the upper edge of the quantile's bin
    assert result.threshold == summaries.histogram_quantile(np.array(result.histogram), spec.threshold_quantile)
    quantile = float(np.quantile(received, spec.threshold_quantile))
    assert quantile <= result.threshold <= 1.1 * quantile  # bins of ~10 %
    assert result.moments.count == 50  # the new rows only: each reading counts once in the totals
    assert any(not np.array_equal(a, b) for a, b in zip(result.weights, start, strict=True))


def test_weights_round_trip_and_a_wrong_count_is_refused(spec: ModelConfig) -> None:
    a, b = model.build(spec), model.build(load_config(["fl.model.seed=1"]).fl.model)
    model.set_weights(b, model.get_weights(a))
    for x, y in zip(model.get_weights(a), model.get_weights(b), strict=True):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="weight arrays"):
        model.set_weights(b, model.get_weights(a)[:-1])


def test_flagged_new_rows_stay_out_of_the_buffer_unless_it_would_be_empty(spec: ModelConfig,
                                                                         frame: pd.DataFrame) -> None:
    raw, _ = features.rows(rows(frame[frame["device_id"] == 3].head(120)), spec)
    norm = summaries.Moments.of(raw, spec).normalisation()
    start = model.get_weights(model.build(spec))
    received = model.scores(model.build(spec), norm.inputs(raw[100:]))
    threshold = float(np.median(received))
    buffer = model.ReplayBuffer(spec.replay_size, raw.shape[1], raw[:100])
    result = model.train_locally(spec, start, norm, buffer, raw[100:], epochs=1, seed=1, threshold=threshold)
    assert len(buffer) == 100 + int((received <= threshold).sum()) < 120  # the flagged half left out
    assert result.moments.count == int((received <= threshold).sum())
    empty = model.ReplayBuffer(spec.replay_size, raw.shape[1])
    first = model.train_locally(spec, start, norm, empty, raw[100:], epochs=1, seed=1, threshold=0.0)
    assert len(empty) == 20 and np.isfinite(first.loss)  # all flagged, but a first window trains whole
