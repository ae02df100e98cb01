"""``fl-app supervise``: restarts the pipeline's components that crash, with backoff.

`fl-app run` starts it after the components. Every :data:`CHECK_SECONDS` it
looks at each component `run` started (``pipeline.expected``); one whose
process is gone is restarted after a backoff that doubles with each restart
(:data:`FIRST_BACKOFF_SECONDS` up to :data:`MAX_BACKOFF_SECONDS`). One that
crashed :data:`GIVE_UP_AFTER` times within :data:`GIVE_UP_WINDOW_SECONDS` is
left down and reported: in its log, in ``.run/supervisor.json`` and by
`fl-app status` (exit code 4). `fl-app stop` stops the supervisor first.
Before a restart, what the crashed process left running is killed (its own
process group by ``ManagedProcess.start``, the rest by ``before_restart``),
so no component ever runs twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.atomic import read_json, write_json
from core.config import AppConfig
from core.services.runner import ManagedProcess, ServiceError

log = logging.getLogger(__name__)

NAME = "supervisor"
CHECK_SECONDS = 2.0
FIRST_BACKOFF_SECONDS = 2.0
MAX_BACKOFF_SECONDS = 60.0
GIVE_UP_AFTER = 5
GIVE_UP_WINDOW_SECONDS = 600.0


@dataclass
class Record:
    """One component's restarts (persisted in ``.run/supervisor.json``)."""

    restarts: int = 0
    crashes: list[float] = field(default_factory=list)  # wall-clock times of the crashes seen
    gave_up: bool = False
    next_try: float = 0.0  # monotonic: when to restart it (0: not scheduled); not persisted


def state_file(cfg: AppConfig) -> Path:
    return Path(cfg.paths.run_dir) / "supervisor.json"


def records(cfg: AppConfig) -> dict[str, dict]:
    """What the supervisor last wrote: per component, restarts and whether it gave up."""
    return dict(read_json(state_file(cfg), {}))


class Supervisor:
    def __init__(self, cfg: AppConfig, processes: Sequence[ManagedProcess], expected: Sequence[str],
                 first_backoff: float = FIRST_BACKOFF_SECONDS, check_every: float = CHECK_SECONDS,
                 before_restart: Callable[[str], Sequence[str]] = lambda name: ()) -> None:
        """``before_restart(name)`` ends what a crashed component left outside its process group
        (its own group's leftovers are killed by ``ManagedProcess.start``); it returns what it killed."""
        self.cfg, self.first_backoff, self.check_every = cfg, first_backoff, check_every
        self.before_restart = before_restart
        self.processes = [p for p in processes if p.name in expected and p.name != NAME]
        self.records = {p.name: Record() for p in self.processes}
        self.stop = threading.Event()

    def run(self) -> None:
        log.info("supervising %s", ", ".join(p.name for p in self.processes))
        while not self.stop.is_set():
            self.check(time.monotonic())
            self._reap()
            self.stop.wait(self.check_every)
        log.info("stopped supervising")

    def check(self, now: float) -> None:
        for proc in self.processes:
            record = self.records[proc.name]
            if record.gave_up or proc.pid() is not None:
                continue
            if record.next_try == 0.0:  # just seen down
                record.crashes = [t for t in record.crashes if time.time() - t < GIVE_UP_WINDOW_SECONDS]
                record.crashes.append(time.time())
                if len(record.crashes) > GIVE_UP_AFTER:
                    record.gave_up = True
                    log.error("%s keeps crashing (%d times in %.0f min): left down; last lines of %s:\n%s",
                              proc.name, len(record.crashes), GIVE_UP_WINDOW_SECONDS / 60, proc.log_file,
                              proc.tail(15))
                    self._save()
                    continue
                backoff = min(MAX_BACKOFF_SECONDS, self.first_backoff * 2 ** (len(record.crashes) - 1))
                record.next_try = now + backoff
                log.warning("%s is down; restarting it in %.0fs (crash %d); last lines of %s:\n%s", proc.name,
                            backoff, len(record.crashes), proc.log_file, proc.tail(10))
                self._save()
            if now >= record.next_try:
                record.next_try = 0.0
                try:
                    if killed := self.before_restart(proc.name):
                        log.warning("%s: killed what it left running: %s", proc.name, ", ".join(killed))
                    proc.start()
                    record.restarts += 1
                    log.info("%s restarted (pid %s)", proc.name, proc.pid())
                except (ServiceError, OSError) as exc:
                    log.warning("restarting %s failed: %s", proc.name, exc)
                self._save()

    def _save(self) -> None:
        write_json(state_file(self.cfg), {name: {k: v for k, v in asdict(r).items() if k != "next_try"}
                                          for name, r in self.records.items()})

    @staticmethod
    def _reap() -> None:
        """Collect the components it restarted that exited (its children), so none lingers as a zombie."""
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0] != 0:
                pass


def serve(cfg: AppConfig, processes: Sequence[ManagedProcess], expected: Sequence[str],
          before_restart: Callable[[str], Sequence[str]] = lambda name: ()) -> None:
    """Supervise until SIGTERM/SIGINT."""
    import signal

    supervisor = Supervisor(cfg, processes, expected, before_restart=before_restart)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: supervisor.stop.set())
    state_file(cfg).unlink(missing_ok=True)
    supervisor.run()
