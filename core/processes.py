"""Child processes forked from this one: start, reap, signal, stop.

The one place for what the two warm forking parents do with their children
(``clients.executor``: one child per ClientApp task; ``clients.supernodes``:
one SuperNode per device) and for the group signal of
:class:`core.services.runner.ManagedProcess`:

- :func:`fork` runs a function in a child that never returns into the
  parent's code (it leaves with ``os._exit``);
- :func:`reap` collects the named children that ended, without waiting, so
  none stays a zombie;
- :func:`signal_process` and :func:`signal_group` signal, and never fail on a
  process that is already gone;
- :func:`stop` ends children: SIGTERM, a grace period, then SIGKILL.

Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NoReturn


@dataclass(frozen=True)
class Exit:
    """How a child ended."""

    pid: int
    # Its exit code, or -N after signal N (os.waitstatus_to_exitcode). None: the pid is not a child of
    # this process (never was, or was collected elsewhere), so how it ended is unknown.
    code: int | None
    cpu_seconds: float = 0.0  # its user + system time, from the kernel's accounting


def fork(child: Callable[[], object], *, new_session: bool = False) -> int:
    """Run ``child()`` in a forked process; returns the child's pid (in the parent only).

    The child never returns into the caller's code. It leaves with ``os._exit``:
    code 0 when ``child`` returns, a ``SystemExit``'s own code (None is 0, a
    non-integer 1), 1 after any other exception (its traceback on the child's
    stderr). Before ``child`` runs, SIGTERM and SIGINT are back to their defaults
    (the parent's handlers, e.g. one that sets its stop event, would keep the
    child alive), and with ``new_session`` the child leads a session and process
    group of its own (group id = pid), so :func:`signal_group` reaches whatever it
    starts and a signal to the parent's group does not reach it.

    The parent's stdout and stderr are flushed first: a child would otherwise
    write out again what the parent had buffered.
    """
    _flush_stdio()
    pid = os.fork()
    if pid == 0:
        _run_child(child, new_session)
    return pid


def _run_child(child: Callable[[], object], new_session: bool) -> NoReturn:
    code = 1
    try:
        if new_session:
            os.setsid()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        child()
        code = 0
    except SystemExit as exc:  # e.g. Flower's run_clientapp and flower-supernode end with sys.exit
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - anything at all: report it, never return into the parent's code
        traceback.print_exc()
    finally:
        _flush_stdio()
        os._exit(code)


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed or broken stream must not stop a fork or an exit
            stream.flush()


def reap(pids: Iterable[int]) -> list[Exit]:
    """Collect those of ``pids`` that have ended, without waiting; one :class:`Exit` each.

    Only the pids named are waited for (another child of this process, e.g. a
    ``subprocess.Popen``, keeps its status for its owner). A pid that is not a
    child of this process comes back at once with ``code`` None; a child still
    running is left out.
    """
    ended = []
    for pid in list(pids):
        try:
            done, status, usage = os.wait4(pid, os.WNOHANG)
        except ChildProcessError:
            ended.append(Exit(pid, None))
            continue
        if done == pid:
            ended.append(Exit(pid, os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime))
    return ended


def signal_process(pid: int, sig: int) -> None:
    """Send ``sig`` to ``pid``; nothing if it is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def signal_group(pid: int, sig: int) -> None:
    """Send ``sig`` to the process group ``pid`` leads; to the process alone if it leads none (or the
    group may not be signalled); nothing if it is gone."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        signal_process(pid, sig)


def stop(pids: Iterable[int], timeout: float, *, poll: float, group: bool = False,
         on_exit: Callable[[Exit], object] = lambda ended: None) -> list[int]:
    """End the children ``pids``: SIGTERM to all at once, SIGKILL to those left after ``timeout`` seconds.

    While waiting, the children are reaped every ``poll`` seconds and ``on_exit``
    gets the :class:`Exit` of each that ended (the caller counts and logs it as
    it does any other exit). Returns the pids that needed SIGKILL, in the order
    given; each has been waited for and is gone. With ``group`` every signal goes
    to the child's process group (children forked with ``new_session``).
    Bounded by ``timeout`` plus one ``poll``, plus the SIGKILLed children's exits.
    """
    send = signal_group if group else signal_process
    left = list(pids)
    for pid in left:
        send(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while left and time.monotonic() < deadline:
        for ended in reap(left):
            left.remove(ended.pid)
            on_exit(ended)
        time.sleep(poll)
    for pid in left:
        send(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    return left
