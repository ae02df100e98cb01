"""`pipeline.stop` is bounded: the components stop in parallel, SIGKILL after the phase's budget."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from core.services.runner import KILL_WAIT_SECONDS, ManagedProcess, _pid_alive, kill_all
from fl_app import pipeline

IGNORES_SIGTERM = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                   "print('up', flush=True); time.sleep(600)")


def stubborn(tmp_path: Path, name: str) -> ManagedProcess:
    proc = ManagedProcess(name=name, argv=[sys.executable, "-c", IGNORES_SIGTERM], run_dir=tmp_path / "run",
                          logs_dir=tmp_path / "logs", startup_timeout=30, stop_timeout=60)
    proc.health_check = lambda: "up" in proc.log_file.read_text().splitlines()  # the line, not the command
    return proc


def test_components_stop_together_within_one_budget(tmp_path: Path) -> None:
    procs = [stubborn(tmp_path, f"c{i}") for i in range(4)]
    pids = [p.start().pid for p in procs]
    done = pipeline.Stopped()
    started = time.monotonic()
    pipeline._stop_together(procs, budget=1.5, done=done)
    took = time.monotonic() - started
    # One budget for all (sequentially it would be 4 x 1.5 s), not their stop_timeout of 60 s.
    assert took < 1.5 + KILL_WAIT_SECONDS + 2.0, took
    assert done.names == ["c0", "c1", "c2", "c3"] and done.killed == done.names  # in the given order
    assert not any(pid and _pid_alive(pid) for pid in pids)


def test_kill_ends_everything_at_once(tmp_path: Path) -> None:
    procs = [stubborn(tmp_path, f"k{i}") for i in range(3)]
    pids = [p.start().pid for p in procs]
    started = time.monotonic()
    assert kill_all(procs) == ["k0", "k1", "k2"]
    assert time.monotonic() - started < KILL_WAIT_SECONDS + 2.0
    assert not any(pid and _pid_alive(pid) for pid in pids)
    assert not any(p.pid_file.exists() for p in procs)


def test_stop_and_status_see_a_component_that_another_configuration_started(tmp_path: Path) -> None:
    """`fl-app run spark.one_session=false` runs spark_scorer, which the default configuration does not:
    a plain `fl-app stop` still stops it, `status` still shows it (a `reset` would otherwise delete the
    checkpoint of a scorer that runs). No services here: only the components' pid files count."""
    from core.config import load_config

    cfg = load_config([f"paths.home={tmp_path}", "kafka=remote", "mongo=remote",
                       "kafka.bootstrap_servers=127.0.0.1:9", "mongo.uri=mongodb://127.0.0.1:9"])
    assert "spark_scorer" not in [c.name for c in pipeline.enabled(cfg)]
    other = ManagedProcess(name="spark_scorer", argv=[sys.executable, "-c", "import time; time.sleep(600)"],
                           run_dir=Path(cfg.paths.run_dir), logs_dir=Path(cfg.paths.logs_dir), startup_timeout=30)
    pid = other.start().pid
    assert "spark_scorer" in [s.name for s in pipeline.status(cfg)]
    done = pipeline.stop(cfg)
    assert pid is not None and "spark_scorer" in done.names and not _pid_alive(pid)
    assert "spark_scorer" not in [s.name for s in pipeline.status(cfg)]  # gone, and not run by these switches
