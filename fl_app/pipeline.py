"""The pipeline's own processes, run in the background by `fl-app run`.

Each component runs as its own ``fl-app <command>`` process under the one
service-runner (pid file, log in ``logs/``, clean stop), composed from the
same Hydra overrides the user gave, so every process sees one configuration.
Today: the Flink job and the producer. Later issues add the Flower apps, Spark,
the API and Superset here.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from fl_app.config import AppConfig
from fl_app.services.runner import ManagedProcess, Status


def _fl_app_process(cfg: AppConfig, name: str, command: Sequence[str], overrides: Sequence[str]) -> ManagedProcess:
    return ManagedProcess(
        name=name,
        argv=[sys.executable, "-m", "fl_app.cli", *command, *overrides],
        run_dir=Path(cfg.paths.run_dir),
        logs_dir=Path(cfg.paths.logs_dir),
        health_check=None,  # alive = healthy; each component logs its own progress
        startup_timeout=5.0,
        stop_timeout=30.0,  # the producer flushes and saves its position on SIGTERM
    )


def processes(cfg: AppConfig, overrides: Sequence[str] = ()) -> list[ManagedProcess]:
    """The pipeline components in start order."""
    return [
        _fl_app_process(cfg, "flink_job", ["flink"], overrides),
        _fl_app_process(cfg, "kafka_producer", ["produce"], overrides),
    ]


def start(cfg: AppConfig, overrides: Sequence[str] = ()) -> list[Status]:
    return [proc.start() for proc in processes(cfg, overrides)]


def stop(cfg: AppConfig) -> list[str]:
    return [proc.name for proc in reversed(processes(cfg)) if proc.stop()]


def status(cfg: AppConfig) -> list[Status]:
    return [proc.status() for proc in processes(cfg)]
