"""The Flink job on a real mini-cluster, with the real broker and MongoDB-wire server.

One job serves the module (a mini-cluster takes ~30 s to start); the crash
test starts its own.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from core import dataset, services, storage, topics
from core.config import PROJECT_ROOT, AppConfig, load_config
from core.records import MAX_DEAD_LETTER_RAW, window_partitions
from core.services.runner import ManagedProcess
from stream.producer import ReplayProducer
from tests.support.kafka import read_topic
from tests.support.poison import GOOD, POISON
from tests.support.stack import tenant_overrides

pytestmark = [pytest.mark.integration, pytest.mark.slow]
FL_APP = Path(sys.executable).parent / "fl-app"
WINDOW_SECONDS = 3
MAX_WINDOW = 25  # readings per window record; a burst of ~38 per device must spill into the next window
RECORDS = 5000  # data set size for these tests


def job_overrides(stack: AppConfig, home: Path, tag: str) -> list[str]:
    """Topics, database, consumer group and checkpoints of this test's own."""
    return [
        *tenant_overrides(stack, home, tag),
        f"fl.local_training_interval_seconds={WINDOW_SECONDS}", "flink.checkpoint_interval_ms=1000",
        f"stream.dataset_records={RECORDS}", f"stream.state_file={home}/producer_state.json",
        f"flink.max_window_readings={MAX_WINDOW}",
    ]


def provisioned_job(stack: AppConfig, home: Path, extra: tuple[str, ...] = ()
                    ) -> tuple[AppConfig, list[str], ManagedProcess]:
    """Topics and collections of a fresh tag, and a running job on them."""
    overrides = [*job_overrides(stack, home, uuid.uuid4().hex[:8]), *extra]
    cfg = load_config(overrides)
    services.provision(cfg)
    return cfg, overrides, start_job(cfg, overrides)


def start_job(cfg: AppConfig, overrides: list[str]) -> ManagedProcess:
    job = ManagedProcess(
        name="flink_job", argv=[str(FL_APP), "flink", *overrides],
        run_dir=Path(cfg.paths.run_dir), logs_dir=Path(cfg.paths.logs_dir), startup_timeout=10, stop_timeout=20,
    )
    job.start()
    return job


def wait_for(what: str, check: Callable[[], bool], timeout: float = 180, job: ManagedProcess | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if job is not None and job.pid() is None:
            pytest.fail(f"the Flink job died while waiting for {what}:\n{job.tail(40)}")
        time.sleep(1)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}" + (f"\n{job.tail(40)}" if job else ""))


def read_committed(cfg: AppConfig, topic: str, partitions: int, idle: float = 4.0) -> list:
    return read_topic(cfg.kafka.bootstrap_servers, topic, partitions, idle=idle)


def windowed_events(cfg: AppConfig) -> set[str]:
    """The event ids in committed window records so far."""
    windows = read_committed(cfg, cfg.kafka.topics.windows.name, cfg.kafka.topics.windows.partitions, idle=1.0)
    return {r["event_id"] for m in windows for r in json.loads(m.value())["readings"]}


def produce(cfg: AppConfig, **stream: Any) -> int:
    run = dataclasses.replace(cfg, stream=dataclasses.replace(cfg.stream, **stream))
    frame = dataset.load(cfg.stream, cfg.paths.cache_dir)
    return ReplayProducer(run, frame, "flink-test").run().delivered


@pytest.fixture(scope="module")
def flink_env(stack: AppConfig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AppConfig, ManagedProcess]]:
    cfg, _, job = provisioned_job(stack, tmp_path_factory.mktemp("flink"))
    try:
        yield cfg, job
    finally:
        job.stop()


@pytest.fixture(scope="module")
def stored_run(flink_env: tuple[AppConfig, ManagedProcess]) -> tuple[AppConfig, int]:
    """2,000 valid readings through the job."""
    cfg, job = flink_env
    sent = produce(cfg, pace=False, max_records=2000)
    assert sent == 2000

    def stored() -> bool:
        with storage.Storage.from_config(cfg.mongo) as store:
            return store.device_data.count_documents({}) >= sent

    wait_for("2,000 readings in device_data", stored, job=job)
    return cfg, sent


