"""The warm ClientApp executor on its own (clients/executor.py): forking, capacity, crashes, reaping,
shutdown, and the polling loop over several Runtime APIs. The ClientApp itself is replaced by small
functions here; tests/integration/test_federation.py runs real SuperNodes through it."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from flwr.supercore.superexec.executor.types import ExecutionSpec, LaunchResultStatus

from clients.executor import CLIENT_APP, ForkExecutor, Wakeups, serve


def spec(task_id: int, address: str = "127.0.0.1:1") -> ExecutionSpec:
    return ExecutionSpec(task_type=CLIENT_APP, runtime_api_address=address, token=f"t{task_id}",  # type: ignore[arg-type]
                         insecure=True, root_certificates_path=None, runtime_dependency_install=False,
                         parent_pid=os.getpid(), suppress_output=False, task_id=task_id)


def sleeper(seconds: float) -> Callable[..., None]:
    def run(address: str, token: str, *_: object) -> None:
        time.sleep(seconds)
    return run


def no_zombies() -> bool:
    try:
        return os.waitpid(-1, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True  # no children at all


def test_capacity_is_enforced_and_freed(tmp_path: Path) -> None:
    executor = ForkExecutor(capacity=2, target=sleeper(0.5))
    assert executor.get_eligible_capacity({CLIENT_APP, "flwr-serverapp"}) == ({CLIENT_APP}, set())
    assert [executor.launch(spec(i)).status for i in (1, 2, 3)] == [  # type: ignore[attr-defined]
        LaunchResultStatus.ACCEPTED, LaunchResultStatus.ACCEPTED, LaunchResultStatus.CAPACITY_REJECTED]
    assert executor.get_eligible_capacity({CLIENT_APP}) == (set(), set())  # full: acquire nothing
    executor.wait_for_capacity(timeout=10)
    assert len(executor.children) < 2 and executor.get_eligible_capacity({CLIENT_APP})[0] == {CLIENT_APP}
    deadline = time.monotonic() + 10  # let the other child finish too: close() would stop it
    while executor.children and time.monotonic() < deadline:
        executor.reconcile()
        time.sleep(0.05)
    executor.close()
    assert executor.stats.succeeded == 2 and executor.stats.rejected == 1 and no_zombies()


def test_a_child_that_crashes_is_reaped_and_counted(tmp_path: Path) -> None:
    def crash(*_: object) -> None:
        raise RuntimeError("boom")

    def exit_code_3(*_: object) -> None:
        sys.exit(3)

    def ok(address: str, token: str, *_: object) -> None:
        (tmp_path / token).write_text(address)

    for target in (crash, exit_code_3, ok):
        executor = ForkExecutor(capacity=1, target=target)
        assert executor.launch(spec(7, "127.0.0.1:9")).status == LaunchResultStatus.ACCEPTED  # type: ignore[attr-defined]
        executor.wait_for_capacity(timeout=10)
        assert not executor.children
        assert (executor.stats.succeeded, executor.stats.failed) == ((1, 0) if target is ok else (0, 1))
    assert (tmp_path / "t7").read_text() == "127.0.0.1:9"  # the child got the task's address and token
    assert no_zombies()


def test_other_task_types_are_refused() -> None:
    executor = ForkExecutor(capacity=1, target=sleeper(0))
    other = ExecutionSpec(task_type="flwr-serverapp", runtime_api_address="x:1", token="t",  # type: ignore[arg-type]
                          insecure=True, root_certificates_path=None, runtime_dependency_install=False,
                          parent_pid=None, suppress_output=False, task_id=1)
    assert executor.launch(other).status == LaunchResultStatus.FAILED  # type: ignore[attr-defined]
    assert not executor.children


def test_close_kills_children_that_ignore_sigterm() -> None:
    def stubborn(*_: object) -> None:
        import signal

        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(60)

    executor = ForkExecutor(capacity=3, target=stubborn)
    for i in (1, 2, 3):
        executor.launch(spec(i))
    time.sleep(0.3)
    pids = list(executor.children)
    started = time.monotonic()
    executor.close(timeout=1)
    assert time.monotonic() - started < 5
    assert not executor.children and no_zombies()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


class FakeRuntimeApi:
    """A SuperNode's Runtime API with a queue of pending tasks (or down)."""

    def __init__(self, address: str, tasks: int, down: bool = False) -> None:
        self.address, self.insecure, self.root_certificates_path = address, True, None
        self.pending, self.down, self.reachable, self.polls = tasks, down, True, 0

    def acquire(self, task_types: set[str]) -> tuple[str, object] | None:
        self.polls += 1
        if self.down:
            raise ConnectionError("connection refused")
        if CLIENT_APP not in task_types or not self.pending:
            return None
        self.pending -= 1
        return f"{self.address}-{self.pending}", type("Task", (), {"task_id": 100 + self.pending})()


