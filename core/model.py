"""The anomaly model every device trains and the server averages (the Flower "task").

A small feed-forward autoencoder on one reading and its device's recent
context at a time (:mod:`core.features` makes the rows). Every column but the
time of day is standardised with the centre and scale the federation learns
(:class:`Moments`): each device reports the count, sum and sum of squares of
its new readings' rows with its update, the server adds them up over all
rounds and ships the pooled mean and standard deviation with the global model
(:class:`Normalisation`). So no constant fitted to one data set, and no
device's raw values, leave a device; the normalisation equals the one
computed over all devices' readings pooled. Those statistics are in
:mod:`core.summaries` and scoring with a model's weights in :mod:`core.inference`,
both without torch; this module trains.

The anomaly score of a reading is its reconstruction error (mean squared
error over the inputs); a reading is an anomaly when its score exceeds a
threshold: the global one, the ``threshold_quantile`` of the scores of all
devices' data pooled, found without sharing a score (each device sends a
histogram of the received global model's scores on its replay buffer over
fixed bins, :func:`histogram_of`, the server adds them up,
:func:`histogram_quantile`), or, with ``fl.threshold=per_device``, the
device's own quantile of the global model's scores on its buffer, found the same
way from its own histogram and sent as one number. Both describe the model the
devices received, so a new global model carries its predecessor's
thresholds, one round behind.

Windows are small (a device sends ~6 readings per 30 s window at the testing
rate), so each device keeps a bounded :class:`ReplayBuffer` of raw rows:
training runs over the buffer (new window plus a random sample of what came
before), not the window alone. Everything is seeded. Labels are never read here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from core import inference
from core.config import ModelConfig
from core.summaries import Moments, Normalisation, histogram_of, histogram_quantile

# The model is tiny: torch's default of one thread per core only adds synchronisation, and
# while another process busies the cores its threads spin-wait (measured here: 3 epochs of
# central training 180 s with the default, 4.6 s with one thread). One thread also makes the
# results independent of the machine's core count.
torch.set_num_threads(1)


class AutoEncoder(nn.Module):
    """``inputs -> hidden... -> bottleneck -> ...hidden -> inputs`` (:func:`core.inference.layer_sizes`)
    with ReLU between layers."""

    def __init__(self, layers: Sequence[tuple[int, int]]) -> None:
        super().__init__()
        stack: list[nn.Module] = []
        for a, b in layers:
            stack += [nn.Linear(a, b), nn.ReLU()]
        self.net = nn.Sequential(*stack[:-1])  # no ReLU on the output: inputs can be negative

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def input_size(spec: ModelConfig) -> int:
    return inference.layer_sizes(spec)[0][0]


def build(spec: ModelConfig) -> AutoEncoder:
    """A fresh model, initialised from ``spec.seed`` (the federation's round-0 weights)."""
    torch.manual_seed(spec.seed)
    return AutoEncoder(inference.layer_sizes(spec))


def initial_weights(spec: ModelConfig) -> list[np.ndarray]:
    """The federation's round-0 weights: those of :func:`build`."""
    return get_weights(build(spec))


def get_weights(model: nn.Module) -> list[np.ndarray]:
    return [p.detach().cpu().numpy().copy() for p in model.state_dict().values()]


def set_weights(model: nn.Module, arrays: Sequence[np.ndarray]) -> None:
    keys = list(model.state_dict())
    if len(keys) != len(arrays):
        raise ValueError(f"the model has {len(keys)} weight arrays, got {len(arrays)}")
    model.load_state_dict({k: torch.from_numpy(np.asarray(a, dtype=np.float32).copy())
                           for k, a in zip(keys, arrays, strict=True)}, strict=True)



class ReplayBuffer:
    """At most ``capacity`` raw feature rows: a new window goes in whole, random old rows make room.

    Keeps the newest readings (the device's present) and a random sample of its
    past (earlier times of day), so a few readings cannot drag the model away.
    """

    def __init__(self, capacity: int, width: int, rows: np.ndarray | None = None) -> None:
        self.capacity = capacity
        self.rows = np.empty((0, width), dtype=np.float64) if rows is None else np.asarray(rows, dtype=np.float64)

    def add(self, new: np.ndarray, rng: np.random.Generator) -> None:
        if len(new) >= self.capacity:
            self.rows = np.asarray(new[-self.capacity:], dtype=np.float64).copy()
            return
        keep = self.capacity - len(new)
        old = self.rows
        if len(old) > keep:
            old = old[np.sort(rng.choice(len(old), size=keep, replace=False))]
        self.rows = np.concatenate([old, new]).astype(np.float64)

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class TrainResult:
    loss: float  # mean reconstruction loss of the last epoch
    score_mean: float  # mean score of the inputs after training


def train(model: nn.Module, inputs: np.ndarray, spec: ModelConfig, epochs: int, seed: int) -> TrainResult:
    """``epochs`` passes of Adam over normalised ``inputs`` in shuffled mini-batches (deterministic
    under ``seed``)."""
    generator = torch.Generator().manual_seed(seed)
    data = torch.from_numpy(np.asarray(inputs, dtype=np.float32))
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
    return TrainResult(loss=loss_sum / max(seen, 1), score_mean=float(scores(model, inputs).mean()))


@dataclass
class LocalResult:
    """One device's local round: what its update carries."""

    weights: list[np.ndarray]
    loss: float
    score_mean: float
    histogram: list[float]  # of the received global model's scores on the buffer (global threshold)
    threshold: float  # the device's own quantile of those scores (per-device threshold)
    moments: Moments  # of the new rows only: each reading counts once in the federation's totals
    replayed: int = 0  # rows of the buffer trained on besides the new ones
    held_out: int = 0  # new rows left out of training, flagged by the received model


def train_locally(spec: ModelConfig, weights: Sequence[np.ndarray], normalisation: Normalisation | None,
                  buffer: ReplayBuffer, new_rows: np.ndarray, epochs: int, seed: int,
                  threshold: float = math.inf) -> LocalResult:
    """A device's round, the same in the live ClientApp, the evaluation's and the prequential
    evaluation: add ``new_rows`` to ``buffer``, score the buffer with the received global model
    (histogram and own quantile), then train it ``epochs`` passes from ``weights``.

    ``normalisation`` is the global model's; before the federation has one (round 0) the device
    uses its own buffer's. With ``spec.learn_flagged`` off, new rows that the received model scores
    above ``threshold`` (the global one it was sent) stay out of the buffer and the moments: a model
    that trains on an anomaly as it streams by stops seeing the rest of it.
    """
    net = build(spec)
    set_weights(net, weights)
    offered = len(new_rows)
    if not spec.learn_flagged and normalisation is not None and math.isfinite(threshold) and len(new_rows):
        kept = new_rows[scores(net, normalisation.inputs(new_rows)) <= threshold]
        new_rows = kept if len(kept) or len(buffer) else new_rows  # a device's first rows train whatever they score
    if len(new_rows):
        buffer.add(new_rows, np.random.default_rng(seed))
    norm = normalisation if normalisation is not None else Moments.of(buffer.rows, spec).normalisation()
    inputs = norm.inputs(buffer.rows)
    received = histogram_of(scores(net, inputs))
    result = train(net, inputs, spec, epochs=epochs, seed=seed) if len(inputs) else TrainResult(math.nan, math.nan)
    # The device's threshold follows the global one's rule (the bin's upper edge), so the two differ
    # only in whose scores they rest on.
    own = histogram_quantile(np.asarray(received), spec.threshold_quantile) if len(inputs) else math.nan
    learned = min(len(new_rows), buffer.capacity)  # the buffer keeps the newest rows of a large batch
    return LocalResult(get_weights(net), result.loss, result.score_mean, received, own, Moments.of(new_rows, spec),
                       replayed=len(buffer) - learned, held_out=offered - len(new_rows))


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


def scores(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Per-row anomaly score: mean squared reconstruction error over the inputs."""
    if len(x) == 0:
        return np.empty(0, dtype=np.float32)
    model.eval()
    with torch.no_grad():
        data = torch.from_numpy(np.asarray(x, dtype=np.float32))
        out: np.ndarray = ((model(data) - data) ** 2).mean(dim=1).numpy()
    return out
