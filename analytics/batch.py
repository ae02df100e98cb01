"""Batch analytics with Spark (``fl-app spark batch``): what Superset and ``fl-app report`` show.

From MongoDB (read through :mod:`analytics.mongo_reader`) it computes

- ``device_stats``: per device, readings, mean and spread of each sensor
  field, first and last reading, the longest gap between two readings, and
  the anomaly rate of its streaming predictions (each reading counted once,
  with the newest model round that scored it);
- ``round_convergence``: per global round, when, participants, readings,
  mean local loss, rejected and stale updates, the threshold;
- ``device_participation``: per device, the local updates it sent, the
  global rounds they went into, its last round;
- ``prediction_quality``: streaming predictions against the replayed data
  set's ground-truth labels, where it has them (``labels``): true and false
  positives and negatives, precision, recall and F1, overall and per device
  (each reading once, its newest prediction) and per model round (every
  prediction of that round);
- ``ingest_per_minute``: readings stored per minute (of their event time);
- ``anomalies_per_minute``: streaming predictions and anomalies per minute and
  model round;
- ``pipeline_counts``: documents per collection and dead letters per reason
  (``kind`` = ``collection`` or ``dead_letter``; a ``(all reasons)`` row
  always, zero included);

and writes each as a table of the SQL serving store
(``spark.batch.store_url``: an SQLite file by default, any SQLAlchemy URL),
replacing the previous run's in one transaction, plus a summary document of
the run to MongoDB (``analytics_runs``).

**Incremental.** A run reads only the documents MongoDB got since the last
run: those whose ``written_at`` time (``core.storage.CollectionSpec``: stamped
by the writer just before it inserts, and indexed) falls in ``[last upper, now -
spark.batch.settle_seconds)``. (Not a range of ``_id``: the local MongoDB-wire
server scans the whole collection for one.) Their sums (counts, sums and sums of squares,
first and last times, longest gaps, confusion counts) are added to the sums
kept in the serving store (the ``parts_*`` tables, with the bounds in
``batch_state``), and the tables above are derived from those sums. So a run
costs what is new, not what is stored, and the dashboards can follow the
data every ``spark.batch_interval_seconds``. A reading scored again by a newer
round moves from its old prediction to the new one: its earlier predictions
are looked up (by ``event_id``) and their part taken out again. The small
collections (``global_model``) are read whole each run.

A **rebuild** (``fl-app spark batch --rebuild``; the first run, and every
``spark.batch.rebuild_seconds`` on a schedule) starts from empty sums and
reads everything, with the same code. It catches what a window cannot: a
document stamped long before it was inserted (a writer
that retried through a long MongoDB outage), or a reading that arrived after
a later one of its device (the longest gap is then computed in arrival
order until the next rebuild).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from analytics import mongo_reader
from core.config import AppConfig
from core.records import SENSOR_FIELDS
from core.storage import EPOCH, PREDICTIONS, SPECS, written_in

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

    from core.storage import Storage

log = logging.getLogger(__name__)
COUNTED = tuple(name for name, spec in SPECS.items() if spec.written_at)  # pipeline_counts' collections
STATE_TABLE = "batch_state"
CONFUSION = ("tp", "fp", "fn", "tn")
# The sums a run adds to, by table (in the serving store beside the tables derived from them).
PARTS = {
    "parts_device": ["device_id", "readings", *[f"sum_{f}" for f in SENSOR_FIELDS],
                     *[f"sumsq_{f}" for f in SENSOR_FIELDS], "first_seen", "last_seen", "max_gap_seconds",
                     "scored", "anomalies"],
    "parts_minute": ["minute", "readings"],
    "parts_anomaly_minute": ["minute", "model_round", "predictions", "anomalies"],
    "parts_quality": ["scope", "key", *CONFUSION],
    "parts_participation": ["device_id", "aggregated_into", "updates"],
    "parts_collection": ["collection", "documents"],
}
KEYS = {"device_id": "int64", "model_round": "int64", "aggregated_into": "int64", "scope": "str", "key": "str",
        "collection": "str"}
TIMES = ("minute", "first_seen", "last_seen")  # naive, in UTC (Spark's session time zone); every other sum: float64
READING_FIELDS = {"device_id": "bigint", "event_time": "timestamp", **{f: "double" for f in SENSOR_FIELDS}}
PREDICTION_FIELDS = {"event_id": "string", "device_id": "bigint", "event_time": "timestamp",
                     "model_round": "bigint", "is_anomaly": "boolean", "prediction_type": "string"}


@dataclass
class BatchResult:
    tables: dict[str, pd.DataFrame]
    seconds: float
    counts: dict[str, int] = field(default_factory=dict)  # documents read by this run, per kind
    parts: dict[str, pd.DataFrame] = field(default_factory=dict)  # the sums after this run
    lower: datetime = EPOCH  # the window of written_at times this run read: [lower, upper)
    upper: datetime = EPOCH
    rebuilt: bool = True


# ------------------------------------------------------------------ what a window adds (Spark)
def reading_sums(readings: DataFrame, last_seen: DataFrame) -> DataFrame:
    """Per device: the window's readings as sums, and its longest gap, the one from the device's last
    reading so far (``last_seen``: device_id, event_time) included."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    times = readings.select("device_id", "event_time").withColumn("new", F.lit(True)).unionByName(
        last_seen.select("device_id", "event_time").withColumn("new", F.lit(False)))
    previous = F.lag("event_time").over(Window.partitionBy("device_id").orderBy("event_time"))
    gaps = (times.withColumn("gap", F.col("event_time").cast("double") - previous.cast("double"))
            .where("new").groupBy("device_id").agg(F.max("gap").alias("max_gap_seconds")))
    sums = readings.groupBy("device_id").agg(
        F.count("*").alias("readings"),
        *[F.sum(f).alias(f"sum_{f}") for f in SENSOR_FIELDS],
        *[F.sum(F.col(f) * F.col(f)).alias(f"sumsq_{f}") for f in SENSOR_FIELDS],
        F.min("event_time").alias("first_seen"), F.max("event_time").alias("last_seen"))
    return sums.join(gaps, "device_id", "left")


