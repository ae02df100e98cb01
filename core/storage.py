"""The one MongoDB access layer: collections, their schemas and their indexes.

Every component that reads or writes MongoDB goes through :class:`Storage`.
The collections of database ``iot_analytics`` are declared once in
:data:`COLLECTIONS` with a ``$jsonSchema`` validator (rejects malformed
documents) and indexes (a unique ``event_id`` makes writes of readings
idempotent). :meth:`Storage.ensure_schema` creates or updates all of it and
is safe to run any number of times.

Model weights are stored in one compact form (see :func:`encode_weights`):
the arrays' raw bytes concatenated in one BSON binary, plus shapes and dtype.

The Flink job imports this module from its own environment, so it needs only
pymongo and numpy at import time (the config types are for annotations).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

import bson
import numpy as np
from bson import Binary
from bson.errors import BSONError
from pymongo import ASCENDING, DESCENDING, IndexModel, MongoClient
from pymongo.client_session import ClientSession
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError, CollectionInvalid, DuplicateKeyError, OperationFailure, PyMongoError

from core.records import SENSOR_FIELDS

if TYPE_CHECKING:
    from core.config import MongoConfig

DUPLICATE_KEY = 11000  # MongoDB's error code for a unique index violation
ILLEGAL_OPERATION = 20  # e.g. a transaction on a server that is not a replica set

DEVICE_DATA = "device_data"
LOCAL_MODELS = "local_models"
GLOBAL_MODEL = "global_model"
PREDICTIONS = "predictions"
FL_ROUNDS = "fl_rounds"
ANALYTICS_RUNS = "analytics_runs"
FL_SERVER = "fl_server"
SERVER_STATE, SERVER_CONTROL = "state", "control"  # the two documents of fl_server

_NUMBER = {"bsonType": ["double", "int", "long", "decimal"]}
_INT = {"bsonType": ["int", "long"]}
_DATE = {"bsonType": "date"}
_WEIGHTS = {
    "bsonType": "object",
    "required": ["data", "shapes", "dtype"],
    "properties": {
        "data": {"bsonType": "binData"},
        "shapes": {"bsonType": "array", "items": {"bsonType": "array"}},
        "dtype": {"bsonType": "string"},
    },
}


def written_at_index(name: str) -> IndexModel:
    # Its own index: the local MongoDB-wire server's _id index serves only equality and $in (a range
    # of _id, or of a compound index's second field, is a scan of the collection under its lock:
    # 0.64 s for none of 50,000 readings, 1 ms by this index).
    return IndexModel([(name, ASCENDING)], name=f"{name}_1")


@dataclass(frozen=True)
class CollectionSpec:
    """A collection's validator and indexes; ``written_at``: the time its writer stamps a document with
    when it makes it (beside the ``_id``, kept by a retried write), indexed: what is new since a moment
    is a range of it (:func:`written_in`)."""

    name: str
    schema: Mapping[str, Any]
    indexes: Sequence[IndexModel] = field(default_factory=tuple)
    written_at: str | None = None


COLLECTIONS: tuple[CollectionSpec, ...] = (
    CollectionSpec(
        DEVICE_DATA,
        # One document per valid reading of the iot_stream topic.
        {
            "bsonType": "object",
            "required": ["event_id", "device_id", "event_time", *SENSOR_FIELDS],
            "properties": {
                "event_id": {"bsonType": "string", "minLength": 1},
                "device_id": _INT,
                "event_time": _DATE,
                "source_time": _DATE,
                "loop": _INT,
                "seq": _INT,
                **{name: _NUMBER for name in SENSOR_FIELDS},
                "stored_at": _DATE,
            },
        },
        (
            IndexModel([("event_id", ASCENDING)], unique=True, name="event_id_unique"),
            # Few: indexes dominate insert cost on the local server. Measured
            # (10k inserts, batches of 1,000): no index 18.4k/s, the unique one
            # alone 5.5k/s, three indexes 4.0k/s.
            IndexModel([("device_id", ASCENDING), ("event_time", DESCENDING)], name="device_time"),
            written_at_index("stored_at"),
        ),
        written_at="stored_at",
    ),
    CollectionSpec(
        LOCAL_MODELS,
        # One document per accepted local update: a device's training on its new windows.
        # "round" is the global round it started from; "aggregated_into" the round it went into.
        {
            "bsonType": "object",
            "required": ["device_id", "trained_at", "round", "num_examples", "weights"],
            "properties": {
                "device_id": _INT,
                "round": _INT,
                "aggregated_into": _INT,
                "trained_at": _DATE,  # when the server received it
                "stored_at": _DATE,  # when the server made the document (the update waited for its round)
                "window_start": {"bsonType": ["date", "null"]},
                "window_end": {"bsonType": ["date", "null"]},
                # Lineage (core.messages.Source): the window records it consumed and their readings.
                "source": {"bsonType": ["object", "null"]},
                "num_examples": _INT,
                "metrics": {"bsonType": "object"},
                "weights": _WEIGHTS,
            },
        },
        (
            IndexModel([("device_id", ASCENDING), ("trained_at", DESCENDING)], name="device_time"),
            # Where each device's account ends when a ServerApp starts (Storage.newest_sources).
            IndexModel([("device_id", ASCENDING), ("source.last_offset", DESCENDING)], name="device_source"),
            IndexModel([("round", DESCENDING)], name="round"),
            written_at_index("stored_at"),
        ),
        written_at="stored_at",
    ),
    CollectionSpec(
        GLOBAL_MODEL,
        # One document per aggregation round (FedAvg of the local models).
        {
            "bsonType": "object",
            "required": ["round", "created_at", "num_devices", "weights", "threshold"],
            "properties": {
                "round": _INT,
                "created_at": _DATE,
                "num_devices": _INT,
                "device_ids": {"bsonType": "array", "items": _INT},
                "num_examples": _INT,
                "metrics": {"bsonType": "object"},
                "rejected": _INT,
                "stale": _INT,
                "threshold": _NUMBER,
                "device_thresholds": {"bsonType": "object"},  # device id (text) -> its own threshold
                # Lineage: the local updates it averaged, the rounds they started from, its tick.
                "local_model_ids": {"bsonType": "array", "items": {"bsonType": "objectId"}},
                "base_rounds": {"bsonType": "array", "items": _INT},
                "tick_id": {"bsonType": "objectId"},
                "moments": {"bsonType": "object"},  # the federation's running count, sums, squares
                "normalisation": {"bsonType": "object"},  # the centre and scale they give
                "weights": _WEIGHTS,
            },
        },
        (
            IndexModel([("round", DESCENDING)], unique=True, name="round_unique"),
            IndexModel([("created_at", DESCENDING)], name="created_at"),
        ),
        written_at="created_at",
    ),
    CollectionSpec(
        PREDICTIONS,
        # One anomaly score per reading and scoring model (analytics/scorer.py): the reading's
        # values, the model's reconstruction and absolute error per field, the score (mean squared
        # error of the normalised inputs) against the global threshold of that round.
        {
            "bsonType": "object",
            "required": ["event_id", "device_id", "event_time", "score", "is_anomaly", "model_round",
                         "prediction_type", "scored_at"],
            "properties": {
                "event_id": {"bsonType": "string", "minLength": 1},
                "device_id": _INT,
                "event_time": _DATE,
                "actual": {"bsonType": "object"},
                "output": {"bsonType": "object"},
                "error": {"bsonType": "object"},
                "score": _NUMBER,
                "threshold": _NUMBER,
                "is_anomaly": {"bsonType": "bool"},
                "model_round": _INT,
                "prediction_type": {"enum": ["streaming", "batch"]},
                "scored_at": _DATE,
            },
        },
        (
            IndexModel([("event_id", ASCENDING), ("model_round", ASCENDING)], unique=True, name="event_round_unique"),
            IndexModel([("device_id", ASCENDING), ("event_time", DESCENDING)], name="device_time"),
            written_at_index("scored_at"),
        ),
        written_at="scored_at",
    ),
    CollectionSpec(
        FL_ROUNDS,
        # One document per aggregation tick of the ServerApp, aggregated or skipped (with why),
        # with every update that did not count and its reason.
        {
            "bsonType": "object",
            "required": ["at", "status", "round"],
            "properties": {
                "at": _DATE,
                "status": {"enum": ["aggregated", "skipped"]},
                "round": _INT,
                "reason": {"bsonType": "string"},
                "accepted": {"bsonType": "array", "items": _INT},
                "rejected": {"bsonType": "array", "items": {"bsonType": "object", "required": ["device_id", "reason"]}},
                "stale": {"bsonType": "array", "items": _INT},
                "idle": {"bsonType": "array", "items": _INT},
                # The message layer since the previous tick: devices online, train messages sent,
                # replies, expired messages, message-to-reply seconds (p50, p99, max) and the medians of
                # its hops: delivery (to the ClientApp's start), work (the ClientApp), return (back).
                "transport": {"bsonType": "object", "properties": {
                    "online": _INT, "sent": _INT, "replies": _INT, "expired": _INT, "outstanding": _INT,
                    "latency_p50": _NUMBER, "latency_p99": _NUMBER, "latency_max": _NUMBER,
                    "delivery_p50": _NUMBER, "work_p50": _NUMBER, "return_p50": _NUMBER}},
            },
        },
        (IndexModel([("at", DESCENDING)], name="at"),),
        written_at="at",
    ),
    CollectionSpec(
        ANALYTICS_RUNS,
        # One summary per batch analytics run (analytics/batch.py); the tables go to the SQL serving store.
        {
            "bsonType": "object",
            "required": ["at", "seconds", "tables"],
            "properties": {
                "at": _DATE,
                "seconds": _NUMBER,
                "tables": {"bsonType": "array", "items": {"bsonType": "string"}},
                "readings": _INT, "predictions": _INT, "global_rounds": _INT, "local_updates": _INT,
                "precision": {"bsonType": ["double", "null"]}, "recall": {"bsonType": ["double", "null"]},
                "f1": {"bsonType": ["double", "null"]},
            },
        },
        (IndexModel([("at", DESCENDING)], name="at"),),
        written_at="at",
    ),
    CollectionSpec(
        FL_SERVER,
        # Two documents. "state": the running ServerApp's view, rewritten at every train tick
        # (updates waiting for the next aggregation, devices online, when it aggregates next).
        # "control": what an operator asked for through the API's admin actions (aggregate now,
        # another aggregation interval); the ServerApp reads it every second.
        {
            "bsonType": "object",
            "required": ["_id"],
            "properties": {
                "_id": {"enum": [SERVER_STATE, SERVER_CONTROL]},
                "at": _DATE,
                "round": _INT,
                "online": _INT,
                "pending": _INT,
                "pending_devices": {"bsonType": "array", "items": _INT},
                "outstanding": _INT,
                "aggregate_every_seconds": {"bsonType": ["double", "int", "long", "null"]},
                "next_aggregation_at": _DATE,
                "aggregate_now_requested_at": _DATE,
            },
        },
    ),
)



SPECS = {spec.name: spec for spec in COLLECTIONS}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def written_in(name: str, lower: datetime, upper: datetime) -> dict[str, Any]:
    """The query of collection ``name``'s documents stamped in ``[lower, upper)`` (``written_at``)."""
    written_at = SPECS[name].written_at
    if written_at is None:
        raise ValueError(f"{name} has no written_at field")
    return {written_at: {"$gte": lower, "$lt": upper}}


