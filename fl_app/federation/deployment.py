"""A deployed federation: a SuperLink, one SuperNode per device, the run submitted to it, kept alive.

With warm isolation (``fl.isolation=warm``, the default) one parent forks the
SuperNodes (``clients/supernodes.py``) and one executor runs their ClientApps
(``clients/executor.py``); with ``subprocess``, stock Flower processes.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from core.atomic import write_text
from core.certs import CertPaths
from core.config import PROJECT_ROOT, AppConfig
from core.services.runner import KILL_WAIT_SECONDS, ManagedProcess, kill_all
from fl_app.federation.security import ensure_certificates, superlink_flags, supernode_flags
from fl_app.federation.settings import devices, every_device, run_settings

log = logging.getLogger(__name__)

FEDERATION = "fl-iot"  # the SuperLink connection's name in $FLWR_HOME/config.toml
FLWR_PROCESSES = ("flwr-serverapp", "flower-superexec", "flwr-clientapp")
OBJECT_TRANSFERS = 16  # concurrent object uploads/downloads per Flower process (Flower's default: 2)


def flwr_home(cfg: AppConfig) -> Path:
    return Path(cfg.paths.run_dir) / "flwr"


def _env(cfg: AppConfig) -> dict[str, str]:
    import sys

    # The SuperLink and SuperNodes start flower-superexec / flwr-serverapp / flwr-clientapp from PATH.
    return {"PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            "FLWR_HOME": str(flwr_home(cfg)), "FLWR_TELEMETRY_ENABLED": "0",
            # Flower uploads and downloads a message's objects 2 at a time by default; a tick's 53
            # train messages then took the ServerApp 5-6 s to upload (~0.2 s per request), and every
            # device waited for its share (benchmarks/fl_supernodes.py).
            "FLWR_PRIVATE_MAX_CONCURRENT_OBJ_PUSHES": str(OBJECT_TRANSFERS),
            "FLWR_PRIVATE_MAX_CONCURRENT_OBJ_PULLS": str(OBJECT_TRANSFERS)}


def control_address(cfg: AppConfig) -> str:
    """The SuperLink's Control and Runtime APIs (``flwr``, the ServerApp): ``fl.control_address``, by
    default loopback at the Fleet API's port - 1 (9090; + 1 was 9092, the local Kafka broker's).
    Never a device's address (core/config.py checks)."""
    from core.config import host_port

    return cfg.fl.control_address or f"127.0.0.1:{host_port(cfg.fl.superlink_address)[1] - 1}"


def superlink_process(cfg: AppConfig) -> ManagedProcess:
    """Our SuperLink launcher (``fl_app/federation/superlink.py``): the Fleet API alone on
    ``fl.superlink_address``, which devices reach; everything else on :func:`control_address`."""
    import sys

    from core.config import ConfigError, host_port
    from core.services.runner import port_is_open

    host, port = host_port(cfg.fl.superlink_address)
    control_host, control_port = host_port(control_address(cfg))
    if control_port == port:
        raise ConfigError(f"fl.control_address must use another port than fl.superlink_address ({port})")
    return ManagedProcess(
        name="fl_superlink",
        argv=[sys.executable, "-m", "fl_app.federation.superlink", "--fleet-host", host, "--fleet-port", str(port),
              *superlink_flags(cfg), "--disable-runtime-dependency-installation",
              "--host", control_host, "--port", str(control_port)],
        run_dir=Path(cfg.paths.run_dir), logs_dir=Path(cfg.paths.logs_dir),
        ports=[(host, port), (control_host, control_port)],
        health_check=lambda: port_is_open(host, port) and port_is_open(control_host, control_port),
        env={**_env(cfg), "PYTHONPATH": str(PROJECT_ROOT)}, cwd=PROJECT_ROOT, startup_timeout=60, stop_timeout=10,
        address=f"{host}:{port} (control {control_host}:{control_port})")


