"""The streaming scorer on a real Spark standalone cluster: a master and two workers, each its own
process of pyspark's ``spark-class`` (``core/services/spark_cluster.py``).

The scorer is an application on the master with an executor on each worker. One worker is killed with
-9 while readings are being scored: the scorer goes on (its lost tasks run again on the other worker's
executors, the devices' context restored from the state store), and every reading has exactly one
prediction for the round, with the scores of an uninterrupted run.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from core import services, storage
from core.config import AppConfig, load_config
from core.services import spark_cluster
from core.services.runner import ManagedProcess, free_port, free_port_block
from tests.integration.test_scorer import (
    Global,
    expected_scores,
    got_scores,
    predictions_per_event,
    readings,
    scorer_process,
    send,
    series_rows,
    wait_for,
)
from tests.support.stack import tenant_overrides

pytestmark = [pytest.mark.integration, pytest.mark.slow]
DEVICES = [1, 2, 3, 4]


@pytest.fixture
def cluster(stack: AppConfig, tmp_path: Path) -> Iterator[tuple[AppConfig, list[str], list[ManagedProcess]]]:
    overrides = [*tenant_overrides(stack, tmp_path, uuid.uuid4().hex[:8]), "stream.dataset_records=3000",
                 "spark.scorer.trigger_seconds=1", "spark.scorer.model_poll_seconds=1",
                 f"spark.master=spark://127.0.0.1:{free_port()}", f"spark.local_cluster.webui_port={free_port()}",
                 f"spark.local_cluster.worker_base_port={free_port_block(2)}"]
    cfg = load_config(overrides)
    services.provision(cfg)
    procs = spark_cluster.processes(cfg)
    assert [p.name for p in procs] == ["spark_master", "spark_worker_1", "spark_worker_2"]
    assert {p.name for p in services.local_processes(cfg)} >= {p.name for p in procs}  # `services up` starts them
    try:
        for proc in procs:
            proc.start()
        assert len(spark_cluster.alive_worker_ports(cfg)) == 2
        yield cfg, overrides, procs
    finally:
        for proc in reversed(procs):
            proc.stop()


def cores_used(cfg: AppConfig) -> dict[int, int]:
    """Cores in use per live worker (by port)."""
    return {w["port"]: w["coresused"] for w in spark_cluster.status_json(cfg)["workers"] if w["state"] == "ALIVE"}


def test_a_worker_killed_mid_stream_loses_and_duplicates_no_prediction(
        cluster: tuple[AppConfig, list[str], list[ManagedProcess]], tmp_path: Path) -> None:
    cfg, overrides, (_, worker1, worker2) = cluster
    scorer = scorer_process(overrides, tmp_path)
    log = scorer.log_file
    store = storage.Storage.from_config(cfg.mongo)
    try:
        first = readings(0, 200, DEVICES)
        send(cfg, first)
        scorer.start()
        round1 = Global(cfg, 1, seed=1, threshold=0.5, rows=np.array(list(series_rows(cfg, first).values())))
        round1.store(store)
        wait_for(lambda: store.predictions.count_documents({}) == len(first), 240, "round-1 predictions", log)
        apps = spark_cluster.status_json(cfg)["activeapps"]
        assert [a["name"] for a in apps] == ["fl-iot-scorer"], apps
        assert all(used >= 1 for used in cores_used(cfg).values())  # an executor on each worker

        second = readings(200, 400, DEVICES)
        send(cfg, second[:200])
        ids = {"event_id": {"$in": [r.event_id for r in second]}}
        deadline = time.monotonic() + 120
        while store.predictions.count_documents(ids) == 0:
            assert time.monotonic() < deadline, "no prediction of the second readings"
            time.sleep(0.05)
        worker1.kill()  # kill -9: the worker and its executor (and that executor's Python workers)
        assert worker1.pid() is None
        send(cfg, second[200:])
        wait_for(lambda: store.predictions.count_documents(ids) >= len(second), 240,
                 "predictions after the worker's loss", log)
        time.sleep(3)  # a task run twice would land now
        per_event = predictions_per_event(store, first + second)
        assert set(per_event) == {r.event_id for r in first + second}  # none lost
        assert all(rounds == [1] for rounds in per_event.values())  # exactly one each
        rows = series_rows(cfg, first + second)
        assert np.allclose(got_scores(store, second, 1), expected_scores(round1, rows, second), rtol=1e-5, atol=1e-7)
        assert scorer.pid() is not None  # it went on
        assert set(cores_used(cfg)) == {worker2.ports[0][1]}
    finally:
        scorer.stop()
        store.close()
