"""A warm ClientApp executor: one pre-warmed process runs the ClientApps of many SuperNodes.

Stock Flower starts a fresh ``flwr-clientapp`` process per message (per
SuperNode, through its own SuperExec), and each one imports torch and flwr
again: on a 2-core machine 53 SuperNodes then never answer in time. Here the
SuperNodes run with ``--isolation process`` (their tasks wait on their Runtime
APIs) and one long-lived executor process

1. imports the heavy modules once (``preload``: torch, flwr, ...) and warms
   torch (one optimiser step: its first one lazily imports ``torch._dynamo``);
2. polls every SuperNode's Runtime API for a ClientApp task (``AcquireTask``,
   what ``flower-superexec`` does for one SuperNode), round-robin, and only
   while it has a free slot: an unclaimed task simply stays pending;
3. forks one child per task (:class:`ForkExecutor`, with :mod:`core.processes`),
   which runs Flower's own ``run_clientapp`` against that SuperNode and leaves
   with ``os._exit``; ``capacity`` children at most; children are reaped every
   loop (no zombies) and exit by themselves if the executor dies (Flower's
   parent monitor).

Why fork and not threads: ``run_clientapp`` ends in ``sys.exit``, installs
signal handlers and exit hooks, and keeps task identity in process globals.
A forked child inherits the warm imports (copy-on-write) and nothing leaks
between tasks.

:class:`ForkExecutor` implements Flower's SuperExec ``Executor`` protocol
(``flwr.supercore.superexec.executor.types``: ``get_eligible_capacity``,
``wait_for_capacity``, ``launch``, ``reconcile``, ``close``), so it could
serve as an executor type of ``flower-superexec`` as well;
:func:`serve` is the loop that feeds it from many Runtime APIs.

    python -m clients.executor --runtime-api 127.0.0.1:9100 127.0.0.1:9101 ... [--capacity 4]
"""

from __future__ import annotations

import argparse
import functools
import gc
import hashlib
import importlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from threading import Event

from core import fetch_backoff, processes

log = logging.getLogger("clients.executor")

CLIENT_APP = "flwr-clientapp"  # flwr.supercore.constant.TaskType.CLIENT_APP
DEFAULT_PRELOAD = ("torch", "numpy", "confluent_kafka", "hydra", "omegaconf", "flwr.clientapp",
                   "flwr.supernode.runtime.run_clientapp")
# The project's own packages come fresh from each task's app bundle (FAB), never from the parent.
PROJECT_DIR = Path(__file__).resolve().parents[1]


@dataclass
class Child:
    pid: int
    task_id: int
    runtime_api_address: str
    started: float = field(default_factory=time.monotonic)


@dataclass
class ExecutorStats:
    launched: int = 0
    succeeded: int = 0
    failed: int = 0  # non-zero exit or killed by a signal
    rejected: int = 0  # launch refused: no free slot
    task_seconds: float = 0.0  # wall time of finished tasks, fork to exit
    task_cpu_seconds: float = 0.0  # their CPU time (user + system), from the kernel's accounting
    announced: int = 0  # tasks a SuperNode told us of (serve with wakeups)
    polls: int = 0  # AcquireTask requests sent

    def finished(self) -> int:
        return self.succeeded + self.failed


def run_flower_clientapp(runtime_api_address: str, token: str, insecure: bool,
                         root_certificates_path: str | None, parent_pid: int | None) -> None:
    """What a child runs: Flower's own ClientApp process main, in this (forked) process."""
    flower = importlib.import_module("flwr.supernode.runtime.run_clientapp")
    # The module's own name (it imported the function), so this child's installs go through the marker.
    flower.install_from_fab = install_once(flower.install_from_fab)  # type: ignore[attr-defined]
    certificates = Path(root_certificates_path).read_bytes() if root_certificates_path else None
    flower.run_clientapp(runtime_api_address=runtime_api_address, token=token, insecure=insecure,
                         certificates=certificates, parent_pid=parent_pid, runtime_dependency_install=False)