def supernode_process(cfg: AppConfig, index: int, device: int, node_config: str = "") -> ManagedProcess:
    port = cfg.fl.supernode_base_port + index
    if cfg.kafka.sasl.enabled:  # the device's own Kafka login: a file path, never the password
        from core import kafka_auth

        login = json.dumps(str(kafka_auth.device_credentials_file(cfg.kafka, device)))
        node_config = f"{kafka_auth.KAFKA_CREDENTIALS}={login} {node_config}"
    return ManagedProcess(
        name=f"fl_supernode_{device}",
        argv=[_bin("flower-supernode"), *supernode_flags(cfg, device), "--superlink", cfg.fl.superlink_address,
              "--host", "127.0.0.1", "--port", str(port), "--node-config", f"device-id={device} {node_config}".strip(),
              # warm: the SuperNode starts no SuperExec; its tasks wait for the executor (executor_process)
              *(["--isolation", "process"] if cfg.fl.isolation == "warm" else [])],
        run_dir=Path(cfg.paths.run_dir), logs_dir=Path(cfg.paths.logs_dir) / "supernodes",
        ports=[("127.0.0.1", port)], health_check=None, env=_env(cfg), startup_timeout=2, stop_timeout=5,
        address=f"127.0.0.1:{port}")




def write_flwr_config(cfg: AppConfig) -> None:
    """``$FLWR_HOME/config.toml``: how the ``flwr`` CLI reaches our SuperLink's Control API (and trusts
    it, with TLS)."""
    home = flwr_home(cfg)
    home.mkdir(parents=True, exist_ok=True)
    trust = (f'root-certificates = "{CertPaths(Path(cfg.fl.security.certs_dir)).ca_cert}"\n'
             if cfg.fl.security.tls else "insecure = true\n")
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{FEDERATION}"\n\n[superlink.{FEDERATION}]\n'
        f'address = "{control_address(cfg)}"\n{trust}')


def register_supernodes(cfg: AppConfig) -> int:
    """Register every device's public key with the SuperLink (what ``flwr supernode register`` does),
    those of devices left to other machines too; returns how many were new. Needs a running SuperLink;
    a key registered before counts as done.

    In this process over one Control API connection: 53 keys took 0.3 s, where one ``flwr`` CLI
    call per key took 1.2 s each (64 s)."""
    from cryptography.hazmat.primitives import serialization
    from flwr.cli.flower_config import read_superlink_connection
    from flwr.cli.utils import init_http_client_from_connection
    from flwr.proto.control_pb2 import RegisterNodeRequest
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes
    from httpx import HTTPError, HTTPStatusError

    write_flwr_config(cfg)
    paths = CertPaths(Path(cfg.fl.security.certs_dir))
    # The CLI's connection settings come from $FLWR_HOME/config.toml; it prints "Using SuperLink ...".
    with _flwr_home(cfg), contextlib.redirect_stdout(io.StringIO()):
        client = init_http_client_from_connection(read_superlink_connection(FEDERATION))
    new = 0
    try:
        for device in every_device(cfg):
            key = serialization.load_ssh_public_key(paths.supernode_public_key(device).read_bytes())
            try:
                client.RegisterNode(RegisterNodeRequest(public_key=public_key_to_bytes(key),  # type: ignore[arg-type]
                                                        name=f"device-{device}"))
                new += 1
            except HTTPStatusError as exc:
                if "already in use" not in exc.response.text:
                    raise RuntimeError(f"registering device {device}'s SuperNode key failed: "
                                       f"{exc.response.text[:300]}") from None
            except HTTPError as exc:
                raise RuntimeError(f"registering device {device}'s SuperNode key failed: {exc}") from None
    finally:
        client.close()
    return new


@contextlib.contextmanager
def _flwr_home(cfg: AppConfig) -> Iterator[None]:
    before = os.environ.get("FLWR_HOME")
    os.environ["FLWR_HOME"] = str(flwr_home(cfg))
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("FLWR_HOME", None)
        else:
            os.environ["FLWR_HOME"] = before


def _bin(name: str) -> str:
    import sys

    return str(Path(sys.executable).parent / name)


def pull_seconds(cfg: AppConfig) -> float:
    """``fl.supernode_pull_seconds``, or a third of the training interval within Flower's 3 s and 10 s."""
    if cfg.fl.supernode_pull_seconds is not None:
        return cfg.fl.supernode_pull_seconds
    return min(10.0, max(3.0, cfg.fl.local_training_interval_seconds / 3))


