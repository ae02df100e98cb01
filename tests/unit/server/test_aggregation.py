"""The time-triggered aggregation without a network: clock, staleness, validation, averaging, resume;
the ServerApp's loop with stand-ins for Flower's grid and MongoDB: malformed replies, outages, retries."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from flwr.app import RecordDict
from pymongo.errors import AutoReconnect, DuplicateKeyError

from core import inference
from core.config import load_config
from core.messages import LocalUpdate, RunSettings
from core.storage import encode_weights
from core.summaries import HISTOGRAM_EDGES
from server import rounds
from server.aggregation import AGGREGATED, SKIPPED, Clock, GlobalState, TimedAggregation
from server.robust import Robustness
from server.server_app import Backoff, TimedServer

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
REAL_INITIAL_STATE = rounds.initial_state
REAL_WEIGHT_SHAPES = inference.weight_shapes


@pytest.fixture(autouse=True)
def stand_in_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests average a two-array stand-in (:func:`weights`), not the configured autoencoder: the
    ServerApp's fresh state, and what a stored model must fit to be resumed, is the stand-in too."""
    monkeypatch.setattr(rounds, "initial_state", lambda spec: GlobalState(0, weights(0.0), float("inf")))
    monkeypatch.setattr(inference, "weight_shapes", lambda spec: [w.shape for w in weights(0.0)])


@pytest.fixture
def aggregation() -> TimedAggregation:
    return TimedAggregation(min_devices=3, max_staleness_rounds=2, threshold_quantile=0.5, normalised_columns=2,
                            robust=Robustness("fedavg", 0.2, 3.0, 3.0))


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


def test_weighted_average_of_the_devices(aggregation: TimedAggregation) -> None:
    out = aggregation.aggregate_round([update(1, 1.0, 10), update(2, 2.0, 30), update(3, 4.0, 60)], CURRENT)
    assert out.status == AGGREGATED and out.round == 6 and out.device_ids == [1, 2, 3]
    expected = (1.0 * 10 + 2.0 * 30 + 4.0 * 60) / 100
    assert out.state is not None
    np.testing.assert_allclose(out.state.weights[0], expected, rtol=1e-6)
    # The pooled median (4.0) is clamped between the devices' own medians trimmed by one at each end
    # (server.robust.global_threshold): of three, the middle device's (30 x 2.0), the upper edge of its bin.
    assert 2.0 < out.state.threshold <= 2.0 * 1.1
    assert out.num_examples == 100


def test_newest_update_per_device_weighted_by_all_its_new_readings(aggregation: TimedAggregation) -> None:
    updates = [update(1, 3.0, 5, seconds=0), update(1, 1.0, 5, seconds=30), update(2, 1.0, 10), update(3, 1.0, 10)]
    out = aggregation.aggregate_round(updates, CURRENT)
    assert out.state is not None
    np.testing.assert_allclose(out.state.weights[1], 1.0)  # device 1's older model (3.0) is superseded
    assert out.num_examples == 30 == sum(u.num_examples for u in out.accepted + out.superseded)
    assert [u.weights[0][0, 0] for u in out.superseded] == [3.0]


def test_stale_updates_are_dropped(aggregation: TimedAggregation) -> None:
    fresh = [update(1, 1.0, base=5), update(2, 1.0, base=3)]  # 0 and 2 rounds behind: both count
    out = aggregation.aggregate_round([*fresh, update(3, 50.0, base=2)], CURRENT)  # 3 behind
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
    (update(4, 100.0), "exceeds 3 x the typical"),
    (update(4, 1.0, loss=float("inf")), "metric loss"),
    (LocalUpdate(4, 5, 10, weights(1.0), {"loss": 0.1}, [1.0, 2.0]), "score histogram"),
])
def test_invalid_updates_are_rejected_with_a_reason_and_never_averaged(
        aggregation: TimedAggregation, bad: LocalUpdate, why: str) -> None:
    out = aggregation.aggregate_round([update(1, 1.0), update(2, 1.0), update(3, 1.0), bad], CURRENT)
    assert [(u.device_id, reason) for u, reason in out.rejected if why in reason] == [(4, out.rejected[0][1])]
    assert out.status == AGGREGATED and out.device_ids == [1, 2, 3]
    assert out.state is not None and all(np.isfinite(w).all() for w in out.state.weights)
    np.testing.assert_allclose(out.state.weights[0], 1.0)


