"""Streaming anomaly scoring with Spark Structured Streaming (``fl-app spark stream``).

Reads ``iot_stream`` through Spark's own Kafka source and, per micro-batch
(``spark.scorer.trigger_seconds``), in three steps on the executors:

1. **validate** each record as the Flink job does (:func:`core.validation.validate`,
   ``mapInPandas``): a record the job dead-letters gets no device (null) and
   its reason, and is never scored;
2. **features, keyed by device** (``groupBy("device_id").applyInPandasWithState``):
   a device's readings of the batch, in Kafka (partition, offset) order, which
   is the device's arrival order (the producer keys by device, so a device is
   one partition), go through :func:`core.features.rows` from the device's
   :class:`~core.features.StreamContext`, which is then stored back in Spark's
   state store. So a reading's row sees its device's previous readings across
   micro-batches and restarts, with the same numbers as in the ClientApp's
   windows. The invalid records (the null-device group) become one count per
   reason; they keep no state;
3. **score and store** (``foreachBatch`` on the stateful query's output, then
   ``mapInPandas``): the rows are normalised with the global model's
   normalisation and scored with its weights, the threshold is the model's
   global one or, with ``fl.threshold=per_device``, the device's own (the
   global one for a device that sent none); one ``predictions`` document per
   reading and model round.

Properties:

- **No reading skipped for want of a model**: the query starts only once a
  usable global model (weights and normalisation) exists, and then from the
  earliest offset of the topic.
- **A new round is picked up without a restart**: the model is the driver's,
  looked up (one indexed query) before each micro-batch and shipped with its
  scoring tasks. The keyed state sits upstream of ``foreachBatch`` in the
  same query, so the features need no model and the executors never read one.
- **Exactly one prediction per reading and round, across crashes**: the
  checkpoint (``spark.scorer.checkpoint_dir``) holds the offsets done and the
  devices' contexts by batch; a micro-batch replayed after a crash starts from
  the contexts as they were before it, computes the same rows and writes the
  same ``(event_id, model_round)`` documents, which the unique index turns
  into no-ops (:meth:`core.storage.Storage.insert_predictions`). A checkpoint
  of the stateless scorer (before the keyed state) cannot be resumed by Spark
  and is started afresh (:func:`start_afresh_if_stateless`).
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core import mongo_auth
from core.config import AppConfig, ModelConfig
from core.kafka_auth import java_properties

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming.state import GroupState

    from core.storage import Storage

log = logging.getLogger(__name__)
# Step 1's output: a valid reading (JSON, as validate returns it) or the reason of an invalid record.
VALIDATED_SCHEMA = "device_id long, reading string, reason string, partition int, offset long"
# Step 2's output: a reading's raw feature row, or `n` records not scored for `reason`.
FEATURES_SCHEMA = "device_id long, event_id string, event_time string, features array<double>, reason string, n long"
# A device's StreamContext.to_list() as float64 bytes. Not array<double>: PySpark 4.2's worker
# cannot read an array in applyInPandasWithState's state schema (KeyError 'elementType', tried here).
STATE_SCHEMA = "context binary"
COUNTS_SCHEMA = "stored long, existing long, invalid long, reasons string"


@dataclass(frozen=True)
class ScoringModel:
    """A global model as the executors need it (plain values: it is shipped with each task)."""

    round: int
    threshold: float
    device_thresholds: dict[str, float]  # used only when per_device
    per_device: bool
    centre: list[float]
    scale: list[float]
    weights: list[np.ndarray]
    spec: dict[str, Any]  # ModelConfig as a dict

    @classmethod
    def from_doc(cls, doc: dict[str, Any], spec: ModelConfig, threshold: str = "global") -> ScoringModel:
        """ValueError for a document the scorer cannot use (no normalisation, or one of another width;
        weights that do not fit the configured model: written by an earlier version, or before
        fl.model changed), refused here on the driver rather than failing every task of the query."""
        from core import inference
        from core.storage import decode_weights
        from core.summaries import Normalisation

        norm = doc.get("normalisation") or {}
        if "centre" not in norm or "scale" not in norm:
            raise ValueError("it has no normalisation")
        checked = Normalisation.from_lists(norm["centre"], norm["scale"], spec)
        try:
            weights = decode_weights(doc["weights"])
            inference.check(weights, spec)
        except ValueError as exc:
            raise ValueError(f"its weights do not fit the configured model: {str(exc).splitlines()[0][:200]}") \
                from None
        centre, scale = checked.to_lists()
        return cls(int(doc["round"]), float(doc["threshold"]),
                   {str(k): float(v) for k, v in (doc.get("device_thresholds") or {}).items()},
                   threshold == "per_device", centre, scale, weights, asdict(spec))

    def threshold_for(self, device: int) -> float:
        return self.device_thresholds.get(str(device), self.threshold) if self.per_device else self.threshold


@dataclass(frozen=True)
class Rules:
    """What counts as a valid record, as the Flink job decides (plain values, shipped with each task)."""

    known_devices: frozenset[int]
    valid_ranges: dict[str, tuple[float, float]]


@dataclass(frozen=True)
class Sink:
    """Where the executors write (plain values, shipped with each task)."""

    mongo_uri: str
    mongo_database: str
    mongo_timeout_ms: int

    def store(self) -> Storage:
        """This Python worker's connection, made on its first task and kept: Spark reuses its workers,
        and a client per task and micro-batch meant a connection (and a login) each time."""
        from core.storage import Storage

        key = (self.mongo_uri, self.mongo_database, self.mongo_timeout_ms)
        if key not in _WORKER_STORES:
            _WORKER_STORES[key] = Storage(*key)
        return _WORKER_STORES[key]


_WORKER_STORES: dict[tuple[str, str, int], Storage] = {}


# ---------------------------------------------------------------- 1. validate
def validated(raw_values: list[Any], partitions: list[int], offsets: list[int], rules: Rules) -> pd.DataFrame:
    """Step 1 on raw ``iot_stream`` values: one row each (:data:`VALIDATED_SCHEMA`). Never raises."""
    import pandas as pd

    from core.validation import validate

    devices: list[int | None] = []
    texts: list[str | None] = []
    reasons: list[str | None] = []
    for raw in raw_values:
        reading, reason = validate(_text(raw), rules.known_devices, rules.valid_ranges)
        devices.append(None if reading is None else int(reading["device_id"]))
        texts.append(None if reading is None else json.dumps(reading))
        reasons.append(reason if reading is None else None)
    return pd.DataFrame({"device_id": pd.array(devices, dtype="Int64"), "reading": texts, "reason": reasons,
                         "partition": pd.array(partitions, dtype="Int32"), "offset": pd.array(offsets, dtype="Int64")})


def _text(raw: object) -> str | None:
    """A Kafka value as text, decoded as the Flink job's Java side does (bad UTF-8 replaced). Spark's
    ``CAST(value AS STRING)`` does not check the bytes, and Arrow then fails the whole batch on them;
    an empty value arrives from Arrow as a missing one (NaN or None)."""
    if isinstance(raw, (bytes, bytearray, memoryview)):
        return bytes(raw).decode("utf-8", "replace")
    return raw if isinstance(raw, str) else None


def validate_partitions(rules: Rules) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            yield validated(batch["value"].tolist(), batch["partition"].tolist(), batch["offset"].tolist(), rules)

    return run


# ------------------------------------------------------- 2. features, per device
# The state's layout: [_POSITIONED, loop and seq as 32-bit halves, *StreamContext.to_list()]: halves,
# because loop and seq go up to 2**63 and a float64 holds integers exactly only to 2**53 (a rounded
# position would count later readings as sent again). A state without the mark (written before
# positions were kept) is a bare context, its position unknown.
_POSITIONED = -2.0
_HALF = 2 ** 32


def save_context(context: Any, position: tuple[int, int] | None) -> tuple[bytes]:
    """A :class:`~core.features.StreamContext` and the ``(loop, seq)`` of the device's last reading
    folded into it, as the state's one column (:data:`STATE_SCHEMA`)."""
    head = [_POSITIONED, *(float(half) for v in position for half in divmod(v, _HALF))] if position else []
    return (np.asarray([*head, *context.to_list()], dtype=np.float64).tobytes(),)


