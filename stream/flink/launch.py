"""Turn the composed Hydra config into the Flink job's settings and command line.

Runs in the main environment (``fl-app flink``); the job itself runs in
``.venv-flink`` with the project root on ``PYTHONPATH`` so it can import the
shared contracts it needs (``core.records``, ``core.validation``,
``core.storage``, ``core.atomic``, ``stream.flink.settings``), none of which
needs Hydra or torch.
"""

from __future__ import annotations

import os
from pathlib import Path

from core import dataset, mongo_auth
from core.config import PROJECT_ROOT, AppConfig, ConfigError
from core.kafka_auth import FLINK_SHADED, java_properties
from core.records import SENSOR_FIELDS, window_partitions
from core.services import flink_cluster, jars
from core.services.flink_cluster import flink_env
from core.services.runner import ServiceError
from stream.flink.settings import JobSettings, latest_checkpoint

JAVA_SOURCES = Path(__file__).resolve().parent / "java"


def flink_python(cfg: AppConfig) -> Path:
    python = flink_env(cfg) / "bin" / "python"
    if not python.is_file():
        raise ServiceError(f"the Flink environment is missing ({python}); run `make setup`")
    return python


def job_jars(cfg: AppConfig) -> list[Path]:
    """The Kafka connector (Maven Central) and our two Java helpers, built against it."""
    cache = Path(cfg.paths.cache_dir)
    connector = sorted(jars.resolve("flink-kafka-connector", cache).glob("*.jar"))
    pyflink_lib = next(flink_env(cfg).glob("lib/python*/site-packages/pyflink/lib"), None)
    if pyflink_lib is None:
        raise ServiceError(f"PyFlink is not installed in {flink_env(cfg)}; run `make setup`")
    helpers = jars.build_java("flink-helpers", JAVA_SOURCES, [*connector, pyflink_lib / "*"], cache)
    return [*connector, helpers]


def settings(cfg: AppConfig, resume: bool = True) -> JobSettings:
    devices = dataset.device_ids(cfg.stream, cfg.paths.cache_dir)  # the only ones the job accepts
    if cfg.kafka.topics.windows.partitions < len(devices) and not cfg.kafka.sasl.enabled:
        raise ConfigError(f"kafka.topics.windows.partitions ({cfg.kafka.topics.windows.partitions}) must be at "
                          f"least the number of devices ({len(devices)}): each device has its own partition")
    checkpoint_dir = Path(cfg.flink.checkpoint_dir)
    resume_from = latest_checkpoint(checkpoint_dir) if resume else None
    if resume_from is not None:
        prune_checkpoints(checkpoint_dir, keep=resume_from.parent)
    return JobSettings(
        bootstrap_servers=cfg.kafka.bootstrap_servers,
        readings_topic=cfg.kafka.topics.readings.name,
        windows_topic=cfg.kafka.topics.windows.name,
        dead_letter_topic=cfg.kafka.topics.dead_letter.name,
        group_id=cfg.flink.group_id,
        mongo_uri=mongo_auth.client_uri(cfg.mongo),
        mongo_database=cfg.mongo.database,
        known_devices=devices,
        window_partition={str(k): 0 if cfg.kafka.sasl.enabled else v for k, v in window_partitions(devices).items()},
        windows_per_device=cfg.kafka.sasl.enabled,
        kafka_properties=java_properties(cfg.kafka, shaded=FLINK_SHADED),
        window_seconds=cfg.fl.local_training_interval_seconds,
        checkpoint_interval_ms=cfg.flink.checkpoint_interval_ms,
        checkpoint_dir=str(checkpoint_dir),
        parallelism=cfg.flink.parallelism,
        jobmanager=cfg.flink.jobmanager,
        jars=[str(j) for j in job_jars(cfg)],
        python_executable=str(flink_python(cfg)),
        python_env_report=str(Path(cfg.paths.run_dir) / "flink_python_env.json"),
        bulk_size=cfg.flink.bulk_size,
        bulk_max_delay_ms=cfg.flink.bulk_max_delay_ms,
        bundle_size=cfg.flink.bundle_size,
        bundle_time_ms=cfg.flink.bundle_time_ms,
        transaction_timeout_ms=cfg.flink.transaction_timeout_ms,
        valid_ranges={name: list(getattr(cfg.flink.valid_ranges, name)) for name in SENSOR_FIELDS},
        python_execution_mode=cfg.flink.python_execution_mode,
        max_window_readings=cfg.flink.max_window_readings,
        dedup_ttl_seconds=cfg.flink.dedup_ttl_seconds,
        mongo_timeout_ms=cfg.mongo.server_selection_timeout_ms,
        resume_from=str(resume_from) if resume_from else None,
    )


def prune_checkpoints(checkpoint_dir: Path, keep: Path) -> None:
    """Each run checkpoints into a folder of its own job id; only the one we resume from matters."""
    import shutil

    for job_dir in checkpoint_dir.iterdir():
        if job_dir.is_dir() and job_dir != keep:
            shutil.rmtree(job_dir, ignore_errors=True)


def prepare(cfg: AppConfig) -> tuple[list[str], dict[str, str]]:
    """Write the settings file; return the job's command line and environment."""
    job_settings = settings(cfg)
    path = Path(cfg.paths.run_dir) / "flink_job.json"
    job_settings.save(path)
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH")},
        # The project only (core, stream.flink); never a user's own PYTHONPATH.
        "PYTHONPATH": str(PROJECT_ROOT),
        # Thread mode embeds CPython in the JVM; it finds its prefix by looking up `python3` on
        # PATH. With the Flink env's bin first it is that virtualenv (its site-packages, and not
        # the base interpreter's); otherwise it is whatever python3 the machine has.
        "PATH": os.pathsep.join([str(Path(job_settings.python_executable).parent), os.environ.get("PATH", "")]),
        "PYFLINK_CLIENT_EXECUTABLE": job_settings.python_executable,
        # Flink's own logs (JobManager/TaskManager of the mini-cluster) next to ours.
        "FLINK_LOG_DIR": str(Path(cfg.paths.logs_dir) / "flink"),
    }
    program = ["--settings", str(path)]
    if cfg.flink.jobmanager == "local":
        return [job_settings.python_executable, "-m", "stream.flink.job", *program], env
    # A cluster: Flink's own client runs the job's module with a context that submits to that
    # JobManager (PyFlink's StreamExecutionEnvironment on its own only makes a local one).
    flink = flink_cluster.flink_home(cfg) / "bin" / "flink"
    return [str(flink), "run", "--jobmanager", cfg.flink.jobmanager, "--pyModule", "stream.flink.job",
            "--pyClientExecutable", job_settings.python_executable, *program], env