class ForkExecutor:
    """Runs each ClientApp task in a child forked from this warm process; ``capacity`` at a time.

    Implements ``flwr.supercore.superexec.executor.types.Executor``.
    """

    def __init__(self, capacity: int, target: Callable[..., None] = run_flower_clientapp) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.target = target  # tests swap in their own
        # Found once, not in every child: after warm-up the parent imports no more of the project.
        self.project_modules = project_modules()
        self.bundle = WarmBundle()
        self.children: dict[int, Child] = {}
        self.stats = ExecutorStats()

    # --- Flower's Executor protocol -------------------------------------------------------
    def get_eligible_capacity(self, supported_task_types: set[str], *, insecure: bool = False,
                              root_certificates_path: str | None = None) -> tuple[set[str], set[str]]:
        """The task types that may be acquired now: ClientApps, while a slot is free."""
        del insecure, root_certificates_path
        self.reconcile()
        if len(self.children) >= self.capacity:
            return set(), set()
        return {t for t in supported_task_types if t == CLIENT_APP}, set()

    def wait_for_capacity(self, task_type: str | None = None, *, fab_hash: str | None = None,
                          insecure: bool = False, root_certificates_path: str | None = None,
                          timeout: float | None = None) -> None:
        del task_type, fab_hash, insecure, root_certificates_path
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.reconcile()
            if len(self.children) < self.capacity or (deadline is not None and time.monotonic() > deadline):
                return
            time.sleep(0.02)

    def launch(self, spec: object) -> object:
        """Fork a child for ``spec`` (a Flower ``ExecutionSpec``); returns a Flower ``LaunchResult``."""
        from flwr.supercore.superexec.executor.types import LaunchResult

        task_type = str(getattr(spec, "task_type", ""))
        if task_type != CLIENT_APP:
            return LaunchResult.failed(f"only {CLIENT_APP} tasks run here, got {task_type!r}")
        self.reconcile()
        if len(self.children) >= self.capacity:
            self.stats.rejected += 1
            return LaunchResult.capacity_rejected(f"{len(self.children)} of {self.capacity} slots busy")
        address, token, task_id = spec.runtime_api_address, spec.token, spec.task_id  # type: ignore[attr-defined]
        args = (address, token, spec.insecure, spec.root_certificates_path, os.getpid())  # type: ignore[attr-defined]
        pid = processes.fork(functools.partial(_run_task, self.target, args,
                                               ChildImports(self.bundle.folder, [*self.project_modules,
                                                                                  *self.bundle.modules])))
        self.children[pid] = Child(pid, task_id, address)
        self.stats.launched += 1
        return LaunchResult.accepted()

    def reconcile(self) -> bool:
        """Reap finished children (no zombies); True if any finished."""
        ended = processes.reap(self.children)
        for exit_ in ended:
            self._finished(exit_)
        return bool(ended)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the children: SIGTERM, then SIGKILL after ``timeout``; reap all of them."""
        for pid in processes.stop(self.children, timeout, poll=0.05, on_exit=self._finished):
            self.children.pop(pid, None)  # killed: counted neither as succeeded nor as failed

    def _finished(self, exit_: processes.Exit) -> None:
        """Forget a child that ended and count it (a warning if it failed)."""
        child = self.children.pop(exit_.pid)
        code = exit_.code
        if code is None:  # collected by someone else: how it ended is unknown, so not counted
            return
        self.stats.task_seconds += time.monotonic() - child.started
        self.stats.task_cpu_seconds += exit_.cpu_seconds
        if code == 0:
            self.stats.succeeded += 1
            self.bundle.refresh(self.project_modules)
        else:
            self.stats.failed += 1
            log.warning("task %d for %s: ClientApp exited with %s after %.1fs", child.task_id,
                        child.runtime_api_address, f"signal {-code}" if code < 0 else f"code {code}",
                        time.monotonic() - child.started)


@dataclass
class ChildImports:
    """What a child may keep of the parent's imports: the modules of ``bundle`` (None: none), if its task
    runs that installed bundle; else ``forget`` goes, and the task imports its own bundle afresh."""

    bundle: Path | None
    forget: list[str]

    def settle(self, folder: Path | None) -> None:
        """Keep the parent's modules for the task's bundle ``folder`` if they are its own; else forget them."""
        if folder is None or folder != self.bundle:
            for name in self.forget:
                sys.modules.pop(name, None)
            if self.bundle is not None and str(self.bundle) in sys.path:
                sys.path.remove(str(self.bundle))
        self.forget = []


_CHILD: ChildImports | None = None  # in a child: decided once its bundle is installed (install_once)


def _run_task(target: Callable[..., None], args: tuple, imports: ChildImports) -> None:
    """What the forked child runs (:func:`core.processes.fork` gives it default signals and its exit code):
    the task, with the parent's imports kept only for the bundle they came from."""
    global _CHILD
    if imports.bundle is None:
        imports.settle(None)  # nothing to keep: the task's app bundle loads its own code
    _CHILD = imports
    target(*args)


