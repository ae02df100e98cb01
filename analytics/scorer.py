"""Streaming anomaly scoring with Spark Structured Streaming (``fl-app spark stream``).

Reads ``iot_stream`` through Spark's own Kafka source, validates each record
as the Flink job does (:func:`core.validation.validate`: a record the job
dead-letters is not scored), scores the valid readings with the newest global
model (:mod:`core.model`, the devices' own model code) and writes one
``predictions`` document per reading and model round.

- **No reading skipped for want of a model**: the query starts only once a
  global model exists (until then it waits and says so in its log), and then
  from the earliest offset of the topic.
- **A new round is picked up without a restart**: every micro-batch
  (``spark.scorer.trigger_seconds``) looks up the newest round (one indexed
  query) and loads it when it changed.
- **Exactly one prediction per reading and round, across crashes**: the
  query's checkpoint (``spark.scorer.checkpoint_dir``) records the offsets
  done; a micro-batch replayed after a crash writes the same
  ``(event_id, model_round)`` documents again, which the unique index turns
  into no-ops (:meth:`core.storage.Storage.insert_predictions`).
- **Work on the executors**: validation, scoring and the MongoDB writes run
  per partition (``mapInPandas``); the driver plans and logs. On a cluster
  (``spark.master``) they spread over it.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from core.config import AppConfig, ModelConfig

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame

log = logging.getLogger(__name__)
COUNTS_SCHEMA = "stored long, existing long, invalid long, reasons string"


@dataclass(frozen=True)
class ScoringModel:
    """A global model as the executors need it (plain values: it is shipped with each task)."""

    round: int
    threshold: float
    weights: list[np.ndarray]
    spec: dict[str, Any]  # ModelConfig as a dict

    @classmethod
    def from_doc(cls, doc: dict[str, Any], spec: ModelConfig) -> ScoringModel:
        from core.storage import decode_weights

        return cls(int(doc["round"]), float(doc["threshold"]), decode_weights(doc["weights"]), asdict(spec))


@dataclass(frozen=True)
class Sink:
    """Where and how the executors write, and what counts as valid (plain values, shipped with each task)."""

    mongo_uri: str
    mongo_database: str
    mongo_timeout_ms: int
    known_devices: frozenset[int]
    valid_ranges: dict[str, tuple[float, float]]


def predictions(raw_values: list[Any], model: ScoringModel, sink: Sink) -> tuple[list[dict[str, Any]], Counter[str]]:
    """``(prediction documents, records not scored per reason)`` for raw ``iot_stream`` values.

    Never raises for a record: one the Flink job would dead-letter is counted
    under its validation reason, one the model cannot score under "cannot score".
    """
    from core import model as task
    from core.validation import validate

    skipped: Counter[str] = Counter()
    readings = []
    for raw in raw_values:
        reading, reason = validate(_text(raw), sink.known_devices, sink.valid_ranges)
        if reading is None:
            skipped[reason] += 1
        else:
            readings.append(reading)
    if not readings:
        return [], skipped
    spec = ModelConfig(**model.spec)
    net = task.build(spec)
    task.set_weights(net, model.weights)
    try:
        scored = [(readings, task.predict(net, readings, spec))]
    except Exception:  # noqa: BLE001 - find the record(s) at fault, score the others
        scored = []
        for reading in readings:
            try:
                scored.append(([reading], task.predict(net, [reading], spec)))
            except Exception as exc:  # noqa: BLE001 - a record the model cannot take is skipped, counted
                skipped[f"cannot score: {type(exc).__name__}"] += 1
    now = datetime.now(UTC)
    docs = []
    for group, predicted in scored:
        for i, reading in enumerate(group):
            score = float(predicted.scores[i])
            docs.append({
                "event_id": reading["event_id"], "device_id": int(reading["device_id"]),
                "event_time": datetime.fromisoformat(reading["event_time"]),
                "actual": {f: float(reading[f]) for f in predicted.fields},
                "output": {f: float(v) for f, v in zip(predicted.fields, predicted.outputs[i], strict=True)},
                "error": {f: float(v) for f, v in zip(predicted.fields, predicted.errors[i], strict=True)},
                "score": score, "threshold": model.threshold, "is_anomaly": bool(score > model.threshold),
                "model_round": model.round, "prediction_type": "streaming", "scored_at": now,
            })
    return docs, skipped


def _text(raw: object) -> str | None:
    """A Kafka value as text, decoded as the Flink job's Java side does (bad UTF-8 replaced). Spark's
    ``CAST(value AS STRING)`` does not check the bytes, and Arrow then fails the whole batch on them;
    an empty value arrives from Arrow as a missing one (NaN or None)."""
    if isinstance(raw, (bytes, bytearray, memoryview)):
        return bytes(raw).decode("utf-8", "replace")
    return raw if isinstance(raw, str) else None


def score_partitions(model: ScoringModel, sink: Sink) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The ``mapInPandas`` function: score and store each partition, yield its counts (the records not
    scored as a JSON object of reason -> count)."""

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import pandas as pd

        from core.storage import Storage

        stored = existing = 0
        skipped: Counter[str] = Counter()
        with Storage(sink.mongo_uri, sink.mongo_database, sink.mongo_timeout_ms) as store:
            for batch in batches:
                docs, bad = predictions(batch["value"].tolist(), model, sink)
                result = store.insert_predictions(docs)
                stored, existing = stored + result.stored, existing + result.existing
                skipped.update(bad)
                skipped.update(reason.split(":")[0] for _, reason in result.rejected)  # "cannot encode", ...
        yield pd.DataFrame({"stored": [stored], "existing": [existing], "invalid": [sum(skipped.values())],
                            "reasons": [json.dumps(dict(skipped))]})

    return run