def test_too_few_devices_is_a_skipped_round_with_the_reason(aggregation: TimedAggregation) -> None:
    out = aggregation.aggregate_round([update(1, 1.0), update(2, 1.0), update(3, 1.0, examples=0)], CURRENT)
    assert out.status == SKIPPED and out.round == 5 and out.state is None
    assert out.reason.startswith("2 device(s) with a valid update, need 3") and "1 without new data" in out.reason


def test_valid_updates_of_a_skipped_tick_count_at_the_next_one(aggregation: TimedAggregation) -> None:
    """Their readings are consumed already: dropping them would lose data (seen on the simulation runtime)."""
    first = aggregation.aggregate_round([update(1, 1.0, 16), update(2, 1.0, examples=0)], CURRENT)
    assert first.status == SKIPPED and [u.device_id for u in first.carried_over] == [1]
    second = aggregation.aggregate_round([*first.carried_over, update(2, 1.0, 8), update(3, 1.0, 8)], CURRENT)
    assert second.status == AGGREGATED and second.num_examples == 32 and second.carried_over == []


class FakeStore:
    def __init__(self, docs: list[dict[str, Any]]) -> None:
        self.docs = docs

    def latest_global_model(self) -> dict[str, Any] | None:
        return max(self.docs, key=lambda d: d["round"], default=None)


def test_resume_continues_from_the_newest_global_model() -> None:
    spec = load_config().fl.model
    fresh = rounds.resume(FakeStore([]).latest_global_model(), spec)
    assert fresh.round == 0 and fresh.threshold == float("inf")
    docs = [{"round": r, "threshold": 0.5 + r, "weights": encode_weights(weights(float(r)))} for r in (3, 7, 5)]
    state = rounds.resume(FakeStore(docs).latest_global_model(), spec)
    assert state.round == 7 and state.threshold == 7.5
    np.testing.assert_array_equal(state.weights[0], weights(7.0)[0])


# ------------------------------------------------------------------ the ServerApp's loop, without a network
class MongoStand:
    """MongoDB as the ServerApp sees it (core.storage.Storage's methods it calls), with outages:
    ``down`` raises AutoReconnect from every call; ``drop_after_write`` loses the connection after the
    next tick's documents were written (the reply never arrives)."""

    def __init__(self, latest: dict[str, Any]) -> None:
        self.globals, self.locals, self.ticks = [latest], [], []  # type: ignore[var-annotated]
        self.down, self.drop_after_write, self.calls = False, False, []  # type: ignore[var-annotated]
        self.state: dict[str, Any] = {}

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.down:
            raise AutoReconnect("connection refused")

    def latest_global_model(self) -> dict[str, Any] | None:
        self._call("latest")
        return max(self.globals, key=lambda d: d["round"])

    def server_control(self) -> dict[str, Any]:
        self._call("control")
        return {}

    def newest_sources(self, devices: list[int]) -> dict[int, list[dict[str, Any]]]:
        self._call("sources")
        found = {d: [u["source"] for u in self.locals if u["device_id"] == d and u.get("source")] +
                 [i["source"] for t in self.ticks for i in t.get("left_out", []) if i["device_id"] == d]
                 for d in devices}
        return {d: s for d, s in found.items() if s}

    def save_server_state(self, state: dict[str, Any]) -> None:
        self._call("state")
        self.state = dict(state)

    def record_round(self, global_doc: dict | None, local_docs: list[dict], tick: dict) -> None:
        self._call("record_round")
        if global_doc and any(g["round"] == global_doc["round"] for g in self.globals):
            raise DuplicateKeyError("round_unique")  # the unique index of global_model.round
        self.globals += [global_doc] if global_doc else []
        self.locals += local_docs
        self.ticks.append(tick)
        if self.drop_after_write:
            self.drop_after_write = False
            raise AutoReconnect("connection closed")

    def complete_round(self, global_doc: dict | None, local_docs: list[dict], tick: dict) -> None:
        self._call("complete_round")
        for docs, new in ((self.globals, [global_doc] if global_doc else []), (self.locals, local_docs),
                          (self.ticks, [tick])):
            docs += [d for d in new if d["_id"] not in {o["_id"] for o in docs}]