def install_once(install: Callable[..., Path]) -> Callable[..., Path]:
    """Flower's ``install_from_fab`` for a ClientApp child, done once per bundle.

    Flower unzips the bundle into a temporary folder and checks every file's hash on each task, only
    to find the same folder installed already (a sixth of a child's CPU, py-spy, issue 22). The first
    child to install a bundle leaves a marker named by the SHA-256 of the whole bundle after the
    install ends; a later child with the same bytes takes the folder the marker names.
    """
    def installed_or_install(fab_file: Path | bytes, *args: object, **kwargs: object) -> Path:
        if not isinstance(fab_file, bytes) or args or kwargs.get("install_dir") is not None:
            return install(fab_file, *args, **kwargs)
        from flwr.common.constant import APP_DIR
        from flwr.supercore.utils import get_flwr_home

        apps = get_flwr_home() / APP_DIR
        marker = apps / f".fab-{hashlib.sha256(fab_file).hexdigest()}"
        folder = installed_folder(marker)
        if folder is None:
            folder = install(fab_file, **kwargs)
            partial = marker.with_name(f"{marker.name}.{os.getpid()}")
            partial.write_text(folder.name)
            partial.replace(marker)  # atomic: a reader sees no marker or a whole one
        if _CHILD is not None:
            _CHILD.settle(folder)
        return folder
    return installed_or_install


def installed_folder(marker: Path) -> Path | None:
    """The installed bundle folder an ``install_once`` marker names; None if it names none (or nothing
    that is a folder of Flower's apps)."""
    try:
        folder = marker.parent / marker.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return folder if folder.parent == marker.parent and folder.is_dir() else None


class WarmBundle:
    """The app bundle the executor imports itself, so that its children need not.

    Importing the bundle's ClientApp (our configs' dataclasses, the model, the contract) was the
    largest part of a child's CPU (28 %, py-spy, issue 22). Once a bundle is installed (the newest
    ``install_once`` marker), the parent imports its ClientApp module from the installed folder; a
    child whose task runs that same folder keeps those modules, any other child forgets them and
    imports its own bundle as before. A bundle that fails to import here is left to the children.
    """

    def __init__(self) -> None:
        self.folder: Path | None = None
        self.modules: list[str] = []
        self.marker_time = 0.0  # of the marker the bundle came from: only a newer one replaces it

    def refresh(self, project: Sequence[str]) -> None:
        from flwr.common.constant import APP_DIR
        from flwr.supercore.utils import get_flwr_home

        try:
            newest = max((m.stat().st_mtime, m) for m in (get_flwr_home() / APP_DIR).glob(".fab-*")
                         if "." not in m.name[5:])
        except (OSError, ValueError):
            return  # no bundle installed yet
        folder = installed_folder(newest[1])
        if newest[0] <= self.marker_time or folder is None or folder == self.folder:
            return
        self.marker_time = newest[0]
        self.load(folder, project)

    def load(self, folder: Path, project: Sequence[str]) -> None:
        import tomllib

        for name in [*project, *self.modules]:
            sys.modules.pop(name, None)
        if self.folder is not None and str(self.folder) in sys.path:
            sys.path.remove(str(self.folder))
        self.folder, self.modules = None, []
        try:
            reference = tomllib.loads((folder / "pyproject.toml").read_text())["tool"]["flwr"]["app"][
                "components"]["clientapp"]
            sys.path.insert(0, str(folder))
            importlib.import_module(str(reference).partition(":")[0])
        except Exception as exc:  # noqa: BLE001 - a bundle's code is the children's business
            log.warning("bundle %s not imported here (each task imports it): %s", folder.name, str(exc)[:200])
            for name in modules_under(folder):
                sys.modules.pop(name, None)
            if str(folder) in sys.path:
                sys.path.remove(str(folder))
            return
        self.folder, self.modules = folder, modules_under(folder)
        gc.collect()
        gc.freeze()
        log.info("bundle %s imported here (%d modules): its tasks start warm", folder.name, len(self.modules))


