"""A local Flink standalone session cluster: one JobManager and ``flink.local_cluster.taskmanagers``
TaskManagers, each a process of its own started by the launch scripts of the Flink distribution that
PyFlink ships in ``.venv-flink`` (``bin/jobmanager.sh`` / ``bin/taskmanager.sh start-foreground``).

It runs when ``flink.jobmanager`` names this machine (``flink=cluster``); the Flink job is then
submitted to it over REST (``fl-app flink``) instead of running on a mini-cluster of its own. The
cluster's configuration is the distribution's ``config.yaml`` with our addresses, ports, memory and
slots, written on every start to ``<run_dir>/flink-cluster/``.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from pathlib import Path
from typing import Any

from core.config import PROJECT_ROOT, AppConfig, host_port
from core.services.runner import LOOPBACK, ManagedProcess, ServiceError

JOBMANAGER = "flink_jobmanager"


def flink_env(cfg: AppConfig) -> Path:
    """The Flink job's virtualenv (PyFlink and the Flink distribution inside it)."""
    return Path(cfg.flink.python_env) if cfg.flink.python_env else PROJECT_ROOT / ".venv-flink"


def flink_home(cfg: AppConfig) -> Path:
    home = next(flink_env(cfg).glob("lib/python*/site-packages/pyflink"), None)
    if home is None or not (home / "bin" / "jobmanager.sh").is_file():
        raise ServiceError(f"PyFlink (and its Flink distribution) is not installed in {flink_env(cfg)}; "
                           "run `make setup`")
    return home


def rest_address(cfg: AppConfig) -> tuple[str, int]:
    return host_port(cfg.flink.jobmanager)


def runs_locally(cfg: AppConfig) -> bool:
    """Start our own cluster only when enabled and ``flink.jobmanager`` is this machine's."""
    if cfg.flink.jobmanager == "local" or not cfg.flink.local_cluster.enabled:
        return False
    return rest_address(cfg)[0] in LOOPBACK


def rest(cfg: AppConfig, path: str, method: str = "GET", timeout: float = 5.0) -> Any:
    """The JobManager's REST answer to ``path`` (JSON), e.g. ``/jobs/overview``."""
    host, port = rest_address(cfg)
    request = urllib.request.Request(f"http://{host}:{port}{path}", method=method)
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (http to our own cluster)
        body = response.read()
    return json.loads(body) if body else None


def taskmanager_ids(cfg: AppConfig) -> set[str]:
    """The resource ids of the TaskManagers registered with the JobManager now."""
    return {tm["id"] for tm in rest(cfg, "/taskmanagers", timeout=2.0)["taskmanagers"]}


def conf_dir(cfg: AppConfig) -> Path:
    return Path(cfg.paths.run_dir) / "flink-cluster"


def _nested(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1}`` as ``{"a": {"b": 1}}``: the distribution's config.yaml is nested, and a flat key
    beside a nested one of the same prefix would be a second, conflicting entry."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def write_conf(cfg: AppConfig) -> Path:
    """The cluster's configuration directory: the distribution's config and log4j files, our settings."""
    import yaml

    home = flink_home(cfg)
    target = conf_dir(cfg)
    target.mkdir(parents=True, exist_ok=True)
    for name in ("log4j-console.properties", "log4j.properties"):
        shutil.copyfile(home / "conf" / name, target / name)
    base = yaml.safe_load((home / "conf" / "config.yaml").read_text())
    host, port = rest_address(cfg)
    local = cfg.flink.local_cluster
    ours = {
        "jobmanager.bind-host": host, "jobmanager.rpc.address": host, "jobmanager.rpc.port": local.rpc_port,
        "jobmanager.memory.process.size": local.jobmanager_memory,
        "rest.address": host, "rest.bind-address": host, "rest.port": port,
        "taskmanager.bind-host": host, "taskmanager.host": host,
        "taskmanager.numberOfTaskSlots": local.slots_per_taskmanager,
        "taskmanager.memory.process.size": local.taskmanager_memory,
        # Subtasks over all TaskManagers rather than filling the first one's slots (Flink 2's
        # successor of cluster.evenly-spread-out-slots).
        "taskmanager.load-balance.mode": "SLOTS",
        "heartbeat.timeout": local.heartbeat_timeout_ms,
        "heartbeat.interval": max(1000, local.heartbeat_timeout_ms // 5),
        "parallelism.default": cfg.flink.parallelism,
    }
    (target / "config.yaml").write_text(yaml.safe_dump(_merge(base, _nested(ours)), sort_keys=False))
    return target


def _env(cfg: AppConfig) -> dict[str, str]:
    return {
        "FLINK_CONF_DIR": str(conf_dir(cfg)),
        "FLINK_LOG_DIR": str(Path(cfg.paths.logs_dir) / "flink"),
        "FLINK_PID_DIR": str(conf_dir(cfg)),  # the scripts' own pid files, else in /tmp for every cluster
        # Thread-mode operators embed the CPython found as `python3` on PATH (the Flink environment's)
        # and import the project's modules (core, stream.flink) from its root.
        "PATH": os.pathsep.join([str(flink_env(cfg) / "bin"), os.environ.get("PATH", "")]),
        "PYTHONPATH": str(PROJECT_ROOT),
    }


def _jobmanager_argv(cfg: AppConfig) -> list[str]:
    write_conf(cfg)
    (Path(cfg.paths.logs_dir) / "flink").mkdir(parents=True, exist_ok=True)
    return [str(flink_home(cfg) / "bin" / "jobmanager.sh"), "start-foreground"]


def _jobmanager_up(cfg: AppConfig) -> bool:
    return "flink-version" in rest(cfg, "/config", timeout=1.0)


def jobmanager_process(cfg: AppConfig) -> ManagedProcess:
    host, port = rest_address(cfg)
    return ManagedProcess(
        name=JOBMANAGER, argv=[], prepare=lambda: _jobmanager_argv(cfg),
        run_dir=Path(cfg.paths.run_dir), logs_dir=Path(cfg.paths.logs_dir),
        ports=[(host, port), (host, cfg.flink.local_cluster.rpc_port)], env=_env(cfg),
        health_check=lambda: _jobmanager_up(cfg),
        startup_timeout=cfg.flink.local_cluster.startup_timeout_seconds, address=f"{host}:{port}",
    )


def taskmanager_process(cfg: AppConfig, index: int) -> ManagedProcess:
    """TaskManager ``index`` (from 1), registered under the resource id ``tm-<index>``."""
    resource_id = f"tm-{index}"
    return ManagedProcess(
        name=f"flink_taskmanager_{index}",
        argv=[],
        prepare=lambda: [str(flink_home(cfg) / "bin" / "taskmanager.sh"), "start-foreground",
                         "-D", f"taskmanager.resource-id={resource_id}"],
        run_dir=Path(cfg.paths.run_dir), logs_dir=Path(cfg.paths.logs_dir), env=_env(cfg),
        health_check=lambda: resource_id in taskmanager_ids(cfg),
        startup_timeout=cfg.flink.local_cluster.startup_timeout_seconds, address=resource_id,
    )


def processes(cfg: AppConfig) -> list[ManagedProcess]:
    """The JobManager first, then the TaskManagers (each registers with it when it starts)."""
    return [jobmanager_process(cfg),
            *(taskmanager_process(cfg, i) for i in range(1, cfg.flink.local_cluster.taskmanagers + 1))]