def load_context(state: GroupState, fields: int) -> tuple[Any, tuple[int, int] | None]:
    """The device's ``(StreamContext, position)``, or ``(None, None)`` before its first reading."""
    from core.features import StreamContext

    if not state.exists:
        return None, None
    flat = np.frombuffer(bytes(state.get[0]), dtype=np.float64).tolist()
    position = None
    if len(flat) >= 5 and flat[0] == _POSITIONED and all(np.isfinite(flat[1:5])):
        loop_high, loop_low, seq_high, seq_low = (int(v) for v in flat[1:5])
        position, flat = (loop_high * _HALF + loop_low, seq_high * _HALF + seq_low), flat[5:]
    return StreamContext.from_list(flat, fields), position


def device_features(spec_dict: dict[str, Any]) -> Callable[[tuple[Any, ...], Iterator[pd.DataFrame], GroupState],
                                                              Iterator[pd.DataFrame]]:
    """The ``applyInPandasWithState`` function: one device's readings of a micro-batch to their
    raw feature rows (:data:`FEATURES_SCHEMA`), its context carried in ``state``; the invalid
    records' group (no device) to a count per reason."""
    spec = ModelConfig(**spec_dict)

    def run(key: tuple[Any, ...], frames: Iterator[pd.DataFrame], state: GroupState) -> Iterator[pd.DataFrame]:
        import pandas as pd

        from core import features

        batch = pd.concat(list(frames), ignore_index=True)
        device = key[0]
        if device is None or pd.isna(device):  # Spark hands the null key over as NaN
            counts = batch["reason"].fillna("unknown").value_counts()
            yield _feature_frame([], [], [], [], list(counts.index), counts.tolist())
            return
        device = int(device)
        batch = batch.sort_values(["partition", "offset"], kind="stable")
        context, position = load_context(state, len(spec.features))
        skipped: Counter[str] = Counter()
        # A reading at or before the device's last position is one the producer sent again (a
        # restart resumes from its checkpoint): scored already, and folding it into the context a
        # second time would give the device rows the ClientApp, fed by the deduplicating Flink job,
        # never sees.
        readings = []
        for text in batch["reading"]:
            reading = json.loads(text)
            at = (int(reading["loop"]), int(reading["seq"]))
            if position is not None and at <= position:
                skipped["sent again"] += 1
                continue
            readings.append(reading)
            position = at
        try:
            rows, context = features.rows(readings, spec, context)
            kept = readings
        except Exception:  # noqa: BLE001 - find the reading(s) at fault, keep the others and the context
            kept, found = [], []
            for reading in readings:
                try:
                    row, context = features.rows([reading], spec, context)
                except Exception as exc:  # noqa: BLE001 - a reading the features cannot take is counted
                    skipped[f"cannot score: {type(exc).__name__}"] += 1
                    continue
                kept.append(reading)
                found.append(row)
            rows = np.vstack(found) if found else np.empty((0, len(features.columns(spec))))
        if context is not None:
            state.update(save_context(context, position))
        yield _feature_frame([device] * len(kept), [r["event_id"] for r in kept], [r["event_time"] for r in kept],
                             [row.tolist() for row in rows], list(skipped), list(skipped.values()), device)

    return run