def modules_under(folder: Path) -> list[str]:
    return [name for name, module in list(sys.modules.items())
            if (path := getattr(module, "__file__", None)) and Path(path).is_relative_to(folder)]


def project_modules() -> list[str]:
    """The project's own modules imported here (not the virtualenv's), which a child must not reuse."""
    venv = PROJECT_DIR / ".venv"
    names = []
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if path and Path(path).is_relative_to(PROJECT_DIR) and not Path(path).is_relative_to(venv) \
                and name != __name__:
            names.append(name)
    return names


def warm_up(preload: Iterable[str]) -> list[str]:
    """Import ``preload`` (and run one torch optimiser step) so every forked child starts warm."""
    loaded = []
    for name in preload:
        try:
            importlib.import_module(name)
            loaded.append(name)
        except ImportError as exc:
            log.warning("preload %s: %s", name, exc)
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(1)  # fork a single-threaded torch (a threaded one can deadlock a child)
        param = torch.nn.Parameter(torch.zeros(1))
        optimiser = torch.optim.Adam([param])
        param.sum().backward()
        optimiser.step()  # the first step imports torch._dynamo: once here, not in every child
    # Out of the garbage collector's sight: a collection in a child would otherwise write to (and so
    # copy) every page of the parent's objects it visits.
    gc.collect()
    gc.freeze()
    return loaded