def test_serve_takes_tasks_from_every_supernode_and_skips_one_that_is_gone(tmp_path: Path) -> None:
    def record(address: str, token: str, *_: object) -> None:
        (tmp_path / token).touch()

    apis = [FakeRuntimeApi("a:1", 3), FakeRuntimeApi("b:2", 2), FakeRuntimeApi("gone:3", 5, down=True),
            FakeRuntimeApi("c:4", 1)]
    executor = ForkExecutor(capacity=2, target=record)
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(apis, executor, stop), kwargs={"poll_interval": 0.05})
    thread.start()
    deadline = time.monotonic() + 20
    while len(list(tmp_path.iterdir())) < 6 and time.monotonic() < deadline:  # every task ran
        time.sleep(0.05)
    time.sleep(0.3)  # the last children exit and are reaped by the loop
    stop.set()
    thread.join(10)
    executor.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a:1-0", "a:1-1", "a:1-2", "b:2-0", "b:2-1", "c:4-0"]
    assert executor.stats.succeeded == 6 and executor.stats.rejected == 0  # never launched beyond capacity
    assert apis[2].polls >= 1 and not apis[2].reachable and apis[2].pending == 5
    assert no_zombies()


def test_with_wakeups_only_announced_supernodes_are_asked_and_idle_ones_are_left_alone(tmp_path: Path) -> None:
    """53 idle nodes polled every 0.2 s were ~150 requests/s. A node that announces its tasks (our warm
    SuperNodes) is asked only when it does; one that never did (a stock SuperNode) is polled as before."""
    import socket

    def record(address: str, token: str, *_: object) -> None:
        (tmp_path / "ran" / token).touch()

    (tmp_path / "ran").mkdir()
    apis = [FakeRuntimeApi(f"127.0.0.1:{9100 + i}", 0) for i in range(20)]
    stock = apis[-1]  # never announces
    wakeups = Wakeups(str(tmp_path / "wake.sock"), apis)  # type: ignore[arg-type]
    assert (tmp_path / "wake.sock").stat().st_mode & 0o077 == 0  # only its owner may announce
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def announce(*words: bytes) -> None:
        for word in words:
            sender.sendto(word, str(tmp_path / "wake.sock"))

    def ran() -> list[str]:
        return sorted(p.name for p in (tmp_path / "ran").iterdir())

    executor = ForkExecutor(capacity=2, target=record)
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(apis, executor, stop),
                              kwargs={"poll_interval": 0.05, "wakeups": wakeups, "full_pass_every": 60.0})
    thread.start()
    try:
        announce(*(str(9100 + i).encode() for i in range(19)))  # every warm node once (its first task)
        time.sleep(1.5)
        polls = [api.polls for api in apis]
        time.sleep(1.0)  # idle
        assert [api.polls for api in apis[:19]] == polls[:19]  # the announcing nodes are left alone
        assert stock.polls > polls[19] + 5  # the stock one is polled
        apis[7].pending = 3
        announce(b"not a port", b"1", b"9107")  # junk and an unknown port are ignored
        stock.pending = 1
        deadline = time.monotonic() + 10
        while len(ran()) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ran() == [*(f"127.0.0.1:9107-{i}" for i in range(3)), "127.0.0.1:9119-0"]
        time.sleep(0.5)
        assert [api.polls for api in apis[:19] if api is not apis[7]] == [p for i, p in enumerate(polls[:19]) if i != 7]
    finally:
        stop.set()
        thread.join(10)
        executor.close()
        wakeups.close()


