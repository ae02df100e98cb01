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
  positives and negatives, precision, recall and F1, overall, per device and
  per model round;
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
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from analytics import mongo_reader
from core.config import AppConfig
from core.records import SENSOR_FIELDS

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

    from core.storage import Storage

log = logging.getLogger(__name__)


@dataclass
class BatchResult:
    tables: dict[str, pd.DataFrame]
    seconds: float
    counts: dict[str, int] = field(default_factory=dict)


def device_stats(readings: DataFrame, predictions: DataFrame) -> DataFrame:
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    previous = F.lag("event_time").over(Window.partitionBy("device_id").orderBy("event_time"))
    gaps = readings.withColumn("gap", F.col("event_time").cast("double") - previous.cast("double"))
    stats = gaps.groupBy("device_id").agg(
        F.count("*").alias("readings"),
        *[F.avg(f).alias(f"{f}_mean") for f in SENSOR_FIELDS],
        *[F.stddev_samp(f).alias(f"{f}_std") for f in SENSOR_FIELDS],
        F.min("event_time").alias("first_seen"), F.max("event_time").alias("last_seen"),
        F.max("gap").alias("max_gap_seconds"))
    newest = newest_per_reading(predictions)
    rates = newest.groupBy("device_id").agg(F.count("*").alias("scored"),
                                            F.avg(F.col("is_anomaly").cast("double")).alias("anomaly_rate"))
    return stats.join(rates, "device_id", "left").orderBy("device_id")


