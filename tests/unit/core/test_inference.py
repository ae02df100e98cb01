"""The numpy forward pass the scorer uses equals torch's, and refuses weights of another model."""

from __future__ import annotations

import numpy as np
import pytest

from core import features, inference, model
from core.config import load_config
from core.summaries import Moments, Normalisation


@pytest.mark.parametrize("hidden", ["[16,8]", "[32,16,4]", "[5]"])
def test_shapes_and_outputs_are_torchs(hidden: str) -> None:
    spec = load_config([f"fl.model.hidden={hidden}"]).fl.model
    net = model.build(spec)
    rng = np.random.default_rng(3)
    # Weights away from the initial ones, so that a ReLU at the wrong place shows.
    weights = [(w + rng.normal(0, 0.5, w.shape)).astype(np.float32) for w in model.get_weights(net)]
    model.set_weights(net, weights)
    assert inference.weight_shapes(spec) == [w.shape for w in weights]
    x = rng.normal(0, 2, (200, model.input_size(spec))).astype(np.float32)
    import torch

    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    assert np.allclose(inference.reconstruct(weights, x), expected, rtol=1e-5, atol=1e-5)
    identity = Normalisation(np.zeros(features.normalised_width(spec)), np.ones(features.normalised_width(spec)))
    assert np.allclose(inference.predict(weights, x, identity, spec).scores, model.scores(net, x), rtol=1e-5, atol=1e-6)


def test_predictions_are_in_the_fields_units() -> None:
    spec = load_config([]).fl.model
    rng = np.random.default_rng(5)
    rows = rng.normal(20, 5, (30, len(features.columns(spec))))
    norm = Moments.of(rows, spec).normalisation()
    weights = model.initial_weights(spec)
    out = inference.predict(weights, rows, norm, spec)
    y = inference.reconstruct(weights, norm.inputs(rows))
    n = len(spec.features)
    assert np.allclose(out.outputs, y[:, :n] * norm.scale[:n] + norm.centre[:n])
    assert np.allclose(out.errors, np.abs(rows[:, :n] - out.outputs))
    assert out.fields == list(spec.features) and out.scores.shape == (30,)


def test_weights_of_another_model_are_refused() -> None:
    spec = load_config([]).fl.model
    weights = model.initial_weights(spec)
    inference.check(weights, spec)
    with pytest.raises(ValueError, match="weight arrays"):
        inference.check(weights[:-1], spec)
    with pytest.raises(ValueError, match="shape"):
        inference.check([weights[0].T, *weights[1:]], spec)
    with pytest.raises(ValueError, match="not finite"):
        inference.check([np.full_like(weights[0], np.nan), *weights[1:]], spec)
    other = load_config(["fl.model.hidden=[4]"]).fl.model
    with pytest.raises(ValueError):
        inference.check(weights, other)
