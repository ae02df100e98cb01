"""What one device can do to a round (issue 21): scaled weights, a sign flip, an inflated example count
and a crafted histogram move the undefended round (``Robustness.none()``, the code before
``fl.aggregator``) and are bounded or rejected by every aggregator with its bounds."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from core.config import ConfigError, load_config
from core.messages import LocalUpdate
from core.summaries import HISTOGRAM_EDGES, histogram_quantile
from server import robust
from server.aggregation import AGGREGATED, GlobalState, TimedAggregation
from server.robust import Robustness

T0 = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
AGGREGATORS = ("fedavg", "trimmed_mean", "median")
HONEST = 5  # devices 1..5; the attacker is device 9


def weights(value: float) -> list[np.ndarray]:
    return [np.full((3, 2), value, np.float32), np.full(2, value, np.float32)]


def histogram(score: float, count: float) -> list[float]:
    counts = np.zeros(len(HISTOGRAM_EDGES) - 1)
    counts[np.clip(np.searchsorted(HISTOGRAM_EDGES, score, side="right") - 1, 0, len(counts) - 1)] = count
    return counts.tolist()


def update(device: int, value: float, examples: int = 10, scores: list[float] | None = None) -> LocalUpdate:
    return LocalUpdate(device, 5, examples, weights(value), {"loss": 0.1},
                       scores if scores is not None else histogram(1.0 + 0.1 * device, 100),
                       received_at=T0 + timedelta(seconds=device))


def honest(step: float = 0.1) -> list[LocalUpdate]:
    """Five devices that each moved the global weights (1.0) by about ``step``."""
    return [update(d, 1.0 + step * (1 + 0.05 * d)) for d in range(1, HONEST + 1)]


CURRENT = GlobalState(round=5, weights=weights(1.0), threshold=1.0)


def aggregation(robust_: Robustness, quantile: float = 0.999) -> TimedAggregation:
    return TimedAggregation(min_devices=3, max_staleness_rounds=2, threshold_quantile=quantile, normalised_columns=2,
                            robust=robust_)


def defended(aggregator: str) -> Robustness:
    return Robustness(aggregator, 0.2, 3.0, 3.0)


def mean_weight(updates: list[LocalUpdate], robust_: Robustness) -> float:
    out = aggregation(robust_).aggregate_round(updates, CURRENT)
    assert out.status == AGGREGATED and out.state is not None
    return float(np.mean(out.state.weights[0]))


def test_without_defences_each_attack_moves_the_round() -> None:
    """The attacks of the tests below, against the undefended round: each one works there."""
    none = Robustness.none()
    assert mean_weight([*honest(), update(9, 10 * 1.1)], none) > 2.0  # scaled: the mean ~1.1 becomes ~2.6
    assert mean_weight([*honest(), update(9, -1.1)], none) < 0.8  # sign flip
    assert mean_weight([*honest(), update(9, 0.8, examples=10**15)], none) < 0.81  # inflated count
    high = aggregation(none).aggregate_round([*honest(), update(9, 1.1, scores=histogram(1e5, 1e15))], CURRENT)
    low = aggregation(none).aggregate_round([*honest(), update(9, 1.1, scores=histogram(1e-5, 1e15))], CURRENT)
    assert high.state is not None and high.state.threshold == HISTOGRAM_EDGES[-1]  # 1e5: nothing flagged
    assert low.state is not None and low.state.threshold < 1.1e-5  # everything flagged


@pytest.mark.parametrize("aggregator", AGGREGATORS)
def test_scaled_weights_are_rejected_by_their_distance(aggregator: str) -> None:
    out = aggregation(defended(aggregator)).aggregate_round([*honest(), update(9, 10 * 1.1)], CURRENT)
    assert [(u.device_id, "exceeds 3 x the typical" in why) for u, why in out.rejected] == [(9, True)]
    assert out.state is not None and 1.1 <= float(np.mean(out.state.weights[0])) <= 1.13


@pytest.mark.parametrize("aggregator", AGGREGATORS)
def test_a_sign_flip_is_rejected_by_its_distance(aggregator: str) -> None:
    out = aggregation(defended(aggregator)).aggregate_round([*honest(), update(9, -1.1)], CURRENT)
    assert [u.device_id for u, _ in out.rejected] == [9]
    assert out.state is not None and 1.1 <= float(np.mean(out.state.weights[0])) <= 1.13


@pytest.mark.parametrize("aggregator", ("trimmed_mean", "median"))
def test_trimmed_mean_and_median_bound_an_attacker_without_the_distance_bound(aggregator: str) -> None:
    unbounded = Robustness(aggregator, 0.2, math.inf, math.inf)
    assert 1.1 <= mean_weight([*honest(), update(9, 10 * 1.1)], unbounded) <= 1.13
    assert 1.1 <= mean_weight([*honest(), update(9, -1.1)], unbounded) <= 1.13


@pytest.mark.parametrize("aggregator", AGGREGATORS)
def test_an_inflated_example_count_weighs_at_most_the_cap(aggregator: str) -> None:
    """1e15 examples and a model inside the distance bound (0.8: three honest steps back): the
    claim weighs at most 3 x the median count (fedavg), or nothing (trimmed mean and median are
    unweighted, and 0.8 is the extreme value at every coordinate)."""
    out = aggregation(defended(aggregator)).aggregate_round([*honest(), update(9, 0.8, examples=10**15)], CURRENT)
    assert out.rejected == [] and out.state is not None
    honest_mean = float(np.mean([u.weights[0].mean() for u in honest()]))
    most = (honest_mean - 0.8) * 3 / (HONEST + 3)  # the attacker's largest share of the weight: 3 of 8
    assert honest_mean - most - 1e-6 <= float(np.mean(out.state.weights[0])) <= honest_mean + 1e-6


@pytest.mark.parametrize(("score", "aggregator"), [(s, a) for s in (1e5, 1e-5) for a in AGGREGATORS])
def test_one_histogram_cannot_move_the_threshold_out_of_the_honest_devices_range(score: float,
                                                                                  aggregator: str) -> None:
    """The honest devices' scores lie at 1.1-1.5; one device sends 1e15 scores at 1e5 or 1e-5."""
    out = aggregation(defended(aggregator)).aggregate_round(
        [*honest(), update(9, 1.1, scores=histogram(score, 1e15))], CURRENT)
    assert out.state is not None and 1.1 < out.state.threshold <= 1.5 * 1.1


