"""What the model sees of a reading: its sensor values and how they relate to its device's recent ones.

One function, :func:`rows`, makes the model's raw input rows for the ClientApp
(on its windows; the rows then go into the replay buffer), the Spark scorer
(per device, in its keyed state) and `fl-app evaluate` (over each device's
series), so a reading gets the same numbers wherever it is scored or trained
on. It folds the readings in the order given, which is each device's arrival
order everywhere: the window topic keeps a device's readings in the order the
Flink job received them, the scorer sorts by Kafka offset, evaluate by time.

A row holds, for the configured sensor fields (``fl.model.features``) and
context kinds (``fl.model.context``):

- the values themselves;
- ``delta``: each value minus the device's previous reading's;
- ``deviation``: each value minus the mean of the device's previous
  ``fl.model.context_window`` readings (a spike stands out, a slow drift less);
- ``spread``: the standard deviation of the last ``context_window`` values, this
  one included (a sensor gone noisy);
- ``repeat``: how many of the device's previous ``context_window`` readings, counted back from
  the last, hold exactly this value (a stuck sensor repeats itself; sensor noise does not);
- ``gap``: ``log1p`` of the seconds since the device's previous reading (a mote
  that stalls and resumes);
- then the time of day as sine and cosine.

The first reading of a device has no context: its differences are 0, its spread 0,
its gap 0. The context carries over from one call to the next
(:class:`StreamContext`, small enough to keep in Flower's ``Context.state`` and
Spark's group state), so window boundaries and restarts do not reset it.

Everything but the time of day is normalised with the federation's learned
centre and scale before it reaches the network (:mod:`core.model`); rows are kept raw,
so a replay buffer stays valid when the normalisation moves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np

from core.config import CONTEXT_KINDS, ModelConfig

PER_FIELD = CONTEXT_KINDS[:4]  # one column per sensor field each; the last, gap, is one column
TIME_COLUMNS = ("time_sin", "time_cos")


def columns(spec: ModelConfig) -> list[str]:
    """The names of a row's columns, in order (the last two are the time of day)."""
    names = list(spec.features)
    for kind in PER_FIELD:
        if kind in spec.context:
            names += [f"{name}_{kind}" for name in spec.features]
    if "gap" in spec.context:
        names.append("gap")
    return [*names, *TIME_COLUMNS]


def normalised_width(spec: ModelConfig) -> int:
    """How many leading columns are normalised (all but the time of day)."""
    return len(columns(spec)) - len(TIME_COLUMNS)


@dataclass
class StreamContext:
    """One device's recent readings: the last ``context_window`` values (oldest first) and the time
    (epoch seconds) of the last reading."""

    values: list[list[float]] = field(default_factory=list)
    last_time: float | None = None

    def to_list(self) -> list[float]:
        """Flat numbers for Flower's records and Spark's state: ``[last_time or nan, n, values...]``."""
        flat = [v for row in self.values for v in row]
        return [math.nan if self.last_time is None else self.last_time, float(len(self.values)), *flat]

    @classmethod
    def from_list(cls, flat: Sequence[float], fields: int) -> StreamContext:
        """The inverse of :meth:`to_list`; an unreadable state (wrong size, a field count that
        changed with the config) gives an empty context rather than wrong numbers."""
        if len(flat) < 2 or not math.isfinite(flat[1]) or len(flat) != 2 + int(flat[1]) * fields:
            return cls()
        values = [list(map(float, flat[2 + i * fields:2 + (i + 1) * fields])) for i in range(int(flat[1]))]
        return cls(values, None if math.isnan(flat[0]) else float(flat[0]))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def epoch_seconds(stamp: object) -> float:
    """``source_time`` (a datetime or ISO text with a zone) as seconds since 1970, to the microsecond
    (what ISO text on the topics carries: a pandas time's nanoseconds would make evaluate's rows differ)."""
    t = stamp if isinstance(stamp, datetime) else datetime.fromisoformat(str(stamp))
    return ((t - _EPOCH) // _MICROSECOND) / 1e6


def _time_of_day(stamp: object) -> tuple[float, float]:
    t = stamp if isinstance(stamp, datetime) else datetime.fromisoformat(str(stamp))
    angle = 2 * math.pi * (t.hour * 3600 + t.minute * 60 + t.second) / 86400
    return math.sin(angle), math.cos(angle)


def rows(readings: Sequence[Mapping[str, object]], spec: ModelConfig,
         context: StreamContext | None = None) -> tuple[np.ndarray, StreamContext]:
    """``(rows, context after them)``: one raw row per reading (see the module doc), float64, in the
    order given; ``context`` is the device's state before the first (None: a device's first readings).

    Each reading needs the configured sensor fields as finite numbers and
    ``source_time`` (a datetime, or ISO text with a zone): the time is the
    sensor's, not the replay's.
    """
    width = len(columns(spec))
    out = np.zeros((len(readings), width), dtype=np.float64)
    window = max(1, spec.context_window)
    recent = [list(v) for v in (context.values if context else [])][-window:]
    last_time = context.last_time if context else None
    kinds = [k for k in PER_FIELD if k in spec.context]
    gap = "gap" in spec.context
    n = len(spec.features)
    for i, reading in enumerate(readings):
        x = np.array([float(reading[name]) for name in spec.features], dtype=np.float64)  # type: ignore[arg-type]
        previous = np.array(recent, dtype=np.float64).reshape(-1, n)
        out[i, :n] = x
        column = n
        for kind in kinds:
            if kind == "delta":
                out[i, column:column + n] = x - previous[-1] if len(previous) else 0.0
            elif kind == "deviation":
                out[i, column:column + n] = x - previous.mean(axis=0) if len(previous) else 0.0
            elif kind == "spread":  # of the last `window` values, this one included
                out[i, column:column + n] = np.vstack([previous[-(window - 1):] if window > 1 else previous[:0],
                                                       x]).std(axis=0)
            else:  # repeat: the unbroken run of this exact value just before it
                same = np.vstack([previous[::-1] == x, np.zeros((1, n), dtype=bool)])
                out[i, column:column + n] = same.argmin(axis=0)
            column += n
        now = epoch_seconds(reading["source_time"])
        if gap:
            out[i, column] = math.log1p(max(0.0, now - last_time)) if last_time is not None else 0.0
        out[i, -2], out[i, -1] = _time_of_day(reading["source_time"])
        recent = [*recent, x.tolist()][-window:]
        last_time = now
    return out, StreamContext(recent, last_time)