def ingest_per_minute(readings: DataFrame) -> DataFrame:
    from pyspark.sql import functions as F

    return (readings.groupBy(F.date_trunc("minute", "event_time").alias("minute"))
            .agg(F.count("*").alias("readings")))


def anomalies_per_minute(predictions: DataFrame) -> DataFrame:
    from pyspark.sql import functions as F

    return (predictions.groupBy(F.date_trunc("minute", "event_time").alias("minute"), "model_round")
            .agg(F.count("*").alias("predictions"), F.sum(F.col("is_anomaly").cast("long")).alias("anomalies")))


def newest_per_reading(predictions: DataFrame) -> DataFrame:
    """Each reading once: its prediction of the highest model round."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    rank = F.row_number().over(Window.partitionBy("event_id").orderBy(F.col("model_round").desc()))
    return predictions.withColumn("rank", rank).where("rank = 1").drop("rank")


@dataclass(frozen=True)
class Labels:
    """The data set's labels in Spark, compact: the seqs of its anomalous readings (1.8 % of the stand-in's),
    and how many readings it has (a seq is a reading's position, 0 to size - 1); every other seq is normal.
    All 152,533 ``(seq, label)`` rows kept the batch driver's live heap at ~150 MB (the rows in the
    plan, their cache and each run's broadcast of them; issue 22)."""

    anomalous: DataFrame  # one column, seq
    size: int

    @classmethod
    def of(cls, spark: SparkSession, labels: pd.DataFrame, cache: bool = False) -> Labels:
        """From ``seq``, ``label`` (True: an anomaly) of every reading; raises ValueError unless the seqs
        are the positions 0 .. n - 1 (as :func:`core.dataset.table.finish` numbers them). ``cache``: for
        labels used run after run (the caller keeps them; a cache is never released)."""
        import numpy as np

        seqs = labels["seq"].to_numpy()
        if not np.array_equal(np.sort(seqs), np.arange(len(seqs))):
            raise ValueError("labels: the seqs must be the readings' positions 0 .. n - 1, each once")
        anomalous = labels.loc[labels["label"].astype(bool), ["seq"]].astype("int64")
        frame = spark.createDataFrame(anomalous, "seq bigint")
        return cls(frame.cache() if cache else frame, len(seqs))


def _labelled(predictions: DataFrame, labels: Labels | None) -> DataFrame:
    """``predictions`` with ``label`` (null without labels, or for a seq the data set does not have). An
    ``event_id`` is ``<loop>-<seq>``, so every loop of the replay is checked against the same labels."""
    from pyspark.sql import functions as F

    if labels is None:
        return predictions.withColumn("label", F.lit(None).cast("boolean"))
    # try_: under Spark's ANSI mode (on by default) a foreign event id ("abc", "1-x": the validation
    # only bounds its length) failed the whole run; it now gets a null seq, hence a null label.
    seq = F.try_element_at(F.split("event_id", "-"), F.lit(2)).try_cast("long")
    anomalous = F.broadcast(labels.anomalous.withColumn("anomalous", F.lit(True)))
    known = F.col("seq").between(0, labels.size - 1)
    return (predictions.withColumn("seq", seq).join(anomalous, "seq", "left")
            .withColumn("label", F.when(known, F.col("anomalous").isNotNull()))
            .drop("seq", "anomalous"))


def _confusion() -> list[Any]:
    from pyspark.sql import functions as F

    flagged, label = F.col("is_anomaly"), F.col("label")
    return [F.sum((flagged & label).cast("long")).alias("tp"), F.sum((flagged & ~label).cast("long")).alias("fp"),
            F.sum((~flagged & label).cast("long")).alias("fn"), F.sum((~flagged & ~label).cast("long")).alias("tn")]


def per_reading_sums(predictions: DataFrame, labels: Labels | None) -> DataFrame:
    """Per device: readings scored, anomalies and confusion counts, each reading by its newest prediction."""
    from pyspark.sql import functions as F

    newest = _labelled(newest_per_reading(predictions), labels)
    return newest.groupBy("device_id").agg(F.count("*").alias("scored"),
                                           F.sum(F.col("is_anomaly").cast("long")).alias("anomalies"), *_confusion())


def per_round_confusion(predictions: DataFrame, labels: Labels) -> DataFrame:
    return _labelled(predictions, labels).groupBy("model_round").agg(*_confusion())


def participation(local_models: DataFrame) -> DataFrame:
    from pyspark.sql import functions as F

    return local_models.groupBy("device_id", "aggregated_into").agg(F.count("*").alias("updates"))


def round_convergence(global_models: DataFrame) -> DataFrame:
    from pyspark.sql import functions as F

    return global_models.select(
        "round", F.col("created_at").alias("aggregated_at"), F.col("num_devices").alias("participants"),
        F.col("num_examples").alias("readings"), F.col("metrics_loss").alias("mean_loss"),
        F.coalesce("rejected", F.lit(0)).alias("rejected"), F.coalesce("stale", F.lit(0)).alias("stale"),
        "threshold").orderBy("round")


def pipeline_counts(documents: pd.DataFrame, dead_letters: Mapping[str, int]) -> pd.DataFrame:
    """``documents``: the ``parts_collection`` sums."""
    import pandas as pd

    rows = [("collection", str(name), int(n)) for name, n in sorted(zip(documents["collection"],
                                                                          documents["documents"], strict=True))]
    rows += [("dead_letter", "(all reasons)", sum(dead_letters.values()))]
    rows += [("dead_letter", reason, n) for reason, n in sorted(dead_letters.items())]
    return pd.DataFrame(rows, columns=["kind", "name", "documents"])


# ------------------------------------------------------------------ the sums kept (pandas: small)
def typed(name: str, frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with the columns and types of the sums ``name`` (an SQL table of no rows comes back as
    text columns: the types must not depend on what a table held)."""
    import pandas as pd

    out = frame.reindex(columns=PARTS[name]).copy()
    for column in out.columns:
        if column in TIMES:
            times = pd.to_datetime(out[column], utc=True)
            out[column] = times.dt.tz_localize(None).astype("datetime64[us]")
        elif KEYS.get(column) == "str":
            out[column] = out[column].astype(object).map(lambda v: v if pd.isna(v) else str(v))
        elif column in KEYS:
            out[column] = pd.to_numeric(out[column]).astype("int64")
        else:
            out[column] = pd.to_numeric(out[column]).astype("float64")
    return out


def empty_parts() -> dict[str, pd.DataFrame]:
    import pandas as pd

    return {name: typed(name, pd.DataFrame(columns=columns)) for name, columns in PARTS.items()}


def _merged(old: pd.DataFrame, new: pd.DataFrame, keys: list[str], how: Mapping[str, str]) -> pd.DataFrame:
    """``old`` and ``new`` sums combined per ``keys`` (``how``: column -> sum, min or max; nulls skipped)."""
    import pandas as pd

    frames = [f for f in (old, new) if not f.empty]
    if not frames:
        return old
    both = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return both.groupby(keys, as_index=False, dropna=False).agg(dict(how))[list(old.columns)].reset_index(drop=True)


def add_window(parts: Mapping[str, pd.DataFrame], devices: pd.DataFrame, minutes: pd.DataFrame,
               anomaly_minutes: pd.DataFrame, quality: pd.DataFrame, updates: pd.DataFrame,
               documents: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The sums after a window: ``parts`` plus what it added (frames with :data:`PARTS`' columns, or fewer:
    a missing sum is zero)."""
    import pandas as pd

    def full(frame: pd.DataFrame, name: str) -> pd.DataFrame:
        return typed(name, frame if not frame.empty else pd.DataFrame(columns=PARTS[name]))

    sums = {c: "sum" for c in ("readings", "scored", "anomalies", *[f"sum_{f}" for f in SENSOR_FIELDS],
                               *[f"sumsq_{f}" for f in SENSOR_FIELDS])}
    device_how = {**sums, "first_seen": "min", "last_seen": "max", "max_gap_seconds": "max"}
    return {
        "parts_device": _merged(parts["parts_device"], full(devices, "parts_device"), ["device_id"], device_how),
        "parts_minute": _merged(parts["parts_minute"], full(minutes, "parts_minute"), ["minute"],
                                {"readings": "sum"}),
        "parts_anomaly_minute": _merged(parts["parts_anomaly_minute"], full(anomaly_minutes, "parts_anomaly_minute"),
                                        ["minute", "model_round"], {"predictions": "sum", "anomalies": "sum"}),
        "parts_quality": _merged(parts["parts_quality"], full(quality, "parts_quality"), ["scope", "key"],
                                 dict.fromkeys(CONFUSION, "sum")),
        "parts_participation": _merged(parts["parts_participation"], full(updates, "parts_participation"),
                                       ["device_id", "aggregated_into"], {"updates": "sum"}),
        "parts_collection": _merged(parts["parts_collection"], full(documents, "parts_collection"), ["collection"],
                                    {"documents": "sum"}),
    }


def tables_of(parts: Mapping[str, pd.DataFrame], with_quality: bool) -> dict[str, pd.DataFrame]:
    """The serving tables, derived from the sums."""
    import numpy as np
    import pandas as pd

    dev = parts["parts_device"]
    dev = dev[dev["readings"].fillna(0) > 0].sort_values("device_id")
    n = dev["readings"].astype("float64")
    stats = pd.DataFrame({"device_id": dev["device_id"].astype("int64"), "readings": dev["readings"].astype("int64")})
    for f in SENSOR_FIELDS:
        stats[f"{f}_mean"] = dev[f"sum_{f}"].astype("float64") / n
    for f in SENSOR_FIELDS:
        total, squares = dev[f"sum_{f}"].astype("float64"), dev[f"sumsq_{f}"].astype("float64")
        # Sample variance from the sums; a rounding error below zero on a constant field is zero.
        variance = ((squares - total * total / n) / (n - 1)).where(n > 1)
        stats[f"{f}_std"] = np.sqrt(variance.clip(lower=0))
    stats["first_seen"], stats["last_seen"] = dev["first_seen"], dev["last_seen"]
    stats["max_gap_seconds"] = dev["max_gap_seconds"].astype("float64")
    scored = dev["scored"].fillna(0).astype("int64")
    stats["scored"] = scored.where(scored > 0)
    stats["anomaly_rate"] = (dev["anomalies"].fillna(0).astype("float64") / scored).where(scored > 0)

    part = parts["parts_participation"]
    part = part[part["updates"] > 0]
    participation = (part.groupby("device_id").agg(updates=("updates", "sum"), rounds=("aggregated_into", "nunique"),
                                                   last_round=("aggregated_into", "max"))
                     .reset_index().sort_values("device_id"))
    anomalies = parts["parts_anomaly_minute"].sort_values(["minute", "model_round"]).copy()
    anomalies["anomaly_rate"] = anomalies["anomalies"].astype("float64") / anomalies["predictions"].astype("float64")
    anomalies = anomalies.astype({"predictions": "int64", "anomalies": "int64"})
    tables = {
        "device_stats": stats.reset_index(drop=True),
        "device_participation": participation.astype({"updates": "int64"}).reset_index(drop=True),
        "ingest_per_minute": parts["parts_minute"].astype({"readings": "int64"}).sort_values("minute")
        .reset_index(drop=True),
        "anomalies_per_minute": anomalies.reset_index(drop=True),
    }
    if with_quality:
        tables["prediction_quality"] = prediction_quality(parts["parts_quality"])
    return tables


def prediction_quality(sums: pd.DataFrame) -> pd.DataFrame:
    """Rows overall, per device and per round, with precision, recall and F1 (null where undefined:
    nothing flagged, or nothing an anomaly)."""
    import pandas as pd

    devices = sums[sums["scope"] == "device"]
    overall = pd.DataFrame([{"scope": "overall", "key": "all", **{c: int(devices[c].sum()) for c in CONFUSION}}])
    rounds = sums[sums["scope"] == "round"]
    table = pd.concat([overall, devices.sort_values("key", key=lambda k: k.astype(int)),
                       rounds.sort_values("key", key=lambda k: k.astype(int))], ignore_index=True)
    table[list(CONFUSION)] = table[list(CONFUSION)].astype("int64")
    tp, fp, fn = (table[c].astype("float64") for c in ("tp", "fp", "fn"))
    table["precision"] = (tp / (tp + fp)).where(tp + fp > 0)
    table["recall"] = (tp / (tp + fn)).where(tp + fn > 0)
    table["f1"] = (2 * tp / (2 * tp + fp + fn)).where(2 * tp + fp + fn > 0)
    return table


# ------------------------------------------------------------------ one run
def compute(spark: SparkSession, store: Storage, labels: pd.DataFrame | None,
            dead_letters: Mapping[str, int] | None = None, parts: Mapping[str, pd.DataFrame] | None = None,
            lower: datetime = EPOCH, settle_seconds: float = 1.0, label_frame: Labels | None = None) -> BatchResult:
    """One run: the documents of the window ``[lower, now - settle_seconds)`` added to ``parts``
    (None: a rebuild, from empty sums and ``lower`` = the epoch), and every table derived.
    ``dead_letters``: count per reason (:func:`core.topics.dead_letter_reasons`)."""
    import pandas as pd

    started = time.monotonic()
    rebuilt = parts is None
    if parts is None:
        parts, lower = empty_parts(), EPOCH
    # Whole seconds: bounds that survive the serving store's text and MongoDB's milliseconds unchanged.
    upper = max(lower, datetime.fromtimestamp(math.floor(time.time() - settle_seconds), UTC))
    readings = mongo_reader.read(spark, store, "device_data", READING_FIELDS,
                                 query=written_in("device_data", lower, upper))
    fields = PREDICTION_FIELDS
    # Only the written_at range in the query: with a second field the local server scans the collection.
    predictions = mongo_reader.read(spark, store, PREDICTIONS, fields, query=written_in(PREDICTIONS, lower, upper))
    predictions = predictions.where(predictions.prediction_type == "streaming")
    local_models = mongo_reader.read(spark, store, "local_models", {"device_id": "bigint", "aggregated_into": "bigint"},
                                     query=written_in("local_models", lower, upper))
    global_models = mongo_reader.read(spark, store, "global_model", {
        "round": "bigint", "created_at": "timestamp", "num_devices": "bigint", "num_examples": "bigint",
        "metrics.loss": "double", "rejected": "bigint", "stale": "bigint", "threshold": "double"})
    if label_frame is None and labels is not None:
        label_frame = Labels.of(spark, labels)

    # Readings: sums per device (the gap from each device's last reading so far included) and minute.
    previous = parts["parts_device"][["device_id", "last_seen"]].dropna()
    last_seen = (spark.createDataFrame(previous.rename(columns={"last_seen": "event_time"}).astype(
        {"device_id": "int64"}), "device_id bigint, event_time timestamp") if not previous.empty
        else spark.createDataFrame([], "device_id bigint, event_time timestamp"))
    devices = reading_sums(readings, last_seen).toPandas()
    minutes = ingest_per_minute(readings).toPandas()

    # Predictions: per minute and round as they come; per reading, the newest one replaces the
    # reading's earlier ones, whose part comes out again.
    anomaly_minutes = anomalies_per_minute(predictions).toPandas()
    earlier = _earlier_predictions(spark, store, predictions, lower, fields) if not rebuilt else None
    after = per_reading_sums(predictions.unionByName(earlier) if earlier is not None else predictions, label_frame)
    delta = after.toPandas().set_index("device_id")
    if earlier is not None:
        before = per_reading_sums(earlier, label_frame).toPandas().set_index("device_id")
        delta = delta.sub(before, fill_value=0)
    delta = delta.reset_index()
    devices = pd.concat([devices, delta[["device_id", "scored", "anomalies"]]], ignore_index=True)
    quality = [delta.assign(scope="device", key=delta["device_id"].astype("int64").astype(str))[PARTS["parts_quality"]]]
    if label_frame is not None:
        rounds = per_round_confusion(predictions, label_frame).toPandas()
        quality.append(rounds.assign(scope="round", key=rounds["model_round"].astype("int64").astype(str))[
            PARTS["parts_quality"]])
    updates = participation(local_models).toPandas()

    documents = pd.DataFrame({"collection": list(COUNTED),
                              "documents": [store.count_written(name, lower, upper) for name in COUNTED]})
    parts = add_window(parts, devices, minutes, anomaly_minutes, pd.concat(quality, ignore_index=True), updates,
                       documents)
    with_quality = labels is not None and bool(labels["label"].any())
    tables = tables_of(parts, with_quality)
    tables["round_convergence"] = round_convergence(global_models).toPandas()
    tables["pipeline_counts"] = pipeline_counts(parts["parts_collection"], dead_letters or {})
    # From what was collected already: a count() would be one more Spark job each.
    counts = {"readings": int(minutes["readings"].sum()), "predictions": int(anomaly_minutes["predictions"].sum()),
              "global_rounds": len(tables["round_convergence"]), "local_updates": int(updates["updates"].sum())}
    return BatchResult(tables, time.monotonic() - started, counts, parts, lower, upper, rebuilt)


def _earlier_predictions(spark: SparkSession, store: Storage, predictions: DataFrame, lower: datetime,
                         fields: Mapping[str, str]) -> DataFrame | None:
    """The streaming predictions made before ``lower`` of the readings ``predictions`` score (None: none)."""
    event_ids = [r["event_id"] for r in predictions.select("event_id").distinct().collect()]
    written_at = SPECS[PREDICTIONS].written_at
    # By event_id alone (the unique index's prefix), the rest checked here: with a second field in the
    # query the local MongoDB-wire server scans the collection (5.8 s for 300 readings among 20,000
    # predictions, 0.2 s without; issue 22).
    ids = [d["_id"] for query in mongo_reader.in_chunks("event_id", event_ids)
           for d in store.predictions.find(query, {"_id": 1, "prediction_type": 1, written_at: 1})
           if d.get("prediction_type") == "streaming" and d[written_at].replace(tzinfo=UTC) < lower]
    return mongo_reader.read_in(spark, store, "predictions", fields, "_id", ids) if ids else None


def load_parts(store_url: str) -> tuple[dict[str, pd.DataFrame], datetime, datetime] | None:
    """The sums and ``(upper, rebuilt_at)`` of the last run, from the serving store (None: none kept)."""
    import pandas as pd
    from sqlalchemy import create_engine, inspect

    engine = create_engine(store_url)
    try:
        if not all(inspect(engine).has_table(name) for name in (*PARTS, STATE_TABLE)):
            return None
        with engine.connect() as connection:
            state = pd.read_sql_table(STATE_TABLE, connection)
            parts = {name: pd.read_sql_table(name, connection) for name in PARTS}
    finally:
        engine.dispose()
    if len(state) != 1:
        return None
    for name, frame in parts.items():
        if list(frame.columns) != PARTS[name]:
            return None  # sums of another layout: rebuild
        parts[name] = typed(name, frame)
    upper = datetime.fromisoformat(str(state["upper"].iloc[0]))
    rebuilt_at = datetime.fromisoformat(str(state["rebuilt_at"].iloc[0]))
    return parts, upper, rebuilt_at


def write(result: BatchResult, store_url: str, store: Storage, rebuilt_at: datetime) -> None:
    """Replace the serving store's tables and sums in one transaction; add the run's summary to MongoDB."""
    import pandas as pd
    from sqlalchemy import create_engine

    state = pd.DataFrame([{"lower": result.lower.isoformat(), "upper": result.upper.isoformat(),
                           "rebuilt_at": rebuilt_at.isoformat()}])
    engine = create_engine(store_url)
    try:
        with engine.begin() as connection:
            for name, frame in {**result.tables, **result.parts, STATE_TABLE: state}.items():
                frame.to_sql(name, connection, if_exists="replace", index=False)
    finally:
        engine.dispose()
    overall = result.tables.get("prediction_quality")
    summary: dict[str, Any] = {"at": datetime.now(UTC), "seconds": result.seconds, **result.counts,
                               "tables": sorted(result.tables), "store": _redacted(store_url),
                               "rebuild": result.rebuilt, "window": [result.lower, result.upper]}
    if overall is not None and not overall.empty:
        row = overall[overall["scope"] == "overall"].iloc[0]
        summary.update({k: (None if pd.isna(row[k]) else float(row[k])) for k in ("precision", "recall", "f1")})
    store.analytics_runs.insert_one(summary)


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


class Batches:
    """Runs the batch analytics, one Spark session for all of them: incremental after the first run,
    a rebuild when asked, when no sums are kept and every ``spark.batch.rebuild_seconds``."""

    def __init__(self, cfg: AppConfig, labels: pd.DataFrame | None, spark: SparkSession | None = None) -> None:
        """``spark``: a session to run on, left to its owner (``fl-app spark serve`` gives the scorer's);
        None: one of its own, made at the first run and stopped by :meth:`close`."""
        self.cfg, self.labels = cfg, labels
        self.spark, self.own_session = spark, spark is None
        self.label_frame: Labels | None = None  # the labels in Spark, made once

    def run(self, dead_letters: Mapping[str, int] | None = None, rebuild: bool = False) -> BatchResult:
        from analytics.session import spark_session
        from core.storage import Storage

        batch = self.cfg.spark.batch
        if self.spark is None:
            self.spark = spark_session(self.cfg, "fl-iot-batch")
        if self.label_frame is None and self.labels is not None:
            self.label_frame = Labels.of(self.spark, self.labels, cache=True)
        kept = None if rebuild else load_parts(batch.store_url)
        now = datetime.now(UTC)
        if kept is not None and now - kept[2] > timedelta(seconds=batch.rebuild_seconds):
            kept = None
        with Storage.from_config(self.cfg.mongo) as store:
            if kept is None:
                result, rebuilt_at = compute(self.spark, store, self.labels, dead_letters,
                                             settle_seconds=batch.settle_seconds, label_frame=self.label_frame), now
            else:
                parts, upper, rebuilt_at = kept
                result = compute(self.spark, store, self.labels, dead_letters, parts, upper, batch.settle_seconds,
                                 self.label_frame)
            write(result, batch.store_url, store, rebuilt_at)
        log.info("batch analytics (%s, documents made %s to %s): %s in %.1fs -> %s",
                 "rebuild" if result.rebuilt else "incremental", result.lower.isoformat(timespec="seconds"),
                 result.upper.isoformat(timespec="seconds"),
                 ", ".join(f"{v:,} {k}" for k, v in result.counts.items()), result.seconds,
                 _redacted(batch.store_url))
        return result

    def close(self) -> None:
        """Stop the session if it is this object's own; a given one is left to its owner."""
        if self.spark is not None and self.own_session:
            self.spark.stop()
            self.spark, self.label_frame = None, None
