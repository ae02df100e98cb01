"""`fl-app lineage check` on the MongoDB-wire server: rounds and updates as the ServerApp writes them
(server/rounds.py), then each kind of break it must find: a window record trained on twice, records
consumed without a trace, an update its round does not name, a round whose readings differ."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from core.config import AppConfig, load_config
from core.messages import LocalUpdate, Source
from core.storage import Storage
from fl_app.federation import lineage
from server import rounds
from server.aggregation import AGGREGATED, GlobalState, RoundOutcome

pytestmark = pytest.mark.integration
T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def update(device: int, first: int, last: int, base: int) -> LocalUpdate:
    return LocalUpdate(device, base, (last - first + 1) * 5, [np.zeros(2, np.float32)], {"loss": 0.1},
                       source=Source(f"w.{device}", 0, first, last, last - first + 1, f"0-{first}", f"0-{last}", 0, 0))


def write_round(store: Storage, number: int, updates: list[LocalUpdate], stale: tuple[LocalUpdate, ...] = ()) -> None:
    state = GlobalState(round=number, weights=[np.zeros(2, np.float32)], threshold=1.0)
    outcome = RoundOutcome(status=AGGREGATED, round=number, at=T0 + timedelta(minutes=number), state=state,
                           accepted=updates, stale=list(stale),
                           num_examples=sum(u.num_examples for u in updates))
    rounds.write(store, rounds.documents(outcome))


@pytest.fixture()
def store(stack: AppConfig, tmp_path: Path):
    cfg = load_config([f"paths.home={tmp_path}", f"mongo.uri={stack.mongo.uri}",
                       f"mongo.database=lin_{uuid.uuid4().hex[:8]}"])
    with Storage.from_config(cfg.mongo) as s:
        s.ensure_schema()
        write_round(s, 1, [update(1, 0, 2, 0), update(2, 0, 0, 0), update(3, 0, 1, 0)])
        # Device 1's offsets 3-4 went into an update that came too late: left out, recorded with its source.
        write_round(s, 2, [update(1, 5, 6, 1), update(2, 1, 3, 1), update(3, 2, 2, 1)], stale=(update(1, 3, 4, 0),))
        yield s
        s.client.drop_database(s.db.name)


def test_what_the_server_writes_is_consistent(store: Storage) -> None:
    report = lineage.check(store)
    assert report.ok, report.problems
    assert (report.rounds, report.updates, report.left_out, report.records) == (2, 6, 1, 7 + 4 + 3)
    assert report.readings == sum(g["num_examples"] for g in store.global_model.find({}))


def test_a_record_trained_on_twice_is_found(store: Storage) -> None:
    write_round(store, 3, [update(2, 3, 5, 2), update(1, 7, 7, 2), update(3, 3, 3, 2)])  # device 2's offset 3 again
    problems = lineage.check(store).problems
    assert list(problems) == ["window records trained on twice"]
    assert problems["window records trained on twice"][0].startswith("w.2[0] offsets 3-3")


def test_records_consumed_without_a_trace_are_found(store: Storage) -> None:
    write_round(store, 3, [update(3, 6, 8, 2), update(1, 7, 7, 2), update(2, 4, 4, 2)])  # device 3's 3-5: lost
    assert lineage.check(store).problems == {
        "window records consumed without a trace": [
            next(f"w.3[0] offsets 3-5, between device 3, update {u['_id']}" for u in
                 store.local_models.find({"device_id": 3, "aggregated_into": 2}))
            + next(f" and device 3, update {u['_id']}" for u in
                   store.local_models.find({"device_id": 3, "aggregated_into": 3}))]}


def test_an_update_its_round_does_not_name_and_a_miscounted_round_are_found(store: Storage) -> None:
    g = store.global_model.find_one({"round": 2})
    assert g is not None
    store.global_model.update_one({"round": 2}, {"$set": {"local_model_ids": g["local_model_ids"][1:],
                                                          "num_examples": g["num_examples"] + 1}})
    problems = lineage.check(store).problems
    assert set(problems) == {"update not in exactly its round", "round's readings differ from its updates'"}
    assert "named by rounds []" in problems["update not in exactly its round"][0]
    # Only the recent rounds: round 1 alone is consistent.
    assert lineage.check(store, since=T0 + timedelta(seconds=30)).problems != {}
    assert lineage.check(store, since=T0 + timedelta(minutes=3)).rounds == 0