def server(store: MongoStand, **changes: Any) -> TimedServer:
    settings = RunSettings(
        kafka_bootstrap="", windows_topic="", devices=[1, 2, 3, 4], windows_per_device=False, model={}, local_epochs=1,
        train_every=0.2, aggregate_every=1.0, min_devices=3, max_staleness_rounds=2, aggregator="fedavg",
        trim_fraction=0.2, max_distance_factor=3.0, max_weight_factor=3.0,
        duration=0, message_ttl=30, warmup_train_every=0, server_settings="")
    for name, value in changes.items():
        setattr(settings, name, value)
    settings.model_config = lambda: load_config().fl.model  # type: ignore[method-assign]
    out = TimedServer(settings, FakeGrid(), store)  # type: ignore[arg-type]
    out.backoff.first = 0.05  # the test's outages last moments, not seconds
    return out


class FakeGrid:
    """Flower's Grid: every train message is answered at the next pull with ``make(node)``."""

    def __init__(self, nodes: tuple[int, ...] = (1, 2, 3), make: Any = None) -> None:
        self.nodes, self.make, self.waiting = nodes, make, []  # type: ignore[var-annotated]
        self.pulls = self.replied = 0

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def push_messages(self, messages: list[Any]) -> list[str]:
        ids = [f"m{len(self.waiting) + i}-{time.monotonic()}" for i in range(len(messages))]
        self.waiting += [(mid, m.metadata.dst_node_id, m.content.config_records["config"]["server-round"])
                         for mid, m in zip(ids, messages, strict=True)]
        return ids

    def pull_messages(self, ids: list[str]) -> list[Any]:
        self.pulls += 1
        replies = [FakeReply(mid, node, self.make(node, base)) for mid, node, base in self.waiting if mid in ids]
        self.waiting = [w for w in self.waiting if w[0] not in ids]
        self.replied += len(replies)
        return replies


class FakeReply:
    def __init__(self, message_id: str, node: int, content: RecordDict) -> None:
        self.metadata = SimpleNamespace(reply_to_message_id=message_id, src_node_id=node)
        self.content = content

    def has_error(self) -> bool:
        return False


def reply(device: int, value: float = 1.0, examples: int = 10, base: int = 5) -> RecordDict:
    return update(device, value, examples, base).to_record()


LATEST = {"_id": "r5", "round": 5, "threshold": 1.0, "weights": encode_weights(weights(0.0))}


