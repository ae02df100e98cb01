"""Time-triggered aggregation: aggregate whatever updates arrived since the last tick.

Flower's :class:`~flwr.serverapp.strategy.FedAvg` runs rounds as fast as
replies come back. Here the clock decides (:class:`Clock`): every local
interval the ServerApp sends train messages, every global interval it hands
the updates received since the last aggregation to
:meth:`TimedAggregation.aggregate_round` (not a Flower Strategy: see its
docstring), which

1. drops *stale* updates, computed from a global model more than
   ``max_staleness_rounds`` behind (dropped, not down-weighted: a stale model
   pulls the average back towards an old state whatever its weight);
2. *rejects* invalid ones with a reason: a base round ahead of the current
   one, wrong shapes or dtypes, values that are not finite, or an L2 distance to the current global
   model above ``max_distance_factor`` x the tick's typical distance (:mod:`server.robust`);
   a rejected update never reaches the average;
3. keeps each device's newest update (it was trained on the device's replay
   buffer, which holds the earlier windows too), weighted by all the new
   readings that device reported since the last aggregation, at most
   ``max_weight_factor`` x the tick's typical count;
4. aggregates them by ``fl.aggregator`` (FedAvg's own weighted mean, ``num-examples``,
   or Flower's trimmed mean or median) if at least ``min_devices`` devices are left,
   else records a skipped round and why, and hands the valid updates to the next tick
   (:attr:`RoundOutcome.carried_over`).

The global anomaly threshold is the ``threshold_quantile`` of the devices'
score histograms pooled, with the devices of extreme shares trimmed per bin
(:func:`server.robust.global_threshold`, on ``core.summaries.histogram_quantile``),
computed for the global model the devices received (so the threshold lags the
weights by one round). Each device's own threshold is kept beside it (the
newest it sent), for ``fl.threshold=per_device``.

The normalisation the next global model ships is the mean and spread of every
reading the federation has trained on: the devices' moments (count, sums,
sums of squares of their new readings' rows) of every valid update, added to
the running totals (``core.summaries.Moments``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords, aggregate_metricrecords

from core.messages import ARRAYS, METRICS, NUM_EXAMPLES, LocalUpdate, TrainInstruction
from core.summaries import HISTOGRAM_EDGES, Moments, Normalisation
from server import robust
from server.robust import Robustness

AGGREGATED, SKIPPED = "aggregated", "skipped"


@dataclass
class GlobalState:
    """The current global model: what every train message carries."""

    round: int  # 0 = the initial weights, before any aggregation
    weights: list[np.ndarray]
    threshold: float
    moments: Moments | None = None  # the running totals of every reading trained on; None before any
    device_thresholds: dict[int, float] = field(default_factory=dict)  # the newest each device sent
    # Most of this round's devices flagged (and so did not learn) most of their new readings:
    # the stream changed as a whole (a sunrise the model has not seen, a new site), not an anomaly,
    # which is rare by definition. The next round learns what it flags, or the change stays flagged
    # for good: measured, every reading from the first daylight on, on the generated data set.
    learn_flagged: bool = False

    def normalisation(self) -> Normalisation | None:
        return self.moments.normalisation() if self.moments is not None and self.moments.count > 0 else None

    def instruction(self, local_epochs: int) -> TrainInstruction:
        """The train message of this global model."""
        norm = self.normalisation()
        centre, scale = norm.to_lists() if norm is not None else ([], [])
        flag_above = math.inf if self.learn_flagged else self.threshold  # what the devices hold back from training
        return TrainInstruction(self.weights, self.round, flag_above, local_epochs, centre, scale)


def flagged_share(updates: list[LocalUpdate], columns: int) -> float:
    """The median over the updates' devices of the share of their new readings they held back as
    flagged (the readings a window brought minus those its moments count): a median, so that the
    stream counts as changed only when most devices say so, never on one device's claim."""
    shares = [1.0 - min(Moments.from_list(u.moments, columns).count, u.num_examples) / u.num_examples
              for u in updates if u.moments and u.num_examples > 0]
    return float(np.median(shares)) if shares else 0.0


@dataclass
class RoundOutcome:
    """What one aggregation tick did (persisted whether or not it aggregated)."""

    status: str  # AGGREGATED or SKIPPED
    round: int  # the new global round, or the unchanged one when skipped
    reason: str = ""
    state: GlobalState | None = None  # the new global model when aggregated
    accepted: list[LocalUpdate] = field(default_factory=list)  # the updates averaged (one per device)
    superseded: list[LocalUpdate] = field(default_factory=list)  # valid, but a newer one of the device counts
    rejected: list[tuple[LocalUpdate, str]] = field(default_factory=list)
    stale: list[LocalUpdate] = field(default_factory=list)
    idle: list[LocalUpdate] = field(default_factory=list)  # replies with zero new readings
    num_examples: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def device_ids(self) -> list[int]:
        return sorted(u.device_id for u in self.accepted)

    @property
    def carried_over(self) -> list[LocalUpdate]:
        """What the next tick must see again: after a skipped tick, every valid update (its device's
        readings are already consumed; dropping it would lose them). Staleness retires them later."""
        return [*self.accepted, *self.superseded] if self.status == SKIPPED else []


