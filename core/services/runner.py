"""The one service-runner for local processes.

A :class:`ManagedProcess` is a long-lived server (Kafka broker, MongoDB-wire
server, every pipeline component, the SuperLink ...) started as a plain process in
its own session, with a pid file under ``run_dir``, its output in
``logs/<name>.log`` and a health check. Starting is idempotent (a healthy
running service is left alone), a taken port is reported before launch, and
stopping escalates from SIGTERM to SIGKILL on the whole process group.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from core import processes, secrets

log = logging.getLogger(__name__)

KILL_WAIT_SECONDS = 2.0  # after SIGKILL, how long stop() waits for the group to be gone
HealthCheck = Callable[[], bool]
PRIVATE_FILE = 0o600  # logs: a component may print what it was given
PRIVATE_UMASK = 0o077
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})  # addresses whose servers we may start here


class ServiceError(RuntimeError):
    """A service could not be started, checked or stopped; the message says why."""


class State(StrEnum):
    RUNNING = "running"  # process alive and health check passes
    UNHEALTHY = "unhealthy"  # process alive, health check fails
    STOPPED = "stopped"
    EXTERNAL = "external"  # not ours to run (e.g. mongo.uri points elsewhere)


@dataclass
class Status:
    name: str
    state: State
    pid: int | None = None
    address: str = ""
    detail: str = ""


def port_is_free(host: str, port: int) -> bool:
    """True if nothing listens on ``host:port`` and we could bind it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_is_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A currently free TCP port (for tests and benchmarks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_port_block(count: int, host: str = "127.0.0.1") -> int:
    """The first of ``count`` consecutive free TCP ports (one SuperNode each, for tests and benchmarks).

    Taken below Linux's ephemeral range (32768+), where :func:`free_port` and
    outgoing connections get theirs, so a block cannot collide with those.
    """
    import random

    for _ in range(200):
        base = random.randrange(20000, 32000 - count)
        try:
            with contextlib.ExitStack() as stack:
                for port in range(base, base + count):
                    sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                    sock.bind((host, port))
            return base
        except OSError:
            continue
    raise ServiceError(f"no {count} consecutive free ports found on {host}")


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def write_pid_file(path: Path, pid: int) -> None:
    """``<pid> <start time>``: the start time tells our process from a later one with a reused pid."""
    path.write_text(f"{pid} {_start_time(pid)}\n")


def pid_from_file(path: Path) -> int | None:
    """The pid in a pid file if that very process is still alive."""
    try:
        fields = path.read_text().split()
        pid, started = int(fields[0]), fields[1] if len(fields) > 1 else None
    except (OSError, ValueError, IndexError):
        return None
    if not _pid_alive(pid) or (started is not None and _start_time(pid) != started):
        return None
    return pid


def recorded_pid(path: Path) -> int | None:
    """The pid a pid file names, alive or not (a dead leader's number is still its group's id)."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group ``pgid`` whose leader is gone or is ``pgid``.

    Linux does not hand out a pid while a group of that id exists, so members
    found for a dead leader's id are that leader's own leftovers.
    """
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@dataclass
class ManagedProcess:
    """A server process we start, watch and stop.

    Parameters
    ----------
    name
        Short name; used for ``<run_dir>/<name>.pid`` and ``<logs_dir>/<name>.log``.
    argv
        The command line; or empty, with ``prepare`` returning it.
    run_dir, logs_dir
        Where the pid file and the log go.
    ports
        ``(host, port)`` pairs the process will listen on; checked free before start.
    health_check
        Returns True once the service answers; polled until ``startup_timeout``.
    env
        Extra environment variables.
    prepare
        Called just before launching (never when already running): downloads,
        config files, storage formatting. Returns the command line.
    """

    name: str
    argv: Sequence[str]
    run_dir: Path
    logs_dir: Path
    ports: Sequence[tuple[str, int]] = ()
    health_check: HealthCheck | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    startup_timeout: float = 60.0
    stop_timeout: float = 20.0
    address: str = ""
    prepare: Callable[[], Sequence[str]] | None = None
    killed: bool = field(default=False, init=False, repr=False)  # the last stop() needed SIGKILL
    _launched: subprocess.Popen | None = field(default=None, init=False, repr=False)  # by start(wait=False)

    @property
    def pid_file(self) -> Path:
        return Path(self.run_dir) / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return Path(self.logs_dir) / f"{self.name}.log"

    # ----------------------------------------------------------- inspection
    def pid(self) -> int | None:
        """The pid from the pid file if that very process is still alive.

        The file also holds the process's start time, so a pid reused by an
        unrelated process after a crash or reboot is not mistaken for ours
        (and never signalled).
        """
        return pid_from_file(self.pid_file)

    def healthy(self) -> bool:
        if self.health_check is None:
            return self.pid() is not None
        try:
            return bool(self.health_check())
        except Exception:  # a health probe failing in any way means "not yet"
            return False

    def status(self) -> Status:
        pid = self.pid()
        if pid is None:
            return Status(self.name, State.STOPPED, address=self.address)
        state = State.RUNNING if self.healthy() else State.UNHEALTHY
        return Status(self.name, state, pid=pid, address=self.address)

    # ------------------------------------------------------------ lifecycle
    def start(self, wait: bool = True) -> Status:
        """Start the process unless it already runs; wait until it is healthy (``wait=False``: only
        launch it, and call :meth:`wait_started` later; for servers that become healthy together,
        such as the nodes of a Kafka quorum)."""
        pid = self.pid()
        if pid is not None:
            if not wait:
                return self.status()
            if self._wait_healthy(pid, self.startup_timeout):
                log.info("%s already running (pid %d)", self.name, pid)
                return self.status()
            raise ServiceError(
                f"{self.name} (pid {pid}) is running but not healthy after "
                f"{self.startup_timeout:.0f}s; see {self.log_file} or run `fl-app services down`"
            )
        self._kill_leftovers()
        self.pid_file.unlink(missing_ok=True)
        for host, port in self.ports:
            if not port_is_free(host, port):
                raise ServiceError(
                    f"cannot start {self.name}: port {host}:{port} is already in use "
                    f"by another process (find it with `ss -ltnp 'sport = :{port}'`), "
                    "or choose another port in the config"
                )
        Path(self.run_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        Path(self.logs_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.prepare is not None:
            self.argv = list(self.prepare())
        # Secret overrides go in the environment (its owner's only), never on the command line
        # (world-readable in /proc/<pid>/cmdline) nor in the log (core/secrets.py).
        argv, hidden = secrets.split_overrides(self.argv)
        env = {k: v for k, v in {**os.environ, **self.env}.items() if k != secrets.ENV}
        if hidden:
            env[secrets.ENV] = json.dumps(hidden)
        shown = " ".join(secrets.redact_override(word) for word in argv)
        with open(os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE), "ab") as out:
            os.fchmod(out.fileno(), PRIVATE_FILE)  # also a log made before, world-readable
            out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {shown}\n".encode())
            out.flush()
            try:
                proc = subprocess.Popen(
                    argv,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    cwd=self.cwd,
                    start_new_session=True,  # own process group: stop() kills all of it
                    umask=PRIVATE_UMASK,  # what it writes (logs, settings with a URI) is its owner's only
                )
            except FileNotFoundError as exc:
                raise ServiceError(f"cannot start {self.name}: {exc.filename} not found") from exc
        write_pid_file(self.pid_file, proc.pid)
        log.info("started %s (pid %d), log %s", self.name, proc.pid, self.log_file)
        self._launched = proc
        return self.wait_started() if wait else self.status()

    def wait_started(self) -> Status:
        """Wait until the process :meth:`start` launched is healthy; stop it and raise if it is not."""
        proc, self._launched = self._launched, None
        pid = proc.pid if proc is not None else self.pid()
        if pid is None:
            raise ServiceError(f"{self.name} is not running; last lines of {self.log_file}:\n{self.tail()}")
        if not self._wait_healthy(pid, self.startup_timeout, proc):
            code = proc.poll() if proc is not None else None
            self.stop()
            why = f"exited with code {code}" if code is not None else f"not healthy after {self.startup_timeout:.0f}s"
            raise ServiceError(f"{self.name} {why}; last lines of {self.log_file}:\n{self.tail()}")
        return self.status()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop the process group: SIGTERM, and SIGKILL after ``stop_timeout`` (or ``timeout`` if
        shorter); members of the group that outlive its leader are killed too. Bounded: returns
        within the budget plus :data:`KILL_WAIT_SECONDS`. True if something was stopped; then
        :attr:`killed` tells whether it needed SIGKILL."""
        self.killed = False
        pid, group = self.pid(), self._group()
        if pid is None and not (group is not None and group_members(group)):
            self.pid_file.unlink(missing_ok=True)
            return False
        if pid is not None:
            budget = self.stop_timeout if timeout is None else min(self.stop_timeout, timeout)
            log.info("stopping %s (pid %d)", self.name, pid)
            processes.signal_group(pid, signal.SIGTERM)
            deadline = time.monotonic() + budget
            while time.monotonic() < deadline and _pid_alive(pid):  # a zombie counts as gone
                time.sleep(0.1)
            processes.reap([pid])  # when it is our own child: collected, no zombie left
            if _pid_alive(pid):
                log.warning("%s did not stop in %.0fs; killing it", self.name, budget)
                self.killed = True
        if group is not None and (self.killed or group_members(group)):
            self._kill_and_wait(group)  # the leader, or what it left in its group (e.g. a JVM)
        self.pid_file.unlink(missing_ok=True)
        return True

    def kill(self, wait: bool = True) -> bool:
        """SIGKILL the whole group at once (crash tests, a forced stop), and wait until it is gone
        unless ``wait`` is False; the pid file stays, as after a real crash. True if anything was alive."""
        group = self._group()
        if group is None or not group_members(group):
            return False
        self._kill_and_wait(group, timeout=None if wait else 0.0)
        return True

    def _kill_and_wait(self, group: int, timeout: float | None = None) -> None:
        processes.signal_group(group, signal.SIGKILL)
        deadline = time.monotonic() + (KILL_WAIT_SECONDS if timeout is None else timeout)
        while time.monotonic() < deadline and (_pid_alive(group) or group_members(group)):
            time.sleep(0.05)
        processes.reap([group])  # the leader, when it is our own child: no zombie left

    def tail(self, lines: int = 20) -> str:
        try:
            return secrets.redact_url("\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:]))
        except OSError:
            return "(no log)"

    # -------------------------------------------------------------- helpers
    def _group(self) -> int | None:
        """Our process group's id: the leader's pid, also after the leader died; None if that pid
        now belongs to another process (reused), whose group is not ours."""
        pid = self.pid()
        if pid is not None:
            return pid
        recorded = recorded_pid(self.pid_file)
        return None if recorded is None or _pid_alive(recorded) else recorded

    def _kill_leftovers(self) -> None:
        """A leader killed with SIGKILL leaves its children running in its group (the Flink job's
        and the scorer's JVM): kill them before a new start, or they would run twice."""
        group = self._group()
        if group is not None and group_members(group):
            log.warning("%s: killing what its previous process (pid %d) left running: pids %s", self.name, group,
                        ", ".join(map(str, group_members(group))))
            self._kill_and_wait(group)

    def _wait_healthy(self, pid: int, timeout: float, proc: subprocess.Popen | None = None) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                return False
            if not _pid_alive(pid):
                return False
            if self.healthy():
                return True
            time.sleep(0.25)
        return False


def kill_all(procs: Sequence[ManagedProcess]) -> list[str]:
    """SIGKILL every group at once, then wait (bounded) for all; the names of those that were alive."""
    alive = [p for p in procs if p.kill(wait=False)]
    deadline = time.monotonic() + KILL_WAIT_SECONDS
    while any(p.pid() is not None for p in alive) and time.monotonic() < deadline:
        time.sleep(0.05)
    for proc in procs:
        if proc.pid() is None:
            proc.pid_file.unlink(missing_ok=True)
    return [p.name for p in alive]