def test_without_attackers_and_bounds_the_threshold_is_the_pooled_quantile() -> None:
    rng = np.random.default_rng(3)
    histograms = [np.histogram(np.clip(rng.lognormal(d / 10, 1, 50 * d), 1e-5, 1e5), HISTOGRAM_EDGES)[0].tolist()
                  for d in range(1, 9)]
    for q in (0.5, 0.9, 0.999):
        pooled = histogram_quantile(np.sum(histograms, axis=0), q)
        assert robust.global_threshold(histograms, q, Robustness.none()) == pytest.approx(pooled)
        # Trimmed, it stays between the devices' own quantiles.
        own = [histogram_quantile(np.asarray(h, dtype=float), q) for h in histograms]
        assert min(own) <= robust.global_threshold(histograms, q, defended("fedavg")) <= max(own)


def test_with_fewer_than_three_devices_the_last_typical_distance_is_the_reference() -> None:
    """Two updates have no median either cannot set: a fresh aggregation does not judge their distance,
    one that saw a tick of five devices judges them by that tick's typical distance."""
    pair = [update(1, 1.1), update(9, 10 * 1.1)]
    fresh = TimedAggregation(1, 2, 0.999, 2, defended("fedavg"))
    assert fresh.aggregate_round(pair, CURRENT).rejected == []
    seasoned = TimedAggregation(1, 2, 0.999, 2, defended("fedavg"))
    seasoned.aggregate_round(honest(), CURRENT)
    assert seasoned.reference_distance is not None and seasoned.reference_distance > 0
    assert [u.device_id for u, _ in seasoned.aggregate_round(pair, CURRENT).rejected] == [9]


def test_trimming_follows_flowers_rule_and_cuts_one_of_three() -> None:
    assert [robust.trimmed_count(n, 0.2) for n in (1, 2, 3, 4, 5, 10, 53)] == [0, 0, 1, 1, 1, 2, 10]
    assert robust.trimmed_count(53, 0.0) == 0
    three = [weights(1.0), weights(2.0), weights(30.0)]
    out = robust.combine(three, [1, 1, 1], defended("trimmed_mean"))
    assert out[0].dtype == np.float32 and float(out[0].mean()) == 2.0  # the middle one
    assert float(robust.combine(three, [1, 1, 1], defended("median"))[1].mean()) == 2.0


def test_lower_median_cannot_be_set_by_the_larger_half() -> None:
    assert robust.lower_median([10, 1e15]) == 10 and robust.lower_median([3, 1, 2]) == 2
    assert robust.capped([10, 20, 1e15], 3.0) == [10, 20, 60]


@pytest.mark.parametrize(("override", "key"), [("fl.aggregator=krum", "fl.aggregator"),
                                               ("fl.trim_fraction=0.5", "fl.trim_fraction"),
                                               ("fl.max_distance_factor=0.5", "fl.max_distance_factor"),
                                               ("fl.max_weight_factor=0", "fl.max_weight_factor")])
def test_the_settings_are_checked(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load_config([override])
    assert Robustness.of(load_config().fl).aggregator in AGGREGATORS
