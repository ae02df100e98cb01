"""The storage layer against the real local MongoDB-wire server."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import numpy as np
import pytest
from bson import ObjectId
from pymongo.errors import DuplicateKeyError, PyMongoError, WriteError

from core import storage
from core.config import AppConfig

pytestmark = pytest.mark.integration


def reading(**overrides) -> dict:
    doc = {
        "event_id": f"0-{uuid.uuid4().hex}",
        "device_id": 7,
        "event_time": datetime.now(UTC),
        "source_time": datetime(2004, 3, 1, tzinfo=UTC),
        "loop": 0,
        "seq": 1,
        "temperature": 21.5,
        "humidity": 38.0,
        "light": 120.0,
        "voltage": 2.7,
    }
    doc.update(overrides)
    return doc


@pytest.fixture()
def store(stack: AppConfig):
    with storage.Storage.from_config(stack.mongo) as s:
        yield s


def test_the_four_collections_exist_with_validators_and_indexes(store: storage.Storage) -> None:
    infos = {c["name"]: c for c in store.db.list_collections()}
    for name in ("device_data", "local_models", "global_model", "predictions"):
        assert name in infos
        assert "$jsonSchema" in infos[name]["options"]["validator"]
    device_indexes = store.device_data.index_information()
    assert device_indexes["event_id_unique"]["unique"] is True
    assert device_indexes["device_time"]["key"] == [("device_id", 1), ("event_time", -1)]
    assert store.global_model.index_information()["round_unique"]["unique"] is True
    assert "device_time" in store.local_models.index_information()
    assert "device_time" in store.predictions.index_information()


def test_ensure_schema_is_idempotent(store: storage.Storage) -> None:
    before = store.device_data.index_information()
    assert store.ensure_schema() == ["device_data", "local_models", "global_model", "predictions", "fl_rounds",
                                    "analytics_runs", "fl_server"]
    assert store.device_data.index_information() == before


def test_unique_index_rejects_a_duplicate_event(store: storage.Storage) -> None:
    doc = reading()
    store.device_data.insert_one(dict(doc))
    with pytest.raises(DuplicateKeyError):
        store.device_data.insert_one(dict(doc))
    assert store.device_data.count_documents({"event_id": doc["event_id"]}) == 1


def wire(**overrides: object) -> dict:
    """A reading as the Flink job hands it to storage: timestamps still ISO strings."""
    doc = reading(**overrides)
    return {**doc, "event_time": doc["event_time"].isoformat(), "source_time": doc["source_time"].isoformat()}


def test_insert_readings_stores_a_replayed_bulk_once(store: storage.Storage) -> None:
    """The Flink job's write path: a bulk replayed after a crash overlaps what is stored."""
    first = [wire() for _ in range(5)]
    assert store.insert_readings(first) == (5, 0, [])
    replay = first[2:] + [wire() for _ in range(4)]  # 3 already stored, 4 new
    assert store.insert_readings(replay) == (4, 3, [])
    ids = [r["event_id"] for r in first + replay]
    assert store.device_data.count_documents({"event_id": {"$in": ids}}) == 9
    stored = store.device_data.find_one({"event_id": first[0]["event_id"]})
    assert stored is not None
    assert isinstance(stored["event_time"], datetime) and isinstance(stored["stored_at"], datetime)
    assert store.insert_readings([]) == (0, 0, [])


def test_insert_readings_leaves_out_what_cannot_be_stored_with_its_reason(store: storage.Storage) -> None:
    """One bad reading never fails its bulk: the Flink job dead-letters the ones left out."""
    good = [wire() for _ in range(3)]
    bad = [
        wire(temperature="hot"),  # the collection's validator refuses it
        wire(seq=2**64),  # BSON has no integer that large
        wire(event_id="\ud800"),  # a lone surrogate: not UTF-8
        {**wire(), "event_time": "0001-01-01T00:00:00+14:00"},  # not a UTC date
        {k: v for k, v in wire().items() if k != "source_time"},  # a field missing
    ]
    result = store.insert_readings([good[0], *bad, *good[1:]])
    assert (result.stored, result.existing) == (3, 0)
    reasons = dict(result.rejected)
    assert sorted(reasons) == [1, 2, 3, 4, 5]  # the positions in the bulk
    assert reasons[1].startswith("refused by MongoDB") and "cannot encode" in reasons[2]
    assert "cannot encode" in reasons[3] and "cannot convert" in reasons[4] and "cannot convert" in reasons[5]
    assert store.device_data.count_documents({"event_id": {"$in": [g["event_id"] for g in good]}}) == 3
    assert store.insert_readings(good).existing == 3  # and a replay of them is still a no-op


