"""The streaming anomaly scorer (`fl-app spark stream`) on the real broker, the MongoDB-wire server and
real Spark (local mode, Spark's own Kafka source, the devices' context in Spark's state store).

The expected scores are computed here from each device's whole series in the order it was sent
(readings are keyed by device, so a device's are one partition in that order): a context lost or
reset between micro-batches or across a restart would change them."""

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

from core import features, model, services, storage, summaries
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


def send(cfg: AppConfig, records: Sequence[Reading | bytes | None]) -> None:
    """Readings keyed by device, as the producer sends them; raw records without a key."""
    producer = Producer({"bootstrap.servers": cfg.kafka.bootstrap_servers})
    for record in records:
        if isinstance(record, Reading):
            producer.produce(cfg.kafka.topics.readings.name, key=record.key(), value=record.to_json())
        else:
            producer.produce(cfg.kafka.topics.readings.name, value=record)
    assert producer.flush(30) == 0


def series_rows(cfg: AppConfig, sent: Sequence[Reading]) -> dict[str, np.ndarray]:
    """Each reading's raw feature row, from its device's whole series as sent (uninterrupted context)."""
    out: dict[str, np.ndarray] = {}
    for device in sorted({r.device_id for r in sent}):
        mine = [r for r in sent if r.device_id == device]
        rows, _ = features.rows([vars(r) for r in mine], cfg.fl.model)
        out.update({r.event_id: row for r, row in zip(mine, rows, strict=True)})
    return out


class Global:
    """A global model document as the ServerApp writes it, and the scores it gives."""

    def __init__(self, cfg: AppConfig, round_: int, seed: int, threshold: float, rows: np.ndarray,
                 device_thresholds: dict[int, float] | None = None) -> None:
        rng = np.random.default_rng(seed)
        self.cfg, self.round, self.threshold = cfg, round_, threshold
        self.weights = [(w + rng.normal(0, 0.1, w.shape)).astype(np.float32)
                        for w in model.get_weights(model.build(cfg.fl.model))]
        self.norm = summaries.Moments.of(rows, cfg.fl.model).normalisation()  # of the readings' own rows
        self.device_thresholds = device_thresholds or {}

    def store(self, store: storage.Storage) -> None:
        store.global_model.insert_one({
            "round": self.round, "weights": storage.encode_weights(self.weights), "threshold": self.threshold,
            "device_thresholds": {str(k): v for k, v in self.device_thresholds.items()},
            "normalisation": {"centre": self.norm.centre.tolist(), "scale": self.norm.scale.tolist()},
            "num_devices": 3, "device_ids": [1, 2, 3], "num_examples": 10, "created_at": datetime.now(UTC),
            "metrics": {}})

    def scores(self, rows: np.ndarray) -> np.ndarray:
        net = model.build(self.cfg.fl.model)
        model.set_weights(net, self.weights)
        return model.scores(net, self.norm.inputs(rows))  # torch's forward pass; the scorer's is numpy


def expected_scores(glob: Global, rows: dict[str, np.ndarray], events: Sequence[Reading]) -> np.ndarray:
    return glob.scores(np.array([rows[r.event_id] for r in events]))


def got_scores(store: storage.Storage, events: Sequence[Reading], round_: int) -> np.ndarray:
    docs = {d["event_id"]: d for d in store.predictions.find({"model_round": round_,
                                                              "event_id": {"$in": [r.event_id for r in events]}})}
    return np.array([docs[r.event_id]["score"] for r in events])


def predictions_per_event(store: storage.Storage, events: Sequence[Reading]) -> dict[str, list[int]]:
    per_event: dict[str, list[int]] = {}
    for d in store.predictions.find({"event_id": {"$in": [r.event_id for r in events]}}):
        per_event.setdefault(d["event_id"], []).append(d["model_round"])
    return per_event


def batches_in_flight(checkpoint: Path) -> int:
    """Micro-batches planned (offsets) but not committed: 0 between micro-batches."""
    def numbered(name: str) -> int:
        folder = checkpoint / name
        return len([f for f in folder.iterdir() if f.name.isdigit()]) if folder.is_dir() else 0
    return numbered("offsets") - numbered("commits")


