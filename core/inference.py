"""The model's forward pass in numpy: scoring readings with a global model's weights, without torch.

:class:`core.model.AutoEncoder` is ``Linear`` layers with a ReLU between two of them and none after
the last; its weights, in ``state_dict`` order, are a (weight, bias) pair per layer. Scoring needs only
that pass, so the scorer's driver and Python workers, which score every reading, never import torch
(~300 MB of private memory per process for this build of torch, measured; issue 22). Training stays
in :mod:`core.model`; ``tests/unit/core/test_inference.py`` holds this pass equal to torch's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core import features as stream_features
from core.config import ModelConfig
from core.summaries import Normalisation


def layer_sizes(spec: ModelConfig) -> list[tuple[int, int]]:
    """``(inputs, outputs)`` of each Linear layer: ``inputs -> hidden... -> bottleneck -> ...hidden -> inputs``."""
    sizes = [len(stream_features.columns(spec)), *spec.hidden]
    back = sizes[::-1]
    return [*zip(sizes[:-1], sizes[1:], strict=True), *zip(back[:-1], back[1:], strict=True)]


def weight_shapes(spec: ModelConfig) -> list[tuple[int, ...]]:
    """The shapes of the model's weight arrays, in ``state_dict`` order."""
    return [shape for a, b in layer_sizes(spec) for shape in ((b, a), (b,))]


def check(weights: Sequence[np.ndarray], spec: ModelConfig) -> None:
    """ValueError unless ``weights`` are finite arrays of the configured model's shapes."""
    expected = weight_shapes(spec)
    if len(weights) != len(expected):
        raise ValueError(f"the model has {len(expected)} weight arrays, got {len(weights)}")
    for i, (array, shape) in enumerate(zip(weights, expected, strict=True)):
        if np.shape(array) != shape:
            raise ValueError(f"weight array {i} has shape {np.shape(array)}, the model's is {shape}")
        if not np.all(np.isfinite(array)):
            raise ValueError(f"weight array {i} is not finite")


def reconstruct(weights: Sequence[np.ndarray], x: np.ndarray) -> np.ndarray:
    """The model's output for inputs ``x`` (float32, as torch computes it)."""
    out = np.asarray(x, dtype=np.float32)
    pairs = list(zip(weights[0::2], weights[1::2], strict=True))
    for i, (weight, bias) in enumerate(pairs):
        out = out @ np.asarray(weight, dtype=np.float32).T + np.asarray(bias, dtype=np.float32)
        if i < len(pairs) - 1:
            out = np.maximum(out, 0.0)
    return out


@dataclass
class Predictions:
    """What a model makes of readings: per reading and configured sensor field (``spec.features``)
    the reconstructed value in the field's own unit and the absolute error; and the score."""

    fields: list[str]
    outputs: np.ndarray  # (n, fields)
    errors: np.ndarray  # (n, fields): |reading - output|
    scores: np.ndarray  # (n,): the anomaly score, mean squared reconstruction error over the inputs


def predict(weights: Sequence[np.ndarray], rows: np.ndarray, normalisation: Normalisation,
            spec: ModelConfig) -> Predictions:
    """Reconstruct raw :func:`core.features.rows` and score them."""
    x = normalisation.inputs(rows)
    y = reconstruct(weights, x)
    n = len(spec.features)
    outputs = y[:, :n] * normalisation.scale[:n] + normalisation.centre[:n]
    actual = np.asarray(rows, dtype=np.float64)[:, :n]
    return Predictions(list(spec.features), outputs, np.abs(actual - outputs), ((y - x) ** 2).mean(axis=1))
