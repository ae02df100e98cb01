"""The time-triggered FedAvg without a network: clock, staleness, validation, averaging, resume."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from fl_app.config import load_config
from fl_app.federation import LocalUpdate
from fl_app.model import HISTOGRAM_EDGES
from fl_app.storage import encode_weights
from server import rounds
from server.strategy import AGGREGATED, SKIPPED, Clock, GlobalState, TimedFedAvg

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def weights(value: float) -> list[np.ndarray]:
    return [np.full((3, 2), value, np.float32), np.full(2, value, np.float32)]


def histogram(score: float, count: int) -> list[float]:
    """``count`` scores of ``score``."""
    counts = np.zeros(len(HISTOGRAM_EDGES) - 1)
    counts[np.searchsorted(HISTOGRAM_EDGES, score, side="right") - 1] = count
    return counts.tolist()


def update(device: int, value: float, examples: int = 10, base: int = 5, seconds: int = 0,
           **metrics: float) -> LocalUpdate:
    return LocalUpdate(device_id=device, base_round=base, num_examples=examples, weights=weights(value),
                       metrics={"loss": 0.1, **metrics}, histogram=histogram(value, examples),
                       received_at=T0 + timedelta(seconds=seconds))


CURRENT = GlobalState(round=5, weights=weights(0.0), threshold=1.0)


@pytest.fixture
def strategy() -> TimedFedAvg:
    return TimedFedAvg(min_devices=3, max_staleness_rounds=2, max_update_norm=20.0, threshold_quantile=0.5)


def test_clock_trains_every_local_interval_and_aggregates_every_global_one() -> None:
    clock = Clock(train_every=30, aggregate_every=60, start=1000)
    ticks = [(t, clock.train_due(t), clock.aggregate_due(t)) for t in range(1000, 1181, 10)]
    assert [t for t, train, _ in ticks if train] == [1000, 1030, 1060, 1090, 1120, 1150, 1180]
    assert [t for t, _, agg in ticks if agg] == [1060, 1120, 1180]


def test_clock_does_not_burst_after_a_stall() -> None:
    clock = Clock(train_every=30, aggregate_every=60, start=0)
    assert clock.train_due(0)
    assert clock.train_due(200)  # 6 intervals late: one tick, not six
    assert not clock.train_due(205)
    assert clock.train_due(210)


def test_clock_aggregates_at_once_on_request_and_counts_the_interval_from_then() -> None:
    clock = Clock(train_every=30, aggregate_every=60, start=0)
    assert not clock.aggregate_due(20)
    clock.aggregate_now(20)
    assert clock.aggregate_due(20.3)
    assert not clock.aggregate_due(60) and clock.aggregate_due(80.3)


def test_clock_takes_a_new_interval_from_the_last_aggregation() -> None:
    clock = Clock(train_every=30, aggregate_every=60, start=0)
    assert clock.aggregate_due(60)  # the last one; next at 120
    clock.set_aggregate_every(20, now=70)  # 20 s after the last one: at 80, not 120
    assert not clock.aggregate_due(79) and clock.aggregate_due(80) and clock.aggregate_due(100)
    clock.set_aggregate_every(5, now=112)  # 5 s after the last one (100) has passed: at once
    assert clock.aggregate_due(112) and not clock.aggregate_due(116) and clock.aggregate_due(117)
    clock.set_aggregate_every(100, now=118)  # last at 117: next at 217
    assert not clock.aggregate_due(216) and clock.aggregate_due(217)


def test_weighted_average_of_the_devices(strategy: TimedFedAvg) -> None:
    out = strategy.aggregate_round([update(1, 1.0, 10), update(2, 2.0, 30), update(3, 4.0, 60)], CURRENT)
    assert out.status == AGGREGATED and out.round == 6 and out.device_ids == [1, 2, 3]
    expected = (1.0 * 10 + 2.0 * 30 + 4.0 * 60) / 100
    assert out.state is not None
    np.testing.assert_allclose(out.state.weights[0], expected, rtol=1e-6)
    # The median of the pooled scores (10 x 1.0, 30 x 2.0, 60 x 4.0) is 4.0: the upper edge of its bin.
    assert 4.0 < out.state.threshold <= 4.0 * 1.1
    assert out.num_examples == 100


def test_newest_update_per_device_weighted_by_all_its_new_readings(strategy: TimedFedAvg) -> None:
    updates = [update(1, 3.0, 5, seconds=0), update(1, 1.0, 5, seconds=30), update(2, 1.0, 10), update(3, 1.0, 10)]
    out = strategy.aggregate_round(updates, CURRENT)
    assert out.state is not None
    np.testing.assert_allclose(out.state.weights[1], 1.0)  # device 1's older model (3.0) is superseded
    assert out.num_examples == 30 == sum(u.num_examples for u in out.accepted + out.superseded)
    assert [u.weights[0][0, 0] for u in out.superseded] == [3.0]


def test_stale_updates_are_dropped(strategy: TimedFedAvg) -> None:
    fresh = [update(1, 1.0, base=5), update(2, 1.0, base=3)]  # 0 and 2 rounds behind: both count
    out = strategy.aggregate_round([*fresh, update(3, 50.0, base=2)], CURRENT)  # 3 behind
    assert [u.device_id for u in out.stale] == [3]
    assert out.status == SKIPPED and "2 device(s)" in out.reason and "1 stale" in out.reason


@pytest.mark.parametrize(("bad", "why"), [
    (LocalUpdate(4, 5, 10, [np.full((3, 2), np.nan, np.float32), np.zeros(2, np.float32)],
                 {"loss": 0.1}, histogram(1.0, 10)), "not finite"),
    (LocalUpdate(4, 5, 10, [np.zeros((2, 3), np.float32), np.zeros(2, np.float32)],
                 {"loss": 0.1}, histogram(1.0, 10)), "expected float32[3, 2]"),
    (LocalUpdate(4, 5, 10, [np.zeros((3, 2), np.float64), np.zeros(2, np.float32)],
                 {"loss": 0.1}, histogram(1.0, 10)), "expected float32"),
    (LocalUpdate(4, 5, 10, weights(0.0)[:1], {"loss": 0.1}, histogram(1.0, 10)), "1 weight arrays"),
    (update(4, 100.0), "norm"),
    (update(4, 1.0, loss=float("inf")), "metric loss"),
    (LocalUpdate(4, 5, 10, weights(1.0), {"loss": 0.1}, [1.0, 2.0]), "score histogram"),
])
def test_invalid_updates_are_rejected_with_a_reason_and_never_averaged(
        strategy: TimedFedAvg, bad: LocalUpdate, why: str) -> None:
    out = strategy.aggregate_round([update(1, 1.0), update(2, 1.0), update(3, 1.0), bad], CURRENT)
    assert [(u.device_id, reason) for u, reason in out.rejected if why in reason] == [(4, out.rejected[0][1])]
    assert out.status == AGGREGATED and out.device_ids == [1, 2, 3]
    assert out.state is not None and all(np.isfinite(w).all() for w in out.state.weights)
    np.testing.assert_allclose(out.state.weights[0], 1.0)


def test_too_few_devices_is_a_skipped_round_with_the_reason(strategy: TimedFedAvg) -> None:
    out = strategy.aggregate_round([update(1, 1.0), update(2, 1.0), update(3, 1.0, examples=0)], CURRENT)
    assert out.status == SKIPPED and out.round == 5 and out.state is None
    assert out.reason.startswith("2 device(s) with a valid update, need 3") and "1 without new data" in out.reason


def test_valid_updates_of_a_skipped_tick_count_at_the_next_one(strategy: TimedFedAvg) -> None:
    """Their readings are consumed already: dropping them would lose data (seen on the simulation runtime)."""
    first = strategy.aggregate_round([update(1, 1.0, 16), update(2, 1.0, examples=0)], CURRENT)
    assert first.status == SKIPPED and [u.device_id for u in first.carried_over] == [1]
    second = strategy.aggregate_round([*first.carried_over, update(2, 1.0, 8), update(3, 1.0, 8)], CURRENT)
    assert second.status == AGGREGATED and second.num_examples == 32 and second.carried_over == []


class FakeStore:
    def __init__(self, docs: list[dict[str, Any]]) -> None:
        self.docs = docs

    def latest_global_model(self) -> dict[str, Any] | None:
        return max(self.docs, key=lambda d: d["round"], default=None)


def test_resume_continues_from_the_newest_global_model() -> None:
    spec = load_config().fl.model
    fresh = rounds.resume(FakeStore([]), spec)  # type: ignore[arg-type]
    assert fresh.round == 0 and fresh.threshold == float("inf")
    docs = [{"round": r, "threshold": 0.5 + r, "weights": encode_weights(weights(float(r)))} for r in (3, 7, 5)]
    state = rounds.resume(FakeStore(docs), spec)  # type: ignore[arg-type]
    assert state.round == 7 and state.threshold == 7.5
    np.testing.assert_array_equal(state.weights[0], weights(7.0)[0])