def test_every_valid_reading_is_stored_once(stored_run: tuple[AppConfig, int]) -> None:
    cfg, sent = stored_run
    time.sleep(2)  # nothing more should arrive
    with storage.Storage.from_config(cfg.mongo) as store:
        assert store.device_data.count_documents({}) == sent
        ids = store.device_data.distinct("event_id")
        assert len(ids) == sent and set(ids) == {f"0-{i}" for i in range(sent)}
        doc = store.device_data.find_one({"event_id": "0-7"}, {"_id": 0})
    assert doc is not None
    assert isinstance(doc["event_time"], datetime) and isinstance(doc["source_time"], datetime)
    assert set(doc) >= {"device_id", "temperature", "humidity", "light", "voltage", "loop", "seq", "stored_at"}


def test_windows_go_to_each_devices_own_partition_at_the_interval(stored_run: tuple[AppConfig, int]) -> None:
    cfg, sent = stored_run
    time.sleep(2 * WINDOW_SECONDS + 2)  # the last windows (and the spill-over ones) close and commit
    windows = read_committed(cfg, cfg.kafka.topics.windows.name, cfg.kafka.topics.windows.partitions)
    devices = dataset.device_ids(cfg.stream, cfg.paths.cache_dir)
    partition_of = window_partitions(devices)
    seen_events: Counter = Counter()
    per_device = defaultdict(list)
    for m in windows:
        w = json.loads(m.value())
        assert m.partition() == partition_of[w["device_id"]]  # each partition holds one device only
        assert m.key() == str(w["device_id"]).encode()
        start, end = datetime.fromisoformat(w["window_start"]), datetime.fromisoformat(w["window_end"])
        assert (end - start).total_seconds() == WINDOW_SECONDS
        assert end.timestamp() % WINDOW_SECONDS == 0  # boundaries on the interval grid
        assert 0 < w["count"] == len(w["readings"]) <= MAX_WINDOW  # no empty windows, none too big
        assert all(r["device_id"] == w["device_id"] for r in w["readings"])
        seen_events.update(r["event_id"] for r in w["readings"])
        per_device[w["device_id"]].append(start)
    valid_ids = {f"0-{i}" for i in range(sent)}
    assert set(seen_events) >= valid_ids
    assert max(seen_events.values()) == 1  # every reading in exactly one window
    assert len(per_device) == len(devices)
    full = [m for m in windows if json.loads(m.value())["count"] == MAX_WINDOW]
    assert full, "no window reached the cap: the spill-over path was not exercised"
    for starts in per_device.values():
        assert len(starts) == len(set(starts))  # one window per (device, interval)


def assert_operators_use_only_the_flink_environment(cfg: AppConfig, job: ManagedProcess) -> None:
    """What the job's Python operators reported about their interpreter (they write it at open)."""
    flink_env = (PROJECT_ROOT / ".venv-flink").resolve()
    report_file = Path(cfg.paths.run_dir) / "flink_python_env.json"
    wait_for("the operators' interpreter report", report_file.is_file, timeout=60, job=job)
    report = json.loads(report_file.read_text())
    assert report["foreign_modules"] == {}, f"modules imported from outside {flink_env}: {report['foreign_modules']}"
    assert Path(report["prefix"]).resolve() == flink_env  # the virtualenv itself, not its base interpreter
    for package in ("pyflink", "pemja"):
        assert Path(report[package]).is_relative_to(flink_env), (package, report[package])
    wait_for("the job to log the report", lambda: "no module from outside the Flink environment"
             in job.log_file.read_text(), timeout=30, job=job)


def test_python_operators_use_only_the_flink_environment(stored_run: tuple[AppConfig, int],
                                                         flink_env: tuple[AppConfig, ManagedProcess]) -> None:
    cfg, job = flink_env
    assert cfg.flink.python_execution_mode == "thread"  # the default: PEMJA, CPython inside the JVM
    assert_operators_use_only_the_flink_environment(cfg, job)


