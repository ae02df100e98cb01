"""A local Spark standalone cluster: a master and ``spark.local_cluster.workers`` workers, each a
process of pyspark's own launcher (``bin/spark-class org.apache.spark.deploy.master.Master`` /
``...deploy.worker.Worker``).

It runs when ``spark.master`` is a ``spark://`` URL of this machine; the scorer and the batch are then
applications on it, their executors on the workers (``analytics/session.py``).
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from core.config import PROJECT_ROOT, AppConfig, ConfigError
from core.services.runner import LOOPBACK, ManagedProcess, ServiceError

MASTER = "spark_master"


def master_address(cfg: AppConfig) -> tuple[str, int]:
    parts = urlsplit(cfg.spark.master)
    if parts.scheme != "spark" or not parts.hostname:
        raise ConfigError(f"spark.master: a standalone master looks like spark://host:7077, got {cfg.spark.master!r}")
    return parts.hostname, parts.port or 7077


def runs_locally(cfg: AppConfig) -> bool:
    """Start our own cluster only when enabled and ``spark.master`` is a spark:// URL of this machine."""
    if not cfg.spark.master.startswith("spark://") or not cfg.spark.local_cluster.enabled:
        return False
    return master_address(cfg)[0] in LOOPBACK


def _spark_class() -> str:
    import pyspark  # only when starting: status and stop work without it

    path = Path(pyspark.__file__).parent / "bin" / "spark-class"
    if not path.is_file():
        raise ServiceError(f"pyspark's launcher is missing ({path}); run `make setup`")
    return str(path)


def status_json(cfg: AppConfig, timeout: float = 2.0) -> Any:
    """The master's own status page (``/json``): its state, workers, applications."""
    host, _ = master_address(cfg)
    url = f"http://{host}:{cfg.spark.local_cluster.webui_port}/json/"
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (our own master)
        return json.loads(response.read())


def alive_worker_ports(cfg: AppConfig) -> set[int]:
    return {w["port"] for w in status_json(cfg)["workers"] if w["state"] == "ALIVE"}


def _env(cfg: AppConfig) -> dict[str, str]:
    return {
        # Executors run this interpreter with the project on their path, like the driver.
        "PYSPARK_PYTHON": sys.executable, "PYTHONPATH": str(PROJECT_ROOT),
        "SPARK_LOG_DIR": str(Path(cfg.paths.logs_dir) / "spark"), "SPARK_PID_DIR": str(cfg.paths.run_dir),
        "SPARK_DAEMON_MEMORY": "256m",  # the master's and workers' own heaps; executors get theirs
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }


def master_process(cfg: AppConfig) -> ManagedProcess:
    host, port = master_address(cfg)
    webui = cfg.spark.local_cluster.webui_port
    return ManagedProcess(
        name=MASTER, argv=[],
        prepare=lambda: [_spark_class(), "org.apache.spark.deploy.master.Master",
                         "--host", host, "--port", str(port), "--webui-port", str(webui)],
        run_dir=Path(cfg.paths.run_dir), logs_dir=Path(cfg.paths.logs_dir), env=_env(cfg),
        ports=[(host, port), (host, webui)],
        health_check=lambda: status_json(cfg, timeout=1.0)["status"] == "ALIVE",
        startup_timeout=cfg.spark.local_cluster.startup_timeout_seconds, address=f"{host}:{port}",
    )


def worker_process(cfg: AppConfig, index: int) -> ManagedProcess:
    """Worker ``index`` (from 1), on port ``worker_base_port + index - 1``."""
    host, _ = master_address(cfg)
    local = cfg.spark.local_cluster
    port = local.worker_base_port + index - 1
    work_dir = Path(cfg.paths.data_dir) / "spark-work" / f"worker-{index}"

    def argv() -> list[str]:
        work_dir.mkdir(parents=True, exist_ok=True)
        return [_spark_class(), "org.apache.spark.deploy.worker.Worker", cfg.spark.master,
                "--host", host, "--port", str(port), "--webui-port", "0",
                "--cores", str(local.cores_per_worker), "--memory", local.worker_memory,
                "--work-dir", str(work_dir)]

    return ManagedProcess(
        name=f"spark_worker_{index}", argv=[], prepare=argv,
        run_dir=Path(cfg.paths.run_dir), logs_dir=Path(cfg.paths.logs_dir), env=_env(cfg),
        ports=[(host, port)], health_check=lambda: port in alive_worker_ports(cfg),
        startup_timeout=local.startup_timeout_seconds, address=f"{host}:{port}",
    )


def processes(cfg: AppConfig) -> list[ManagedProcess]:
    """The master first, then the workers (each registers with it when it starts)."""
    return [master_process(cfg), *(worker_process(cfg, i) for i in range(1, cfg.spark.local_cluster.workers + 1))]