def wait_for(check: Callable[[], bool], timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(1)
    pytest.fail(f"{what} not within {timeout:.0f}s; scorer log:\n" + (log.read_text()[-4000:] if log.exists() else ""))


def scorer_process(cfg_overrides: list[str], tmp_path: Path) -> ManagedProcess:
    return ManagedProcess(name="spark_scorer", argv=[str(FL_APP), "spark", "stream", *cfg_overrides],
                          run_dir=tmp_path / ".run", logs_dir=tmp_path / "logs", startup_timeout=5, stop_timeout=60)


def kill9(scorer: ManagedProcess) -> None:
    """kill -9 the scorer's process group, and wait until its leader is gone: a restart while the
    dying process still counts as alive would take it for a running scorer and start nothing."""
    pid = scorer.pid()
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while scorer.pid() is not None:
        assert time.monotonic() < deadline, "the killed scorer did not go"
        time.sleep(0.1)


def test_every_valid_reading_scored_once_per_round_across_a_new_round_and_a_kill(stack: AppConfig,
                                                                                  tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    overrides = [*tenant_overrides(stack, tmp_path, tag), "stream.dataset_records=3000",
                 "spark.scorer.trigger_seconds=1", "spark.scorer.model_poll_seconds=1"]
    cfg = load_config(overrides)
    services.provision(cfg)
    scorer = scorer_process(overrides, tmp_path)
    log = scorer.log_file
    devices = [1, 2, 3, 4]
    store = storage.Storage.from_config(cfg.mongo)
    try:
        # Readings before any model, and records the Flink job would dead-letter.
        first = readings(0, 200, devices)
        # Every kind of tests/support/poison.py, twice: each is skipped and counted, its reason logged once.
        bad: list[bytes | None] = [b"not json", b'{"event_id": "x"}', None,
                                   *(raw for raw, _ in POISON.values()), *(raw for raw, _ in POISON.values())]
        send(cfg, [*first, *bad])
        scorer.start()
        wait_for(lambda: "waiting for the first global model" in log.read_text(), 120, "the wait for a model", log)
        assert store.predictions.count_documents({}) == 0

        rows = series_rows(cfg, first)
        round1 = Global(cfg, 1, seed=1, threshold=0.5, rows=np.array(list(rows.values())))
        round1.store(store)
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
        # The scores are the model's, on the rows of each device's series: computed here.
        got = got_scores(store, first, 1)
        assert np.allclose(got, expected_scores(round1, rows, first), rtol=1e-5, atol=1e-7)
        assert all(docs[r.event_id]["is_anomaly"] == (s > 0.5) and docs[r.event_id]["threshold"] == 0.5
                   for r, s in zip(first, got, strict=True))
        sample = docs[first[0].event_id]
        assert sample["actual"]["temperature"] == first[0].temperature and sample["prediction_type"] == "streaming"
        assert sample["error"]["temperature"] == pytest.approx(abs(sample["actual"]["temperature"]
                                                                   - sample["output"]["temperature"]))

        # A new round: new readings are scored with it, the query keeps running, the context goes on.
        round2 = Global(cfg, 2, seed=2, threshold=0.7, rows=np.array(list(rows.values())))
        round2.store(store)
        switched = time.monotonic()
        second = readings(200, 100, devices)
        send(cfg, second)
        wait_for(lambda: store.predictions.count_documents({"model_round": 2}) >= len(second), 120,
                 "round-2 predictions", log)
        delay = time.monotonic() - switched
        assert delay < 60
        assert "scoring with global round 2" in log.read_text()
        rows = series_rows(cfg, first + second)
        assert np.allclose(got_scores(store, second, 2), expected_scores(round2, rows, second), rtol=1e-5, atol=1e-7)

        # kill -9 mid-batch (its first predictions stored, its commit not yet written), then restart:
        # the batch is replayed from the contexts before it; nothing skipped, nothing twice, the same numbers.
        third = readings(300, 300, devices)
        send(cfg, third[:150])
        ids = {"event_id": {"$in": [r.event_id for r in third]}}
        deadline = time.monotonic() + 120
        while store.predictions.count_documents(ids) == 0:
            assert time.monotonic() < deadline, "no prediction of the third readings"
            time.sleep(0.05)
        kill9(scorer)
        send(cfg, third[150:])
        scorer.start()
        wait_for(lambda: store.predictions.count_documents(ids) >= len(third), 240, "predictions after the restart",
                 log)
        time.sleep(3)  # a replayed batch would land now
        per_event = predictions_per_event(store, third)
        assert set(per_event) == {r.event_id for r in third}
        assert all(rounds == [2] for rounds in per_event.values())  # exactly one each, with round 2
        rows = series_rows(cfg, first + second + third)
        assert np.allclose(got_scores(store, third, 2), expected_scores(round2, rows, third), rtol=1e-5, atol=1e-7)
    finally:
        scorer.stop()
        store.close()
    assert "stopped:" in log.read_text()


def test_the_devices_context_survives_a_kill_between_micro_batches(stack: AppConfig, tmp_path: Path) -> None:
    """kill -9 between micro-batches and a restart from the checkpoint: the readings after it get the
    rows of an uninterrupted run (the context comes from the state store, not from re-reading the
    topic); one prediction per reading; per-device thresholds where a device sent one."""
    tag = uuid.uuid4().hex[:8]
    overrides = [*tenant_overrides(stack, tmp_path, tag), "stream.dataset_records=3000", "fl.threshold=per_device",
                 "spark.scorer.trigger_seconds=1", "spark.scorer.model_poll_seconds=1"]
    cfg = load_config(overrides)
    services.provision(cfg)
    checkpoint = Path(cfg.spark.scorer.checkpoint_dir)
    scorer = scorer_process(overrides, tmp_path)
    log = scorer.log_file
    devices = [1, 2, 3]
    store = storage.Storage.from_config(cfg.mongo)
    before, after = readings(0, 240, devices), readings(240, 120, devices)
    rows = series_rows(cfg, before + after)
    glob = Global(cfg, 1, seed=3, threshold=0.5, rows=np.array(list(rows.values())),
                  device_thresholds={1: 0.2, 2: 5.0})  # device 3 sent none: the global one
    try:
        glob.store(store)
        send(cfg, before)
        scorer.start()
        wait_for(lambda: store.predictions.count_documents({}) == len(before), 240, "the first predictions", log)
        wait_for(lambda: batches_in_flight(checkpoint) == 0, 60, "the last batch's commit", log)
        kill9(scorer)  # between micro-batches: nothing planned and not done
        send(cfg, after)
        scorer.start()
        wait_for(lambda: store.predictions.count_documents({}) == len(before) + len(after), 240,
                 "the predictions after the restart", log)
        time.sleep(3)  # a replayed or extra batch would land now
        per_event = predictions_per_event(store, before + after)
        assert len(per_event) == len(before) + len(after) and all(r == [1] for r in per_event.values())
        assert (checkpoint / "state").is_dir()
        assert "stateless scorer" not in log.read_text()
        got = got_scores(store, after, 1)
        assert np.allclose(got, expected_scores(glob, rows, after), rtol=1e-5, atol=1e-7)
        # What a reset context would have given (the test can tell): each device's first reading after
        # the restart, scored without its predecessors.
        fresh = [next(r for r in after if r.device_id == d) for d in devices]
        reset = {r.event_id: row for r in fresh for row in features.rows([vars(r)], cfg.fl.model)[0]}
        differs = glob.scores(np.array([reset[r.event_id] for r in fresh])) - got_scores(store, fresh, 1)
        assert np.all(np.abs(differs) > 1e-3), differs
        thresholds: dict[int, set[float]] = {}
        for d in store.predictions.find({}):
            thresholds.setdefault(d["device_id"], set()).add(d["threshold"])
        assert thresholds == {1: {0.2}, 2: {5.0}, 3: {0.5}}
    finally:
        scorer.stop()
        store.close()
    assert "stopped:" in log.read_text()


def test_spark_serve_scores_and_runs_the_batch_on_one_jvm_and_a_failed_batch_run_stops_nothing(
        stack: AppConfig, tmp_path: Path) -> None:
    """`fl-app spark serve` (what `fl-app run` starts): the batch schedule runs before the first global model
    and beside the scorer, in one process with one JVM. A serving store that cannot be opened fails batch
    runs, each logged, while the scorer goes on; once it can be opened again, the runs succeed again. Its
    JVM killed, the process ends (for the supervisor to restart it). Lost: nothing (every reading scored
    once); duplicated: nothing."""
    tag = uuid.uuid4().hex[:8]
    store_path = tmp_path / "serving.db"
    overrides = [*tenant_overrides(stack, tmp_path, tag), "stream.dataset_records=3000",
                 "spark.scorer.trigger_seconds=1", "spark.scorer.model_poll_seconds=1",
                 "spark.batch_interval_seconds=2", f"spark.batch.store_url=sqlite:///{store_path}"]
    cfg = load_config(overrides)
    services.provision(cfg)
    spark = ManagedProcess(name="spark", argv=[str(FL_APP), "spark", "serve", *overrides], run_dir=tmp_path / ".run",
                           logs_dir=tmp_path / "logs", startup_timeout=5, stop_timeout=60)
    log = spark.log_file
    store = storage.Storage.from_config(cfg.mongo)
    devices = [1, 2, 3, 4]
    try:
        first = readings(0, 120, devices)
        send(cfg, first)
        spark.start()
        # No global model yet: the scorer waits, the batch runs (the dashboards fill from the start).
        wait_for(lambda: store.analytics_runs.count_documents({}) >= 2, 180, "two batch runs before a model", log)
        assert "waiting for the first global model" in log.read_text()
        assert store.predictions.count_documents({}) == 0
        pid = spark.pid()
        assert pid is not None
        jvms = [p for p in os.listdir("/proc") if p.isdigit() and _session_of(int(p)) == pid
                and b"java" in Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0]]
        assert len(jvms) == 1, jvms  # the scorer's and the batch's Spark: one JVM

        # The JVM killed (an OOM kill) before the first model: the process ends with an error, for the
        # supervisor to restart it, instead of living on without Spark. Started again, it goes on.
        os.kill(int(jvms[0]), signal.SIGKILL)
        deadline = time.monotonic() + 90
        while spark.pid() is not None:
            assert time.monotonic() < deadline, "the process outlived its JVM:\n" + log.read_text()[-3000:]
            time.sleep(0.5)
        assert "the batch schedule ended" in log.read_text()
        spark.start()
        runs = store.analytics_runs.count_documents({})
        wait_for(lambda: store.analytics_runs.count_documents({}) > runs, 180, "a batch run after the restart", log)
        pid = spark.pid()

        rows = series_rows(cfg, first)
        Global(cfg, 1, seed=1, threshold=0.5, rows=np.array(list(rows.values()))).store(store)
        wait_for(lambda: store.predictions.count_documents({}) == len(first), 240, "round-1 predictions", log)

        # The serving store cannot be opened (a folder where its file was): batch runs fail, the scorer goes on.
        store_path.unlink()
        store_path.mkdir()
        wait_for(lambda: log.read_text().count("batch analytics run failed") >= 2, 120, "failed batch runs", log)
        second = readings(120, 80, devices)
        send(cfg, second)
        wait_for(lambda: store.predictions.count_documents({}) == len(first) + len(second), 120,
                 "predictions while the batch fails", log)
        assert spark.pid() == pid  # the same process throughout

        store_path.rmdir()
        runs = store.analytics_runs.count_documents({})
        wait_for(lambda: store.analytics_runs.count_documents({}) > runs, 120, "a batch run after the store is back",
                 log)
        per_event = predictions_per_event(store, first + second)
        assert sorted(per_event) == sorted(r.event_id for r in first + second)
        assert all(rounds == [1] for rounds in per_event.values())  # once each
    finally:
        spark.stop()
        store.close()
    text = log.read_text()
    assert "stopped:" in text and "Traceback" in text  # the failed runs' tracebacks are logged, and it stopped


def _session_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3])
    except (OSError, ValueError, IndexError):
        return None