def test_malformed_records_go_to_the_dead_letter_topic(stored_run: tuple[AppConfig, int]) -> None:
    cfg, _ = stored_run
    good = {"event_id": "9-1", "device_id": 1, "event_time": "2026-11-28T04:00:00.000000+00:00",
            "source_time": "2004-02-28T01:00:00.000000+00:00", "loop": 9, "seq": 1,
            "temperature": 20.0, "humidity": 40.0, "light": 100.0, "voltage": 2.7}
    cases = {
        "bad json": b'{"event_id": "9-2", "device_id": ',
        "missing field: voltage": json.dumps({k: v for k, v in good.items() if k != "voltage"}).encode(),
        "not finite: temperature": json.dumps({**good, "event_id": "9-3", "temperature": float("nan")}).encode(),
        "out of range: humidity": json.dumps({**good, "event_id": "9-4", "humidity": 900.0}).encode(),
        "unknown device": json.dumps({**good, "event_id": "9-5", "device_id": 999}).encode(),
        "bad type: light": json.dumps({**good, "event_id": "9-6", "light": "bright"}).encode(),
        "bad timestamp: event_time": json.dumps({**good, "event_id": "9-7", "event_time": "yesterday"}).encode(),
    }
    producer = Producer({"bootstrap.servers": cfg.kafka.bootstrap_servers, "acks": "all"})
    for raw in cases.values():
        producer.produce(cfg.kafka.topics.readings.name, key=b"1", value=raw)
    producer.produce(cfg.kafka.topics.readings.name, key=b"1", value=json.dumps(good).encode())  # the job goes on
    assert producer.flush(20) == 0

    letters: list = []

    def arrived() -> bool:
        letters[:] = read_committed(cfg, cfg.kafka.topics.dead_letter.name, cfg.kafka.topics.dead_letter.partitions, 2)
        return len(letters) >= len(cases)

    wait_for("dead letters", arrived, timeout=60)
    got = {}
    for m in letters:
        letter = json.loads(m.value())
        assert set(letter) == {"reason", "raw", "topic", "partition", "offset", "seen_at"}
        assert letter["topic"] == cfg.kafka.topics.readings.name and letter["offset"] >= 0
        got[letter["reason"]] = letter["raw"].encode()
    assert got == cases  # every reason, with the original payload
    assert topics.dead_letter_reasons(cfg) == Counter({reason: 1 for reason in cases})  # what `fl-app status` shows
    with storage.Storage.from_config(cfg.mongo) as store:
        wait_for("the valid record after the bad ones",
                 lambda: store.device_data.count_documents({"event_id": "9-1"}) == 1, timeout=30)
        assert store.device_data.count_documents({"loop": 9}) == 1  # none of the bad ones stored


