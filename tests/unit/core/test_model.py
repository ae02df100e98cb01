"""The anomaly model: features, replay buffer, deterministic training, scores that separate anomalies."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core import model
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


def test_features_are_normalised_sensors_then_time_of_day(spec: ModelConfig) -> None:
    reading = {"temperature": 24.0, "humidity": 39.0, "light": 800.0, "voltage": 2.5,
               "source_time": "2004-03-01T06:00:00+00:00", "anomaly": "spike"}
    x = model.features([reading], spec)
    assert x.shape == (1, 6) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], [1.0, 0.0, 1.0, -1.0, 1.0, 0.0], atol=1e-6)  # 6 h: sin 1, cos 0


def test_a_subset_of_sensors_is_configuration() -> None:
    spec = load_config(["fl.model.features=[temperature,voltage]"]).fl.model
    net = model.build(spec)
    x = model.features([{"temperature": 21.0, "voltage": 2.7, "source_time": "2004-03-01T00:00:00+00:00"}], spec)
    assert x.shape == (1, 4) and model.scores(net, x).shape == (1,)


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
    x = model.features(rows(frame[frame["device_id"] == 1].head(300)), spec)

    def run() -> tuple[list[np.ndarray], float, float]:
        net = model.build(spec)
        buffer = model.ReplayBuffer(spec.replay_size, x.shape[1])
        buffer.add(x, np.random.default_rng(1))
        before = float(model.scores(net, x).mean())
        result = model.train(net, buffer, spec, epochs=5, seed=7)
        return model.get_weights(net), before, result.loss

    (w1, before, loss1), (w2, _, loss2) = run(), run()
    for a, b in zip(w1, w2, strict=True):
        np.testing.assert_array_equal(a, b)
    assert loss1 == loss2 and loss1 < 0.5 * before


def test_scores_separate_labelled_anomalies_without_seeing_labels(spec: ModelConfig, frame: pd.DataFrame) -> None:
    net = model.build(spec)
    buffer = model.ReplayBuffer(5000, model.input_size(spec))
    normal = frame[frame["anomaly"] == "normal"]
    buffer.add(model.features(rows(normal.sample(5000, random_state=0)), spec), np.random.default_rng(0))
    model.train(net, buffer, spec, epochs=10, seed=0)
    held = frame.sample(6000, random_state=1)
    s = model.scores(net, model.features(rows(held), spec))
    odd = (held["anomaly"] != "normal").to_numpy()
    assert odd.sum() > 20
    assert np.median(s[odd]) > 5 * np.median(s[~odd])


def test_weights_round_trip_and_a_wrong_count_is_refused(spec: ModelConfig) -> None:
    a, b = model.build(spec), model.build(load_config(["fl.model.seed=1"]).fl.model)
    model.set_weights(b, model.get_weights(a))
    for x, y in zip(model.get_weights(a), model.get_weights(b), strict=True):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="weight arrays"):
        model.set_weights(b, model.get_weights(a)[:-1])
