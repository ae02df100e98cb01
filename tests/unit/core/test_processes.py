"""The fork / reap / signal / stop helpers (core/processes.py) on real forked processes, no mocks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from core import processes
from core.services.runner import _pid_alive, group_members
from tests.support.waiting import wait_until


def wait_for_exit(pid: int, timeout: float = 10.0) -> processes.Exit:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ended := processes.reap([pid]):
            return ended[0]
        time.sleep(0.02)
    raise AssertionError(f"child {pid} did not end in {timeout}s")


def exits_with(code: str | int | None) -> Callable[[], None]:
    def run() -> None:
        sys.exit(code)
    return run


def crash() -> None:
    raise RuntimeError("boom in the child")


def sleep_long() -> None:
    time.sleep(60)


def sleeping(ready: Path) -> Callable[[], None]:
    """Sleeps long; ``ready`` exists once it runs (and so has its default signal handlers)."""
    def run() -> None:
        ready.touch()
        time.sleep(60)
    return run


def ignoring_sigterm(ready: Path) -> Callable[[], None]:
    def run() -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        ready.touch()  # only now may the test send SIGTERM
        time.sleep(60)
    return run


@pytest.mark.parametrize(("child", "code"), [
    (lambda: None, 0), (exits_with(None), 0), (exits_with(3), 3), (exits_with("a message"), 1), (crash, 1)])
def test_a_child_leaves_with_its_functions_exit_code(child: Callable[[], None], code: int) -> None:
    pid = processes.fork(child)
    assert pid != os.getpid()
    ended = wait_for_exit(pid)
    assert (ended.pid, ended.code) == (pid, code) and ended.cpu_seconds >= 0
    assert processes.reap([pid]) == [processes.Exit(pid, None)]  # collected: no longer our child


def test_a_crash_prints_its_traceback_and_never_returns_into_the_callers_code(
        tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    parent = os.getpid()
    for child in (crash, lambda: None, exits_with(0)):
        pid = processes.fork(child)
        if os.getpid() != parent:  # only a child that came back from fork() gets here
            (tmp_path / f"returned-{os.getpid()}").touch()
            os._exit(0)
        wait_for_exit(pid)
    assert not list(tmp_path.iterdir())
    assert "RuntimeError: boom in the child" in capfd.readouterr().err


def test_the_child_has_default_signals_even_when_the_parent_ignores_them(tmp_path: Path) -> None:
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        pid = processes.fork(sleeping(tmp_path / "ready"))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert wait_until((tmp_path / "ready").exists)
    processes.signal_process(pid, signal.SIGTERM)
    assert wait_for_exit(pid).code == -signal.SIGTERM


def test_a_new_session_is_its_own_group_and_signal_group_ends_all_of_it(tmp_path: Path) -> None:
    grandchild_file = tmp_path / "grandchild"

    def leader() -> None:
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        grandchild_file.write_text(str(grandchild.pid))
        time.sleep(60)

    pid = processes.fork(leader, new_session=True)
    assert wait_until(grandchild_file.exists)
    grandchild = int(grandchild_file.read_text())
    assert os.getsid(pid) == pid and os.getpgid(grandchild) == pid and os.getpgid(0) != pid
    processes.signal_group(pid, signal.SIGKILL)
    assert wait_for_exit(pid).code == -signal.SIGKILL
    assert wait_until(lambda: not group_members(pid) and not _pid_alive(grandchild))


def test_signal_group_of_a_child_in_our_group_signals_only_that_child(tmp_path: Path) -> None:
    pid = processes.fork(sleeping(tmp_path / "ready"))  # no session of its own: it leads no group
    assert wait_until((tmp_path / "ready").exists)
    processes.signal_group(pid, signal.SIGTERM)
    assert wait_for_exit(pid).code == -signal.SIGTERM  # and this test process is still here


def test_signals_to_a_process_that_is_gone_do_nothing() -> None:
    pid = processes.fork(lambda: None)
    wait_for_exit(pid)
    processes.signal_process(pid, signal.SIGTERM)
    processes.signal_group(pid, signal.SIGTERM)


def test_reap_leaves_running_children_and_reports_unknown_pids() -> None:
    pid = processes.fork(sleep_long)
    try:
        assert processes.reap([pid]) == []  # running: not waited for
        assert processes.reap([]) == []
        # Not a child of this process: the test process itself, and init.
        assert processes.reap([os.getpid(), 1]) == [processes.Exit(os.getpid(), None), processes.Exit(1, None)]
    finally:
        processes.signal_process(pid, signal.SIGKILL)
        wait_for_exit(pid)


def test_reap_waits_only_for_the_pids_it_is_given() -> None:
    other = subprocess.Popen([sys.executable, "-c", "pass"])
    pid = processes.fork(lambda: None)
    wait_for_exit(pid)
    assert wait_until(lambda: processes.reap([pid]) == [processes.Exit(pid, None)])
    assert other.wait(timeout=10) == 0  # its status was kept for its owner


def test_stop_terminates_kills_one_that_ignores_sigterm_and_reports_each(tmp_path: Path) -> None:
    polite = [processes.fork(sleeping(tmp_path / f"polite-{i}")) for i in range(2)]
    stubborn = processes.fork(ignoring_sigterm(tmp_path / "stubborn"))
    assert wait_until(lambda: len(list(tmp_path.iterdir())) == 3)
    ended: list[processes.Exit] = []
    started = time.monotonic()
    killed = processes.stop([*polite, stubborn], timeout=1.0, poll=0.05, on_exit=ended.append)
    took = time.monotonic() - started
    assert killed == [stubborn]
    assert sorted((e.pid, e.code) for e in ended) == sorted((p, -signal.SIGTERM) for p in polite)
    assert 1.0 <= took < 4, took  # the grace period, then SIGKILL at once
    assert processes.reap([*polite, stubborn]) == [processes.Exit(p, None) for p in [*polite, stubborn]]


def test_stop_of_children_that_end_at_once_does_not_wait_for_the_timeout(tmp_path: Path) -> None:
    pids = [processes.fork(sleeping(tmp_path / str(i))) for i in range(3)]
    assert wait_until(lambda: len(list(tmp_path.iterdir())) == 3)
    started = time.monotonic()
    assert processes.stop(pids, timeout=30, poll=0.05, group=False) == []
    assert time.monotonic() - started < 5