def test_poison_records_are_dead_lettered_and_ingest_goes_on(stored_run: tuple[AppConfig, int],
                                                              flink_env: tuple[AppConfig, ManagedProcess]) -> None:
    """Every kind in tests/support/poison.py, 25 valid readings after each, and 3 valid readings MongoDB's own
    validator refuses (tightened for this test): each bad one is one dead letter with its reason, every
    other reading is stored once, and the job never fails (no restart, no error in its log).
    Lost: nothing. Duplicated: nothing."""
    cfg, job = flink_env
    pid, log_before = job.pid(), len(job.log_file.read_text())
    dlq = cfg.kafka.topics.dead_letter
    earlier = {(m.partition(), m.offset()) for m in read_committed(cfg, dlq.name, dlq.partitions, 2)}
    with storage.Storage.from_config(cfg.mongo) as store:
        # Readings of loop 8 pass validation, but the collection refuses them (as a stricter schema would).
        schema = next(spec.schema for spec in storage.COLLECTIONS if spec.name == storage.DEVICE_DATA)
        strict = {**schema, "properties": {**schema["properties"], "loop": {"bsonType": ["int", "long"],
                                                                            "maximum": 7}}}
        store.db.command("collMod", storage.DEVICE_DATA, validator={"$jsonSchema": strict})
        try:
            producer = Producer({"bootstrap.servers": cfg.kafka.bootstrap_servers, "acks": "all",
                                 "message.max.bytes": 2_000_000})
            valid, refused, seq = [], [], 0
            for raw, _ in POISON.values():
                producer.produce(cfg.kafka.topics.readings.name, key=b"1", value=raw)
                for _ in range(25):
                    seq += 1
                    valid.append({**GOOD, "event_id": f"p-{seq}", "seq": seq, "device_id": 1 + seq % 3})
                    producer.produce(cfg.kafka.topics.readings.name, key=b"1", value=json.dumps(valid[-1]).encode())
            for i in range(3):
                refused.append({**GOOD, "event_id": f"q-{i}", "loop": 8, "seq": i})
                producer.produce(cfg.kafka.topics.readings.name, key=b"1", value=json.dumps(refused[-1]).encode())
            assert producer.flush(30) == 0
            wait_for(f"{len(valid)} valid readings among the poison",
                     lambda: store.device_data.count_documents({"loop": 7}) >= len(valid), timeout=120, job=job)
            letters: list = []

            def all_lettered() -> bool:
                letters[:] = [json.loads(m.value()) for m in read_committed(cfg, dlq.name, dlq.partitions, 2)
                              if (m.partition(), m.offset()) not in earlier]
                return len(letters) >= len(POISON) + len(refused)

            wait_for("a dead letter for every poison record", all_lettered, timeout=120, job=job)
            stored = store.device_data.count_documents({"event_id": {"$regex": "^[pq]-"}})
            refused_stored = store.device_data.count_documents({"loop": 8})
        finally:
            store.ensure_schema()  # the collection's own validator again
    assert stored == len(valid) and len(store_ids(cfg, "^p-")) == len(valid)  # each once
    assert refused_stored == 0
    time.sleep(3)
    assert all_lettered() and len(letters) == len(POISON) + len(refused)  # one letter each, no more
    assert Counter(x["reason"] for x in letters if not x["reason"].startswith("refused by MongoDB")) == Counter(
        reason for _, reason in POISON.values())
    by_raw = {x["raw"]: x for x in letters}
    for name, (raw, reason) in POISON.items():
        if raw is None or name == "not UTF-8":
            continue
        text = raw.decode()
        if len(text) > MAX_DEAD_LETTER_RAW:  # cut, so the letter fits in a Kafka message
            cut = [x for x in letters if x["reason"] == reason and x["raw"].startswith(text[:1000])]
            assert cut and len(cut[0]["raw"]) < MAX_DEAD_LETTER_RAW + 64 and "characters in all" in cut[0]["raw"]
        else:
            assert by_raw[text]["reason"] == reason, name  # the original payload, with its reason
    refusals = [x for x in letters if x["reason"].startswith("refused by MongoDB")]
    assert sorted(json.loads(x["raw"])["event_id"] for x in refusals) == ["q-0", "q-1", "q-2"]
    assert all(x["topic"] == cfg.kafka.topics.readings.name and x["offset"] >= 0 for x in refusals)
    assert job.pid() == pid  # the same job process, never restarted by us ...
    new_log = job.log_file.read_text()[log_before:]
    for sign in ("Traceback", "OverflowError", "switched from RUNNING to FAILING", "Restarting"):
        assert sign not in new_log, f"{sign!r} in the job's log:\n{new_log[-3000:]}"  # ... nor by Flink


def store_ids(cfg: AppConfig, pattern: str) -> list[str]:
    with storage.Storage.from_config(cfg.mongo) as store:
        return list(store.device_data.distinct("event_id", {"event_id": {"$regex": pattern}}))


def test_kill_9_and_restart_keeps_counts_exact(stack: AppConfig, tmp_path: Path) -> None:
    cfg, overrides, job = provisioned_job(stack, tmp_path)
    total, first = 3000, 30
    result: dict = {}
    paced = dataclasses.replace(cfg, stream=dataclasses.replace(
        cfg.stream, records_per_second=150, batch_size=15, max_records=total - first))
    frame = dataset.load(cfg.stream, cfg.paths.cache_dir)
    producer = ReplayProducer(paced, frame, "flink-test")
    producing = threading.Thread(target=lambda: result.setdefault("sent", producer.run().delivered), daemon=True)
    try:
        with storage.Storage.from_config(cfg.mongo) as store:
            assert produce(cfg, pace=False, max_records=first) == first
            wait_for("the job to store its first readings",
                     lambda: store.device_data.count_documents({}) == first, job=job)
            producing.start()  # ~20 s of readings; the crash comes in the middle
            time.sleep(6)
            job.kill()  # kill -9 the whole job (client, JVM, Python workers) mid-stream
            assert job.pid() is None
            assert store.device_data.count_documents({}) < total
            time.sleep(3)
            job = start_job(cfg, overrides)  # resumes from the last retained checkpoint
            wait_for("the job to resume from a checkpoint",
                     lambda: "resuming from" in job.log_file.read_text(), timeout=60, job=job)
            settings = json.loads((Path(cfg.paths.run_dir) / "flink_job.json").read_text())
            assert "/chk-" in settings["resume_from"]
            producing.join(timeout=120)
            assert result["sent"] == total - first
            wait_for(f"{total} readings after the restart",
                     lambda: store.device_data.count_documents({}) >= total, job=job)
            time.sleep(WINDOW_SECONDS + 3)
            assert store.device_data.count_documents({}) == total
            assert len(store.device_data.distinct("event_id")) == total
    finally:
        producer.stop()
        job.stop()
    windows = read_committed(cfg, cfg.kafka.topics.windows.name, cfg.kafka.topics.windows.partitions)
    keys = Counter((json.loads(m.value())["device_id"], json.loads(m.value())["window_start"]) for m in windows)
    assert max(keys.values()) == 1  # no duplicate window record per (device, window)
    events = Counter(r["event_id"] for m in windows for r in json.loads(m.value())["readings"])
    assert set(events) == {f"0-{i}" for i in range(total)}  # every reading in a committed window
    assert max(events.values()) == 1  # ... exactly once, across the crash