def test_insert_readings_raises_when_mongodb_is_unreachable() -> None:
    """A fault that is no reading's: the caller (the Flink job) retries the whole bulk."""
    with storage.Storage("mongodb://127.0.0.1:9", "nowhere", timeout_ms=300) as dead, pytest.raises(PyMongoError):
        dead.insert_readings([wire()])


@pytest.mark.parametrize(
    "bad",
    [
        {"temperature": "hot"},  # wrong type
        {"device_id": 7.5},  # not an integer
        {"event_time": "2004-03-01"},  # string, not a date
        {"event_id": ""},  # empty id
    ],
)
def test_validator_rejects_malformed_readings(store: storage.Storage, bad: dict) -> None:
    with pytest.raises(WriteError) as info:
        store.device_data.insert_one(reading(**bad))
    assert info.value.code == 121  # DocumentValidationFailure


def test_validator_rejects_a_reading_missing_a_field(store: storage.Storage) -> None:
    doc = reading()
    del doc["voltage"]
    with pytest.raises(WriteError):
        store.device_data.insert_one(doc)


def test_global_model_round_is_unique_and_weights_are_binary(store: storage.Storage) -> None:
    weights = [np.ones((3, 2), "float32"), np.zeros(2, "float32")]
    round_no = int(uuid.uuid4().int % 1_000_000) + 1_000
    doc = {"round": round_no, "created_at": datetime.now(UTC), "num_devices": 3, "threshold": 1.0,
           "weights": storage.encode_weights(weights)}
    store.global_model.insert_one(dict(doc))
    with pytest.raises(DuplicateKeyError):
        store.global_model.insert_one(dict(doc))
    loaded = store.global_model.find_one({"round": round_no})
    assert loaded is not None
    back = storage.decode_weights(loaded["weights"])
    np.testing.assert_array_equal(back[0], weights[0])
    with pytest.raises(WriteError):  # weights as a list of floats are refused
        store.global_model.insert_one({**doc, "round": round_no + 1, "weights": [1.0, 2.0]})


@pytest.fixture()
def own_store(stack: AppConfig):
    """A database of its own: counts that no other test's documents move."""
    from core.mongo_auth import client_uri

    s = storage.Storage(client_uri(stack.mongo), f"counts_{uuid.uuid4().hex[:8]}")
    s.ensure_schema()
    yield s
    s.client.drop_database(s.db.name)
    s.close()


def test_what_is_new_is_read_by_an_index_not_a_scan(own_store: storage.Storage) -> None:
    """Every collection with a written_at finds a time range of it through an index (the local server
    answers a range of _id by scanning the collection under its lock)."""
    now = datetime.now(UTC)
    for name, spec in storage.SPECS.items():
        if spec.written_at is None:
            continue
        plan = own_store.db[name].find(storage.written_in(name, now, now)).explain()["queryPlanner"]["winningPlan"]
        assert plan.get("inputStage", {}).get("stage") == "IXSCAN", (name, plan)
        assert list(plan["inputStage"]["keyPattern"]) == [spec.written_at]  # its own index, either direction
    scan = own_store.device_data.find({"_id": {"$gte": ObjectId()}}).explain()
    assert scan["queryPlanner"]["winningPlan"]["stage"] == "COLLSCAN"  # why: the day this changes, _id would do


def test_document_counts_follow_inserts_counting_only_what_is_new(own_store: storage.Storage) -> None:
    """Counts equal a full count after each batch of inserts, documents stamped inside the settle time
    included by the next update, none twice; what an update reads is what was new."""
    import time
    from unittest import mock

    counts = storage.DocumentCounts(settle_seconds=1.0)
    own_store.insert_readings([wire(seq=i, event_id=f"0-{i}") for i in range(40)])
    assert counts.update(own_store)[storage.DEVICE_DATA] == 0  # stamped within the settle second
    time.sleep(1.1)
    assert counts.update(own_store)[storage.DEVICE_DATA] == 40
    found: list[int] = []
    real = storage._found

    def counted(collection, query):
        found.append(real(collection, query))
        return found[-1]

    with mock.patch.object(storage, "_found", side_effect=counted):
        for step in range(3):
            own_store.insert_readings([wire(seq=i, event_id=f"1-{step}-{i}") for i in range(25)])
            own_store.fl_rounds.insert_one({"at": datetime.now(UTC), "status": "skipped", "round": step})
            time.sleep(1.1)
            got = counts.update(own_store)
            assert got == {n: own_store.db[n].count_documents({}) for n in got}
    assert max(found) == 25  # each update read what was new, never the collection
    assert storage.FL_SERVER not in got  # rewritten in place: no stamp to count by