def newest_per_reading(predictions: DataFrame) -> DataFrame:
    """Each reading once: its prediction of the highest model round."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    rank = F.row_number().over(Window.partitionBy("event_id").orderBy(F.col("model_round").desc()))
    return predictions.withColumn("rank", rank).where("rank = 1").drop("rank")


def round_convergence(global_models: DataFrame) -> DataFrame:
    from pyspark.sql import functions as F

    return global_models.select(
        "round", F.col("created_at").alias("aggregated_at"), F.col("num_devices").alias("participants"),
        F.col("num_examples").alias("readings"), F.col("metrics_loss").alias("mean_loss"),
        F.coalesce("rejected", F.lit(0)).alias("rejected"), F.coalesce("stale", F.lit(0)).alias("stale"),
        "threshold").orderBy("round")


def device_participation(local_models: DataFrame) -> DataFrame:
    from pyspark.sql import functions as F

    return local_models.groupBy("device_id").agg(
        F.count("*").alias("updates"), F.countDistinct("aggregated_into").alias("rounds"),
        F.max("aggregated_into").alias("last_round")).orderBy("device_id")


def ingest_per_minute(readings: DataFrame) -> DataFrame:
    from pyspark.sql import functions as F

    return (readings.groupBy(F.date_trunc("minute", "event_time").alias("minute"))
            .agg(F.count("*").alias("readings")).orderBy("minute"))


def anomalies_per_minute(predictions: DataFrame) -> DataFrame:
    from pyspark.sql import functions as F

    return (predictions.groupBy(F.date_trunc("minute", "event_time").alias("minute"), "model_round")
            .agg(F.count("*").alias("predictions"), F.sum(F.col("is_anomaly").cast("long")).alias("anomalies"))
            .withColumn("anomaly_rate", F.col("anomalies") / F.col("predictions"))
            .orderBy("minute", "model_round"))


def pipeline_counts(documents: Mapping[str, int], dead_letters: Mapping[str, int]) -> pd.DataFrame:
    import pandas as pd

    rows = [("collection", name, n) for name, n in sorted(documents.items())]
    rows += [("dead_letter", "(all reasons)", sum(dead_letters.values()))]
    rows += [("dead_letter", reason, n) for reason, n in sorted(dead_letters.items())]
    return pd.DataFrame(rows, columns=["kind", "name", "documents"])


def prediction_quality(predictions: DataFrame, labels: DataFrame) -> DataFrame:
    """``labels``: ``seq`` (the reading's row in the data set) and ``label`` (True: an anomaly).
    An ``event_id`` is ``<loop>-<seq>``, so every loop of the replay is checked against the same labels."""
    from pyspark.sql import functions as F

    scored = predictions.withColumn("seq", F.split("event_id", "-").getItem(1).cast("long")).join(labels, "seq")
    counts = [F.sum((F.col("is_anomaly") & F.col("label")).cast("long")).alias("tp"),
              F.sum((F.col("is_anomaly") & ~F.col("label")).cast("long")).alias("fp"),
              F.sum((~F.col("is_anomaly") & F.col("label")).cast("long")).alias("fn"),
              F.sum((~F.col("is_anomaly") & ~F.col("label")).cast("long")).alias("tn")]
    newest = newest_per_reading(scored)
    parts = [newest.agg(*counts).select(F.lit("overall").alias("scope"), F.lit("all").alias("key"), "*"),
             newest.groupBy("device_id").agg(*counts).select(
                 F.lit("device").alias("scope"), F.col("device_id").cast("string").alias("key"), "tp", "fp", "fn",
                 "tn"),
             scored.groupBy("model_round").agg(*counts).select(
                 F.lit("round").alias("scope"), F.col("model_round").cast("string").alias("key"), "tp", "fp", "fn",
                 "tn")]
    table = parts[0].unionByName(parts[1]).unionByName(parts[2])
    # Undefined (null), not an error, where nothing was flagged or nothing was an anomaly.
    precision = F.try_divide(F.col("tp"), F.col("tp") + F.col("fp"))
    recall = F.try_divide(F.col("tp"), F.col("tp") + F.col("fn"))
    f1 = F.try_divide(2 * F.col("tp"), 2 * F.col("tp") + F.col("fp") + F.col("fn"))
    return table.withColumn("precision", precision).withColumn("recall", recall).withColumn("f1", f1)


def compute(spark: SparkSession, store: Storage, labels: pd.DataFrame | None,
            dead_letters: Mapping[str, int] | None = None) -> BatchResult:
    """Every table of one run, as pandas frames (they are small: one row per device, round or minute).
    ``dead_letters``: count per reason (:func:`core.topics.dead_letter_reasons`)."""
    started = time.monotonic()
    readings = mongo_reader.read(spark, store, "device_data", {
        "device_id": "bigint", "event_time": "timestamp", **{f: "double" for f in SENSOR_FIELDS}})
    predictions = mongo_reader.read(spark, store, "predictions", {
        "event_id": "string", "device_id": "bigint", "event_time": "timestamp", "model_round": "bigint",
        "is_anomaly": "boolean"}, query={"prediction_type": "streaming"})
    global_models = mongo_reader.read(spark, store, "global_model", {
        "round": "bigint", "created_at": "timestamp", "num_devices": "bigint", "num_examples": "bigint",
        "metrics.loss": "double", "rejected": "bigint", "stale": "bigint", "threshold": "double"})
    local_models = mongo_reader.read(spark, store, "local_models", {"device_id": "bigint",
                                                                     "aggregated_into": "bigint"})
    tables = {
        "device_stats": device_stats(readings, predictions).toPandas(),
        "round_convergence": round_convergence(global_models).toPandas(),
        "device_participation": device_participation(local_models).toPandas(),
        "ingest_per_minute": ingest_per_minute(readings).toPandas(),
        "anomalies_per_minute": anomalies_per_minute(predictions).toPandas(),
        "pipeline_counts": pipeline_counts(store.counts(), dead_letters or {}),
    }
    if labels is not None and bool(labels["label"].any()):
        tables["prediction_quality"] = prediction_quality(predictions, spark.createDataFrame(labels)).toPandas()
    counts = {"readings": readings.count(), "predictions": predictions.count(),
              "global_rounds": global_models.count(), "local_updates": local_models.count()}
    return BatchResult(tables, time.monotonic() - started, counts)


def write(result: BatchResult, store_url: str, store: Storage) -> None:
    """Replace the serving store's tables in one transaction; add the run's summary to MongoDB."""
    import pandas as pd
    from sqlalchemy import create_engine

    engine = create_engine(store_url)
    try:
        with engine.begin() as connection:
            for name, frame in result.tables.items():
                frame.to_sql(name, connection, if_exists="replace", index=False)
    finally:
        engine.dispose()
    overall = result.tables.get("prediction_quality")
    summary: dict[str, Any] = {"at": datetime.now(UTC), "seconds": result.seconds, **result.counts,
                               "tables": sorted(result.tables), "store": _redacted(store_url)}
    if overall is not None and not overall.empty:
        row = overall[overall["scope"] == "overall"].iloc[0]
        summary.update({k: (None if pd.isna(row[k]) else float(row[k])) for k in ("precision", "recall", "f1")})
    store.analytics_runs.insert_one(summary)


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def run(cfg: AppConfig, labels: pd.DataFrame | None, dead_letters: Mapping[str, int] | None = None) -> BatchResult:
    """One batch run: compute and write. ``labels``: see :func:`prediction_quality` (None: no labels);
    ``dead_letters``: see :func:`compute`."""
    from analytics.session import spark_session
    from core.storage import Storage

    spark = spark_session(cfg, "fl-iot-batch")
    try:
        with Storage.from_config(cfg.mongo) as store:
            result = compute(spark, store, labels, dead_letters)
            write(result, cfg.spark.batch.store_url, store)
    finally:
        spark.stop()
    log.info("batch analytics: %s in %.1fs -> %s (%s)", ", ".join(f"{v:,} {k}" for k, v in result.counts.items()),
             result.seconds, _redacted(cfg.spark.batch.store_url), ", ".join(sorted(result.tables)))
    return result