class RuntimeApi:
    """One SuperNode's Runtime API, as the executor polls it."""

    def __init__(self, address: str, insecure: bool, root_certificates_path: str | None) -> None:
        from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
        from flwr.supercore.runtime import RuntimeHttpClient

        self.address, self.insecure, self.root_certificates_path = address, insecure, root_certificates_path
        # No retry invoker: a SuperNode that is down must not stall the others; the loop retries later.
        self.client = RuntimeHttpClient.from_server_address(
            server_address=address, insecure=insecure, root_certificates=None if insecure else root_certificates_path,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")])
        self.reachable = True

    def acquire(self, task_types: set[str]) -> tuple[str, object] | None:
        """``(token, task)`` of the oldest pending ClientApp task, or None."""
        from flwr.proto.runtime_pb2 import AcquireTaskRequest

        reply = self.client.AcquireTask(AcquireTaskRequest(supported_task_types=sorted(task_types)))
        if reply.HasField("task") and reply.token:
            return reply.token, reply.task
        return None

    def close(self) -> None:
        self.client.close()


class Wakeups:
    """The datagram socket our SuperNodes announce a new task on (``clients/supernodes.py`` sends its
    runtime port): in the run folder, so only its owner can write to it."""

    def __init__(self, path: str, apis: Sequence[RuntimeApi]) -> None:
        import socket

        Path(path).unlink(missing_ok=True)
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        old = os.umask(0o177)
        try:
            self.socket.bind(path)
        finally:
            os.umask(old)
        self.socket.setblocking(False)
        self.by_port = {int(api.address.rsplit(":", 1)[1]): api for api in apis}
        self.path = path

    def wait(self, timeout: float) -> list[RuntimeApi]:
        """The APIs announced within ``timeout`` seconds (at once if some are waiting already)."""
        import select

        ready, _, _ = select.select([self.socket], [], [], max(timeout, 0.0))
        announced: list[RuntimeApi] = []
        while ready:
            try:
                data = self.socket.recv(64)
            except BlockingIOError:
                break
            api = self.by_port.get(int(data)) if data.isdigit() else None  # anything else: ignored
            if api is not None and api not in announced:
                announced.append(api)
        return announced

    def close(self) -> None:
        self.socket.close()
        Path(self.path).unlink(missing_ok=True)


def serve(apis: Sequence[RuntimeApi], executor: ForkExecutor, stop: Event, poll_interval: float = 0.2,
          log_every: float = 30.0, wakeups: Wakeups | None = None, full_pass_every: float = 30.0) -> ExecutorStats:
    """Acquire tasks and launch each while a slot is free, until ``stop``.

    Without ``wakeups``: every Runtime API round-robin, ``poll_interval`` apart when idle (53 nodes at
    0.2 s: ~150 requests/s, most of the idle SuperNodes' CPU). With them: a node that has announced a
    task once (our warm SuperNodes do) is asked only when it announces one (again until it has none),
    and once per ``full_pass_every`` in case a word was lost (the executor restarted); a node that
    never announced (a stock SuperNode) is polled as without them.
    """
    start, last_log, logged = 0, time.monotonic(), ExecutorStats()
    pending: list[RuntimeApi] = []  # with wakeups: the nodes that may hold a task
    announcing: set[int] = set()  # ids of the nodes that announce their tasks: no need to poll them
    next_full_pass = time.monotonic() + full_pass_every
    while not stop.is_set():
        polled = [apis[(start + i) % len(apis)] for i in range(len(apis))
                  if wakeups is None or id(apis[(start + i) % len(apis)]) not in announcing]
        start = (start + 1) % max(len(apis), 1)  # fairness: the next pass starts one SuperNode later
        if wakeups is not None and time.monotonic() >= next_full_pass:
            polled, next_full_pass = list(apis), time.monotonic() + full_pass_every
        due = [*pending, *(a for a in polled if a not in pending)]
        held: list[RuntimeApi] = []  # gave a task (may hold more), or not asked for want of a free slot
        for i, api in enumerate(due):
            task_types, _ = executor.get_eligible_capacity({CLIENT_APP})
            if not task_types:
                held += due[i:]
                break
            executor.stats.polls += 1
            if _acquire_and_launch(api, task_types, executor):
                held.append(api)
        if time.monotonic() - last_log >= log_every:
            last_log, logged = time.monotonic(), _log_progress(executor, logged, apis)
        if wakeups is None:
            if not held:
                stop.wait(poll_interval)
            continue
        # Idle: sleep until a node announces a task (1 s at most, for the stop flag) or a full pass is
        # due; a short wait while some node must still be polled or asked again.
        must_poll = held or len(announcing) < len(apis)
        heard = wakeups.wait(poll_interval if must_poll else min(1.0, max(0.0, next_full_pass - time.monotonic())))
        executor.stats.announced += len(heard)
        announcing |= {id(a) for a in heard}
        pending = held + [a for a in heard if a not in held]
    return executor.stats


def _acquire_and_launch(api: RuntimeApi, task_types: set[str], executor: ForkExecutor) -> bool:
    """Ask one Runtime API for a task and launch it; whether there was one."""
    from flwr.supercore.superexec.executor.types import ExecutionSpec, LaunchResultStatus

    try:
        hit = api.acquire(task_types)
    except Exception as exc:  # noqa: BLE001 - a SuperNode that is down or restarting: try it next time
        if api.reachable:
            log.warning("SuperNode runtime API %s unreachable: %s", api.address, exc)
        api.reachable = False
        return False
    if not api.reachable:
        log.info("SuperNode runtime API %s reachable again", api.address)
        api.reachable = True
    if hit is None:
        return False
    token, task = hit
    spec = ExecutionSpec(task_type=CLIENT_APP, runtime_api_address=api.address, token=token,  # type: ignore[arg-type]
                         insecure=api.insecure, root_certificates_path=api.root_certificates_path,
                         runtime_dependency_install=False, parent_pid=os.getpid(), suppress_output=False,
                         task_id=int(task.task_id))  # type: ignore[attr-defined]
    result = executor.launch(spec)
    if getattr(result, "status", None) != LaunchResultStatus.ACCEPTED:
        log.warning("task %d from %s not launched: %s", spec.task_id, api.address, result)
    return True


def _log_progress(executor: ForkExecutor, logged: ExecutorStats, apis: Sequence[RuntimeApi]) -> ExecutorStats:
    s = executor.stats
    done = s.finished() - logged.finished()
    per_task = (f"; per task {(s.task_seconds - logged.task_seconds) / done:.2f}s, CPU "
                f"{(s.task_cpu_seconds - logged.task_cpu_seconds) / done:.2f}s" if done else "")
    log.info("%d running, %d launched, %d ok, %d failed%s; %d of %d SuperNodes reachable",
             len(executor.children), s.launched, s.succeeded, s.failed, per_task,
             sum(a.reachable for a in apis), len(apis))
    return ExecutorStats(**vars(s))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runtime-api", nargs="+", required=True, metavar="HOST:PORT",
                        help="the SuperNodes' Runtime API addresses (--host/--port of flower-supernode)")
    parser.add_argument("--capacity", type=int, default=4, help="ClientApps running at once")
    parser.add_argument("--poll-interval", type=float, default=0.2, help="seconds between polls when idle")
    parser.add_argument("--preload", default=",".join(DEFAULT_PRELOAD), help="modules to import before forking")
    parser.add_argument("--root-certificates", default=None, help="CA of TLS Runtime APIs (default: plain HTTP)")
    parser.add_argument("--wake-socket", default=None,
                        help="a datagram socket to bind: the SuperNodes announce new tasks there (no polling)")
    parser.add_argument("--full-pass-seconds", type=float, default=30.0,
                        help="with --wake-socket: poll every node once this often anyway")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP request otherwise
    logging.getLogger("flwr").propagate = False  # Flower logs through its own handler; no second copy
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported
    # Every child imports the app bundle's modules afresh; without their bytecode on disk each one compiled
    # them again (a fifth of a ClientApp's CPU under PYTHONDONTWRITEBYTECODE=1, py-spy, issue 22). The
    # first child writes it into the installed bundle; the others read it.
    sys.dont_write_bytecode = False
    started = time.monotonic()
    loaded = warm_up([m for m in args.preload.split(",") if m])
    fetch_backoff.shorten(fetch_backoff.CLIENTAPP_FETCH)  # the children inherit it
    log.info("warm in %.1fs (%s); serving %d SuperNodes, capacity %d", time.monotonic() - started,
             ", ".join(loaded), len(args.runtime_api), args.capacity)
    stop = Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    executor = ForkExecutor(args.capacity)
    insecure = args.root_certificates is None
    apis = [RuntimeApi(address, insecure, args.root_certificates) for address in args.runtime_api]
    wakeups = Wakeups(args.wake_socket, apis) if args.wake_socket else None
    try:
        stats = serve(apis, executor, stop, poll_interval=args.poll_interval, wakeups=wakeups,
                      full_pass_every=args.full_pass_seconds)
    finally:
        if wakeups is not None:
            wakeups.close()
        executor.close()
        for api in apis:
            api.close()
    log.info("stopped: %d launched, %d ok, %d failed, %d refused for capacity; %d announced by SuperNodes, "
             "%d polls", stats.launched, stats.succeeded, stats.failed, stats.rejected, stats.announced, stats.polls)


if __name__ == "__main__":
    main()
