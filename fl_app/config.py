"""The one configuration object, composed by Hydra from ``conf/``.

The dataclasses below are the schema: every key, its type and its default.
``conf/`` picks variants (``kafka=local|remote``, ``profile=testing|production``)
and the command line overrides single values. :func:`load_config` composes all
three, checks types (Hydra/OmegaConf) and ranges (:func:`validate`), and
returns a typed :class:`AppConfig`. A bad key or value raises
:class:`ConfigError` whose message names the key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = PROJECT_ROOT / "conf"


class ConfigError(ValueError):
    """A configuration key is unknown or its value is invalid."""


# --------------------------------------------------------------------- paths
@dataclass
class PathsConfig:
    """Where the project keeps state on disk (all derived from ``home``)."""

    home: str = MISSING  # set by load_config: $FL_APP_HOME or the project root
    data_dir: str = "${paths.home}/.data"  # Kafka log dirs, Mongo files, data set
    logs_dir: str = "${paths.home}/logs"
    cache_dir: str = "${paths.home}/.cache"  # resolved jars, generated data
    run_dir: str = "${paths.home}/.run"  # pid files, generated service configs


# --------------------------------------------------------------------- kafka
@dataclass
class TopicConfig:
    """One Kafka topic, created with these explicit settings."""

    name: str = MISSING
    partitions: int = 1
    retention_ms: int = 7 * 24 * 3600 * 1000
    replication_factor: int = 1


@dataclass
class TopicsConfig:
    """The three topics of the pipeline."""

    # Raw readings, keyed by device id so one device's readings stay ordered.
    readings: TopicConfig = field(
        default_factory=lambda: TopicConfig(name="iot_stream", partitions=6)
    )
    # One window record per device and interval; one partition per device.
    windows: TopicConfig = field(
        default_factory=lambda: TopicConfig(
            name="device_windows", partitions=53, retention_ms=24 * 3600 * 1000
        )
    )
    # Malformed records with the reason they were rejected.
    dead_letter: TopicConfig = field(
        default_factory=lambda: TopicConfig(
            name="iot_stream_dlq", partitions=1, retention_ms=30 * 24 * 3600 * 1000
        )
    )


@dataclass
class LocalBrokerConfig:
    """The single-node KRaft broker that ``fl-app services up`` starts."""

    enabled: bool = True
    controller_port: int = 19093
    heap: str = "512m"
    startup_timeout_seconds: float = 90.0


@dataclass
class KafkaConfig:
    bootstrap_servers: str = "127.0.0.1:9092"
    local_broker: LocalBrokerConfig = field(default_factory=LocalBrokerConfig)
    topics: TopicsConfig = field(default_factory=TopicsConfig)


# --------------------------------------------------------------------- mongo
@dataclass
class LocalMongoConfig:
    """The local MongoDB-wire server (SecantusDB) that ``services up`` starts."""

    enabled: bool = True
    cache_size: str = "256M"
    startup_timeout_seconds: float = 30.0


@dataclass
class MongoConfig:
    uri: str = "mongodb://127.0.0.1:27017"
    database: str = "iot_analytics"
    server_selection_timeout_ms: int = 5000
    local_server: LocalMongoConfig = field(default_factory=LocalMongoConfig)


# -------------------------------------------------------------------- stream
@dataclass
class StreamConfig:
    """Replay of the data set into Kafka (rate and batching come from the profile)."""

    records_per_second: float = 10.0
    batch_size: int = 10  # records sent together; also the token bucket's burst
    loop_dataset: bool = True  # at the end of the data set, start again (new event ids)
    pace: bool = True  # false: as fast as the broker takes them (benchmarks)
    num_devices: int = 53
    dataset_records: int = 152_533
    seed: int = 42
    dataset_path: Optional[str] = None  # the real Intel Lab data.txt; null = generated stand-in
    max_records: Optional[int] = None  # stop after this many in this run (tests, benchmarks)
    duration_seconds: Optional[float] = None  # stop after this long
    linger_ms: int = 5
    delivery_timeout_ms: int = 300_000  # how long a send may retry (e.g. across a broker restart)
    state_file: str = "${paths.data_dir}/producer/state.json"  # resume position


# --------------------------------------------------------------------- flink
@dataclass
class ValidRanges:
    """Physically possible sensor values; outside them a reading goes to the dead-letter topic.

    Wide on purpose: a dying mote's 120 C and negative humidity are real
    readings (the anomalies to detect), not malformed records.
    """

    temperature: list[float] = field(default_factory=lambda: [-40.0, 130.0])
    humidity: list[float] = field(default_factory=lambda: [-20.0, 150.0])
    light: list[float] = field(default_factory=lambda: [0.0, 100_000.0])
    voltage: list[float] = field(default_factory=lambda: [0.0, 5.0])


@dataclass
class FlinkConfig:
    """The stream job: validate, store, and cut per-device windows."""

    jobmanager: str = "local"  # "local" = mini-cluster; else host:port of a cluster's REST endpoint
    parallelism: int = 1
    checkpoint_interval_ms: int = 10_000  # window records become visible at checkpoints
    checkpoint_dir: str = "${paths.data_dir}/flink/checkpoints"
    python_env: str = ""  # the job's virtualenv; "" = <project root>/.venv-flink (made by `make setup`)
    group_id: str = "flink-iot-stream"
    bulk_size: int = 500  # readings per MongoDB bulk write
    bulk_max_delay_ms: int = 200  # ... or after this long, whichever first
    max_window_readings: int = 2000  # per window record (~0.5 MB, under Kafka's 1 MB); more waits for the next
    bundle_size: int = 1000  # PyFlink bundle: small enough for timely timers
    bundle_time_ms: int = 100
    # "thread": Python runs inside the TaskManager JVM (PEMJA), no per-record IPC:
    # 1.6-1.8x the throughput of "process" and a third of its latency here (benchmarks/flink_pipeline.py).
    # Both modes run the operators on the Flink environment's packages (python.pythonpath).
    python_execution_mode: str = "thread"
    # How long the window operator remembers each device's event ids to drop re-sent readings.
    # Must exceed the producer's resend horizon (stream.delivery_timeout_ms plus the time until
    # a crashed producer is restarted): a re-send later than this would be windowed twice.
    dedup_ttl_seconds: float = 3600.0
    transaction_timeout_ms: int = 300_000  # Kafka exactly-once sink; below the broker's 15 min cap
    valid_ranges: ValidRanges = field(default_factory=ValidRanges)


# ------------------------------------------------------------------------ fl
@dataclass
class FLConfig:
    """Federated learning cadence (the profile sets the three intervals)."""

    local_training_interval_seconds: float = 30.0
    global_update_interval_minutes: float = 1.0
    min_devices_for_aggregation: int = 3
    superlink_address: str = "127.0.0.1:9091"


# ------------------------------------------------------------------ analytics
@dataclass
class SparkConfig:
    master: str = "local[2]"
    driver_memory: str = "1g"


@dataclass
class ApiConfig:
    host: str = "127.0.0.1"
    port: int = 8000


@dataclass
class SupersetConfig:
    host: str = "127.0.0.1"
    port: int = 8088


# ---------------------------------------------------------------------- root
@dataclass
class AppConfig:
    """Everything the platform reads; one instance per process."""

    profile_name: str = "testing"
    paths: PathsConfig = field(default_factory=PathsConfig)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    mongo: MongoConfig = field(default_factory=MongoConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    flink: FlinkConfig = field(default_factory=FlinkConfig)
    fl: FLConfig = field(default_factory=FLConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    superset: SupersetConfig = field(default_factory=SupersetConfig)


ConfigStore.instance().store(name="base_config", node=AppConfig)


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``conf/`` with ``overrides`` into an (unresolved) ``DictConfig``.

    Raises
    ------
    ConfigError
        If an override names an unknown key or group option, or a value does
        not fit the key's type. The message names the key.
    """
    home = os.environ.get("FL_APP_HOME", str(PROJECT_ROOT))
    # Our default goes first so that a user's own paths.home=... wins.
    all_overrides = [f"paths.home={home}", *overrides]
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=all_overrides)
        OmegaConf.resolve(cfg)
    except Exception as exc:  # Hydra and OmegaConf raise many types; all mean "bad config"
        raise ConfigError(_explain(exc)) from exc
    return cfg


