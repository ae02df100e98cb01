"""kill -9 of each component in turn under one `fl-app run`: the supervisor brings each back, and
afterwards exactly one ServerApp runs, no JVM is orphaned, and every valid reading produced is stored.

Heavy (the whole pipeline but Superset and the batch analytics: ~5 GB, most of 2 cores), so one run
serves every kill. Marked integration and slow.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from core.config import PROJECT_ROOT, AppConfig, load_config
from core.services.runner import ManagedProcess, pid_from_file
from core.storage import Storage
from fl_app import supervisor
from fl_app.federation import deployment
from tests.support.kafka import read_topic
from tests.support.processes import live_processes_under
from tests.support.stack import private_overrides
from tests.support.waiting import wait_until

FL_APP = Path(sys.executable).parent / "fl-app"
# In kill order: the federation last (it takes longest to come back: SuperLink, SuperNodes, a new run).
KILLED = ("flink_job", "kafka_producer", "spark_scorer", "api", "federation")
# What "back" means: the supervisor's check (2 s) + first backoff (2 s) + a start (5 s), with slack for a loaded box.
RESTART_BUDGET_SECONDS = 60.0
MARKER = "FL_APP_FAULT_TEST"


def processes_with(marker: str, name: str) -> list[int]:
    """Pids of live processes named ``name`` (argv[0]'s basename) whose environment holds ``marker``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv0 = (proc / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            if (Path(argv0).name == name and marker.encode() in (proc / "environ").read_bytes().split(b"\0")
                    and (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def pgid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2])


def live_groups(cfg: AppConfig) -> set[int]:
    """The process groups of every component and service running now (their leaders' pids)."""
    return {pid for f in Path(cfg.paths.run_dir).glob("*.pid") if (pid := pid_from_file(f)) is not None}


def counts(cfg: AppConfig) -> dict[str, int]:
    with Storage.from_config(cfg.mongo) as store:
        return store.counts()


@pytest.mark.integration
@pytest.mark.slow
def test_kill_9_of_each_component_under_fl_app_run(tmp_path: Path) -> None:
    tag = f"{MARKER}={uuid.uuid4().hex}"
    overrides = [*private_overrides(tmp_path), "stream.dataset_records=3000", "stream.records_per_second=20",
                 "fl.devices=4", "fl.min_devices_for_aggregation=2", "fl.local_training_interval_seconds=5",
                 "fl.global_update_interval_minutes=0.25", "superset.enabled=false", "spark.batch.enabled=false"]
    cfg = load_config(overrides)
    env = {**os.environ, "COLUMNS": "200", tag.split("=")[0]: tag.split("=")[1]}

    def fl_app(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(FL_APP), *args, *overrides], capture_output=True, text=True, timeout=300,
                              env=env, cwd=PROJECT_ROOT)

    run_dir = Path(cfg.paths.run_dir)
    log = Path(cfg.paths.logs_dir) / "supervisor.log"
    try:
        up = fl_app("run", "--detach")
        assert up.returncode == 0, up.stdout + up.stderr
        assert wait_until(lambda: counts(cfg).get("global_model", 0) >= 1, 300), counts(cfg)
        recovered: dict[str, float] = {}
        for name in KILLED:
            old = pid_from_file(run_dir / f"{name}.pid")
            assert old is not None, name
            os.kill(old, signal.SIGKILL)  # the component's own process only, as `kill -9 <pid>`
            killed_at = time.monotonic()
            pid_file = run_dir / f"{name}.pid"

            def restarted(pid_file: Path = pid_file, old: int = old) -> bool:
                return pid_from_file(pid_file) not in (None, old)

            back = wait_until(restarted, RESTART_BUDGET_SECONDS)
            assert back, f"{name} not back within {RESTART_BUDGET_SECONDS:.0f}s:\n{log.read_text()[-3000:]}"
            recovered[name] = time.monotonic() - killed_at
            time.sleep(5)  # and it stays up (does not crash at once on what its predecessor left)
            assert pid_from_file(run_dir / f"{name}.pid") is not None, f"{name} died after its restart"
        print(f"\nrecovered after kill -9: {len(recovered)}/{len(KILLED)}: "
              + ", ".join(f"{n} {s:.1f}s" for n, s in recovered.items()))
        assert all(supervisor.records(cfg)[n]["restarts"] == 1 for n in KILLED), supervisor.records(cfg)

        # The federation is back for real: a new round, from exactly one ServerApp.
        rounds = counts(cfg)["global_model"]
        assert wait_until(lambda: counts(cfg)["global_model"] > rounds, 240), (counts(cfg), log.read_text()[-2000:])
        serverapps = deployment.flwr_processes(deployment.flwr_home(cfg), ("flwr-serverapp",))
        assert len(serverapps) == 1, serverapps
        # No orphaned JVM: each of ours belongs to a running component's or service's process group.
        jvms = processes_with(tag, "java")
        assert len(jvms) >= 3, jvms  # Kafka, the Flink job, the scorer
        groups = live_groups(cfg)
        assert all(pgid(j) in groups for j in jvms), (jvms, [pgid(j) for j in jvms], groups)

        # Readings: stop the supervisor (or it restarts the producer), then the producer; let Flink catch up.
        for name in ("supervisor", "kafka_producer"):
            assert ManagedProcess(name=name, argv=[], run_dir=run_dir, logs_dir=Path(cfg.paths.logs_dir),
                                  stop_timeout=30).stop()
        topic = cfg.kafka.topics
        produced = read_topic(cfg.kafka.bootstrap_servers, topic.readings.name, topic.readings.partitions)
        produced_ids = {json.loads(m.value())["event_id"] for m in produced}
        dead = read_topic(cfg.kafka.bootstrap_servers, topic.dead_letter.name, topic.dead_letter.partitions)
        dead_ids = {json.loads(json.loads(m.value())["raw"])["event_id"] for m in dead}
        valid = produced_ids - dead_ids

        def stored() -> set[str]:
            with Storage.from_config(cfg.mongo) as store:
                return {d["event_id"] for d in store.device_data.find({}, {"event_id": 1})}

        assert wait_until(lambda: stored() >= valid, 180), len(valid - stored())
        print(f"readings: {len(produced)} messages, {len(produced_ids)} distinct ({len(produced) - len(produced_ids)}"
              f" re-sent), {len(dead_ids)} dead-lettered, {len(stored())} stored; "
              f"valid produced minus stored = {len(valid - stored())}")
        assert valid - stored() == set()
        assert stored() - produced_ids == set()  # nothing stored that was not produced
    finally:
        down = fl_app("stop")
    assert down.returncode == 0, down.stdout + down.stderr
    assert wait_until(lambda: not live_processes_under(tmp_path), 30), live_processes_under(tmp_path)
    assert not processes_with(tag, "java")
