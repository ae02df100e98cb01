"""Federated learning on real Kafka and MongoDB-wire servers: the ServerApp and ClientApps on
Flower's simulation runtime with all 53 devices, fed by their own window partitions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Producer

from fl_app import services, storage
from fl_app.config import PROJECT_ROOT, AppConfig, load_config
from fl_app.schemas import window_partitions, window_record
from stream import data

pytestmark = [pytest.mark.integration, pytest.mark.slow]
FL_APP = Path(sys.executable).parent / "fl-app"
READINGS_PER_WINDOW = 8


def fl_overrides(stack: AppConfig, home: Path, tag: str) -> list[str]:
    return [
        f"paths.home={home}", f"paths.cache_dir={PROJECT_ROOT / '.cache'}",
        f"kafka.bootstrap_servers={stack.kafka.bootstrap_servers}", f"mongo.uri={stack.mongo.uri}",
        f"mongo.database=fl_{tag}", f"kafka.topics.readings.name=readings_{tag}",
        f"kafka.topics.windows.name=windows_{tag}", f"kafka.topics.dead_letter.name=dlq_{tag}",
        "stream.dataset_records=20000",
    ]


def publish_windows(cfg: AppConfig, devices: list[int], per_device: int) -> int:
    """Window records as the Flink job writes them, ``per_device`` for each device, in its partition."""
    frame = data.load(cfg.stream, cfg.paths.cache_dir)
    partition = window_partitions(data.device_ids(cfg.stream, cfg.paths.cache_dir))
    producer = Producer({"bootstrap.servers": cfg.kafka.bootstrap_servers})
    total = 0
    for device in devices:
        rows = frame[frame["device_id"] == device].head(per_device * READINGS_PER_WINDOW)
        readings = [{"event_id": f"0-{r['seq']}", "device_id": device, "event_time": "2026-11-28T00:00:00+00:00",
                     "source_time": r["source_time"].isoformat(), "loop": 0, "seq": r["seq"],
                     **{k: r[k] for k in ("temperature", "humidity", "light", "voltage")}}
                    for r in rows.to_dict("records")]
        for i in range(0, len(readings), READINGS_PER_WINDOW):
            chunk = readings[i:i + READINGS_PER_WINDOW]
            record = window_record(device, "2026-11-28T00:00:00.000+00:00", "2026-11-28T00:00:30.000+00:00", chunk)
            producer.produce(cfg.kafka.topics.windows.name, key=str(device), value=json.dumps(record),
                             partition=partition[device])
            total += len(chunk)
    assert producer.flush(30) == 0
    return total


def test_simulation_runtime_with_53_devices(stack: AppConfig, tmp_path: Path) -> None:
    overrides = [*fl_overrides(stack, tmp_path, uuid.uuid4().hex[:8]), "fl.runtime=simulation", "fl.devices=53",
                 "fl.local_training_interval_seconds=4", "fl.global_update_interval_minutes=0.25",
                 "fl.duration_seconds=50"]
    cfg = load_config(overrides)
    services.provision(cfg)
    devices = data.device_ids(cfg.stream, cfg.paths.cache_dir)
    assert len(devices) == 53
    published = publish_windows(cfg, devices, per_device=2)
    proc = subprocess.run([str(FL_APP), "fl", "simulate", *overrides], capture_output=True, text=True, timeout=400,
                          env={**os.environ, "COLUMNS": "200"}, cwd=PROJECT_ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (tmp_path / "logs" / "global_server.log").read_text()
    assert "53 devices online" in log, log[-2000:]

    with storage.Storage.from_config(cfg.mongo) as store:
        globals_ = list(store.global_model.find({}, sort=[("round", 1)]))
        ticks = list(store.fl_rounds.find({}, sort=[("at", 1)]))
        locals_ = list(store.local_models.find({}))
    assert len(globals_) >= 2, ticks
    assert [g["round"] for g in globals_] == list(range(1, len(globals_) + 1))
    assert all(g["num_devices"] >= cfg.fl.min_devices_for_aggregation for g in globals_)
    by_round = defaultdict(list)
    for doc in locals_:
        by_round[doc["aggregated_into"]].append(doc)
    for g in globals_:  # each global model is exactly its local updates
        mine = by_round[g["round"]]
        assert sorted({d["device_id"] for d in mine}) == g["device_ids"]
        assert sum(d["num_examples"] for d in mine) == g["num_examples"]
        assert all(d["round"] < g["round"] for d in mine)  # trained from an earlier global model
        assert np.isfinite(storage.decode_weights(g["weights"])[0]).all() and np.isfinite(g["threshold"])
        assert isinstance(g["created_at"], datetime)
    # Every reading published was trained on exactly once, by its own device.
    assert sum(g["num_examples"] for g in globals_) == published
    assert {d["device_id"] for d in locals_} == set(devices)
    assert {t["status"] for t in ticks} <= {"aggregated", "skipped"}
