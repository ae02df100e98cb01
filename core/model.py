"""The anomaly model every device trains and the server averages (the Flower "task").

A small feed-forward autoencoder on one reading at a time: the input is the
configured sensor fields (``fl.model.features``, default all four), each
normalised with the centre and scale the whole federation shares
(``fl.model.normalisation``: fixed in the config, so no device's own
statistics, and no label, leak into the model), plus the time of day as
sine and cosine. The anomaly score of a reading is its reconstruction error
(mean squared error over the inputs); a reading is an anomaly when its score
exceeds the global model's threshold: the ``threshold_quantile`` of the
scores of all devices' data pooled, found without sharing a score: each
device sends a histogram of the received global model's scores on its replay
buffer over fixed bins (:func:`score_histogram`), the server adds them up
(:func:`histogram_quantile`). The histograms describe the model the devices
received, so a new global model carries its predecessor's threshold, one
round behind.

Windows are small (a device sends ~6 readings per 30 s window at the testing
rate), so each device keeps a bounded :class:`ReplayBuffer`: training runs
over the buffer (new window plus a random sample of what came before), not
the window alone. Everything is seeded. Labels are never read here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import torch
from torch import nn

from core.config import ModelConfig

TIME_FEATURES = ("time_sin", "time_cos")

# The model is tiny: torch's default of one thread per core only adds synchronisation, and
# while another process busies the cores its threads spin-wait (measured here: 3 epochs of
# central training 180 s with the default, 4.6 s with one thread). One thread also makes the
# results independent of the machine's core count.
torch.set_num_threads(1)


class AutoEncoder(nn.Module):
    """``inputs -> hidden... -> bottleneck -> ...hidden -> inputs`` with ReLU between layers."""

    def __init__(self, inputs: int, hidden: Sequence[int]) -> None:
        super().__init__()
        sizes = [inputs, *hidden]
        encoder: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            encoder += [nn.Linear(a, b), nn.ReLU()]
        decoder: list[nn.Module] = []
        back = sizes[::-1]
        for a, b in zip(back[:-1], back[1:], strict=True):
            decoder += [nn.Linear(a, b), nn.ReLU()]
        self.net = nn.Sequential(*encoder, *decoder[:-1])  # no ReLU on the output: inputs can be negative

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def input_size(spec: ModelConfig) -> int:
    return len(spec.features) + len(TIME_FEATURES)


def build(spec: ModelConfig) -> AutoEncoder:
    """A fresh model, initialised from ``spec.seed`` (the federation's round-0 weights)."""
    torch.manual_seed(spec.seed)
    return AutoEncoder(input_size(spec), spec.hidden)


def get_weights(model: nn.Module) -> list[np.ndarray]:
    return [p.detach().cpu().numpy().copy() for p in model.state_dict().values()]


def set_weights(model: nn.Module, arrays: Sequence[np.ndarray]) -> None:
    keys = list(model.state_dict())
    if len(keys) != len(arrays):
        raise ValueError(f"the model has {len(keys)} weight arrays, got {len(arrays)}")
    model.load_state_dict({k: torch.from_numpy(np.asarray(a, dtype=np.float32).copy())
                           for k, a in zip(keys, arrays, strict=True)}, strict=True)


def features(readings: Sequence[Mapping[str, object]], spec: ModelConfig) -> np.ndarray:
    """``(n, inputs)`` float32: the normalised sensor fields, then time of day (sin, cos).

    Each reading needs the configured sensor fields and ``source_time`` (ISO
    text or a datetime): the time of day is the sensor's, not the replay's.
    """
    out = np.empty((len(readings), input_size(spec)), dtype=np.float32)
    centre = [spec.normalisation[f][0] for f in spec.features]
    scale = [spec.normalisation[f][1] for f in spec.features]
    for i, r in enumerate(readings):
        for j, name in enumerate(spec.features):
            out[i, j] = (float(r[name]) - centre[j]) / scale[j]  # type: ignore[arg-type]
        stamp = r["source_time"]
        t = stamp if isinstance(stamp, datetime) else datetime.fromisoformat(str(stamp))
        angle = 2 * math.pi * (t.hour * 3600 + t.minute * 60 + t.second) / 86400
        out[i, -2], out[i, -1] = math.sin(angle), math.cos(angle)
    return out


class ReplayBuffer:
    """At most ``capacity`` feature rows: a new window goes in whole, random old rows make room.

    Keeps the newest readings (the device's present) and a random sample of its
    past (earlier times of day), so a few readings cannot drag the model away.
    """

    def __init__(self, capacity: int, width: int, rows: np.ndarray | None = None) -> None:
        self.capacity = capacity
        self.rows = np.empty((0, width), dtype=np.float32) if rows is None else rows.astype(np.float32)

    def add(self, new: np.ndarray, rng: np.random.Generator) -> None:
        if len(new) >= self.capacity:
            self.rows = new[-self.capacity:].copy()
            return
        keep = self.capacity - len(new)
        old = self.rows
        if len(old) > keep:
            old = old[np.sort(rng.choice(len(old), size=keep, replace=False))]
        self.rows = np.concatenate([old, new]).astype(np.float32)

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class TrainResult:
    loss: float  # mean reconstruction loss of the last epoch
    score_mean: float  # mean score of the buffer after training


def train(model: nn.Module, buffer: ReplayBuffer, spec: ModelConfig, epochs: int, seed: int) -> TrainResult:
    """``epochs`` passes of Adam over the buffer in shuffled mini-batches (deterministic under ``seed``)."""
    generator = torch.Generator().manual_seed(seed)
    data = torch.from_numpy(buffer.rows)
    optimiser = torch.optim.Adam(model.parameters(), lr=spec.learning_rate)
    model.train()
    loss_sum, seen = 0.0, 0
    for _ in range(epochs):
        loss_sum, seen = 0.0, 0
        for batch in data[torch.randperm(len(data), generator=generator)].split(spec.batch_size):
            optimiser.zero_grad()
            loss = nn.functional.mse_loss(model(batch), batch)
            loss.backward()
            optimiser.step()
            loss_sum += loss.item() * len(batch)
            seen += len(batch)
    return TrainResult(loss=loss_sum / max(seen, 1), score_mean=float(scores(model, buffer.rows).mean()))


def client_seed(spec: ModelConfig, server_round: int, device: int) -> int:
    """The seed of one device's training in one round (its replay-buffer sample and batch order).

    The one rule for the live ClientApp (``clients.client_app``) and the
    evaluation's (``clients.evaluation_app``, through ``core.quality``), so that
    ``fl-app evaluate`` measures the very training the federation runs. It is the
    live ClientApp's formula; the evaluation had one of its own
    (``seed + 1000 * round + device``) until both were made one. Distinct for every
    device and round below round 10_007.
    """
    return spec.seed * 1_000_003 + device * 10_007 + server_round


def score_quantile(model: nn.Module, rows: np.ndarray, spec: ModelConfig) -> float:
    """The ``threshold_quantile`` of a model's scores on ``rows``."""
    return float(np.quantile(scores(model, rows), spec.threshold_quantile))


# Fixed, log-spaced score bins shared by every device, so histograms add up across the
# federation and the server gets the pooled quantile without seeing a single score.
HISTOGRAM_EDGES = np.logspace(-5, 5, 251)  # 25 bins per decade: ~10 % resolution


def score_histogram(model: nn.Module, rows: np.ndarray) -> list[float]:
    """Counts of the model's scores on ``rows`` per bin of :data:`HISTOGRAM_EDGES` (clipped to its range)."""
    clipped = np.clip(scores(model, rows), HISTOGRAM_EDGES[0], HISTOGRAM_EDGES[-1])
    return np.histogram(clipped, bins=HISTOGRAM_EDGES)[0].astype(float).tolist()


def histogram_quantile(counts: np.ndarray, q: float) -> float:
    """The ``q`` quantile of summed :func:`score_histogram` counts: the upper edge of its bin."""
    total = counts.sum()
    if total <= 0:
        return float("inf")
    index = int(np.searchsorted(np.cumsum(counts), q * total))
    return float(HISTOGRAM_EDGES[min(index + 1, len(HISTOGRAM_EDGES) - 1)])


def scores(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Per-row anomaly score: mean squared reconstruction error over the inputs."""
    if len(x) == 0:
        return np.empty(0, dtype=np.float32)
    model.eval()
    with torch.no_grad():
        data = torch.from_numpy(np.asarray(x, dtype=np.float32))
        out: np.ndarray = ((model(data) - data) ** 2).mean(dim=1).numpy()
    return out


@dataclass
class Predictions:
    """What a model makes of readings: per reading and configured sensor field (``spec.features``)
    the reconstructed value in the field's own unit and the absolute error; and the score."""

    fields: list[str]
    outputs: np.ndarray  # (n, fields)
    errors: np.ndarray  # (n, fields): |reading - output|
    scores: np.ndarray  # (n,): the anomaly score (see :func:`scores`)


def predict(model: nn.Module, readings: Sequence[Mapping[str, object]], spec: ModelConfig) -> Predictions:
    """Reconstruct ``readings`` (as :func:`features` takes them) and score them."""
    x = features(readings, spec)
    model.eval()
    with torch.no_grad():
        y = model(torch.from_numpy(x)).numpy() if len(x) else np.empty_like(x)
    fields = list(spec.features)
    centre = np.array([spec.normalisation[f][0] for f in fields], dtype=np.float64)
    scale = np.array([spec.normalisation[f][1] for f in fields], dtype=np.float64)
    outputs = y[:, :len(fields)] * scale + centre
    actual = np.array([[float(r[f]) for f in fields] for r in readings], dtype=np.float64).reshape(-1, len(fields))  # type: ignore[arg-type]
    return Predictions(fields, outputs, np.abs(actual - outputs), ((y - x) ** 2).mean(axis=1))