def _feature_frame(devices: list[int], event_ids: list[str], times: list[str], rows: list[list[float]],
                   reasons: list[str], counts: list[int], device: int | None = None) -> pd.DataFrame:
    """Rows of :data:`FEATURES_SCHEMA`: the readings' (reason null, n 1), then the counts not scored."""
    import pandas as pd

    n = len(event_ids)
    return pd.DataFrame({
        "device_id": pd.array(devices + [device] * len(reasons), dtype="Int64"),
        "event_id": event_ids + [None] * len(reasons), "event_time": times + [None] * len(reasons),
        "features": rows + [None] * len(reasons), "reason": [None] * n + reasons,
        "n": pd.array([1] * n + counts, dtype="Int64")})


# ------------------------------------------------------------ 3. score and store
def predictions(batch: pd.DataFrame, model: ScoringModel) -> tuple[list[dict[str, Any]], Counter[str]]:
    """``(prediction documents, records not scored per reason)`` for rows of :data:`FEATURES_SCHEMA`.

    Never raises for a record: one the model cannot score is counted under "cannot score".
    """
    from core import inference
    from core.summaries import Normalisation

    skipped: Counter[str] = Counter()
    for reason, n in zip(batch["reason"], batch["n"], strict=True):
        if isinstance(reason, str):
            skipped[reason] += int(n)
    readings = batch[batch["reason"].isna()]
    if readings.empty:
        return [], skipped
    spec = ModelConfig(**model.spec)
    norm = Normalisation(np.asarray(model.centre), np.asarray(model.scale))
    rows = np.array([np.asarray(f, dtype=np.float64) for f in readings["features"]])
    try:
        scored = [(list(range(len(rows))), inference.predict(model.weights, rows, norm, spec))]
    except Exception:  # noqa: BLE001 - find the row(s) at fault, score the others
        scored = []
        for i in range(len(rows)):
            try:
                scored.append(([i], inference.predict(model.weights, rows[i:i + 1], norm, spec)))
            except Exception as exc:  # noqa: BLE001 - a row the model cannot take is skipped, counted
                skipped[f"cannot score: {type(exc).__name__}"] += 1
    now = datetime.now(UTC)
    devices, event_ids, times = (readings[c].tolist() for c in ("device_id", "event_id", "event_time"))
    docs = []
    for indices, predicted in scored:
        for j, i in enumerate(indices):
            score, threshold = float(predicted.scores[j]), model.threshold_for(int(devices[i]))
            actual = rows[i, :len(predicted.fields)]  # a row starts with the sensor values themselves
            docs.append({
                "event_id": event_ids[i], "device_id": int(devices[i]), "event_time": datetime.fromisoformat(times[i]),
                "actual": {f: float(v) for f, v in zip(predicted.fields, actual, strict=True)},
                "output": {f: float(v) for f, v in zip(predicted.fields, predicted.outputs[j], strict=True)},
                "error": {f: float(v) for f, v in zip(predicted.fields, predicted.errors[j], strict=True)},
                "score": score, "threshold": threshold, "is_anomaly": bool(score > threshold),
                "model_round": model.round, "prediction_type": "streaming", "scored_at": now,
            })
    return docs, skipped


