"""What a device tells the federation about its data without sharing a reading (no torch).

- :class:`Moments`: the count, sum and sum of squares of the normalised columns of its new rows;
  moments add up, so the server's totals over all devices and rounds give the pooled mean and
  standard deviation, the :class:`Normalisation` shipped with every global model.
- :func:`histogram_of`: counts of its scores over fixed, log-spaced bins shared by every device;
  counts add up too, so the server finds the pooled quantile (the global threshold) with
  :func:`histogram_quantile` without seeing a single score.

Apart from :mod:`core.model` (torch), so the ServerApp, which only adds these up, never imports
torch (~300 MB of private memory per process for this build of torch, measured; issue 22).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core import features as stream_features
from core.config import ModelConfig

# A column whose spread is below this (relative to its centre) is not scaled up further: a
# constant column (the gap of a mote that reports on a fixed clock) would otherwise turn the
# slightest jitter into a huge score.
MIN_RELATIVE_SCALE = 0.01
# The largest mean or root mean square a row column can have: the widest valid range (light, 0 to
# 1e5, core.config.ValidRanges) and differences across it stay well below.
MAX_MOMENT = 1e6


@dataclass
class Moments:
    """Count, sum and sum of squares of the normalised columns of some rows (sufficient
    statistics: moments of disjoint sets of rows add up to the moments of their union)."""

    count: float
    sums: np.ndarray
    squares: np.ndarray

    @classmethod
    def of(cls, rows: np.ndarray, spec: ModelConfig) -> Moments:
        part = np.asarray(rows, dtype=np.float64)[:, :stream_features.normalised_width(spec)]
        return cls(float(len(part)), part.sum(axis=0), (part ** 2).sum(axis=0))

    def __add__(self, other: Moments) -> Moments:
        return Moments(self.count + other.count, self.sums + other.sums, self.squares + other.squares)

    def to_list(self) -> list[float]:
        return [self.count, *self.sums.tolist(), *self.squares.tolist()]

    @classmethod
    def from_list(cls, values: Sequence[float], width: int) -> Moments:
        """The inverse of :meth:`to_list`, for moments a device sent; ValueError unless they are moments
        some rows can have: ``1 + 2 * width`` finite numbers, a whole count >= 0 (0: sums and squares 0),
        every sum of squares at least the square of the sum over the count (Cauchy-Schwarz), and a mean
        and root mean square within :data:`MAX_MOMENT` (a row's columns are validated sensor values,
        their differences and spreads, a log gap). Moments past that bound would make the running
        totals, and every later normalisation, infinite for good."""
        if len(values) != 1 + 2 * width:
            raise ValueError(f"moments must be {1 + 2 * width} numbers (count, {width} sums, {width} squares), "
                             f"got {len(values)}")
        array = np.asarray(values, dtype=np.float64)
        count, sums, squares = array[0], array[1:1 + width], array[1 + width:]
        if not np.all(np.isfinite(array)) or count < 0 or count != math.floor(count) or np.any(squares < 0):
            raise ValueError("moments must be finite, with a whole count and sums of squares >= 0")
        if count == 0:
            if np.any(sums != 0) or np.any(squares != 0):
                raise ValueError("moments of 0 rows must have sums and squares of 0")
            return cls(0.0, sums, squares)
        if np.any(np.abs(sums) / count > MAX_MOMENT) or np.any(squares / count > MAX_MOMENT ** 2):
            raise ValueError(f"moments with a mean or root mean square beyond {MAX_MOMENT:g}")
        if np.any(squares * count < sums ** 2 * (1 - 1e-9) - 1e-9):
            raise ValueError("moments no rows can have: a sum of squares below the square of the sum / count")
        return cls(float(count), sums, squares)

    def normalisation(self) -> Normalisation:
        """The mean and standard deviation of the rows (the spread floored, see :data:`MIN_RELATIVE_SCALE`)."""
        n = max(self.count, 1.0)
        centre = self.sums / n
        spread = np.sqrt(np.maximum(self.squares / n - centre ** 2, 0.0))
        return Normalisation(centre, np.maximum(spread, MIN_RELATIVE_SCALE * (1.0 + np.abs(centre))))


@dataclass
class Normalisation:
    """Centre and scale of each normalised column: what the global model was trained for."""

    centre: np.ndarray
    scale: np.ndarray

    def inputs(self, rows: np.ndarray) -> np.ndarray:
        """The network's inputs for raw :func:`core.features.rows`: standardised, then the time of day."""
        raw = np.asarray(rows, dtype=np.float64)
        width = len(self.centre)
        return np.hstack([(raw[:, :width] - self.centre) / self.scale, raw[:, width:]]).astype(np.float32)

    def to_lists(self) -> tuple[list[float], list[float]]:
        return self.centre.tolist(), self.scale.tolist()

    @classmethod
    def from_lists(cls, centre: Sequence[float], scale: Sequence[float], spec: ModelConfig) -> Normalisation:
        """ValueError unless both have one finite number per normalised column and every scale is > 0."""
        width = stream_features.normalised_width(spec)
        c, s = np.asarray(centre, dtype=np.float64), np.asarray(scale, dtype=np.float64)
        if c.shape != (width,) or s.shape != (width,) or not np.all(np.isfinite(c)) or not np.all(np.isfinite(s)) \
                or np.any(s <= 0):
            raise ValueError(f"a normalisation needs {width} finite centres and {width} finite scales > 0")
        return cls(c, s)


# Fixed, log-spaced score bins shared by every device, so histograms add up across the
# federation and the server gets the pooled quantile without seeing a single score.
HISTOGRAM_EDGES = np.logspace(-5, 5, 251)  # 25 bins per decade: ~10 % resolution


def histogram_of(scores: np.ndarray) -> list[float]:
    """Counts of ``scores`` per bin of :data:`HISTOGRAM_EDGES` (clipped to its range)."""
    clipped = np.clip(scores, HISTOGRAM_EDGES[0], HISTOGRAM_EDGES[-1])
    return np.histogram(clipped, bins=HISTOGRAM_EDGES)[0].astype(float).tolist()


def histogram_quantile(counts: np.ndarray, q: float) -> float:
    """The ``q`` quantile of summed :func:`histogram_of` counts: the upper edge of its bin."""
    total = counts.sum()
    if total <= 0:
        return float("inf")
    index = int(np.searchsorted(np.cumsum(counts), q * total))
    return float(HISTOGRAM_EDGES[min(index + 1, len(HISTOGRAM_EDGES) - 1)])