def wake_socket(cfg: AppConfig) -> Path:
    """Where the warm executor hears of new tasks: a socket in a folder of this user's only (0700).
    Not in the run folder: a socket path has at most 107 bytes, and a test's run folder is often longer."""
    import hashlib
    import tempfile

    folder = Path(tempfile.gettempdir()) / f"fl-app-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    if folder.stat().st_uid != os.getuid() or folder.stat().st_mode & 0o077:
        raise RuntimeError(f"{folder} must be this user's own folder (mode 0700): another user made it")
    tag = hashlib.sha256(str(Path(cfg.paths.run_dir).resolve()).encode()).hexdigest()[:16]
    return folder / f"executor-{tag}.sock"


def executor_process(cfg: AppConfig) -> ManagedProcess:
    """The warm ClientApp executor (``clients/executor.py``) serving every local SuperNode's runtime API."""
    import sys

    addresses = [f"127.0.0.1:{cfg.fl.supernode_base_port + i}" for i in range(len(devices(cfg)))]
    return ManagedProcess(
        name="fl_executor",
        argv=[sys.executable, "-m", "clients.executor", "--capacity", str(cfg.fl.executor_capacity),
              "--poll-interval", str(cfg.fl.executor_poll_seconds), "--wake-socket", str(wake_socket(cfg)),
              "--full-pass-seconds", str(cfg.fl.executor_full_pass_seconds), "--runtime-api", *addresses],
        run_dir=Path(cfg.paths.run_dir), logs_dir=Path(cfg.paths.logs_dir), health_check=None,
        env={**_env(cfg), "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}, cwd=PROJECT_ROOT,
        startup_timeout=2, stop_timeout=10)


def supernodes_launcher(cfg: AppConfig, nodes: list[ManagedProcess], stagger_seconds: float) -> ManagedProcess:
    """Warm isolation: one parent (``clients/supernodes.py``) forks the SuperNodes ``nodes`` describe
    (their flags, pid files and logs), at half the memory of separate processes."""
    import sys

    from clients.supernodes import NodeSpec, save_spec

    spec = Path(cfg.paths.run_dir) / "fl_supernodes.json"

    def prepare() -> list[str]:
        save_spec(spec, [NodeSpec(n.name, list(n.argv[1:]), str(n.pid_file), str(n.log_file)) for n in nodes],
                  stagger_seconds)
        return [sys.executable, "-m", "clients.supernodes", "--spec", str(spec),
                "--pull-seconds", str(pull_seconds(cfg)), "--wake-socket", str(wake_socket(cfg)),
                "--heartbeat-seconds", str(cfg.fl.supernode_heartbeat_seconds)]

    return ManagedProcess(
        name="fl_supernodes", argv=[], prepare=prepare, run_dir=Path(cfg.paths.run_dir),
        logs_dir=Path(cfg.paths.logs_dir), health_check=lambda: all(n.pid() is not None for n in nodes),
        # Two malloc arenas, not one per thread (8 cores' worth): each SuperNode's 8-9 threads made arenas
        # of their own. 53 SuperNodes at 10/s in the pipeline benchmark: 2,128 -> 1,913 MB PSS (in a
        # running pipeline 502 -> 279 MB of it in arena mappings).
        env={**_env(cfg), "PYTHONPATH": str(PROJECT_ROOT), "MALLOC_ARENA_MAX": "2"}, cwd=PROJECT_ROOT,
        startup_timeout=30 + stagger_seconds * len(nodes), stop_timeout=20)


def processes(cfg: AppConfig, stagger_seconds: float = 0.5) -> list[ManagedProcess]:
    """SuperLink first, then one SuperNode per device; with warm isolation, then the parent that forks
    those SuperNodes and the executor that runs their ClientApps."""
    nodes = [supernode_process(cfg, i, d) for i, d in enumerate(devices(cfg))]
    if cfg.fl.isolation != "warm":
        return [superlink_process(cfg), *nodes]
    return [superlink_process(cfg), *nodes, supernodes_launcher(cfg, nodes, stagger_seconds),
            executor_process(cfg)]


def up(cfg: AppConfig, stagger_seconds: float = 0.5) -> str:
    """Start the SuperLink and the SuperNodes (staggered), then submit the run; returns its id."""
    import time

    if cfg.fl.security.tls:
        ensure_certificates(cfg)
    superlink, *others = processes(cfg, stagger_seconds)
    superlink.start()
    if cfg.fl.security.supernode_auth:
        log.info("registered %d new SuperNode keys", register_supernodes(cfg))
    if cfg.fl.isolation == "warm":
        launcher, executor = others[-2:]  # the launcher forks the SuperNodes (staggered itself)
        launcher.start()
        executor.start()
    else:
        for node in others:
            node.start()
            time.sleep(stagger_seconds)  # all at once, many fail to register (measured: 28 of 53)
    return submit(cfg)


def submit(cfg: AppConfig, fresh: bool = True) -> str:
    """``flwr run`` the project's app against our SuperLink with the run config from Hydra. ``fresh``:
    a new run starts from the configuration (the operator's requests to an earlier one are cleared);
    a run resubmitted after its ServerApp died keeps them."""
    import subprocess

    from core.storage import Storage

    settings = run_settings(cfg)
    write_flwr_config(cfg)
    if fresh:
        with Storage.from_config(cfg.mongo) as store:
            store.clear_server_control()
    run_config = Path(cfg.paths.run_dir) / "fl_run_config.toml"
    # A JSON string literal is a valid TOML basic string.
    # It holds the MongoDB URI (with its password, if any): its owner's only.
    write_text(run_config, "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.to_run_config().items()),
               mode=0o600)
    proc = subprocess.run([_bin("flwr"), "run", str(PROJECT_ROOT), FEDERATION, "--run-config", str(run_config),
                           "--format", "json"], capture_output=True, text=True, env={**os.environ, **_env(cfg)},
                          timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"flwr run failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    try:
        return str(json.loads(proc.stdout)["run-id"])
    except (ValueError, KeyError):
        return proc.stdout.strip()[-200:]


def down(cfg: AppConfig) -> list[str]:
    """Stop the SuperNodes, the SuperLink, and the processes they leave behind (our FLWR_HOME's)."""
    stopped = [p.name for p in reversed(processes(cfg)) if p.stop()]
    stopped += _kill_strays(flwr_home(cfg))
    return stopped


def flwr_processes(home: Path, names: tuple[str, ...] = FLWR_PROCESSES) -> list[tuple[int, str]]:
    """``(pid, name)`` of Flower's ServerApp/SuperExec/ClientApp processes of this FLWR_HOME.

    The SuperLink starts them in sessions of their own, so stopping its process
    group misses them; their environment names our FLWR_HOME.
    """
    found = []
    marker = f"FLWR_HOME={home}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            name = next((n for n in names if n.encode() in cmdline), None)
            if name is not None and marker in (proc / "environ").read_bytes().split(b"\0"):
                found.append((int(proc.name), name))
        except OSError:
            continue
    return found


def _kill_strays(home: Path, timeout: float = 5.0) -> list[str]:
    """SIGKILL them and wait until they are gone (a killed process lingers for a moment)."""
    import signal
    import time

    killed = []
    for pid, name in flwr_processes(home):
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(name)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + timeout
    while killed and flwr_processes(home) and time.monotonic() < deadline:
        time.sleep(0.1)
    return killed


def serve(cfg: AppConfig) -> None:
    """Run the federation until SIGTERM/SIGINT (or the ServerApp's duration), then stop it all; a
    ServerApp that dies meanwhile is replaced (:func:`watch`)."""
    import signal

    if cfg.fl.runtime == "simulation":
        from fl_app.federation.simulation import simulate

        simulate(cfg)
        return
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        run_id = up(cfg)
        log.info("federation run %s submitted", run_id)
        watch(cfg, run_id, stop)
    finally:
        log.info("stopping the federation: %s", ", ".join(down(cfg)))


WATCH_SECONDS = 5.0  # at most, between two looks at the ServerApp (and at least one a local interval)
STARTUP_GRACE = 90.0  # seconds a submitted run may take to start its ServerApp (a loaded machine)


def watch(cfg: AppConfig, run_id: str, stop: threading.Event) -> None:
    """Keep one ServerApp alive until ``stop`` is set or the run completes (its duration is over).

    Every few seconds: is a ``flwr-serverapp`` process of our FLWR_HOME there? If not, the run's
    status (``flwr ls``) tells a completed run (the end) from a dead one: finished otherwise, or
    still "running" without its process at two looks in a row (a SIGKILL leaves the status for a
    while; before its process was first seen, only after :data:`STARTUP_GRACE`). A dead run is
    stopped and submitted again (:func:`resubmit`): the new ServerApp resumes from the newest
    global model. Restarts back off (5 s doubling to 80 s) while runs keep dying soon.
    """
    import time

    every = min(WATCH_SECONDS, cfg.fl.local_training_interval_seconds)
    submitted, seen, misses, quick_deaths = time.monotonic(), False, 0, 0
    end = submitted + cfg.fl.duration_seconds + 30 if cfg.fl.duration_seconds else math.inf
    while not stop.wait(every) and time.monotonic() < end:
        if flwr_processes(flwr_home(cfg), ("flwr-serverapp",)):
            seen, misses = True, 0
            continue
        status = run_status(cfg, run_id)
        if status == "finished:completed":
            log.info("federation run %s completed", run_id)
            return
        misses += 1
        finished = status is not None and status.startswith("finished")
        if not finished and (misses < 2 or not seen and time.monotonic() - submitted < STARTUP_GRACE):
            continue
        quick_deaths = quick_deaths + 1 if time.monotonic() - submitted < 10 * STARTUP_GRACE else 0
        pause = min(80.0, 5.0 * 2 ** (quick_deaths - 1)) if quick_deaths > 1 else 0.0
        log.error("the ServerApp of run %s is gone (run status %s); a new run in %.0fs resumes from the newest "
                  "global model", run_id, status or "unknown", pause)
        if stop.wait(pause):
            return
        run_id = resubmit(cfg, run_id)
        submitted, seen, misses = time.monotonic(), False, 0
        log.info("federation run %s submitted (replaces the dead one)", run_id)


def run_status(cfg: AppConfig, run_id: str) -> str | None:
    """The run's status as ``flwr ls`` reports it (``running``, ``finished:failed``, ...); None if it
    cannot be read."""
    import subprocess

    try:
        proc = subprocess.run([_bin("flwr"), "ls", FEDERATION, "--run-id", str(run_id), "--format", "json"],
                              capture_output=True, text=True, env={**os.environ, **_env(cfg)}, timeout=60)
        runs = json.loads(proc.stdout)["runs"]
        return str(runs[0]["status"]) if runs else None
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, IndexError, TypeError):
        return None


def resubmit(cfg: AppConfig, run_id: str) -> str:
    """Stop run ``run_id`` (``flwr stop``) and kill any ServerApp process left of it, so at most one
    ServerApp writes the rounds; then submit a new run (the operator's requests kept)."""
    import signal
    import subprocess
    import time

    try:
        subprocess.run([_bin("flwr"), "stop", str(run_id), FEDERATION, "--format", "json"], capture_output=True,
                       text=True, env={**os.environ, **_env(cfg)}, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("flwr stop %s failed: %s", run_id, exc)
    for pid, _ in flwr_processes(flwr_home(cfg), ("flwr-serverapp",)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while flwr_processes(flwr_home(cfg), ("flwr-serverapp",)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return submit(cfg, fresh=False)


def kill_leftovers(cfg: AppConfig) -> list[str]:
    """SIGKILL what a killed federation (``fl-app fl serve``) leaves running: the SuperLink, the
    SuperNodes and the executor run in sessions of their own, Flower's ServerApp and ClientApps too.
    Returns the names killed."""
    import signal
    import time

    # By their pid files (the deployment names them all fl_*), not processes(cfg): that needs
    # the data set's device list, and a stop must not depend on reading a data set.
    run_dir, logs_dir = Path(cfg.paths.run_dir), Path(cfg.paths.logs_dir)
    killed = kill_all([ManagedProcess(name=pid_file.stem, argv=[], run_dir=run_dir, logs_dir=logs_dir)
                        for pid_file in sorted(run_dir.glob("fl_*.pid"))])
    strays = flwr_processes(flwr_home(cfg))
    for pid, name in strays:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            killed.append(name)
    deadline = time.monotonic() + KILL_WAIT_SECONDS
    while strays and flwr_processes(flwr_home(cfg)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return sorted(set(killed), key=killed.index)
