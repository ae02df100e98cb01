"""Token-bucket pacing with a fake clock (the real-time rate is shown in the integration test)."""

import threading

import pytest

from stream.producer import Position, PositionStore, TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_burst_then_paces_at_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=50, burst=10, clock=clock)
    assert bucket.wait_time(10) == 0.0
    bucket.tokens -= 10
    assert bucket.wait_time(10) == pytest.approx(0.2)
    clock.now = 0.1
    assert bucket.wait_time(10) == pytest.approx(0.1)
    clock.now = 10.0  # idle for long: tokens cap at the burst, no catch-up flood
    assert bucket.wait_time(10) == 0.0 and bucket.tokens == 10


def test_long_run_rate_does_not_drift() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=100, burst=20, clock=clock)  # the producer's burst: two batches
    sent = 0
    while clock.now < 60:
        wait = bucket.wait_time(10)
        if wait:
            clock.now += wait * 1.37  # oversleep, as real sleeps do
            continue
        bucket.tokens -= 10
        sent += 10
    assert sent == pytest.approx(6000, rel=0.01)


def test_acquire_returns_false_when_stopped() -> None:
    bucket = TokenBucket(rate=0.01, burst=1)
    bucket.tokens = 0
    stop = threading.Event()
    stop.set()
    assert bucket.acquire(1, stop) is False


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1)
    with pytest.raises(ValueError):
        TokenBucket(rate=1, burst=2).acquire(3)


def test_position_store_round_trip_and_dataset_change(tmp_path) -> None:
    store = PositionStore(tmp_path / "state.json", "synthetic:a")
    assert store.load() == Position(0, 0)
    store.save(Position(2, 17))
    assert store.load() == Position(2, 17)
    assert PositionStore(tmp_path / "state.json", "synthetic:b").load() == Position(0, 0)
    assert Position.at(Position(2, 17).index(100), 100) == Position(2, 17)
