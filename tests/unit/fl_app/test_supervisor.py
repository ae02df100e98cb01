"""The supervisor restarts a crashed component with backoff and gives up on one that keeps crashing."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from pathlib import Path

from core.config import load_config
from core.services.runner import ManagedProcess
from fl_app import supervisor
from tests.support.waiting import wait_until


def component(tmp_path: Path, name: str, *argv: str) -> ManagedProcess:
    return ManagedProcess(name=name, argv=list(argv), run_dir=tmp_path / ".run", logs_dir=tmp_path / "logs",
                          startup_timeout=0.3, stop_timeout=2)


def test_a_killed_component_is_restarted_and_the_others_left_alone(tmp_path: Path) -> None:
    cfg = load_config([f"paths.home={tmp_path}"])
    worker = component(tmp_path, "worker", sys.executable, "-c", "import time; time.sleep(60)")
    steady = component(tmp_path, "steady", sys.executable, "-c", "import time; time.sleep(60)")
    worker.start()
    steady.start()
    first, other = worker.pid(), steady.pid()
    sup = supervisor.Supervisor(cfg, [worker, steady], ["worker", "steady"], first_backoff=0.1, check_every=0.05)
    thread = threading.Thread(target=sup.run)
    thread.start()
    try:
        assert first is not None
        os.kill(first, signal.SIGKILL)
        assert wait_until(lambda: worker.pid() not in (None, first), 15), "not restarted"
        assert steady.pid() == other
        assert wait_until(lambda: supervisor.records(cfg).get("worker", {}).get("restarts") == 1, 15)
        assert supervisor.records(cfg)["steady"]["restarts"] == 0
    finally:
        sup.stop.set()
        thread.join()
        worker.stop()
        steady.stop()


def test_a_component_that_keeps_crashing_is_left_down_and_reported(tmp_path: Path) -> None:
    cfg = load_config([f"paths.home={tmp_path}"])
    crasher = component(tmp_path, "crasher", sys.executable, "-c", "import sys; print('boom'); sys.exit(3)")
    sup = supervisor.Supervisor(cfg, [crasher], ["crasher"], first_backoff=0.01, check_every=0.02)
    thread = threading.Thread(target=sup.run)
    thread.start()
    try:
        assert wait_until(lambda: supervisor.records(cfg).get("crasher", {}).get("gave_up") is True, 30)
    finally:
        sup.stop.set()
        thread.join()
    record = supervisor.records(cfg)["crasher"]
    assert len(record["crashes"]) == supervisor.GIVE_UP_AFTER + 1
    assert "boom" in crasher.log_file.read_text()
    with contextlib.suppress(ChildProcessError):  # none at all is fine too
        assert os.waitpid(-1, os.WNOHANG) == (0, 0)  # no zombie left behind


def test_only_the_components_run_started_are_supervised(tmp_path: Path) -> None:
    cfg = load_config([f"paths.home={tmp_path}"])
    a, b = component(tmp_path, "a", "true"), component(tmp_path, "b", "true")
    me = component(tmp_path, supervisor.NAME, "true")
    assert [p.name for p in supervisor.Supervisor(cfg, [a, b, me], ["b", supervisor.NAME]).processes] == ["b"]


def test_what_a_crashed_component_left_is_ended_before_its_restart(tmp_path: Path) -> None:
    """`before_restart` runs before each restart (the federation's SuperLink and ServerApp live in
    sessions of their own: without it a restarted federation would run beside a second ServerApp)."""
    cfg = load_config([f"paths.home={tmp_path}"])
    worker = component(tmp_path, "worker", sys.executable, "-c", "import time; time.sleep(60)")
    stray = component(tmp_path, "stray", sys.executable, "-c", "import time; time.sleep(60)")
    worker.start()
    stray.start()
    calls: list[str] = []

    def before_restart(name: str) -> list[str]:
        calls.append(name)
        stray.kill()
        return ["stray"]

    sup = supervisor.Supervisor(cfg, [worker], ["worker"], first_backoff=0.1, check_every=0.05,
                                before_restart=before_restart)
    thread = threading.Thread(target=sup.run)
    thread.start()
    try:
        first = worker.pid()
        assert first is not None
        os.kill(first, signal.SIGKILL)
        assert wait_until(lambda: worker.pid() not in (None, first), 15), "not restarted"
        assert calls == ["worker"] and stray.pid() is None
    finally:
        sup.stop.set()
        thread.join()
        worker.stop()
        stray.stop()