def score_partitions(model: ScoringModel, sink: Sink) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The ``mapInPandas`` function: score and store each partition, yield its counts (the records not
    scored as a JSON object of reason -> count)."""

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import pandas as pd

        stored = existing = 0
        skipped: Counter[str] = Counter()
        store = sink.store()
        for batch in batches:
            docs, bad = predictions(batch, model)
            result = store.insert_predictions(docs)
            stored, existing = stored + result.stored, existing + result.existing
            skipped.update(bad)
            skipped.update(reason.split(":")[0] for _, reason in result.rejected)  # "cannot encode", ...
        yield pd.DataFrame({"stored": [stored], "existing": [existing], "invalid": [sum(skipped.values())],
                            "reasons": [json.dumps(dict(skipped))]})

    return run


def start_afresh_if_stateless(checkpoint: Path) -> bool:
    """Remove a checkpoint of the stateless scorer (batches done, no state directory), which Spark
    refuses to resume with a stateful operator (STREAMING_STATEFUL_OPERATOR_MISSING_STATE_DIRECTORY);
    True if it did. The new query then starts from the earliest offset: every device's context is
    rebuilt from its history, and a reading already scored with the current round is a no-op."""
    commits = checkpoint / "commits"
    done = commits.is_dir() and any(f.name.isdigit() for f in commits.iterdir())
    if not done or (checkpoint / "state").exists():
        return False
    shutil.rmtree(checkpoint)
    return True


class Scorer:
    """The driver side: waits for a model, runs the query, swaps the model between micro-batches."""

    def __init__(self, cfg: AppConfig, known_devices: list[int]) -> None:
        from core.records import SENSOR_FIELDS
        from core.storage import Storage

        self.cfg = cfg
        self.store = Storage.from_config(cfg.mongo)
        self.model: ScoringModel | None = None
        self.refused: set[int] = set()  # rounds whose document the scorer cannot use (said once each)
        ranges = {name: tuple(float(v) for v in getattr(cfg.flink.valid_ranges, name)) for name in SENSOR_FIELDS}
        self.rules = Rules(frozenset(known_devices), ranges)  # type: ignore[arg-type]
        self.sink = Sink(mongo_auth.client_uri(cfg.mongo), cfg.mongo.database, cfg.mongo.server_selection_timeout_ms)
        self.stop = threading.Event()
        self.totals = {"stored": 0, "existing": 0, "invalid": 0}
        self.skipped: Counter[str] = Counter()  # records not scored, per reason, since the start

    def refresh_model(self) -> bool:
        """Load the newest global model if it is newer than ours and usable; True if it changed."""
        doc = self.store.latest_global_model()  # small: a few hundred weights
        if doc is None or int(doc["round"]) in self.refused or \
                (self.model is not None and int(doc["round"]) == self.model.round):
            return False
        try:
            model = ScoringModel.from_doc(doc, self.cfg.fl.model, self.cfg.fl.threshold)
        except (ValueError, KeyError, TypeError) as exc:
            self.refused.add(int(doc["round"]))
            log.warning("global round %s cannot be scored with (%s); %s", doc["round"], exc,
                        f"still scoring with round {self.model.round}" if self.model else "waiting for another")
            return False
        previous, self.model = self.model, model
        log.info("scoring with global round %d (%s threshold; global %.4f, %d per device)%s", model.round,
                 self.cfg.fl.threshold, model.threshold, len(model.device_thresholds),
                 f", was round {previous.round}" if previous else "")
        return True

    def wait_for_model(self) -> bool:
        """Block until a usable global model exists (True) or we are stopped (False)."""
        said = 0.0
        while not self.stop.is_set():
            if self.refresh_model():
                return True
            if time.monotonic() - said > 60:
                log.info("waiting for the first global model in %s.%s before scoring", self.cfg.mongo.database,
                         "global_model")
                said = time.monotonic()
            self.stop.wait(self.cfg.spark.scorer.model_poll_seconds)
        return False

    def score_batch(self, batch: DataFrame, batch_id: int) -> None:
        """``foreachBatch``: ``batch`` is the stateful step's output; run once (a second action would
        compute the batch, and commit its state, again)."""
        self.refresh_model()
        assert self.model is not None
        started = time.monotonic()
        rows = batch.mapInPandas(score_partitions(self.model, self.sink), COUNTS_SCHEMA).collect()
        counts = {k: sum(int(r[k]) for r in rows) for k in self.totals}
        for k, v in counts.items():
            self.totals[k] += v
        for row in rows:
            for reason, n in json.loads(row["reasons"]).items():
                if reason not in self.skipped:  # once per reason: a flood of bad records is one line
                    log.warning("records not scored: %s (first seen in batch %d; counted from now on)", reason,
                                batch_id)
                self.skipped[reason] += n
        if any(counts.values()):
            log.info("batch %d: %d predictions stored (%d already there), %d invalid records not scored; round %d; "
                     "%.1fs", batch_id, counts["stored"], counts["existing"], counts["invalid"], self.model.round,
                     time.monotonic() - started)

    def query(self, spark: Any) -> DataFrame:
        """The streaming plan up to the stateful step (:func:`validate_partitions`, :func:`device_features`)."""
        from pyspark.sql.streaming.state import GroupStateTimeout

        scorer = self.cfg.spark.scorer
        source = (spark.readStream.format("kafka")
                  .option("kafka.bootstrap.servers", self.cfg.kafka.bootstrap_servers)
                  .options(**{f"kafka.{k}": v for k, v in java_properties(self.cfg.kafka).items()})
                  .option("subscribe", self.cfg.kafka.topics.readings.name)
                  .option("startingOffsets", "earliest")
                  .option("failOnDataLoss", "false")  # a topic's retention may delete what was never scored
                  .option("maxOffsetsPerTrigger", str(scorer.max_offsets_per_trigger))
                  .load())
        checked = (source.select("value", "partition", "offset")  # bytes: decoded on the executors (_text)
                   .coalesce(scorer.partitions)  # not a task per Kafka partition: the order within each stays
                   .mapInPandas(validate_partitions(self.rules), VALIDATED_SCHEMA))
        result: DataFrame = checked.groupBy("device_id").applyInPandasWithState(
            device_features(asdict(self.cfg.fl.model)), FEATURES_SCHEMA, STATE_SCHEMA, "update",
            GroupStateTimeout.NoTimeout)
        return result

    def run(self, spark: SparkSession | None = None) -> None:
        """Score until stopped, on ``spark`` (a session from :func:`session`; None: one of its own,
        stopped at the end; a given one is left to its owner)."""
        if not self.wait_for_model():
            return
        scorer = self.cfg.spark.scorer
        if start_afresh_if_stateless(Path(scorer.checkpoint_dir)):
            log.warning("%s was the checkpoint of the stateless scorer, which Spark cannot resume with the "
                        "devices' context: removed; scoring again from the earliest offset (predictions already "
                        "stored stay, one per reading and round)", scorer.checkpoint_dir)
        own = spark is None
        if spark is None:
            spark = session(self.cfg)
        # The devices' state partitions; a checkpoint keeps the number it was made with.
        spark.conf.set("spark.sql.shuffle.partitions", str(scorer.partitions))
        query = (self.query(spark).writeStream.outputMode("update").foreachBatch(self.score_batch)
                 .option("checkpointLocation", scorer.checkpoint_dir)
                 .trigger(processingTime=f"{scorer.trigger_seconds} seconds")
                 .queryName("anomaly-scorer").start())
        log.info("scoring %s from the earliest offset not yet done, features keyed by device (checkpoint %s)",
                 self.cfg.kafka.topics.readings.name, scorer.checkpoint_dir)
        try:
            while not self.stop.is_set() and query.isActive:
                self.stop.wait(1.0)
            if not query.isActive and query.exception() is not None:
                raise RuntimeError(f"the scoring query failed: {query.exception()}")
        finally:
            # SIGTERM reaches the whole process group, the Spark JVM too: its shutdown hook may have
            # stopped the query and the context already, and py4j then fails to reach it.
            for what, stop in (("query", query.stop), *((("Spark session", spark.stop),) if own else ())):
                try:
                    stop()
                except Exception as exc:  # stopping anyway: say so and go on
                    log.warning("stopping the %s: %s", what, str(exc).splitlines()[0] if str(exc) else exc)
            self.store.close()
            log.info("stopped: %d predictions stored, %d already there, %d records not scored%s",
                     self.totals["stored"], self.totals["existing"], self.totals["invalid"],
                     f" ({', '.join(f'{r}: {n}' for r, n in self.skipped.most_common())})" if self.skipped else "")


def session(cfg: AppConfig) -> SparkSession:
    """The scorer's Spark session: the Kafka source's jars, and Python workers forked from a daemon that has
    the scoring modules imported (analytics/worker_daemon.py)."""
    from analytics.session import extra_jars, spark_session

    return spark_session(cfg, "fl-iot-scorer", extra_jars(cfg, ["spark-kafka"]),
                         {"spark.python.daemon.module": "analytics.worker_daemon"})