def load_config(overrides: Sequence[str] = ()) -> AppConfig:
    """Compose, type-check and range-check the configuration.

    Parameters
    ----------
    overrides
        Hydra overrides such as ``["profile=production", "stream.batch_size=50"]``.
    """
    cfg = compose_config(overrides)
    app: AppConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    validate(app)
    return app


def to_yaml(app: AppConfig) -> str:
    """The configuration as YAML (for ``--cfg`` and for logs)."""
    return OmegaConf.to_yaml(OmegaConf.structured(app))


def validate(app: AppConfig) -> None:
    """Range checks that types alone cannot express; raise ConfigError naming the key."""
    positive = {
        "stream.records_per_second": app.stream.records_per_second,
        "stream.batch_size": app.stream.batch_size,
        "stream.num_devices": app.stream.num_devices,
        "stream.dataset_records": app.stream.dataset_records,
        "fl.local_training_interval_seconds": app.fl.local_training_interval_seconds,
        "fl.global_update_interval_minutes": app.fl.global_update_interval_minutes,
        "fl.min_devices_for_aggregation": app.fl.min_devices_for_aggregation,
        "flink.parallelism": app.flink.parallelism,
        "flink.checkpoint_interval_ms": app.flink.checkpoint_interval_ms,
        "flink.bulk_size": app.flink.bulk_size,
        "flink.bulk_max_delay_ms": app.flink.bulk_max_delay_ms,
        "flink.max_window_readings": app.flink.max_window_readings,
        "flink.bundle_size": app.flink.bundle_size,
        "flink.bundle_time_ms": app.flink.bundle_time_ms,
        "mongo.server_selection_timeout_ms": app.mongo.server_selection_timeout_ms,
    }
    for topic_key in ("readings", "windows", "dead_letter"):
        topic: TopicConfig = getattr(app.kafka.topics, topic_key)
        positive[f"kafka.topics.{topic_key}.partitions"] = topic.partitions
        positive[f"kafka.topics.{topic_key}.replication_factor"] = topic.replication_factor
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key} must be > 0, got {value!r}")
    if app.stream.linger_ms < 0:
        raise ConfigError(f"stream.linger_ms must be >= 0, got {app.stream.linger_ms!r}")
    if app.stream.delivery_timeout_ms <= 0:
        raise ConfigError(f"stream.delivery_timeout_ms must be > 0, got {app.stream.delivery_timeout_ms!r}")
    for key, value in {
        "stream.max_records": app.stream.max_records,
        "stream.duration_seconds": app.stream.duration_seconds,
    }.items():
        if value is not None and value <= 0:
            raise ConfigError(f"{key} must be > 0 or null, got {value!r}")

    if app.flink.python_execution_mode not in ("process", "thread"):
        raise ConfigError(f"flink.python_execution_mode must be process or thread, got {app.flink.python_execution_mode!r}")
    if app.flink.dedup_ttl_seconds <= app.stream.delivery_timeout_ms / 1000:
        raise ConfigError(f"flink.dedup_ttl_seconds ({app.flink.dedup_ttl_seconds:g}) must exceed the producer's "
                          f"resend horizon, stream.delivery_timeout_ms ({app.stream.delivery_timeout_ms} ms)")
    for name in ("temperature", "humidity", "light", "voltage"):
        bounds = getattr(app.flink.valid_ranges, name)
        if len(bounds) != 2 or bounds[0] >= bounds[1]:
            raise ConfigError(f"flink.valid_ranges.{name} must be [low, high] with low < high, got {bounds!r}")
    ports = {
        "kafka.local_broker.controller_port": app.kafka.local_broker.controller_port,
        "api.port": app.api.port,
        "superset.port": app.superset.port,
    }
    for key, port in ports.items():
        if not 0 < port < 65536:
            raise ConfigError(f"{key} must be a TCP port (1-65535), got {port!r}")
    _host_port("kafka.bootstrap_servers", app.kafka.bootstrap_servers.split(",")[0])
    _host_port("fl.superlink_address", app.fl.superlink_address)
    if not app.mongo.uri.startswith(("mongodb://", "mongodb+srv://")):
        raise ConfigError(f"mongo.uri must start with mongodb:// or mongodb+srv://, got {app.mongo.uri!r}")
    if app.fl.min_devices_for_aggregation > app.stream.num_devices:
        raise ConfigError(
            "fl.min_devices_for_aggregation "
            f"({app.fl.min_devices_for_aggregation}) exceeds stream.num_devices ({app.stream.num_devices})"
        )


def _host_port(key: str, address: str) -> tuple[str, int]:
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{key} must look like host:port, got {address!r}")
    return host, int(port)


def host_port(address: str) -> tuple[str, int]:
    """Split ``host:port`` (the first of a comma-separated list)."""
    return _host_port("address", address.split(",")[0])


def _explain(exc: Exception) -> str:
    """Hydra nests the useful message (with ``full_key``) in the cause chain."""
    parts: list[str] = []
    seen: Optional[BaseException] = exc
    while seen is not None:
        text = str(seen).strip()
        # OmegaConf repeats its message template with placeholders; skip those.
        if text and text not in parts and "$VALUE" not in text:
            parts.append(text)
        seen = seen.__cause__ or seen.__context__
    return "invalid configuration: " + "\n".join(parts)


def flatten(app: Any, prefix: str = "") -> dict[str, Any]:
    """``{"stream.batch_size": 10, ...}``: handy for logs and run-config translation."""
    out: dict[str, Any] = {}
    for f in fields(app):
        value = getattr(app, f.name)
        key = f"{prefix}{f.name}"
        if is_dataclass(value):
            out.update(flatten(value, key + "."))
        else:
            out[key] = value
    return out
