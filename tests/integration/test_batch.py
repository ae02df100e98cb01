"""Batch analytics (`fl-app spark batch`) on the real MongoDB-wire server and real Spark: every table
checked against values computed here, with pandas, from the same documents."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from confluent_kafka import Producer
from sqlalchemy import create_engine

from core import services, storage
from core.config import PROJECT_ROOT, AppConfig, load_config
from core.records import SENSOR_FIELDS, Reading, iso
from tests.support.stack import tenant_overrides

pytestmark = pytest.mark.integration
FL_APP = Path(os.environ.get("VIRTUAL_ENV", PROJECT_ROOT / ".venv")) / "bin" / "fl-app"


def documents() -> dict[str, list[dict]]:
    """Readings, predictions (some readings scored by two rounds), global and local models."""
    rng = np.random.default_rng(5)
    start = datetime(2026, 11, 28, 10, tzinfo=UTC)
    readings = []
    for seq in range(120):
        device = 1 + seq % 3
        at = start + timedelta(seconds=seq * 2 + (30 if seq > 100 and device == 2 else 0))
        readings.append(vars(Reading(f"0-{seq}", device, iso(at), iso(at), 0, seq,
                                     *[float(v) for v in rng.normal([22, 40, 300, 2.7], [2, 5, 50, 0.05])])))
    preds = []
    for r in readings:
        flagged = bool(rng.random() < 0.2)
        preds.append({"event_id": r["event_id"], "device_id": r["device_id"],
                      "event_time": datetime.fromisoformat(r["event_time"]), "score": 0.1, "is_anomaly": flagged,
                      "model_round": 1, "prediction_type": "streaming", "scored_at": start})
        if r["seq"] % 4 == 0:  # scored again by round 2: the newer one counts in per-reading views
            preds.append({**preds[-1], "is_anomaly": not flagged, "model_round": 2})
    weights = storage.encode_weights([np.zeros(3, dtype=np.float32)])
    globals_ = [{"round": k, "created_at": start + timedelta(minutes=k), "num_devices": 2 + k, "num_examples": 10 * k,
                 "threshold": 0.5 + k, "weights": weights, "metrics": {"loss": 1.0 / k}, "rejected": k - 1,
                 "stale": 0} for k in (1, 2, 3)]
    locals_ = [{"device_id": d, "round": k - 1, "aggregated_into": k, "trained_at": start, "num_examples": 5,
                "weights": weights} for k in (1, 2, 3) for d in (1, 2, 3) if not (d == 3 and k > 1)]
    locals_.append({**locals_[0], "aggregated_into": 1})  # a device's second update into the same round
    return {"readings": readings, "predictions": preds, "globals": globals_, "locals": locals_}


def insert(store: storage.Storage, docs: dict[str, list[dict]]) -> None:
    """Stamped as their writers stamp them (the collection's ``written_at``: when made, just before inserting;
    ``insert_readings`` stamps the readings itself)."""
    now = datetime.now(UTC)
    if docs["readings"]:
        store.insert_readings(docs["readings"])
    if docs["predictions"]:
        store.insert_predictions([{**d, "scored_at": now} for d in docs["predictions"]])
    for collection, key in ((store.global_model, "globals"), (store.local_models, "locals")):
        if docs[key]:
            stamp = storage.SPECS[collection.name].written_at
            collection.insert_many([{**d, stamp: now} for d in docs[key]])


def frames(docs: dict[str, list[dict]]) -> dict[str, pd.DataFrame]:
    out = {k: pd.DataFrame(v) for k, v in docs.items()}
    out["readings"]["event_time"] = pd.to_datetime(out["readings"]["event_time"], utc=True)
    return out


def seed(store: storage.Storage) -> dict[str, pd.DataFrame]:
    docs = documents()
    insert(store, docs)
    return frames(docs)


def labels_of(cfg: AppConfig) -> pd.DataFrame:
    """The data set's ground truth: ``seq``, ``label`` (True: an anomaly)."""
    from core import dataset

    frame = dataset.load(cfg.stream, cfg.paths.cache_dir)
    return frame[["seq"]].assign(label=(frame["anomaly"] != dataset.NORMAL).to_numpy())


def seed_run(cfg: AppConfig, dead_letters: Sequence[str]) -> dict[str, pd.DataFrame]:
    """A run's data for the analytics and the API: ``dead_letters`` (their reasons) on the dead-letter
    topic and :func:`seed`'s documents in MongoDB."""
    producer = Producer({"bootstrap.servers": cfg.kafka.bootstrap_servers})
    for reason in dead_letters:
        producer.produce(cfg.kafka.topics.dead_letter.name, value=json.dumps({"reason": reason, "record": "x"}))
    assert producer.flush(30) == 0
    with storage.Storage.from_config(cfg.mongo) as store:
        return seed(store)