class Scorer:
    """The driver side: waits for a model, runs the query, swaps the model between micro-batches."""

    def __init__(self, cfg: AppConfig, known_devices: list[int]) -> None:
        from core.records import SENSOR_FIELDS
        from core.storage import Storage

        self.cfg = cfg
        self.store = Storage.from_config(cfg.mongo)
        self.model: ScoringModel | None = None
        ranges = {name: tuple(float(v) for v in getattr(cfg.flink.valid_ranges, name)) for name in SENSOR_FIELDS}
        self.sink = Sink(cfg.mongo.uri, cfg.mongo.database, cfg.mongo.server_selection_timeout_ms,
                         frozenset(known_devices), ranges)  # type: ignore[arg-type]
        self.stop = threading.Event()
        self.totals = {"stored": 0, "existing": 0, "invalid": 0}
        self.skipped: Counter[str] = Counter()  # records not scored, per reason, since the start

    def refresh_model(self) -> bool:
        """Load the newest global model if it is newer than ours; True if it changed."""
        doc = self.store.latest_global_model()  # small: a few hundred weights
        if doc is None or (self.model is not None and int(doc["round"]) == self.model.round):
            return False
        previous = self.model
        self.model = ScoringModel.from_doc(doc, self.cfg.fl.model)
        log.info("scoring with global round %d (threshold %.4f)%s", self.model.round, self.model.threshold,
                 f", was round {previous.round}" if previous else "")
        return True

    def wait_for_model(self) -> bool:
        """Block until a global model exists (True) or we are stopped (False)."""
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
        self.refresh_model()
        assert self.model is not None
        started = time.monotonic()
        rows = (batch.select("value")  # bytes: decoded per record on the executors (_text)
                .mapInPandas(score_partitions(self.model, self.sink), COUNTS_SCHEMA).collect())
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

    def run(self) -> None:
        from analytics.session import extra_jars, spark_session

        if not self.wait_for_model():
            return
        spark = spark_session(self.cfg, "fl-iot-scorer", extra_jars(self.cfg, ["spark-kafka"]))
        scorer = self.cfg.spark.scorer
        source = (spark.readStream.format("kafka")
                  .option("kafka.bootstrap.servers", self.cfg.kafka.bootstrap_servers)
                  .option("subscribe", self.cfg.kafka.topics.readings.name)
                  .option("startingOffsets", "earliest")
                  .option("failOnDataLoss", "false")  # a topic's retention may delete what was never scored
                  .option("maxOffsetsPerTrigger", str(scorer.max_offsets_per_trigger))
                  .load())
        query = (source.writeStream.foreachBatch(self.score_batch)
                 .option("checkpointLocation", scorer.checkpoint_dir)
                 .trigger(processingTime=f"{scorer.trigger_seconds} seconds")
                 .queryName("anomaly-scorer").start())
        log.info("scoring %s from the earliest offset not yet done (checkpoint %s)",
                 self.cfg.kafka.topics.readings.name, scorer.checkpoint_dir)
        try:
            while not self.stop.is_set() and query.isActive:
                self.stop.wait(1.0)
            if not query.isActive and query.exception() is not None:
                raise RuntimeError(f"the scoring query failed: {query.exception()}")
        finally:
            # SIGTERM reaches the whole process group, the Spark JVM too: its shutdown hook may have
            # stopped the query and the context already, and py4j then fails to reach it.
            for what, stop in (("query", query.stop), ("Spark session", spark.stop)):
                try:
                    stop()
                except Exception as exc:  # stopping anyway: say so and go on
                    log.warning("stopping the %s: %s", what, str(exc).splitlines()[0] if str(exc) else exc)
            self.store.close()
            log.info("stopped: %d predictions stored, %d already there, %d records not scored%s",
                     self.totals["stored"], self.totals["existing"], self.totals["invalid"],
                     f" ({', '.join(f'{r}: {n}' for r, n in self.skipped.most_common())})" if self.skipped else "")


def serve(cfg: AppConfig, known_devices: list[int]) -> None:
    """``fl-app spark stream``: score until SIGTERM/SIGINT. ``known_devices``: the data set's devices
    (what the Flink job accepts)."""
    scorer = Scorer(cfg, known_devices)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: scorer.stop.set())
    scorer.run()