def test_backoff_doubles_to_its_limit_and_resets_on_success() -> None:
    backoff = Backoff(first=1.0, most=8.0)
    assert [backoff.failed(0.0) for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert not backoff.ready(7.9) and backoff.ready(8.0)
    assert backoff.succeeded(10.0) == 10.0 and backoff.ready(0.0) and backoff.succeeded(11.0) is None


def test_malformed_replies_are_recorded_in_the_tick_with_their_reason() -> None:
    store = MongoStand(dict(LATEST))
    app = server(store)
    broken = reply(4)
    broken.metric_records["metrics"]["num-examples"] = float("inf")  # device 4 known: recorded against it
    nameless = reply(2)
    nameless.config_records["config"]["device-id"] = float("inf")  # no device: counted
    stranger = reply(99)  # a valid id, but not a device of this federation: counted
    for node, content in ((4, broken), (2, nameless), (9, stranger), (1, reply(1)), (2, reply(2)), (3, reply(3))):
        if (parsed := app.parse(FakeReply("x", node, content))) is not None:  # type: ignore[arg-type]
            app.pending.append(parsed)
    app.aggregate()
    assert [g["round"] for g in store.globals] == [5, 6]
    (tick,) = store.ticks
    assert tick["status"] == AGGREGATED and tick["accepted"] == [1, 2, 3]
    assert [(r["device_id"], "num-examples must be an integer" in r["reason"]) for r in tick["rejected"]] == [(4, True)]
    assert tick["malformed"] == 2 and tick["transport"]["malformed"] == 2
    assert store.globals[-1]["rejected"] == 1


def test_a_mongodb_outage_across_ticks_loses_no_update_and_keeps_rounds_consecutive() -> None:
    store = MongoStand(dict(LATEST))
    app = server(store)
    app.pending = [update(d, 1.0, 10) for d in (1, 2, 3)]
    store.down = True
    app.aggregate()  # the write fails: the tick waits, the current model stays round 5
    assert app.unwritten is not None and app.state.round == 5 and store.ticks == []
    app.pending += [update(d, 1.0, 7, seconds=60) for d in (1, 2, 3)]  # replies go on coming meanwhile
    app.aggregate()  # a tick during the outage: waits for the first, decides nothing
    assert app.unwritten.outcome.round == 6 and len(app.pending) == 3
    store.down = False
    time.sleep(0.1)  # the backoff
    app.write_tick()
    assert app.unwritten is None and app.state.round == 6
    app.aggregate()
    assert [g["round"] for g in store.globals] == [5, 6, 7]
    assert sum(d["num_examples"] for d in store.locals) == 3 * 10 + 3 * 7  # every update's readings stored
    assert [t["round"] for t in store.ticks] == [6, 7]


def test_a_tick_written_before_the_connection_dropped_is_completed_not_written_twice() -> None:
    store = MongoStand(dict(LATEST))
    app = server(store)
    app.pending = [update(d, 1.0, 10) for d in (1, 2, 3)]
    store.drop_after_write = True
    app.aggregate()  # written, but the reply was lost: the ServerApp cannot know
    assert app.unwritten is not None and len(store.ticks) == 1
    time.sleep(0.1)
    app.write_tick()  # again, as the same tick: only what is missing (nothing) is written
    assert store.calls.count("complete_round") == 1 and store.calls.count("record_round") == 1
    assert [g["round"] for g in store.globals] == [5, 6] and len(store.ticks) == 1 and len(store.locals) == 3
    assert app.unwritten is None and app.state.round == 6


def test_a_refused_write_is_not_retried_but_raised() -> None:
    store = MongoStand(dict(LATEST))
    app = server(store)
    store.globals.append({"_id": "other", "round": 6})  # another ServerApp wrote round 6
    app.pending = [update(d, 1.0, 10) for d in (1, 2, 3)]
    with pytest.raises(DuplicateKeyError):
        app.aggregate()


def test_the_loop_keeps_pulling_replies_through_an_outage_and_writes_every_tick_after_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_run_id", "_node_id", "_task_id"):  # what a running ServerApp has: Message() needs them
        monkeypatch.setattr(TaskIdentity, name, 1)
    store = MongoStand(dict(LATEST))
    app = server(store, duration=6.0)
    app.backoff.most = 0.5
    grid = FakeGrid(make=lambda node, base: reply(node, 1.0, 4, base))
    app.grid = grid  # type: ignore[assignment]
    pulls: list[int] = []
    timers = [threading.Timer(1.5, lambda: setattr(store, "down", True)),
              threading.Timer(1.6, lambda: pulls.append(grid.pulls)),
              threading.Timer(3.9, lambda: pulls.append(grid.pulls)),
              threading.Timer(4.0, lambda: setattr(store, "down", False))]
    for t in timers:
        t.start()
    app.run()  # never raises for the outage
    assert pulls[1] - pulls[0] > 5  # replies pulled while MongoDB was down
    assert any(c == "record_round" for c in store.calls) and store.calls.count("complete_round") >= 1
    made = [g["round"] for g in store.globals]
    assert made == list(range(5, 5 + len(made))) and len(made) >= 4, made  # consecutive, none twice
    assert [t["round"] for t in store.ticks if t["status"] == AGGREGATED] == made[1:]
    # Every reply's readings are in a stored local update, or still pending when the run ended.
    assert sum(d["num_examples"] for d in store.locals) + sum(u.num_examples for u in app.pending) == 4 * grid.replied


def test_status_calls_the_federation_down_after_two_global_intervals_without_a_tick() -> None:
    from fl_app.flow import federation_down

    now = T0 + timedelta(seconds=500)
    assert federation_down({"at": T0 + timedelta(seconds=390)}, None, 60.0, now) is None  # 110 s: up
    assert federation_down({"at": T0 + timedelta(seconds=370)}, None, 60.0, now) == 130.0  # 130 s: down
    state = {"at": T0 + timedelta(seconds=495), "aggregate_every_seconds": 100.0}  # an operator's interval
    assert federation_down({"at": T0 + timedelta(seconds=370)}, state, 60.0, now) is None
    assert federation_down(None, {"at": T0}, 60.0, now) == 500.0  # no tick ever: since its last report
    assert federation_down(None, None, 60.0, now) is None  # nothing known


def _moments(rows: np.ndarray) -> list[float]:
    return [float(len(rows)), *rows.sum(axis=0).tolist(), *(rows ** 2).sum(axis=0).tolist()]


def test_the_learned_normalisation_is_the_pooled_statistics_of_every_round(aggregation: TimedAggregation) -> None:
    """Two rounds of three devices: the normalisation the second global model ships is the mean and
    spread of all six devices' rows pooled (a superseded update's rows count too), and resumes from
    its document."""
    rng = np.random.default_rng(4)
    chunks = {d: rng.normal([20.0 + d, 40.0], [1.0 + d, 3.0], size=(5 + 3 * d, 2)) for d in range(1, 7)}
    state = CURRENT
    for devices in ((1, 2, 3), (4, 5, 6)):
        updates = []
        for d in devices:
            half = len(chunks[d]) // 2  # two replies of the device in one tick: both count
            for i, part in enumerate((chunks[d][:half], chunks[d][half:])):
                u = update(d, 0.1, examples=len(part), seconds=i)
                u.base_round, u.moments = state.round, _moments(part)
                updates.append(u)
        outcome = aggregation.aggregate_round(updates, state)
        assert outcome.status == AGGREGATED and outcome.state is not None, outcome.reason
        state = outcome.state
    pooled = np.concatenate(list(chunks.values()))
    norm = state.normalisation()
    assert norm is not None
    np.testing.assert_allclose(norm.centre, pooled.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(norm.scale, pooled.std(axis=0), rtol=1e-9)
    assert state.instruction(1).centre == norm.centre.tolist()
    docs = rounds.documents(outcome)
    doc = docs.global_doc
    assert doc is not None and doc["normalisation"]["centre"] == norm.centre.tolist()
    assert doc["moments"]["count"] == len(pooled)
    # Its lineage: every update whose readings it counts (the superseded too), their rounds, its tick.
    assert doc["local_model_ids"] == [d["_id"] for d in docs.local_docs] and len(docs.local_docs) == 6
    assert sum(d["num_examples"] for d in docs.local_docs) == doc["num_examples"]
    assert doc["base_rounds"] == sorted({u.base_round for u in updates}) and doc["tick_id"] == docs.tick["_id"]


def test_a_tick_lists_the_records_of_the_updates_it_left_out(aggregation: TimedAggregation) -> None:
    """Stale, rejected, and of no readings the model can take: each with the records it consumed, so that
    the lineage check (fl_app.federation.lineage) finds every consumed record in some document."""
    from core.messages import Source

    def named(u: LocalUpdate, first: int) -> LocalUpdate:
        u.source = Source(f"w.{u.device_id}", 0, first, first + 1, 0 if not u.num_examples else 1,
                          *(("", "") if not u.num_examples else ("0-1", "0-2")), 0, 0)
        return u

    good = [named(update(d, 0.1), 10) for d in (1, 2, 3)]
    stale = named(update(4, 0.1, base=CURRENT.round - aggregation.max_staleness_rounds - 1), 20)
    bad = named(update(5, 0.1), 30)
    bad.weights = weights(float("nan"))
    idle = named(LocalUpdate(device_id=6, base_round=5, num_examples=0, weights=[]), 40)
    outcome = aggregation.aggregate_round([*good, stale, bad, idle], CURRENT)
    left = {item["device_id"]: item for item in rounds.documents(outcome).tick["left_out"]}
    assert sorted(left) == [4, 5, 6]
    assert left[4]["reason"] == "stale" and left[6]["reason"] == rounds.NO_READINGS
    assert [left[d]["source"]["first_offset"] for d in (4, 5, 6)] == [20, 30, 40]


def test_each_device_keeps_its_own_newest_threshold(aggregation: TimedAggregation) -> None:
    ups = [update(d, 0.1) for d in (1, 2, 3)]
    for u, t in zip(ups, (0.5, 2.0, float("nan")), strict=True):
        u.threshold = t
    first = aggregation.aggregate_round(ups, CURRENT)
    assert first.state is not None and first.state.device_thresholds == {1: 0.5, 2: 2.0}
    later = [update(d, 0.1, base=6) for d in (2, 3, 4)]
    later[0].threshold = 3.0
    second = aggregation.aggregate_round(later, first.state)
    assert second.state is not None and second.state.device_thresholds == {1: 0.5, 2: 3.0}  # 1 kept, 2 newer


@pytest.mark.parametrize(("moments", "reason"), [
    ([1.0, 2.0], "moments must be 5 numbers"),
    ([10.0, 1.0, 1.0, float("inf"), 1.0], "finite"),
    ([10.0, 1.0, 1.0, -1.0, 1.0], "sums of squares >= 0"),
    ([11.0, 1.0, 1.0, 1.0, 1.0], "moments of 11 rows for 10 examples"),
    ([0.0, 1e300, 0.0, 0.0, 0.0], "moments of 0 rows"),  # would make the centre 1e299 for good
    ([2.0, 1.7e308, 1.7e308, 1.7e308, 1.7e308], "beyond"),  # two of these: an infinite centre
    ([2.5, 1.0, 1.0, 1.0, 1.0], "whole count"),
    ([4.0, 8.0, 0.0, 1.0, 0.0], "no rows can have"),  # mean 2 but mean square 0.25
])
def test_moments_a_device_cannot_have_are_rejected(aggregation: TimedAggregation, moments: list[float],
                                                   reason: str) -> None:
    bad = update(4, 0.1)
    bad.moments = moments
    outcome = aggregation.aggregate_round([update(1, 0.1), update(2, 0.1), update(3, 0.1), bad], CURRENT)
    assert [u.device_id for u, _ in outcome.rejected] == [4] and reason in outcome.rejected[0][1]
    assert outcome.state is not None and outcome.state.moments is None  # the others sent none


def test_a_stored_model_of_another_shape_is_not_resumed_but_its_rounds_go_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """A document of the previous version (6 inputs, no normalisation) or of another fl.model.context:
    fresh weights that fit, rounds going on from the stored one (never a crash loop)."""
    monkeypatch.setattr(rounds, "initial_state", REAL_INITIAL_STATE)  # the configured autoencoder here
    monkeypatch.setattr(inference, "weight_shapes", REAL_WEIGHT_SHAPES)
    spec = load_config().fl.model
    fresh = rounds.initial_state(spec)
    old = {"round": 41, "threshold": 0.2, "weights": encode_weights([np.zeros((16, 6), np.float32)])}
    state = rounds.resume(old, spec)
    assert state.round == 41 and state.moments is None and state.threshold == float("inf")
    assert [w.shape for w in state.weights] == [w.shape for w in fresh.weights]
    width = len(fresh.weights[0][0])  # the normalised columns plus the two of the time of day
    moments = {"count": 3.0, "sums": [1.0] * (width - 2), "squares": [1.0] * (width - 2)}
    fits = {"round": 9, "threshold": 0.2, "weights": encode_weights(fresh.weights), "moments": moments,
            "device_thresholds": {"4": 0.5}}
    state = rounds.resume(fits, spec)
    assert state.round == 9 and state.threshold == 0.2 and state.device_thresholds == {4: 0.5}
    assert state.moments is not None and state.moments.count == 3.0  # the running totals go on
    narrow = {"round": 7, "threshold": 0.2, "weights": encode_weights(fresh.weights),
              "moments": {"count": 3.0, "sums": [1.0, 2.0], "squares": [1.0, 2.0]}}
    state = rounds.resume(narrow, spec)
    assert state.round == 7 and state.moments is None
    for bad in ({"count": None, "sums": moments["sums"], "squares": moments["squares"]},  # a wrong type
                {**moments, "sums": [float("inf")] * (width - 2)}, {"count": 3.0}):  # inf; fields missing
        doc = {**fits, "moments": bad}
        state = rounds.resume(doc, spec)
        assert state.round == 9 and state.moments is None  # started fresh, not a crash loop


def test_the_next_round_learns_what_it_flags_only_when_most_devices_flagged_most_readings(
        aggregation: TimedAggregation) -> None:
    """A device holds back the new readings the global model flags; when most devices flagged most of
    theirs the stream changed (a first sunrise), and the next instruction lets them learn it. One device
    flagging everything (a stuck sensor, or a liar) does not."""
    def flagging(device: int, kept: int) -> LocalUpdate:
        out = update(device, 1.0, examples=10)
        out.moments = _moments(np.ones((kept, 2)))  # of the readings it kept
        return out

    one_device = aggregation.aggregate_round([flagging(1, 0), flagging(2, 10), flagging(3, 9)], CURRENT).state
    assert one_device is not None and not one_device.learn_flagged
    assert one_device.instruction(1).threshold == one_device.threshold  # the filter stays on
    most = aggregation.aggregate_round([flagging(1, 0), flagging(2, 1), flagging(3, 10)], CURRENT).state
    assert most is not None and most.learn_flagged
    assert most.instruction(1).threshold == float("inf") and np.isfinite(most.threshold)  # the scorer's is kept
