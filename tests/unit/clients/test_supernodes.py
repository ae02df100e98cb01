"""The SuperNode launcher (clients/supernodes.py) with a stand-in entry point instead of Flower's SuperNode;
the real one runs in the integration tests (tests/integration/test_federation.py)."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from threading import Event
from typing import Any

import pytest

from clients.supernodes import Launcher, NodeSpec, load_spec, save_spec
from core.services.runner import ManagedProcess, pid_from_file
from tests.support.waiting import wait_until


def sleeper() -> None:
    """Stands in for flower-supernode: says its flags, then waits to be stopped."""
    print("args:", " ".join(sys.argv[1:]), flush=True)
    time.sleep(120)


def stubborn() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(120)


def crasher() -> None:
    raise RuntimeError("cannot reach the SuperLink")


def specs(tmp_path: Path, n: int) -> list[NodeSpec]:
    return [NodeSpec(f"fl_supernode_{d}", ["--node-config", f"device-id={d}"], str(tmp_path / f"fl_supernode_{d}.pid"),
                     str(tmp_path / "logs" / f"fl_supernode_{d}.log")) for d in range(n)]


def wait_for_end(launcher: Launcher, timeout: float = 10.0) -> list[tuple[NodeSpec, int]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ended := launcher.reap():
            return ended
        time.sleep(0.05)
    return []


def zombies_of(pid: int) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] == "Z" and int(fields[1]) == pid:
                found.append(int(proc.name))
    return found


def test_each_node_is_its_own_process_with_pid_file_log_and_session(tmp_path: Path) -> None:
    nodes = specs(tmp_path, 3)
    launcher = Launcher(sleeper)
    try:
        assert launcher.start(nodes, 0.01, Event()) == 3
        assert wait_until(lambda: all(pid_from_file(Path(n.pid_file)) for n in nodes))
        pids = [pid_from_file(Path(n.pid_file)) for n in nodes]
        assert len(set(pids)) == 3 and all(os.getsid(p) == p for p in pids if p)  # a session each
        assert wait_until(lambda: all("args: --node-config device-id=" in Path(n.log_file).read_text()
                                      for n in nodes))
        # Already running: a second start forks nothing.
        assert launcher.start(nodes, 0.01, Event()) == 0
    finally:
        launcher.stop(timeout=5)
    assert not launcher.children and not zombies_of(os.getpid())
    assert all(pid_from_file(Path(n.pid_file)) is None for n in nodes)


def test_one_node_stopped_like_a_managed_process_leaves_the_others(tmp_path: Path) -> None:
    nodes = specs(tmp_path, 3)
    launcher = Launcher(sleeper)
    try:
        launcher.start(nodes, 0.01, Event())
        assert wait_until(lambda: all(pid_from_file(Path(n.pid_file)) for n in nodes))
        first = ManagedProcess(name=nodes[0].name, argv=[], run_dir=tmp_path, logs_dir=tmp_path / "logs")
        assert first.pid_file == Path(nodes[0].pid_file)
        assert first.status().pid == pid_from_file(Path(nodes[0].pid_file))
        assert first.stop() and first.pid() is None
        assert all(pid_from_file(Path(n.pid_file)) for n in nodes[1:])
    finally:
        launcher.stop(timeout=5)


def test_a_crashing_node_is_reported_and_one_ignoring_sigterm_is_killed(tmp_path: Path) -> None:
    crashing, ignoring = specs(tmp_path, 2)
    launcher = Launcher(crasher)
    launcher.start([crashing], 0.01, Event())
    assert wait_for_end(launcher) == [(crashing, 1)]
    assert "cannot reach the SuperLink" in Path(crashing.log_file).read_text()

    launcher = Launcher(stubborn)
    launcher.start([ignoring], 0.01, Event())
    assert wait_until(lambda: pid_from_file(Path(ignoring.pid_file)) is not None)
    started = time.monotonic()
    launcher.stop(timeout=0.5)
    assert time.monotonic() - started < 5
    assert not launcher.children and not zombies_of(os.getpid())


def test_stop_during_the_staggered_start_forks_no_more(tmp_path: Path) -> None:
    stop = Event()
    stop.set()
    launcher = Launcher(sleeper)
    assert launcher.start(specs(tmp_path, 3), 0.01, stop) == 0


def test_spec_round_trip(tmp_path: Path) -> None:
    nodes = specs(tmp_path, 2)
    save_spec(tmp_path / "spec.json", nodes, 0.3)
    assert load_spec(tmp_path / "spec.json") == (nodes, pytest.approx(0.3))


def test_a_forked_supernode_paces_empty_pulls_and_announces_a_stored_message(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from flwr.supernode import start_client_internal as flower

    from clients.supernodes import Pulling, _pull_as

    answers = [None, 42]
    monkeypatch.setattr(flower, "_pull_and_store_message", lambda **_: answers.pop(0))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "wake.sock"))
    listener.settimeout(5)
    _pull_as(Pulling(seconds=3.4, wake_socket=str(tmp_path / "wake.sock")), runtime_port=9123)
    pull: Callable[..., Any] = flower._pull_and_store_message
    started = time.monotonic()
    assert pull(state=None) is None  # nothing: waits its extra 0.4 s (Flower's 3 s follow)
    assert 0.35 < time.monotonic() - started < 2
    assert pull(state=None) == 42  # a message: the executor hears this node's port
    assert listener.recv(64) == b"9123"
    listener.close()


def test_a_forked_supernode_ticks_its_server_slowly_yet_answers_at_once_and_stops(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import httpx
    import uvicorn

    from clients.supernodes import _tick_server_every
    from core.services.runner import free_port

    monkeypatch.setattr(uvicorn.Server, "main_loop", uvicorn.Server.main_loop)  # restored afterwards
    _tick_server_every(0.5)

    async def app(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    ticks: list[float] = []
    on_tick = server.on_tick

    async def counted(counter: int) -> bool:
        ticks.append(time.monotonic())
        return await on_tick(counter)

    server.on_tick = counted  # type: ignore[method-assign]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    started = time.monotonic()
    assert httpx.get(f"http://127.0.0.1:{port}/").text == "ok"
    assert time.monotonic() - started < 0.3  # requests do not wait for a tick
    time.sleep(1.6)
    window = [t for t in ticks if t >= started]
    assert 2 <= len(window) <= 5, window  # ~3 ticks in 1.6 s; uvicorn's own 0.1 s would give ~16
    server.should_exit = True
    thread.join(timeout=2)
    assert not thread.is_alive()  # a stop waits one tick at most


def test_a_forked_supernode_heartbeats_at_the_configured_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supercore import heartbeat
    from flwr.supernode import fleet_http_connection

    from clients.supernodes import _heartbeat_every

    for module in (heartbeat, fleet_http_connection):  # restored afterwards
        monkeypatch.setattr(module, "HEARTBEAT_DEFAULT_INTERVAL", module.HEARTBEAT_DEFAULT_INTERVAL)
    _heartbeat_every(60.0)
    # Where flwr 1.42 sends heartbeats and where it tells the SuperLink the interval.
    assert heartbeat.HEARTBEAT_DEFAULT_INTERVAL == fleet_http_connection.HEARTBEAT_DEFAULT_INTERVAL == 60.0
