"""The replay producer against the real local broker."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from core import services, topics
from core.config import PROJECT_ROOT, AppConfig
from core.dataset import synthetic
from core.records import SENSOR_FIELDS, Reading
from stream.producer import ReplayProducer
from tests.support.kafka import read_topic

pytestmark = pytest.mark.integration
FL_APP = Path(sys.executable).parent / "fl-app"


def producer_config(stack: AppConfig, tmp_path: Path, **stream: Any) -> AppConfig:
    """The session stack with a topic and a state file of this test's own."""
    topic = dataclasses.replace(stack.kafka.topics.readings, name=f"iot_stream_{uuid.uuid4().hex[:8]}")
    kafka = dataclasses.replace(stack.kafka, topics=dataclasses.replace(stack.kafka.topics, readings=topic))
    settings = {"state_file": str(tmp_path / "producer_state.json"), "dataset_records": 500, **stream}
    cfg = dataclasses.replace(stack, kafka=kafka, stream=dataclasses.replace(stack.stream, **settings))
    topics.ensure_topics(cfg)
    return cfg


def frame_for(cfg: AppConfig) -> pd.DataFrame:
    return synthetic.generate(cfg.stream.dataset_records, cfg.stream.num_devices, cfg.stream.seed)


def consume_all(cfg: AppConfig) -> list:
    """Every message of the test's readings topic."""
    topic = cfg.kafka.topics.readings
    return read_topic(cfg.kafka.bootstrap_servers, topic.name, topic.partitions)


def command_overrides(cfg: AppConfig, home: Path) -> list[str]:
    """`fl-app produce` overrides that point it at the test's broker, topic and state."""
    return [
        f"paths.home={home}", f"paths.cache_dir={PROJECT_ROOT / '.cache'}",
        f"kafka.bootstrap_servers={cfg.kafka.bootstrap_servers}",
        f"kafka.topics.readings.name={cfg.kafka.topics.readings.name}",
        f"stream.state_file={cfg.stream.state_file}", "stream.dataset_records=500",
        "stream.records_per_second=40",  # ~6 s of it stays inside one loop of 500
    ]


def event_ids(messages: list) -> list[str]:
    return [json.loads(m.value())["event_id"] for m in messages]


def test_exact_count_keys_and_contract(stack: AppConfig, tmp_path: Path) -> None:
    cfg = producer_config(stack, tmp_path, pace=False, max_records=400)
    frame = frame_for(cfg)
    stats = ReplayProducer(cfg, frame, "t").run()
    assert stats.sent == stats.delivered == 400
    messages = consume_all(cfg)
    assert len(messages) == 400
    by_id = {}
    for m in messages:
        body = json.loads(m.value())
        reading = Reading.from_dict(body)  # the iot_stream contract, field for field
        assert set(body) == set(Reading.__dataclass_fields__)  # no label travels in the message
        assert m.key() == str(reading.device_id).encode()
        by_id[reading.event_id] = reading
    assert sorted(by_id) == sorted(f"0-{i}" for i in range(400))
    row = frame.iloc[123]
    r = by_id["0-123"]
    assert (r.device_id, r.seq, r.loop) == (row["device_id"], 123, 0)
    assert tuple(getattr(r, name) for name in SENSOR_FIELDS) == tuple(row[list(SENSOR_FIELDS)])
    assert pd.Timestamp(r.source_time) == row["source_time"].floor("us")  # microseconds on the wire
    assert datetime.fromisoformat(r.event_time).year >= 2026  # send time, not source time


def test_loop_wrap_around_makes_new_event_ids(stack: AppConfig, tmp_path: Path) -> None:
    cfg = producer_config(stack, tmp_path, pace=False, dataset_records=120, max_records=300)
    ReplayProducer(cfg, frame_for(cfg), "t").run()
    bodies = [json.loads(m.value()) for m in consume_all(cfg)]
    ids = [b["event_id"] for b in bodies]
    assert len(ids) == len(set(ids)) == 300
    expected = {f"{loop}-{seq}" for loop in (0, 1) for seq in range(120)} | {f"2-{seq}" for seq in range(60)}
    assert set(ids) == expected
    assert all(b["event_id"] == f"{b['loop']}-{b['seq']}" for b in bodies)
    # same reading, new loop: same sensor values, new identity
    first = {b["event_id"]: b for b in bodies}
    assert first["0-5"]["temperature"] == first["1-5"]["temperature"]


def test_no_loop_stops_at_the_end(stack: AppConfig, tmp_path: Path) -> None:
    cfg = producer_config(stack, tmp_path, pace=False, dataset_records=100, loop_dataset=False)
    stats = ReplayProducer(cfg, frame_for(cfg), "t").run()
    assert stats.sent == 100
    assert ReplayProducer(cfg, frame_for(cfg), "t").run().sent == 0  # already done, nothing re-sent


