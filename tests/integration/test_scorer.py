"""The streaming anomaly scorer (`fl-app spark stream`) on the real broker, the MongoDB-wire server and
real Spark (local mode, Spark's own Kafka source)."""

from __future__ import annotations

import os
import re
import signal
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Producer

from core import model, services, storage
from core.config import PROJECT_ROOT, AppConfig, load_config
from core.records import Reading, iso
from core.services.runner import ManagedProcess
from tests.support.poison import POISON
from tests.support.stack import tenant_overrides

pytestmark = pytest.mark.integration
FL_APP = Path(os.environ.get("VIRTUAL_ENV", PROJECT_ROOT / ".venv")) / "bin" / "fl-app"


def readings(start: int, n: int, devices: list[int]) -> list[Reading]:
    base = datetime(2004, 3, 1, 8, 0, tzinfo=UTC)
    return [Reading(event_id=f"0-{seq}", device_id=devices[seq % len(devices)], event_time=iso(datetime.now(UTC)),
                    source_time=iso(base + timedelta(seconds=31 * seq)), loop=0, seq=seq,
                    temperature=20.0 + (seq % 7), humidity=38.0 + (seq % 5), light=100.0 + seq % 300,
                    voltage=2.6 + 0.001 * (seq % 50))
            for seq in range(start, start + n)]


def send(cfg: AppConfig, records: Sequence[bytes | None]) -> None:
    producer = Producer({"bootstrap.servers": cfg.kafka.bootstrap_servers})
    for value in records:
        producer.produce(cfg.kafka.topics.readings.name, value=value)
    assert producer.flush(30) == 0


def store_global(store: storage.Storage, cfg: AppConfig, round_: int, seed: int, threshold: float) -> list[np.ndarray]:
    torch_seeded = model.build(cfg.fl.model)
    rng = np.random.default_rng(seed)
    weights = [(w + rng.normal(0, 0.1, w.shape)).astype(np.float32) for w in model.get_weights(torch_seeded)]
    store.global_model.insert_one({"round": round_, "weights": storage.encode_weights(weights),
                                   "threshold": threshold, "num_devices": 3, "device_ids": [1, 2, 3],
                                   "num_examples": 10, "created_at": datetime.now(UTC), "metrics": {}})
    return weights


def wait_for(check: Callable[[], bool], timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(1)
    pytest.fail(f"{what} not within {timeout:.0f}s; scorer log:\n" + (log.read_text()[-4000:] if log.exists() else ""))


def test_every_valid_reading_scored_once_per_round_across_a_new_round_and_a_kill(stack: AppConfig,
                                                                                  tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    overrides = [*tenant_overrides(stack, tmp_path, tag), "stream.dataset_records=3000",
                 "spark.scorer.trigger_seconds=1", "spark.scorer.model_poll_seconds=1"]
    cfg = load_config(overrides)
    services.provision(cfg)
    scorer = ManagedProcess(name="spark_scorer", argv=[str(FL_APP), "spark", "stream", *overrides],
                            run_dir=tmp_path / ".run", logs_dir=tmp_path / "logs", startup_timeout=5, stop_timeout=60)
    log = scorer.log_file
    devices = [1, 2, 3, 4]
    store = storage.Storage.from_config(cfg.mongo)
    try:
        # Readings before any model, and records the Flink job would dead-letter.
        first = readings(0, 200, devices)
        # Every kind of tests/support/poison.py, twice: each is skipped and counted, its reason logged once.
        bad: list[bytes | None] = [b"not json", b'{"event_id": "x"}', None,
                                   *(raw for raw, _ in POISON.values()), *(raw for raw, _ in POISON.values())]
        send(cfg, [r.to_json() for r in first] + bad)
        scorer.start()
        wait_for(lambda: "waiting for the first global model" in log.read_text(), 120, "the wait for a model", log)
        assert store.predictions.count_documents({}) == 0

        weights1 = store_global(store, cfg, 1, seed=1, threshold=0.5)
        wait_for(lambda: store.predictions.count_documents({}) == len(first), 240, "round-1 predictions", log)
        docs = {d["event_id"]: d for d in store.predictions.find({})}
        assert set(docs) == {r.event_id for r in first}  # none skipped, the bad records not scored
        reasons = {reason for _, reason in POISON.values()}
        # The executors store first; the driver logs the batch's counts after.
        wait_for(lambda: all(f"records not scored: {r} (" in log.read_text() for r in reasons), 60,
                 "a log line for each reason", log)
        text = log.read_text()
        for reason in reasons:
            assert text.count(f"records not scored: {reason} (") == 1, reason  # once per reason, not per record
        assert sum(int(n) for n in re.findall(r"(\d+) invalid records not scored", text)) == len(bad)  # all counted
        assert {d["model_round"] for d in docs.values()} == {1}
        # The scores are the model's: computed here from the same weights.
        net = model.build(cfg.fl.model)
        model.set_weights(net, weights1)
        expected = model.predict(net, [vars(r) for r in first], cfg.fl.model)
        got = np.array([docs[r.event_id]["score"] for r in first])
        assert np.allclose(got, expected.scores, rtol=1e-4, atol=1e-6)
        assert all(docs[r.event_id]["is_anomaly"] == (s > 0.5) for r, s in zip(first, got, strict=True))
        sample = docs[first[0].event_id]
        assert sample["actual"]["temperature"] == first[0].temperature and sample["prediction_type"] == "streaming"
        assert sample["error"]["temperature"] == pytest.approx(abs(sample["actual"]["temperature"]
                                                                   - sample["output"]["temperature"]))

        # A new round: new readings are scored with it, the query keeps running.
        store_global(store, cfg, 2, seed=2, threshold=0.7)
        switched = time.monotonic()
        second = readings(200, 100, devices)
        send(cfg, [r.to_json() for r in second])
        wait_for(lambda: store.predictions.count_documents({"model_round": 2}) >= len(second), 120,
                 "round-2 predictions", log)
        delay = time.monotonic() - switched
        assert delay < 60
        assert "scoring with global round 2" in log.read_text()

        # kill -9 mid-stream, then restart: nothing skipped, nothing twice.
        third = readings(300, 300, devices)
        send(cfg, [r.to_json() for r in third[:150]])
        time.sleep(2)
        pid = scorer.pid()
        assert pid is not None
        os.killpg(pid, signal.SIGKILL)
        send(cfg, [r.to_json() for r in third[150:]])
        scorer.start()
        wait_for(lambda: store.predictions.count_documents({"event_id": {"$in": [r.event_id for r in third]}})
                 >= len(third), 240, "predictions after the restart", log)
        time.sleep(3)  # a replayed batch would land now
        per_event: dict[str, list[int]] = {}
        for d in store.predictions.find({"event_id": {"$in": [r.event_id for r in third]}}):
            per_event.setdefault(d["event_id"], []).append(d["model_round"])
        assert set(per_event) == {r.event_id for r in third}
        assert all(rounds == [2] for rounds in per_event.values())  # exactly one each, with round 2
    finally:
        scorer.stop()
        store.close()
    assert "stopped:" in log.read_text()