def sent_since_start(producer: ManagedProcess, starts: int) -> bool:
    """The producer's ``starts``-th start has begun sending (its log says so once per start)."""
    return producer.log_file.read_text().count("producing to") >= starts


def test_producer_kill_9_never_puts_a_reading_in_two_windows(stack: AppConfig, tmp_path: Path) -> None:
    """A crashed producer re-sends what it sent after its last saved position: Kafka then holds
    some readings twice, device_data stores them once and no committed window carries one twice.
    Runs the job in process mode, so both execution modes are checked for a clean interpreter."""
    cfg, overrides, job = provisioned_job(stack, tmp_path, ("flink.python_execution_mode=process",))
    producer_overrides = [*overrides, "stream.records_per_second=250", "stream.batch_size=10",
                          "stream.loop_dataset=false"]
    producer = ManagedProcess(name="kafka_producer", argv=[str(FL_APP), "produce", *producer_overrides],
                              run_dir=Path(cfg.paths.run_dir), logs_dir=Path(cfg.paths.logs_dir),
                              startup_timeout=5, stop_timeout=20)
    readings_topic = cfg.kafka.topics.readings
    expected = {f"0-{i}" for i in range(RECORDS)}
    try:
        duplicates = 0
        for attempt in range(3):  # a kill right after a position save may re-send nothing: try again
            producer.start()
            # Kill it a little while after it began sending (its start-up takes seconds under load).
            starts = attempt + 1
            wait_for("the producer to send", functools.partial(sent_since_start, producer, starts), timeout=60)
            time.sleep(1.5 + attempt)
            producer.kill()  # kill -9: no flush, no final save of the position
            sent = [m.value() for m in read_topic(cfg.kafka.bootstrap_servers, readings_topic.name,
                                                   readings_topic.partitions, idle=1.0)]
            ids = Counter(json.loads(v)["event_id"] for v in sent)
            duplicates = sum(n - 1 for n in ids.values())
            if duplicates:
                break
        assert duplicates > 0, "the producer's restarts re-sent nothing, so the test proved nothing"
        # In process mode the operators open with the first record; checked only now, because waiting
        # for them (~20 s) before the first kill let the producer finish its 20 s of data unkilled.
        assert_operators_use_only_the_flink_environment(cfg, job)
        producer.start()  # runs to the end of the data set (loop_dataset=false) and exits
        wait_for("the producer to finish the data set", lambda: producer.pid() is None, timeout=120)
        with storage.Storage.from_config(cfg.mongo) as store:
            wait_for(f"{RECORDS} readings in device_data",
                     lambda: store.device_data.count_documents({}) >= RECORDS, job=job)
            # The last windows close and commit (a fixed 2 windows + 2 s was once too short, 2 readings short).
            wait_for("every reading in a committed window", lambda: windowed_events(cfg) >= expected, job=job,
                     timeout=90)
            assert store.device_data.count_documents({}) == RECORDS
    finally:
        producer.stop()
        job.stop()
    total_sent = len(read_topic(cfg.kafka.bootstrap_servers, readings_topic.name, readings_topic.partitions))
    assert total_sent > RECORDS  # Kafka holds the re-sent duplicates
    windows = read_committed(cfg, cfg.kafka.topics.windows.name, cfg.kafka.topics.windows.partitions)
    events = Counter(r["event_id"] for m in windows for r in json.loads(m.value())["readings"])
    assert set(events) == {f"0-{i}" for i in range(RECORDS)}  # every reading in a committed window
    twice = {e: n for e, n in events.items() if n > 1}
    assert not twice, f"{len(twice)} readings in more than one window, e.g. {list(twice.items())[:5]}"
