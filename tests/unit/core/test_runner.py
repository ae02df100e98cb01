"""The service-runner with a real (tiny) server process: python -m http.server."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest

from core.services.runner import ManagedProcess, ServiceError, State, _pid_alive, free_port_block, port_is_open


def http_server(tmp_path: Path, port: int, **kwargs) -> ManagedProcess:
    return ManagedProcess(
        name="http",
        argv=[sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        run_dir=tmp_path / "run",
        logs_dir=tmp_path / "logs",
        ports=[("127.0.0.1", port)],
        health_check=lambda: port_is_open("127.0.0.1", port),
        startup_timeout=kwargs.pop("startup_timeout", 15),
        **kwargs,
    )


def test_start_is_idempotent_and_stop_cleans_up(tmp_path: Path) -> None:
    # Below the ephemeral range: a connect to a closed ephemeral port can pick that very port as its
    # own source and connect to itself, so "is the port open" said yes after the stop (CI, once).
    port = free_port_block(1)
    proc = http_server(tmp_path, port)
    first = proc.start()
    try:
        assert first.state is State.RUNNING and first.pid
        assert proc.pid_file.read_text().split()[0] == str(first.pid)
        second = proc.start()  # no-op: same process
        assert second.pid == first.pid
        # A fresh object (as a new `fl-app` invocation) sees the same process.
        assert http_server(tmp_path, port).status().pid == first.pid
    finally:
        assert proc.stop() is True
    assert not proc.pid_file.exists()
    assert not port_is_open("127.0.0.1", port)
    assert proc.status().state is State.STOPPED
    assert proc.stop() is False
    assert "starting:" in proc.log_file.read_text()


def test_taken_port_is_reported_before_launch(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        proc = http_server(tmp_path, port)
        with pytest.raises(ServiceError, match=f"port 127.0.0.1:{port} is already in use"):
            proc.start()
        assert proc.pid() is None


def test_process_that_dies_at_start_reports_its_log(tmp_path: Path) -> None:
    proc = ManagedProcess(
        name="broken",
        argv=[sys.executable, "-c", "import sys; print('boom: bad flag'); sys.exit(3)"],
        run_dir=tmp_path / "run",
        logs_dir=tmp_path / "logs",
        health_check=lambda: False,
        startup_timeout=10,
    )
    with pytest.raises(ServiceError) as info:
        proc.start()
    assert "exited with code 3" in str(info.value)
    assert "boom: bad flag" in str(info.value)
    assert not proc.pid_file.exists()


def test_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    proc = ManagedProcess(name="ghost", argv=["/nonexistent/bin/server"], run_dir=tmp_path, logs_dir=tmp_path)
    with pytest.raises(ServiceError, match="not found"):
        proc.start()


def test_stop_escalates_to_sigkill_for_a_process_ignoring_sigterm(tmp_path: Path) -> None:
    script = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
              "print('up', flush=True); time.sleep(600)")
    proc = ManagedProcess(
        name="stubborn",
        argv=[sys.executable, "-c", script],
        run_dir=tmp_path / "run",
        logs_dir=tmp_path / "logs",
        health_check=lambda: "up" in proc.log_file.read_text(),
        startup_timeout=10,
        stop_timeout=1.0,
    )
    pid = proc.start().pid
    assert pid
    started = time.monotonic()
    assert proc.stop()
    assert time.monotonic() - started < 10
    assert not _pid_alive(pid)  # gone (or a reaped-later zombie of this test process)


def test_stale_pid_file_does_not_block_start(tmp_path: Path) -> None:
    port = free_port_block(1)
    proc = http_server(tmp_path, port)
    proc.pid_file.parent.mkdir(parents=True)
    proc.pid_file.write_text("999999\n")  # no such process
    try:
        assert proc.start().state is State.RUNNING
    finally:
        proc.stop()


def test_a_reused_pid_is_not_taken_for_ours(tmp_path: Path) -> None:
    """A stale pid file naming a live but unrelated process (pid reuse) is ignored, never signalled."""
    import os

    proc = http_server(tmp_path, free_port_block(1))
    proc.pid_file.parent.mkdir(parents=True)
    proc.pid_file.write_text(f"{os.getpid()} 1\n")  # this test process, with a wrong start time
    assert proc.pid() is None
    assert proc.stop() is False  # and so this test process was not killed


def _family(tmp_path: Path, name: str, child_ignores_term: bool = False, **kwargs) -> ManagedProcess:
    """A leader that starts a child in its own process group (as pyflink and pyspark start their JVM)."""
    child = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
             if child_ignores_term else "import time; time.sleep(600)")
    script = ("import pathlib, subprocess, sys, time; "
              f"c = subprocess.Popen([sys.executable, '-c', {child!r}]); "
              f"pathlib.Path({str(tmp_path / (name + '.child'))!r}).write_text(str(c.pid)); time.sleep(600)")
    return ManagedProcess(name=name, argv=[sys.executable, "-c", script], run_dir=tmp_path / "run",
                          logs_dir=tmp_path / "logs", health_check=lambda: (tmp_path / (name + ".child")).exists(),
                          startup_timeout=30, **kwargs)


def test_a_restart_first_kills_what_a_killed_leader_left_in_its_group(tmp_path: Path) -> None:
    """kill -9 of a component's own process leaves its JVM running; the next start must end it."""
    import os
    import signal

    proc = _family(tmp_path, "family")
    leader = proc.start().pid
    assert leader
    child = int((tmp_path / "family.child").read_text())
    os.kill(leader, signal.SIGKILL)  # the leader only, as `kill -9 <pid>` does
    time.sleep(0.5)
    assert proc.pid() is None and _pid_alive(child)  # orphaned, still running
    (tmp_path / "family.child").unlink()
    try:
        proc.start()
        assert not _pid_alive(child)
        assert int((tmp_path / "family.child").read_text()) != child
    finally:
        assert proc.stop()


def test_stop_kills_what_outlives_the_leader_and_honours_a_shorter_budget(tmp_path: Path) -> None:
    proc = _family(tmp_path, "stubborn_child", child_ignores_term=True, stop_timeout=60)
    leader = proc.start().pid
    child = int((tmp_path / "stubborn_child.child").read_text())
    assert leader and _pid_alive(child)
    started = time.monotonic()
    assert proc.stop(timeout=1.0)
    took = time.monotonic() - started
    assert took < 1.0 + 2.0 + 2.0, took  # the budget, not stop_timeout=60, plus the kill wait and slack
    assert not _pid_alive(leader) and not _pid_alive(child)
    assert proc.kill() is False and proc.stop() is False  # nothing left


def test_stop_of_a_dead_leader_still_kills_its_group(tmp_path: Path) -> None:
    """`fl-app stop` right after a crash (before the supervisor restarted it) ends the orphaned JVM too."""
    import os
    import signal

    proc = _family(tmp_path, "crashed")
    leader = proc.start().pid
    assert leader
    child = int((tmp_path / "crashed.child").read_text())
    os.kill(leader, signal.SIGKILL)
    assert proc.stop() is True
    assert not _pid_alive(child) and not proc.pid_file.exists()