def ping(uri: str, timeout_ms: int = 2000) -> bool:
    """True if a MongoDB-wire server answers ``ping`` at ``uri``."""
    client: MongoClient = MongoClient(uri, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms)
    try:
        client.admin.command("ping")
        return True
    except PyMongoError:
        return False
    finally:
        client.close()


class Storage:
    """MongoDB access for the whole platform.

    Parameters
    ----------
    uri, database
        Where (``mongo.uri``, ``mongo.database``; :meth:`from_config` reads them).
    timeout_ms
        How long to wait for a server before an operation fails.
    """

    def __init__(self, uri: str, database: str, timeout_ms: int = 5000) -> None:
        self.client: MongoClient = MongoClient(uri, serverSelectionTimeoutMS=timeout_ms, tz_aware=True)
        self.db: Database = self.client[database]

    @classmethod
    def from_config(cls, mongo: MongoConfig) -> Storage:
        """Connected as the configuration says, logged in with ``mongo.auth`` (core.mongo_auth)."""
        from core.mongo_auth import client_uri

        return cls(client_uri(mongo), mongo.database, mongo.server_selection_timeout_ms)

    # Collections by name, so callers never spell them.
    @property
    def device_data(self) -> Collection:
        return self.db[DEVICE_DATA]

    @property
    def local_models(self) -> Collection:
        return self.db[LOCAL_MODELS]

    @property
    def global_model(self) -> Collection:
        return self.db[GLOBAL_MODEL]

    @property
    def predictions(self) -> Collection:
        return self.db[PREDICTIONS]

    @property
    def fl_rounds(self) -> Collection:
        return self.db[FL_ROUNDS]

    @property
    def analytics_runs(self) -> Collection:
        return self.db[ANALYTICS_RUNS]

    @property
    def fl_server(self) -> Collection:
        return self.db[FL_SERVER]

    def save_server_state(self, state: Mapping[str, Any]) -> None:
        """The running ServerApp's view (see ``fl_server`` in :data:`COLLECTIONS`), replaced whole."""
        self.fl_server.replace_one({"_id": SERVER_STATE}, {**state, "_id": SERVER_STATE}, upsert=True)

    def server_state(self) -> dict[str, Any] | None:
        return self.fl_server.find_one({"_id": SERVER_STATE})

    def server_control(self) -> dict[str, Any]:
        """The operator's requests to the ServerApp ({} when there are none)."""
        return self.fl_server.find_one({"_id": SERVER_CONTROL}) or {}

    def request_control(self, **changes: Any) -> dict[str, Any]:
        """Set ``aggregate_now_requested_at`` and/or ``aggregate_every_seconds`` (None: back to the
        configured interval); returns the control document."""
        self.fl_server.update_one({"_id": SERVER_CONTROL}, {"$set": changes}, upsert=True)
        return self.server_control()

    def clear_server_control(self) -> None:
        """A new run starts from the configuration, not from an earlier run's requests."""
        self.fl_server.delete_one({"_id": SERVER_CONTROL})

    def latest_global_model(self, fields: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """The newest global model document (highest round), or None before the first; ``fields``:
        a projection (e.g. ``{"weights": 0}`` to leave the weights out)."""
        return self.global_model.find_one({}, fields, sort=[("round", DESCENDING)])

    def record_round(self, global_doc: Mapping[str, Any] | None, local_docs: Sequence[Mapping[str, Any]],
                     tick_doc: Mapping[str, Any]) -> None:
        """Persist one aggregation tick in one transaction: the new global model (if any), the
        local models it averaged, the tick. Without transactions (a standalone MongoDB), the
        global model goes first, so a crash never leaves a local model pointing at a round
        that does not exist. A global round that exists already raises (a second ServerApp
        on the same database must not overwrite history)."""
        with self.client.start_session() as session:
            try:
                with session.start_transaction():  # all or nothing where the server has transactions
                    self._write_round(global_doc, local_docs, tick_doc, session)
            except OperationFailure as exc:
                if exc.code != ILLEGAL_OPERATION:  # a standalone mongod has no transactions: ordered writes
                    raise
                self._write_round(global_doc, local_docs, tick_doc, None)

    def _write_round(self, global_doc: Mapping[str, Any] | None, local_docs: Sequence[Mapping[str, Any]],
                     tick_doc: Mapping[str, Any], session: ClientSession | None) -> None:
        if global_doc is not None:
            self.global_model.insert_one(dict(global_doc), session=session)
        if local_docs:
            self.local_models.insert_many([dict(d) for d in local_docs], ordered=True, session=session)
        self.fl_rounds.insert_one(dict(tick_doc), session=session)

    def complete_round(self, global_doc: Mapping[str, Any] | None, local_docs: Sequence[Mapping[str, Any]],
                       tick_doc: Mapping[str, Any]) -> None:
        """Finish a :meth:`record_round` that failed, perhaps after the server had written all or part
        of it: the documents carry the ``_id`` they were first sent with, and each one already there
        is skipped, in the same order. A global round held by a document of another ``_id`` still
        raises (a second writer, not our retry)."""
        if global_doc is not None:
            _insert_own(self.global_model, global_doc)
        for doc in local_docs:
            _insert_own(self.local_models, doc)
        _insert_own(self.fl_rounds, tick_doc)

    def ensure_schema(self) -> list[str]:
        """Create missing collections; (re)apply validators and indexes. Returns names."""
        existing = set(self.db.list_collection_names())
        for spec in COLLECTIONS:
            validator = {"$jsonSchema": spec.schema}
            if spec.name not in existing:
                with contextlib.suppress(CollectionInvalid):  # created concurrently
                    self.db.create_collection(
                        spec.name, validator=validator, validationLevel="strict", validationAction="error"
                    )
            self.db.command(
                "collMod", spec.name, validator=validator, validationLevel="strict", validationAction="error"
            )
            if spec.indexes:
                self.db[spec.name].create_indexes(list(spec.indexes))
        return [spec.name for spec in COLLECTIONS]

    def newest_sources(self, devices: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
        """Each device's stored sources (core.messages.Source docs) that reach farthest: of its updates,
        and of the left-out replies of its newest tick that lists one (server/positions.py)."""
        out: dict[int, list[dict[str, Any]]] = {}
        for device in devices:
            found = self.local_models.find_one({"device_id": device, "source": {"$type": "object"}}, {"source": 1},
                                               sort=[("device_id", ASCENDING), ("source.last_offset", DESCENDING)])
            sources = [found["source"]] if found else []
            for tick in self.fl_rounds.find({"left_out.device_id": device}, {"left_out": 1},
                                            sort=[("at", DESCENDING)], limit=1):
                sources += [i["source"] for i in tick["left_out"] if i.get("device_id") == device and i.get("source")]
            if sources:
                out[device] = sources
        return out

    def insert_readings(self, readings: Sequence[Mapping[str, Any]]) -> Inserted:
        """Store validated ``iot_stream`` readings (ISO timestamps); see :class:`Inserted`.

        Unordered bulk insert: a reading whose ``event_id`` is already stored
        (a replay after a crash) is skipped and counted; one that cannot be
        converted, encoded or stored is left out with its reason (the Flink job
        dead-letters it), and the rest go in. Only a fault that is not one
        document's (the server unreachable, a write concern error) raises, so
        the caller retries the whole bulk.
        """
        now = datetime.now(UTC)
        docs: list[tuple[int, dict[str, Any]]] = []
        rejected: list[tuple[int, str]] = []
        for index, r in enumerate(readings):
            try:
                docs.append((index, {**r, "event_time": _utc(r["event_time"]), "source_time": _utc(r["source_time"]),
                                     "stored_at": now}))
            except (KeyError, TypeError, ValueError, OverflowError) as exc:
                rejected.append((index, f"cannot convert: {_short(exc)}"))
        return _insert_new(self.device_data, docs, rejected)

    def insert_predictions(self, docs: Sequence[Mapping[str, Any]]) -> Inserted:
        """Store predictions (see :class:`Inserted`). One per ``(event_id, model_round)``: a batch
        scored again after a crash finds its documents there and changes nothing."""
        return _insert_new(self.predictions, [(i, dict(d)) for i, d in enumerate(docs)], [])

    def counts(self) -> dict[str, int]:
        """Documents per collection, for a one-off look (``fl-app status``). On the local MongoDB-wire
        server an estimated count walks the whole collection under its lock (0.35 s for 50,000
        readings, inserts waiting up to a second): what counts repeatedly uses :class:`DocumentCounts`."""
        return {spec.name: self.db[spec.name].estimated_document_count() for spec in COLLECTIONS}

    def count_written(self, name: str, lower: datetime, upper: datetime) -> int:
        """Documents of ``name`` stamped in ``[lower, upper)``: a range of its ``written_at`` index, which
        costs what it finds. From :data:`EPOCH`: everything but what came at or after ``upper``."""
        collection = self.db[name]
        if lower <= EPOCH:
            later = written_in(name, upper, datetime.max.replace(tzinfo=UTC))
            return collection.estimated_document_count() - _found(collection, later)
        return _found(collection, written_in(name, lower, upper))

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _found(collection: Collection, query: Mapping[str, Any]) -> int:
    # Not count_documents: the local server's count with a filter decodes every document of the
    # collection; a find by the index reads only the matches.
    return sum(1 for _ in collection.find(query, {"_id": 1}))


class DocumentCounts:
    """Documents per collection that has a ``written_at``, kept up to date by counting only what was
    stamped since the last call (up to ``settle_seconds`` ago: a document stamped but not yet inserted is
    counted by the next call). The first call counts everything once. A document inserted more than
    ``settle_seconds`` after its stamp (a writer retrying through a MongoDB outage) is counted by the
    next :class:`DocumentCounts`, not this one."""

    def __init__(self, settle_seconds: float = 2.0) -> None:
        self.settle_seconds = settle_seconds
        self.totals: dict[str, int] = {}
        self.upper = EPOCH

    def update(self, store: Storage) -> dict[str, int]:
        upper = max(self.upper, datetime.now(UTC) - timedelta(seconds=self.settle_seconds))
        for name, spec in SPECS.items():
            if spec.written_at is not None:
                self.totals[name] = self.totals.get(name, 0) + store.count_written(name, self.upper, upper)
        self.upper = upper
        return dict(self.totals)


class Inserted(NamedTuple):
    """What a bulk insert did: documents stored, already there (a replay), and left out, each as
    ``(index in the input, reason)``."""

    stored: int
    existing: int
    rejected: list[tuple[int, str]]


def _utc(text: str) -> datetime:
    stamp = datetime.fromisoformat(text)
    if stamp.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return stamp.astimezone(UTC)


def _short(exc: BaseException, limit: int = 200) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[:limit] + "..."


def _insert_new(collection: Collection, docs: list[tuple[int, dict[str, Any]]],
                rejected: list[tuple[int, str]]) -> Inserted:
    """Unordered bulk insert of ``(index, document)`` where a unique index makes a document already
    there a no-op. A document BSON cannot encode (an integer past int64, a lone surrogate) or the
    server refuses (its validator) is added to ``rejected``; any other error raises."""
    encodable = []
    for index, doc in docs:
        # Encoding first, one by one (~3 us a reading): one bad document in insert_many would fail
        # the whole call after some of the bulk went in, and leave no way to tell which.
        try:
            bson.encode(doc)
        except (BSONError, OverflowError, ValueError, TypeError) as exc:
            rejected.append((index, f"cannot encode: {_short(exc)}"))
        else:
            encodable.append((index, doc))
    if not encodable:
        return Inserted(0, 0, rejected)
    try:
        collection.insert_many([doc for _, doc in encodable], ordered=False)
    except BulkWriteError as exc:
        if exc.details.get("writeConcernErrors"):
            raise
        errors = exc.details.get("writeErrors", [])
        existing = sum(1 for e in errors if e.get("code") == DUPLICATE_KEY)
        rejected.extend((encodable[e["index"]][0], f"refused by MongoDB: {str(e.get('errmsg', ''))[:200]}")
                        for e in errors if e.get("code") != DUPLICATE_KEY)
        return Inserted(len(encodable) - len(errors), existing, rejected)
    return Inserted(len(encodable), 0, rejected)


def _insert_own(collection: Collection, doc: Mapping[str, Any]) -> None:
    """Insert ``doc`` unless the document of its ``_id`` is there already."""
    try:
        collection.insert_one(dict(doc))
    except DuplicateKeyError:
        if collection.find_one({"_id": doc["_id"]}, {"_id": 1}) is None:
            raise


def encode_weights(arrays: Iterable[np.ndarray]) -> dict[str, Any]:
    """Model weights in their stored form: one binary blob plus shapes and dtype."""
    arrays = [np.asarray(a, order="C") for a in arrays]  # keeps 0-d arrays 0-d
    dtypes = {a.dtype.str for a in arrays}
    if len(dtypes) > 1:
        raise ValueError(f"all weight arrays must share one dtype, got {sorted(dtypes)}")
    dtype = dtypes.pop() if dtypes else np.dtype("float32").str
    return {
        "data": Binary(b"".join(a.tobytes() for a in arrays)),
        "shapes": [list(a.shape) for a in arrays],
        "dtype": dtype,
    }


def decode_weights(doc: Mapping[str, Any]) -> list[np.ndarray]:
    """Inverse of :func:`encode_weights`."""
    dtype = np.dtype(doc["dtype"])
    buf = bytes(doc["data"])
    out, offset = [], 0
    for shape in doc["shapes"]:
        count = int(np.prod(shape)) if shape else 1
        nbytes = count * dtype.itemsize
        out.append(np.frombuffer(buf, dtype=dtype, count=count, offset=offset).reshape(shape).copy())
        offset += nbytes
    if offset != len(buf):
        raise ValueError(f"weights blob has {len(buf)} bytes, shapes account for {offset}")
    return out