def a_fab(folder: Path, version: str) -> bytes:
    """A real Flower app bundle (flwr's own builder) of a one-module app."""
    from flwr.cli.build import build_fab_from_disk

    folder.mkdir()
    (folder / "pyproject.toml").write_text(f"""
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"
[project]
name = "tiny"
version = "{version}"
[tool.hatch.build.targets.wheel]
packages = ["."]
[tool.flwr.app]
publisher = "test"
[tool.flwr.app.components]
serverapp = "app:server"
clientapp = "app:client"
""")
    (folder / "app.py").write_text("client = server = None\n")
    return build_fab_from_disk(folder)


def test_a_bundle_is_installed_once_and_a_bad_marker_only_costs_an_install(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same bundle bytes install once; other bytes install again; a marker naming a folder outside
    Flower's apps (or one gone) is not followed: the bundle is installed as Flower would."""
    from flwr.cli.install import install_from_fab

    from clients.executor import install_once

    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr"))
    installs: list[bytes] = []

    def counted(fab: bytes, **kwargs: object) -> Path:
        installs.append(fab)
        return install_from_fab(fab, **kwargs)  # type: ignore[arg-type]

    install = install_once(counted)
    one, two = a_fab(tmp_path / "v1", "1.0.0"), a_fab(tmp_path / "v2", "2.0.0")
    first = install(one, skip_prompt=True)
    assert (first / "app.py").read_text() == "client = server = None\n"
    assert install(one, skip_prompt=True) == first and len(installs) == 1
    second = install(two, skip_prompt=True)
    assert second != first and len(installs) == 2
    apps = tmp_path / "flwr" / "apps"
    markers = sorted(apps.glob(".fab-*"))
    assert len(markers) == 2
    for marker in markers:
        marker.write_text("../../elsewhere")
    (tmp_path / "elsewhere").mkdir()
    assert install(one, skip_prompt=True) == first and len(installs) == 3
    import shutil
    shutil.rmtree(second)
    assert install(two, skip_prompt=True) == second and (second / "app.py").exists() and len(installs) == 4


def test_the_executor_imports_the_newest_bundle_and_only_its_own_tasks_keep_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a task installed a bundle, the parent imports its ClientApp module from the installed
    folder; a task of that folder keeps the module (no import), a task of another bundle forgets it
    and its folder; a newer bundle replaces the older one in the parent; a bundle that fails to import
    is left to the tasks."""
    from flwr.cli.install import install_from_fab

    from clients.executor import ChildImports, WarmBundle, install_once

    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "modules", dict(sys.modules))
    install = install_once(install_from_fab)
    bundle = WarmBundle()
    bundle.refresh([])
    assert bundle.folder is None  # nothing installed yet
    first = install(a_fab(tmp_path / "v1", "1.0.0"), skip_prompt=True)
    bundle.refresh([])
    assert bundle.folder == first and bundle.modules == ["app"]
    assert Path(sys.modules["app"].__file__).parent == first

    kept = ChildImports(bundle.folder, list(bundle.modules))
    kept.settle(first)
    assert "app" in sys.modules and str(first) in sys.path
    time.sleep(0.01)  # a later marker
    second = install(a_fab(tmp_path / "v2", "2.0.0"), skip_prompt=True)
    other = ChildImports(bundle.folder, list(bundle.modules))
    other.settle(second)
    assert "app" not in sys.modules and str(first) not in sys.path

    bundle.refresh([])
    assert bundle.folder == second and Path(sys.modules["app"].__file__).parent == second
    assert str(first) not in sys.path
    time.sleep(0.01)
    broken = install(a_fab(tmp_path / "v3", "3.0.0"), skip_prompt=True)
    (broken / "app.py").write_text("raise RuntimeError('broken at import')\n")
    sys.modules.pop("app")
    bundle.refresh([])
    assert bundle.folder is None and bundle.modules == [] and "app" not in sys.modules
    assert str(broken) not in sys.path