def test_restart_resumes_without_duplicates(stack: AppConfig, tmp_path: Path) -> None:
    cfg = producer_config(stack, tmp_path, pace=False, max_records=150)
    frame = frame_for(cfg)
    first = ReplayProducer(cfg, frame, "t").run()
    assert first.end is not None and first.end.seq == 150
    second = ReplayProducer(cfg, frame, "t").run()
    assert second.start is not None and second.end is not None
    assert (second.start.seq, second.end.seq) == (150, 300)
    ids = event_ids(consume_all(cfg))
    assert len(ids) == len(set(ids)) == 300
    assert set(ids) == {f"0-{i}" for i in range(300)}


def test_sigterm_then_restart_of_the_command(stack: AppConfig, tmp_path: Path) -> None:
    """`fl-app produce` stopped by SIGTERM saves its place; the next run goes on from there."""
    cfg = producer_config(stack, tmp_path)
    overrides = command_overrides(cfg, tmp_path)
    proc = subprocess.Popen([str(FL_APP), "produce", *overrides], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    time.sleep(6)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    first = event_ids(consume_all(cfg))
    assert 40 < len(first) < 400, out
    saved = json.loads(Path(cfg.stream.state_file).read_text())
    assert saved["seq"] == len(first)
    rerun = subprocess.run([str(FL_APP), "produce", *overrides, "stream.max_records=100"],
                           capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    ids = event_ids(consume_all(cfg))
    assert len(ids) == len(set(ids)) == len(first) + 100
    assert set(ids) == {f"0-{i}" for i in range(len(first) + 100)}
    assert (tmp_path / "logs" / "kafka_producer.log").read_text().count("producing to") == 2


def test_kill_9_then_restart_loses_nothing(stack: AppConfig, tmp_path: Path) -> None:
    """After a crash the producer resumes from its last acknowledged reading:
    no gap; re-sent readings carry the same event id (stored once downstream)."""
    cfg = producer_config(stack, tmp_path)
    overrides = command_overrides(cfg, tmp_path)
    proc = subprocess.Popen([str(FL_APP), "produce", *overrides], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(6)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    crashed = event_ids(consume_all(cfg))
    resumed_from = json.loads(Path(cfg.stream.state_file).read_text())["seq"]
    assert resumed_from <= len(crashed)
    rerun = subprocess.run([str(FL_APP), "produce", *overrides, "stream.pace=false", "stream.max_records=200"],
                           capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    ids = event_ids(consume_all(cfg))
    high = resumed_from + 200
    assert set(ids) == {f"0-{i}" for i in range(max(high, len(crashed)))}  # no gap
    assert max(Counter(ids).values()) <= 2  # at most the unacknowledged tail sent twice


@pytest.mark.slow
def test_rate_is_within_5_percent_over_30_seconds(stack: AppConfig, tmp_path: Path) -> None:
    cfg = producer_config(stack, tmp_path, records_per_second=50, batch_size=10, duration_seconds=30,
                          dataset_records=5000)
    stats = ReplayProducer(cfg, frame_for(cfg), "t").run()
    messages = consume_all(cfg)
    assert len(messages) == stats.sent == stats.delivered
    assert 1500 * 0.95 <= stats.sent <= 1500 * 1.05
    sent_at = sorted(datetime.fromisoformat(json.loads(m.value())["event_time"]) for m in messages)
    span = (sent_at[-1] - sent_at[0]).total_seconds()
    rate = (len(messages) - cfg.stream.batch_size) / span  # the first batch leaves at t=0
    assert 50 * 0.95 <= rate <= 50 * 1.05, rate


@pytest.mark.slow
def test_broker_restart_mid_run_loses_nothing(stack: AppConfig, tmp_path: Path) -> None:
    cfg = producer_config(stack, tmp_path, records_per_second=200, batch_size=20, max_records=3000,
                          dataset_records=5000)
    producer = ReplayProducer(cfg, frame_for(cfg), "t")
    result: dict = {}
    runner = threading.Thread(target=lambda: result.setdefault("stats", producer.run()))
    runner.start()
    time.sleep(4)
    broker = services.local_processes(stack)[0]
    assert broker.name == "kafka"
    broker.stop()  # the broker is gone for a few seconds while the producer keeps going
    time.sleep(3)
    services.up(stack)
    runner.join(timeout=180)
    assert not runner.is_alive()
    stats = result["stats"]
    assert stats.sent == 3000 and stats.delivered >= 3000
    ids = event_ids(consume_all(cfg))
    assert set(ids) == {f"0-{i}" for i in range(3000)}  # nothing lost
    assert len(ids) == 3000  # idempotent producer: retries did not duplicate
