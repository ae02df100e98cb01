"""The Flink job on a real standalone session cluster: one JobManager and two TaskManagers, each its own
process started by the Flink distribution's launch scripts (``core/services/flink_cluster.py``).

The job runs at parallelism 2 with a subtask on each TaskManager. One TaskManager is killed with -9
mid-stream: the job recovers on the other one (same job, no resubmission), and every reading is stored
once and is in exactly one committed window record. The job's client is killed with -9 too: the job
goes on without it, and a new client follows that job instead of submitting a second one. Stopping the
client cancels the job.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from core import dataset, services, storage
from core.config import AppConfig, load_config
from core.services import flink_cluster
from core.services.runner import ManagedProcess, free_port
from stream.flink import session
from stream.producer import ReplayProducer
from tests.integration.test_flink_job import WINDOW_SECONDS, job_overrides, produce, read_committed, start_job, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TOTAL, FIRST = 3000, 30


@pytest.fixture
def cluster(stack: AppConfig, tmp_path: Path) -> Iterator[tuple[AppConfig, list[str], list[ManagedProcess]]]:
    overrides = [*job_overrides(stack, tmp_path, uuid.uuid4().hex[:8]), "flink=cluster",
                 f"flink.jobmanager=127.0.0.1:{free_port()}", f"flink.local_cluster.rpc_port={free_port()}",
                 "flink.local_cluster.heartbeat_timeout_ms=6000"]
    cfg = load_config(overrides)
    services.provision(cfg)
    procs = flink_cluster.processes(cfg)
    assert [p.name for p in procs] == ["flink_jobmanager", "flink_taskmanager_1", "flink_taskmanager_2"]
    assert {p.name for p in services.local_processes(cfg)} >= {p.name for p in procs}  # `services up` starts them
    try:
        for proc in procs:
            proc.start()
        assert flink_cluster.taskmanager_ids(cfg) == {"tm-1", "tm-2"}
        yield cfg, overrides, procs
    finally:
        for proc in reversed(procs):
            proc.stop()


def hosts(cfg: AppConfig, job_id: str) -> Counter:
    """How many running subtasks of the job each TaskManager holds."""
    held: Counter = Counter()
    for vertex in flink_cluster.rest(cfg, f"/jobs/{job_id}")["vertices"]:
        for tm in flink_cluster.rest(cfg, f"/jobs/{job_id}/vertices/{vertex['id']}/taskmanagers")["taskmanagers"]:
            held[tm["taskmanager-id"]] += tm["status-counts"].get("RUNNING", 0)
    return held


def test_a_taskmanager_killed_mid_stream_loses_and_duplicates_nothing(
        cluster: tuple[AppConfig, list[str], list[ManagedProcess]]) -> None:
    cfg, overrides, (_, tm1, tm2) = cluster
    name = f"fl-iot-stream ({cfg.flink.group_id})"
    jm = session.Cluster(cfg.flink.jobmanager)
    job = start_job(cfg, overrides)
    result: dict = {}
    paced = dataclasses.replace(cfg, stream=dataclasses.replace(
        cfg.stream, records_per_second=150, batch_size=15, max_records=TOTAL - FIRST))
    producer = ReplayProducer(paced, dataset.load(cfg.stream, cfg.paths.cache_dir), "flink-test")
    producing = threading.Thread(target=lambda: result.setdefault("sent", producer.run().delivered), daemon=True)
    try:
        with storage.Storage.from_config(cfg.mongo) as store:
            assert produce(cfg, pace=False, max_records=FIRST) == FIRST
            wait_for("the job on the cluster to store its first readings",
                     lambda: store.device_data.count_documents({}) == FIRST, job=job)
            job_id = jm.live_job(name)
            assert job_id is not None and jm.state(job_id) == "RUNNING"
            # Every subtask RUNNING, some on each TaskManager: the job turns RUNNING while subtasks still
            # initialise (CI saw 4 of 8 RUNNING right after the first readings were stored).
            subtasks = 2 * len(flink_cluster.rest(cfg, f"/jobs/{job_id}")["vertices"])
            wait_for("every subtask running, some on each TaskManager",
                     lambda: (held := hosts(cfg, job_id)).keys() == {"tm-1", "tm-2"} and sum(held.values()) == subtasks,
                     60)

            producing.start()  # ~20 s of readings; the TaskManager dies in the middle
            time.sleep(6)
            tm1.kill()
            assert tm1.pid() is None
            assert store.device_data.count_documents({}) < TOTAL
            wait_for("the job to run again, on tm-2 alone",
                     lambda: jm.state(job_id) == "RUNNING" and set(hosts(cfg, job_id)) == {"tm-2"}, 120, job=job)
            assert jm.live_job(name) == job_id  # recovered in the cluster: the same job, not a new one
            producing.join(timeout=120)
            assert result["sent"] == TOTAL - FIRST
            wait_for(f"{TOTAL} readings after the TaskManager's loss",
                     lambda: store.device_data.count_documents({}) >= TOTAL, job=job)

            job.kill()  # the client, kill -9: the job goes on in the cluster
            assert jm.state(job_id) == "RUNNING"
            job = start_job(cfg, overrides)
            wait_for("the new client to follow the running job",
                     lambda: f"job {job_id} ({name}) already runs" in job.log_file.read_text(), 60, job=job)
            live = [j for j in jm.call("/jobs/overview")["jobs"]
                    if j["name"] == name and j["state"] not in session.ENDED]
            assert [j["jid"] for j in live] == [job_id]  # no second job on the same group and sinks
            time.sleep(WINDOW_SECONDS + 3)  # the last windows close and commit
            assert store.device_data.count_documents({}) == TOTAL
            assert len(store.device_data.distinct("event_id")) == TOTAL
    finally:
        producer.stop()
        job.stop()  # SIGTERM: the client cancels the job
    assert jm.live_job(name) is None and jm.state(job_id) == "CANCELED"
    windows = read_committed(cfg, cfg.kafka.topics.windows.name, cfg.kafka.topics.windows.partitions)
    keys = Counter((json.loads(m.value())["device_id"], json.loads(m.value())["window_start"]) for m in windows)
    assert max(keys.values()) == 1  # no duplicate window record per (device, window)
    events = Counter(r["event_id"] for m in windows for r in json.loads(m.value())["readings"])
    assert set(events) == {f"0-{i}" for i in range(TOTAL)}  # every reading in a committed window
    assert max(events.values()) == 1  # ... exactly once, across the TaskManager's loss
    assert tm2.pid() is not None