TABLES = ("device_stats", "round_convergence", "device_participation", "prediction_quality", "ingest_per_minute",
          "anomalies_per_minute", "pipeline_counts")


def batch(overrides: list[str], *flags: str) -> None:
    proc = subprocess.run([str(FL_APP), "spark", "batch", *flags, *overrides], capture_output=True, text=True,
                          timeout=600, cwd=PROJECT_ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def serving_tables(db: Path) -> dict[str, pd.DataFrame]:
    engine = create_engine(f"sqlite:///{db}")
    tables = {name: pd.read_sql_table(name, engine) for name in TABLES}
    engine.dispose()
    return tables


def test_batch_tables_match_what_the_documents_say(stack: AppConfig, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    db = tmp_path / "serving.db"
    overrides = [*tenant_overrides(stack, tmp_path, tag), "stream.dataset_records=3000",
                 f"spark.batch.store_url=sqlite:///{db}"]
    cfg = load_config(overrides)
    services.provision(cfg)
    docs = seed_run(cfg, ("humidity out of range", "humidity out of range", "not JSON"))
    with storage.Storage.from_config(cfg.mongo) as store:
        documents_now = store.counts()
        batch(overrides)
        summary = store.analytics_runs.find_one(sort=[("at", -1)])
    assert summary is not None and summary["rebuild"] is True  # nothing kept yet
    check(serving_tables(db), docs, labels_of(cfg), documents_now, summary)


def test_an_incremental_run_gives_the_tables_of_a_rebuild(stack: AppConfig, tmp_path: Path) -> None:
    """Half the documents, a run; the other half (with round 2 scoring again readings the first run
    counted by round 1, and a device's gap across the two halves), a run that reads only them: its
    tables are those a rebuild computes from everything, and those pandas computes."""
    tag = uuid.uuid4().hex[:8]
    db = tmp_path / "serving.db"
    overrides = [*tenant_overrides(stack, tmp_path, tag), "stream.dataset_records=3000",
                 f"spark.batch.store_url=sqlite:///{db}", "spark.batch.settle_seconds=1"]
    cfg = load_config(overrides)
    services.provision(cfg)
    docs = documents()
    first = {"readings": [r for r in docs["readings"] if r["seq"] < 60],
             "predictions": [p for p in docs["predictions"] if int(p["event_id"].split("-")[1]) < 60
                             and p["model_round"] == 1],
             "globals": docs["globals"][:1], "locals": [d for d in docs["locals"] if d["aggregated_into"] == 1]}
    second = {k: [d for d in v if not any(d is f for f in first[k])] for k, v in docs.items()}
    assert any(int(p["event_id"].split("-")[1]) < 60 for p in second["predictions"])  # re-scored by round 2
    with storage.Storage.from_config(cfg.mongo) as store:
        insert(store, first)
        time.sleep(2.5)  # past spark.batch.settle_seconds: the first run reads all of them
        batch(overrides)
        insert(store, second)
        time.sleep(2.5)
        batch(overrides)
        incremental = serving_tables(db)
        runs = list(store.analytics_runs.find(sort=[("at", 1)]))
        assert [r["rebuild"] for r in runs] == [True, False]
        assert runs[1]["readings"] == len(second["readings"])  # it read only what was new
        assert runs[1]["predictions"] == len(second["predictions"])
        documents_now = store.counts()
        batch(overrides, "--rebuild")
        rebuilt = serving_tables(db)
        summary = store.analytics_runs.find_one(sort=[("at", -1)])
    assert summary is not None
    for name in TABLES:
        if name == "pipeline_counts":  # analytics_runs grew by the runs themselves
            continue
        pd.testing.assert_frame_equal(incremental[name], rebuilt[name], check_dtype=False, obj=name)
    check(incremental, frames(docs), labels_of(cfg), documents_now, {**summary, "readings": len(docs["readings"])},
          dead_letters=0)


def check(tables: dict[str, pd.DataFrame], docs: dict[str, pd.DataFrame], labels: pd.DataFrame,
          documents: dict[str, int], summary: dict, dead_letters: int = 3) -> None:
    """Every table against what pandas computes from the same documents."""
    readings, preds = docs["readings"], docs["predictions"]
    newest = preds.sort_values("model_round").groupby("event_id").tail(1)
    stats = tables["device_stats"].set_index("device_id")
    for device, group in readings.groupby("device_id"):
        row = stats.loc[device]
        assert row["readings"] == len(group)
        for f in SENSOR_FIELDS:
            assert row[f"{f}_mean"] == pytest.approx(group[f].mean())
            assert row[f"{f}_std"] == pytest.approx(group[f].std())
        gaps = group["event_time"].sort_values().diff().dt.total_seconds()
        assert row["max_gap_seconds"] == pytest.approx(gaps.max())
        mine = newest[newest["device_id"] == device]
        assert row["scored"] == len(mine) and row["anomaly_rate"] == pytest.approx(mine["is_anomaly"].mean())
    longest = dict(zip(stats.index, stats["max_gap_seconds"], strict=True))
    assert longest[2] > longest[1]  # device 2's 30-s hole

    conv = tables["round_convergence"]
    assert conv["round"].tolist() == [1, 2, 3]
    assert conv["participants"].tolist() == [3, 4, 5] and conv["rejected"].tolist() == [0, 1, 2]
    assert conv["mean_loss"].tolist() == pytest.approx([1.0, 0.5, 1 / 3])

    part = {r["device_id"]: (r["updates"], r["rounds"], r["last_round"])
            for r in tables["device_participation"].to_dict("records")}
    expected: dict[int, tuple[int, set[int]]] = {}
    for d in docs["locals"].to_dict("records"):
        updates, rounds = expected.get(d["device_id"], (0, set()))
        expected[d["device_id"]] = (updates + 1, rounds | {d["aggregated_into"]})
    assert part == {d: (n, len(r), max(r)) for d, (n, r) in expected.items()}

    quality = tables["prediction_quality"]
    scored = newest.assign(seq=newest["event_id"].str.split("-").str[1].astype(int)).merge(labels, on="seq")
    tp = int((scored["is_anomaly"] & scored["label"]).sum())
    fp = int((scored["is_anomaly"] & ~scored["label"]).sum())
    fn = int((~scored["is_anomaly"] & scored["label"]).sum())
    overall = quality[quality["scope"] == "overall"].iloc[0]
    assert [overall["tp"], overall["fp"], overall["fn"]] == [tp, fp, fn]
    assert len(quality[quality["scope"] == "round"]) == 2 and len(quality[quality["scope"] == "device"]) == 3

    minute = readings["event_time"].dt.floor("min").dt.tz_localize(None)
    ingest = tables["ingest_per_minute"]
    assert dict(zip(ingest["minute"], ingest["readings"], strict=True)) == minute.value_counts().to_dict()
    per_minute = preds.assign(minute=pd.to_datetime(preds["event_time"], utc=True).dt.floor("min").dt.tz_localize(None))
    expected_anomalies = per_minute.groupby(["minute", "model_round"])["is_anomaly"].agg(["count", "sum"])
    got = tables["anomalies_per_minute"].set_index(["minute", "model_round"])
    assert got["predictions"].to_dict() == expected_anomalies["count"].to_dict()
    assert got["anomalies"].to_dict() == expected_anomalies["sum"].to_dict()

    counts = {(k, n): v for k, n, v in tables["pipeline_counts"].itertuples(index=False)}
    assert counts[("collection", "device_data")] == documents["device_data"] == len(readings)
    assert counts[("collection", "predictions")] == len(preds)
    assert counts[("dead_letter", "(all reasons)")] == dead_letters
    if dead_letters:
        assert counts[("dead_letter", "humidity out of range")] == 2

    assert summary is not None and summary["readings"] == len(readings) and summary["global_rounds"] == 3
    assert sorted(summary["tables"]) == sorted(tables)


def test_labels_of_foreign_event_ids_are_null_and_fail_nothing(tmp_path: Path) -> None:
    """A reading's event id is ``<loop>-<seq>``, but the validation only bounds its length: a prediction of a
    foreign id must get a null label, and not fail the run (Spark's ANSI mode raises on a bad cast or index).
    Real Spark; labels of a 10-reading data set whose seq 5 is an anomaly."""
    from analytics.batch import Labels, _labelled
    from analytics.session import spark_session

    spark = spark_session(load_config([f"paths.home={tmp_path}"]), "test-labels")
    try:
        labels = Labels.of(spark, pd.DataFrame({"seq": range(10), "label": [s == 5 for s in range(10)]}))
        ids = ["0-1", "3-5", "abc", "1-x", "7-10", "2--5", "9-5-1", "-", "", "1-18446744073709551616",
               "1-9223372036854775807"]
        predictions = spark.createDataFrame([(i,) for i in ids], "event_id string")
        got: dict[str, bool | None] = dict(_labelled(predictions, labels).select("event_id", "label").collect())
    finally:
        spark.stop()
    assert got == {"0-1": False, "3-5": True, "abc": None, "1-x": None, "7-10": None, "2--5": None,
                   "9-5-1": True, "-": None, "": None, "1-18446744073709551616": None, "1-9223372036854775807": None}