class Clock:
    """When to send train messages and when to aggregate; monotonic seconds in, decisions out."""

    def __init__(self, train_every: float, aggregate_every: float, start: float) -> None:
        self.train_every, self.aggregate_every = train_every, aggregate_every
        self.next_train, self.next_aggregate = start, start + aggregate_every

    def train_due(self, now: float) -> bool:
        """True once per train interval; a late check does not make up missed ticks."""
        due, self.next_train = self._tick(now, self.next_train, self.train_every)
        return due

    def aggregate_due(self, now: float) -> bool:
        due, self.next_aggregate = self._tick(now, self.next_aggregate, self.aggregate_every)
        return due

    def aggregate_now(self, now: float) -> None:
        """An operator asked: the next check aggregates, and the interval counts from then."""
        self.next_aggregate = now

    def set_aggregate_every(self, every: float, now: float) -> None:
        """A new interval at run time: the next aggregation is one new interval after the last
        one (or at once, if that has passed)."""
        last = self.next_aggregate - self.aggregate_every
        self.aggregate_every = every
        self.next_aggregate = max(now, last + every)

    @staticmethod
    def _tick(now: float, due_at: float, every: float) -> tuple[bool, float]:
        if now < due_at:
            return False, due_at
        return True, due_at + every * (int((now - due_at) // every) + 1)


class TimedAggregation:
    """One tick's aggregation: staleness, validation, a minimum of devices, then the aggregator.

    Not a Flower :class:`~flwr.serverapp.strategy.Strategy` (on purpose), but
    averaging with Flower's FedAvg helpers (``aggregate_arrayrecords``,
    ``aggregate_metricrecords``, weighted by ``num-examples``) or FedTrimmedAvg's and
    FedMedian's functions (:mod:`server.robust`). A Strategy's
    hooks serve ``Strategy.start``'s synchronous rounds: ``configure_train``
    samples the nodes of a round, ``aggregate_train(server_round, replies)``
    averages that round's replies. Here participation is partial and
    asynchronous: train messages go out on one clock, replies are kept as
    they come (late ones, several per device), and a tick on another clock
    judges what is there against the current global model (staleness,
    distance), which ``aggregate_train`` is not given, and reports what it
    did as a :class:`RoundOutcome` (stale, rejected, superseded, carried
    over), not as a pair of records. Hooks that nothing calls would only
    mislead, so the ServerApp (``server/server_app.py``) drives this class.

    Parameters
    ----------
    min_devices
        Devices with new data needed for an aggregation.
    max_staleness_rounds
        How far behind the current global round an update's base round may be.
    threshold_quantile
        The quantile of the pooled scores that becomes the anomaly threshold.
    normalised_columns
        The row columns the moments describe (``core.features.normalised_width``).
    robust
        The aggregator and the bounds on what one device can move (``Robustness.of(cfg.fl)``).
    """

    def __init__(self, min_devices: int, max_staleness_rounds: int, threshold_quantile: float,
                 normalised_columns: int, robust: Robustness) -> None:
        self.min_devices = min_devices
        self.max_staleness_rounds = max_staleness_rounds
        self.threshold_quantile = threshold_quantile
        self.normalised_columns = normalised_columns
        self.robust = robust
        # The typical distance of the last tick with enough devices to have one (server.robust).
        self.reference_distance: float | None = None

    def invalid(self, update: LocalUpdate, current: GlobalState) -> str:
        """Why ``update`` may not count ("" if it may)."""
        if update.base_round > current.round:
            return f"base round {update.base_round} is ahead of the current round {current.round}"
        if len(update.weights) != len(current.weights):
            return f"{len(update.weights)} weight arrays, expected {len(current.weights)}"
        for i, (got, want) in enumerate(zip(update.weights, current.weights, strict=True)):
            if got.shape != want.shape or got.dtype != want.dtype:
                return f"array {i} is {got.dtype}{list(got.shape)}, expected {want.dtype}{list(want.shape)}"
            if not np.all(np.isfinite(got)):
                return f"array {i} has values that are not finite"
        loss = update.metrics.get("loss")
        if loss is None or not np.isfinite(loss):
            return "metric loss missing or not finite"
        counts = np.asarray(update.histogram, dtype=np.float64)
        if len(counts) != len(HISTOGRAM_EDGES) - 1 or not np.isfinite(counts.sum()) or np.any(counts < 0):
            return f"score histogram must be {len(HISTOGRAM_EDGES) - 1} finite counts >= 0"
        if not update.moments:
            return ""  # it adds nothing to the normalisation (every ClientApp of ours sends them)
        try:
            moments = Moments.from_list(update.moments, self.normalised_columns)
        except ValueError as exc:
            return str(exc)
        if moments.count > update.num_examples:  # fewer: the device left out readings it flagged
            return f"moments of {moments.count:g} rows for {update.num_examples} examples"
        return ""

    def too_far(self, valid: list[LocalUpdate], current: GlobalState) -> list[tuple[LocalUpdate, str]]:
        """The updates farther from the current weights than ``max_distance_factor`` x the tick's
        typical distance (the lower median over the devices, each device's newest update once), with
        their reasons. Below :data:`~server.robust.MIN_DEVICES_FOR_REFERENCE` devices the last tick
        with enough sets the reference; before any, nothing is judged on distance."""
        distances = {id(u): robust.distance(u.weights, current.weights) for u in valid}
        newest: dict[int, LocalUpdate] = {}
        for u in valid:
            if u.device_id not in newest or u.received_at >= newest[u.device_id].received_at:
                newest[u.device_id] = u
        if len(newest) >= robust.MIN_DEVICES_FOR_REFERENCE:
            self.reference_distance = robust.lower_median([distances[id(u)] for u in newest.values()])
        reference, factor = self.reference_distance, self.robust.max_distance_factor
        if reference is None or reference <= 0 or not np.isfinite(factor):
            return []
        return [(u, f"distance {distances[id(u)]:.3g} to the global weights exceeds {factor:g} x the "
                    f"typical {reference:.3g}") for u in valid if distances[id(u)] > factor * reference]

    def aggregate_round(self, updates: list[LocalUpdate], current: GlobalState) -> RoundOutcome:
        """Sort the updates (stale, rejected, idle, accepted) and aggregate the accepted ones."""
        next_round = current.round + 1
        outcome = RoundOutcome(status=SKIPPED, round=current.round)
        valid: list[LocalUpdate] = []
        for update in updates:
            if update.num_examples <= 0:
                outcome.idle.append(update)
            elif current.round - update.base_round > self.max_staleness_rounds:
                outcome.stale.append(update)
            elif reason := self.invalid(update, current):
                outcome.rejected.append((update, reason))
            else:
                valid.append(update)
        far = self.too_far(valid, current)
        outcome.rejected += far
        rejected = {id(u) for u, _ in far}
        newest: dict[int, LocalUpdate] = {}
        examples: dict[int, int] = {}
        for update in (u for u in valid if id(u) not in rejected):
            examples[update.device_id] = examples.get(update.device_id, 0) + update.num_examples
            previous = newest.get(update.device_id)
            if previous is None or update.received_at >= previous.received_at:
                newest[update.device_id] = update
                if previous is not None:
                    outcome.superseded.append(previous)
            else:
                outcome.superseded.append(update)
        outcome.accepted = [newest[d] for d in sorted(newest)]
        if len(outcome.accepted) < self.min_devices:
            outcome.reason = (f"{len(outcome.accepted)} device(s) with a valid update, need {self.min_devices} "
                              f"({len(outcome.idle)} without new data, {len(outcome.stale)} stale, "
                              f"{len(outcome.rejected)} rejected)")
            return outcome
        # What each device's update weighs: its new readings, at most max_weight_factor x the typical.
        weights = robust.capped([examples[u.device_id] for u in outcome.accepted], self.robust.max_weight_factor)
        records = [RecordDict({ARRAYS: ArrayRecord(u.weights), METRICS: MetricRecord(
            {NUM_EXAMPLES: max(1, int(w)), **u.metrics})}) for u, w in zip(outcome.accepted, weights, strict=True)]
        if self.robust.aggregator == "fedavg":
            arrays = aggregate_arrayrecords(records, NUM_EXAMPLES).to_numpy_ndarrays()
        else:
            arrays = robust.combine([u.weights for u in outcome.accepted], weights, self.robust)
        metrics = {k: float(v) for k, v in aggregate_metricrecords(records, NUM_EXAMPLES).items()}  # type: ignore[arg-type]
        outcome.status, outcome.round = AGGREGATED, next_round
        outcome.num_examples = sum(examples[u.device_id] for u in outcome.accepted)
        outcome.metrics = metrics
        totals = current.moments
        for update in [*outcome.accepted, *outcome.superseded]:  # every valid update's readings count once
            if not update.moments:
                continue
            new = Moments.from_list(update.moments, self.normalised_columns)
            totals = new if totals is None else totals + new
        thresholds = {**current.device_thresholds,
                      **{u.device_id: u.threshold for u in outcome.accepted if np.isfinite(u.threshold)}}
        threshold = robust.global_threshold([u.histogram for u in outcome.accepted], self.threshold_quantile,
                                            self.robust)
        outcome.state = GlobalState(round=next_round, weights=arrays, threshold=threshold,
                                    moments=totals, device_thresholds=thresholds,
                                    learn_flagged=flagged_share(outcome.accepted, self.normalised_columns) > 0.5)
        return outcome
