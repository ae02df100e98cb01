"""The one configuration object, composed by Hydra from ``conf/``.

The dataclasses below are the schema: every key, its type, its default and,
beside it, the checks its value must pass (``checked(default, positive)``).
Every default lives here and only here: a file under ``conf/`` holds only what
its variant (``kafka=local|remote``, ``profile=testing|production``) changes, and
a value it repeats on purpose carries a comment saying why
(tests/unit/core/test_config_defaults.py). The command line overrides single
values. :func:`load_config` composes all three, checks types (Hydra/OmegaConf)
and then every field's declared checks (:func:`validate`, which walks the
schema, so a new field is checked the moment it declares a check), and returns
a typed :class:`AppConfig`. A bad key or value raises :class:`ConfigError`
whose message names the key.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from core.records import SENSOR_FIELDS
from core.secrets import MASK, is_secret_key, redact_url

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = PROJECT_ROOT / "conf"


class ConfigError(ValueError):
    """A configuration key is unknown or its value is invalid."""


# ------------------------------------------------------------------ checks
# A check takes the value and the whole config and returns what is wrong
# ("must be > 0") or None. Declared beside each field with `checked`.
Check = Callable[[Any, "AppConfig"], "str | None"]


def checked(default: Any = MISSING, *checks: Check, factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field whose value must pass ``checks`` (see :func:`validate`)."""
    if factory is not None:
        return field(default_factory=factory, metadata={"checks": checks})
    return field(default=default, metadata={"checks": checks})


def positive(value: float, _: AppConfig) -> str | None:
    return None if value > 0 else "must be > 0"


def non_negative(value: float, _: AppConfig) -> str | None:
    return None if value >= 0 else "must be >= 0"


def positive_or_null(value: float | None, _: AppConfig) -> str | None:
    return None if value is None or value > 0 else "must be > 0 or null"


def tcp_port(value: int, _: AppConfig) -> str | None:
    return None if 0 < value < 65536 else "must be a TCP port (1-65535)"


def _split_address(value: str) -> tuple[str, int] | None:
    host, sep, port = value.split(",")[0].strip().rpartition(":")
    ok = sep and host and port.isdigit() and 0 < int(port) < 65536
    return (host, int(port)) if ok else None


def address(value: str, _: AppConfig) -> str | None:
    """``host:port`` (the first of a comma-separated list)."""
    return None if _split_address(value) else "must look like host:port"


def mongo_uri(value: str, _: AppConfig) -> str | None:
    return None if value.startswith(("mongodb://", "mongodb+srv://")) else "must start with mongodb:// or mongodb+srv://"


def low_high(value: list[float], _: AppConfig) -> str | None:
    return None if len(value) == 2 and value[0] < value[1] else "must be [low, high] with low < high"


def fraction(value: float, _: AppConfig) -> str | None:
    return None if 0 < value < 1 else "must be between 0 and 1"


def between(low: float, high: float) -> Check:
    def check(value: float, _: AppConfig) -> str | None:
        return None if low <= value <= high else f"must be from {low:g} to {high:g}"
    return check


def megabytes(value: str) -> float | None:
    """A JVM memory size (``512m``, ``2g``, ``65536k``) in megabytes; None if it is not one."""
    match = re.fullmatch(r"([0-9]{1,7})([kmg])", str(value).lower())
    return int(match[1]) * {"k": 1 / 1024, "m": 1, "g": 1024}[match[2]] if match else None


def jvm_memory(minimum_mb: int) -> Check:
    """A JVM memory size (``512m``, ``2g``) of at least ``minimum_mb`` megabytes."""
    def check(value: str, _: AppConfig) -> str | None:
        size_mb = megabytes(value)
        return None if size_mb is not None and size_mb >= minimum_mb else \
            f"must be a JVM size such as 512m or 2g, at least {minimum_mb}m"
    return check


def no_max_heap(value: str, app: AppConfig) -> str | None:
    # Spark refuses -Xmx in Java options at start-up: the maximum heap is spark.driver_memory. A JVM
    # whose initial heap exceeds its maximum does not start.
    if re.search(r"-Xmx|-XX:MaxHeapSize=", value):
        return "must not set the maximum heap (-Xmx): that is spark.driver_memory"
    for initial in re.findall(r"(?:-Xms|-XX:InitialHeapSize=|-XX:MinHeapSize=)(\S*)", value):
        size_mb, most = megabytes(initial), megabytes(app.spark.driver_memory)
        if size_mb is None or size_mb < 1 or (most is not None and size_mb > most):
            return f"initial heap {initial!r} must be a JVM size such as 64m, at most spark.driver_memory"
    return None


def below_half(value: float, _: AppConfig) -> str | None:
    return None if 0 <= value < 0.5 else "must be >= 0 and < 0.5"


def at_least_one(value: float, _: AppConfig) -> str | None:
    return None if value >= 1 else "must be >= 1"


def all_positive(value: list[int], _: AppConfig) -> str | None:
    return None if value and all(v > 0 for v in value) else "must be a non-empty list of positive numbers"


def sensor_fields(value: list[str], _: AppConfig) -> str | None:
    unknown = [v for v in value if v not in SENSOR_FIELDS]
    if not value or unknown or len(set(value)) != len(value):
        return f"must be distinct names from {', '.join(SENSOR_FIELDS)}"
    return None


def subset_of(*choices: str) -> Check:
    def check(value: list[str], _: AppConfig) -> str | None:
        return None if set(value) <= set(choices) and len(set(value)) == len(value) else \
            f"must be distinct names from {', '.join(choices)}"
    return check


def one_of(*choices: str) -> Check:
    def check(value: str, _: AppConfig) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"
    return check


def on_in_production(value: bool, app: AppConfig) -> str | None:
    """Production refuses an insecure federation unless the operator says so in so many words."""
    if value or app.profile_name != "production" or app.fl.security.allow_insecure:
        return None
    return "must be true in profile=production (to run without it anyway: fl.security.allow_insecure=true)"


def at_most(key: str) -> Check:
    """No more than the value of another key (dotted path)."""
    def check(value: float | None, app: AppConfig) -> str | None:
        limit = lookup(app, key)
        return None if value is None or value <= limit else f"must be <= {key} ({limit})"
    return check


def at_least(key: str) -> Check:
    """No less than the value of another key (dotted path)."""
    def check(value: float, app: AppConfig) -> str | None:
        limit = lookup(app, key)
        return None if value >= limit else f"must be >= {key} ({limit})"
    return check


def longer_than_ms(key: str) -> Check:
    """Seconds that must exceed another key's milliseconds."""
    def check(value: float, app: AppConfig) -> str | None:
        limit_ms = lookup(app, key)
        return None if value * 1000 > limit_ms else f"must exceed {key} ({limit_ms} ms)"
    return check


def lookup(app: Any, key: str) -> Any:
    for part in key.split("."):
        app = getattr(app, part)
    return app


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
    partitions: int = checked(1, positive)
    retention_ms: int = checked(7 * 24 * 3600 * 1000, positive)
    replication_factor: int = checked(1, positive)
    # Replicas that must have a write before it is acknowledged (producers use acks=all): with 3
    # replicas and 2 here, a topic stays writable, and loses nothing acknowledged, with one node down.
    min_insync_replicas: int = checked(1, positive, lambda v, app: None if all(
        t.min_insync_replicas <= t.replication_factor for t in vars(app.kafka.topics).values()
        if t.replication_factor > 0)  # a factor below 1 is its own field's error
        else "must not exceed the topic's replication_factor (no write could ever be acknowledged)")


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


def one_address_per_node(value: int, app: AppConfig) -> str | None:
    given = len([p for p in app.kafka.bootstrap_servers.split(",") if p.strip()])
    if not app.kafka.local_broker.enabled or given == value:
        return None
    return f"must equal the number of addresses in kafka.bootstrap_servers ({given}): node n listens on the n-th"


@dataclass
class LocalBrokerConfig:
    """The KRaft brokers that ``fl-app services up`` starts: one by default, ``nodes`` with
    ``kafka=cluster`` (each a broker and a controller)."""

    enabled: bool = True
    nodes: int = checked(1, between(1, 9), one_address_per_node)
    controller_port: int = checked(19093, tcp_port)  # node n: controller_port + n - 1
    # Each broker's heap (-Xms and -Xmx). A heap that started at 64m and could grow to 512m was no smaller
    # at 10 readings/s (433 MB PSS against 394, issue 22): G1 grows it to keep its pauses short. At 512m
    # the broker reached 655 MB PSS after 8 minutes as G1 touched all of it; at 256m, 429-436 MB from 4 to
    # 8 minutes.
    heap: str = checked("256m", jvm_memory(128))
    startup_timeout_seconds: float = checked(90.0, positive)


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def jaas_safe(value: str, _: AppConfig) -> str | None:
    # The Java clients (Flink, Spark) and the broker take credentials inside a JAAS line,
    # username="..." password="...": a quote or backslash there would end or escape it.
    return None if not any(c in value for c in '"\\;\n') else 'must not hold " \\ ; or a line break (JAAS)'


def plain_on_loopback(value: str, app: AppConfig) -> str | None:
    host = (_split_address(app.kafka.bootstrap_servers) or ("", 0))[0]
    sasl = app.kafka.sasl
    if (not sasl.enabled or value != "PLAIN" or sasl.security_protocol == "SASL_SSL" or sasl.private_network
            or host in LOOPBACK_HOSTS):
        return None
    return ("PLAIN sends the password as it is: to a broker on another host use SCRAM-SHA-512 or SASL_SSL "
            "(or kafka.sasl.private_network=true on a network only the pipeline is on)")


@dataclass
class KafkaSaslConfig:
    """Every Kafka client authenticates (SASL); with ACLs a device's credentials read only its own windows.

    The pipeline's components share one principal (``username``), a super user of the local
    broker; each device has its own, ``device-<id>``, with SCRAM-SHA-512 credentials that the
    pipeline creates and keeps in ``logins_dir`` (0600 files; a device on another host is
    given its own file). Kafka's ACLs name topics, not partitions, so with SASL each device's
    windows go to a topic of its own, ``<kafka.topics.windows.name>.<device id>``.
    """

    enabled: bool = checked(False, on_in_production)
    security_protocol: str = checked("SASL_PLAINTEXT", one_of("SASL_PLAINTEXT", "SASL_SSL"))
    ca_file: str | None = None  # SASL_SSL: the broker's CA (PEM); null: the system's
    # The local broker takes the pipeline's PLAIN login on its own listeners (loopback; no
    # bootstrap credential to store in Kafka first); a remote cluster is often SCRAM.
    mechanism: str = checked("PLAIN", one_of("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"), plain_on_loopback)
    username: str = checked("pipeline", jaas_safe)
    password: str = checked("", jaas_safe)  # empty: generated once for the local broker; required for a remote one
    logins_dir: str = "${paths.data_dir}/kafka-logins"
    private_network: bool = False  # true: PLAIN to a broker on a network only the pipeline reaches (compose's)


def device_addresses(value: str | None, app: AppConfig) -> str | None:
    if value is None:
        return None
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if not parts or not all(_split_address(p) for p in parts):
        return "must look like host:port[,host:port...]"
    if any(_split_address(p)[0] in ("0.0.0.0", "::") for p in parts):  # type: ignore[index]
        return "is what devices dial (and the broker advertises): give this host's address, not 0.0.0.0"
    nodes = app.kafka.local_broker.nodes
    if app.kafka.local_broker.enabled and len(parts) != nodes:
        return f"must hold one address per local Kafka node ({nodes}): node n listens on the n-th"
    return None


@dataclass
class KafkaConfig:
    bootstrap_servers: str = checked("127.0.0.1:9092", address)
    # Where the devices' ClientApps read their windows; null: bootstrap_servers. Devices on other
    # machines need an address they reach: the local broker then listens there too (node n on the
    # n-th) with device logins only (SCRAM with SASL; the pipeline's PLAIN login stays on loopback).
    device_bootstrap_servers: str | None = checked(None, device_addresses)
    local_broker: LocalBrokerConfig = field(default_factory=LocalBrokerConfig)
    topics: TopicsConfig = field(default_factory=TopicsConfig)
    sasl: KafkaSaslConfig = field(default_factory=KafkaSaslConfig)


# --------------------------------------------------------------------- mongo
@dataclass
class LocalMongoConfig:
    """The local MongoDB-wire server (SecantusDB) that ``services up`` starts."""

    enabled: bool = True
    cache_size: str = "256M"
    startup_timeout_seconds: float = checked(30.0, positive)


@dataclass
class MongoConfig:
    uri: str = checked("mongodb://127.0.0.1:27017", mongo_uri)
    database: str = "iot_analytics"
    server_selection_timeout_ms: int = checked(5000, positive)
    local_server: LocalMongoConfig = field(default_factory=LocalMongoConfig)
    # Log in with SCRAM-SHA-256 (core/mongo_auth.py gives every client its URI). An empty password
    # for the local server is generated once into a 0600 file in login_dir.
    auth: bool = False
    username: str = "pipeline"
    password: str = ""
    login_dir: str = "${paths.data_dir}/mongo-login"


# -------------------------------------------------------------------- stream
def some_sensor_fields(value: dict[str, str | None], _: AppConfig) -> str | None:
    unknown = [k for k in value if k not in SENSOR_FIELDS]
    if unknown or not any(value.values()):
        return f"must map at least one of {', '.join(SENSOR_FIELDS)} to a column (null = not in the file)"
    return None


def every_sensor_field(value: dict[str, float], _: AppConfig) -> str | None:
    return None if set(value) == set(SENSOR_FIELDS) else f"must give a value for each of {', '.join(SENSOR_FIELDS)}"


@dataclass
class CsvColumns:
    """Which CSV column holds what (``stream.dataset_format=csv``); the names are the file's header."""

    device_id: str = "device_id"  # integer device ids
    timestamp: str = "timestamp"  # ISO 8601 text, or numbers: seconds since 1970 (UTC)
    # Sensor field -> column. Any subset: a field mapped to null is not in the file and
    # gets the constant of `fill` (valid, so not dead-lettered); leave it out of fl.model.features.
    fields: dict[str, str | None] = checked(MISSING, some_sensor_fields, factory=lambda: {f: f for f in SENSOR_FIELDS})
    label: str | None = "label"  # 0 = normal, 1 = anomaly; null = the file has no labels
    fill: dict[str, float] = checked(MISSING, every_sensor_field, factory=lambda: {
        "temperature": 21.0, "humidity": 39.0, "light": 300.0, "voltage": 2.7})


@dataclass
class StreamConfig:
    """Replay of the data set into Kafka (rate and batching come from the profile)."""

    records_per_second: float = checked(10.0, positive)
    batch_size: int = checked(10, positive)  # records sent together; also the token bucket's burst
    loop_dataset: bool = True  # at the end of the data set, start again (new event ids)
    pace: bool = True  # false: as fast as the broker takes them (benchmarks)
    num_devices: int = checked(53, positive)
    dataset_records: int = checked(152_533, positive, at_least("stream.num_devices"))
    seed: int = 42
    dataset_path: str | None = None  # a data set file (see dataset_format); null = generated stand-in
    # "auto": a path ending in .csv is csv, anything else intel_lab (the real Intel Lab data.txt).
    dataset_format: str = checked("auto", one_of("auto", "intel_lab", "csv"))
    csv: CsvColumns = field(default_factory=CsvColumns)
    max_records: int | None = checked(None, positive_or_null)  # stop after this many in this run (tests, benchmarks)
    duration_seconds: float | None = checked(None, positive_or_null)  # stop after this long
    linger_ms: int = checked(5, non_negative)
    delivery_timeout_ms: int = checked(300_000, positive)  # how long a send may retry (e.g. across a broker restart)
    state_file: str = "${paths.data_dir}/producer/state.json"  # resume position


# --------------------------------------------------------------------- flink
@dataclass
class ValidRanges:
    """Physically possible sensor values; outside them a reading goes to the dead-letter topic.

    Wide on purpose: a dying mote's 120 C and negative humidity are real
    readings (the anomalies to detect), not malformed records.
    """

    temperature: list[float] = checked(MISSING, low_high, factory=lambda: [-40.0, 130.0])
    humidity: list[float] = checked(MISSING, low_high, factory=lambda: [-20.0, 150.0])
    light: list[float] = checked(MISSING, low_high, factory=lambda: [0.0, 100_000.0])
    voltage: list[float] = checked(MISSING, low_high, factory=lambda: [0.0, 5.0])


@dataclass
class LocalFlinkClusterConfig:
    """The standalone session cluster ``fl-app services up`` starts when ``flink.jobmanager`` is this
    machine's (``flink=cluster``): one JobManager and TaskManagers, each its own process started by the
    Flink distribution's own launch scripts (``jobmanager.sh``/``taskmanager.sh start-foreground``)."""

    enabled: bool = True
    taskmanagers: int = checked(2, between(1, 16))
    # Two slots each: the job's parallelism 2 spreads over both TaskManagers, and when one is lost
    # both subtasks fit on the other, so the job recovers without waiting for a replacement.
    slots_per_taskmanager: int = checked(2, between(1, 64))
    rpc_port: int = checked(6123, tcp_port)
    jobmanager_memory: str = checked("768m", jvm_memory(512))  # process size (heap, metaspace, overhead)
    taskmanager_memory: str = checked("1536m", jvm_memory(1024))
    # How long the JobManager waits to hear from a TaskManager before it takes it as lost and
    # restarts the job on the slots left (Flink's default is 50 s).
    heartbeat_timeout_ms: int = checked(10_000, positive)
    startup_timeout_seconds: float = checked(90.0, positive)


@dataclass
class FlinkConfig:
    """The stream job: validate, store, and cut per-device windows."""

    # "local" = a mini-cluster inside the job's process; else host:port of a cluster's REST endpoint
    # (on this machine: the session cluster of `local_cluster`, started by `fl-app services up`).
    jobmanager: str = checked("local", lambda v, app: None if v == "local" else address(v, app))
    parallelism: int = checked(1, positive)
    checkpoint_interval_ms: int = checked(10_000, positive)  # window records become visible at checkpoints
    checkpoint_dir: str = "${paths.data_dir}/flink/checkpoints"
    python_env: str = ""  # the job's virtualenv; "" = <project root>/.venv-flink (made by `make setup`)
    group_id: str = "flink-iot-stream"
    bulk_size: int = checked(500, positive)  # readings per MongoDB bulk write
    bulk_max_delay_ms: int = checked(200, positive)  # ... or after this long, whichever first
    # Per window record (~0.5 MB, under Kafka's 1 MB); more waits for the next window.
    max_window_readings: int = checked(2000, positive)
    bundle_size: int = checked(1000, positive)  # PyFlink bundle: small enough for timely timers
    bundle_time_ms: int = checked(100, positive)
    # "thread": Python runs inside the TaskManager JVM (PEMJA), no per-record IPC:
    # 1.6-1.8x the throughput of "process" and a third of its latency here (benchmarks/flink_pipeline.py).
    # Both modes run the operators on the Flink environment's packages (python.pythonpath).
    python_execution_mode: str = checked("thread", one_of("thread", "process"))
    # How long the window operator remembers each device's event ids to drop re-sent readings.
    # Must exceed the producer's resend horizon (stream.delivery_timeout_ms plus the time until
    # a crashed producer is restarted): a re-send later than this would be windowed twice.
    dedup_ttl_seconds: float = checked(3600.0, longer_than_ms("stream.delivery_timeout_ms"))
    transaction_timeout_ms: int = checked(300_000, positive)  # Kafka exactly-once sink; below the broker's 15 min cap
    valid_ranges: ValidRanges = field(default_factory=ValidRanges)
    local_cluster: LocalFlinkClusterConfig = field(default_factory=LocalFlinkClusterConfig)


# ------------------------------------------------------------------------ fl
CONTEXT_KINDS = ("delta", "deviation", "spread", "repeat", "gap")  # what core/features.py can add to a reading
def narrower_than_inputs(value: list[int], app: AppConfig) -> str | None:
    from core.features import columns  # lazily: core.features imports this module

    inputs = len(columns(app.fl.model))
    return None if value and value[-1] < inputs else f"must end in a bottleneck narrower than the {inputs} inputs"


@dataclass
class ModelConfig:
    """The anomaly model every device trains (``core/model.py``)."""

    features: list[str] = checked(MISSING, sensor_fields, factory=lambda: list(SENSOR_FIELDS))
    # Encoder widths; the decoder mirrors them. The last is the bottleneck, narrower than the inputs
    # (the row's columns, core/features.py), else the autoencoder can learn the identity
    # and, trained long enough, reconstructs anomalies too (README, "Learning quality").
    hidden: list[int] = checked(MISSING, all_positive, narrower_than_inputs, factory=lambda: [16, 3])
    # What each reading's row adds of its device's recent readings (core/features.py): any of
    # delta, deviation, spread, repeat (one column per feature each) and gap (one column); [] = the
    # reading alone. repeat is what finds a stuck sensor (README, "Learning quality").
    context: list[str] = checked(MISSING, subset_of(*CONTEXT_KINDS),
                                 factory=lambda: ["delta", "deviation", "spread", "repeat", "gap"])
    context_window: int = checked(8, positive)  # readings of a device that deviation and spread look back on
    learning_rate: float = checked(0.005, positive)
    batch_size: int = checked(32, positive)
    replay_size: int = checked(512, positive)  # feature rows each device keeps between windows
    # Score quantile that marks an anomaly: 1 - q of normal readings are flagged, which must stay
    # well under the anomaly rate (~2 % in the generated data set) for precision to be high.
    threshold_quantile: float = checked(0.999, fraction)
    # false: a device leaves out of its replay buffer (and its moments) the new readings that the
    # global model it received flags: trained on, the rest of an anomaly that lasts looks normal.
    learn_flagged: bool = False
    seed: int = 42


def only_with(key: str) -> Check:
    """A flag that may be on only when another (boolean) key is on too."""
    def check(value: bool, app: AppConfig) -> str | None:
        return None if not value or lookup(app, key) else f"needs {key}=true"
    return check


def non_empty(value: list[str], _: AppConfig) -> str | None:
    return None if value else "must not be empty"


def loopback_address_or_null(value: str | None, _: AppConfig) -> str | None:
    split = None if value is None else _split_address(value)
    if value is None or (split and split[0] in ("127.0.0.1", "localhost", "::1")):
        return None
    return "must be null or 127.0.0.1:port (the Control API is never on a device network)"


MIN_API_KEY = 16


def set_in_production(value: str, app: AppConfig) -> str | None:
    if app.profile_name != "production" or len(value) >= MIN_API_KEY:
        return None
    return f"must be set in profile=production ($FL_APP_API_KEY or api.api_key, at least {MIN_API_KEY} characters)"


@dataclass
class FLSecurityConfig:
    """Flower's own TLS and SuperNode authentication (the production profile turns both on).

    ``fl-app fl certs`` makes what they need under ``certs_dir``: a CA, the
    SuperLink's certificate for ``hostnames`` and one key pair per device
    (``fl-app fl up`` makes any that are missing).
    """

    # every SuperLink API over HTTPS; SuperNodes and `flwr` verify it with the CA
    tls: bool = checked(False, on_in_production)
    # Only SuperNodes whose public key was registered (`flwr supernode register`) may connect.
    supernode_auth: bool = checked(False, only_with("fl.security.tls"), on_in_production)
    # true: profile=production may run with tls or supernode_auth off (refused otherwise, exit 2).
    allow_insecure: bool = False
    certs_dir: str = "${paths.data_dir}/flwr-certs"
    hostnames: list[str] = checked(MISSING, non_empty, factory=lambda: ["localhost", "127.0.0.1"])  # SuperLink SANs
    certificate_days: int = checked(365, positive)


@dataclass
class FLConfig:
    """Federated learning: cadence (the profile sets the three intervals), devices, model."""

    local_training_interval_seconds: float = checked(30.0, positive)
    global_update_interval_minutes: float = checked(1.0, positive)
    min_devices_for_aggregation: int = checked(3, positive, at_most("stream.num_devices"))
    # The SuperLink's Fleet API, the one address devices get: 0.0.0.0:9091 to serve other machines.
    superlink_address: str = checked("127.0.0.1:9091", address)
    # Its Control API (`flwr` run/ls/stop/supernode register) and the ServerApp's Runtime API, on
    # loopback only (fl_app/federation/superlink.py); null = 127.0.0.1:<superlink_address's port - 1>.
    control_address: str | None = checked(None, loopback_address_or_null)
    supernode_base_port: int = checked(9100, tcp_port)  # SuperNode i serves its runtime API on base + i
    # "deployment": flower-superlink + one flower-supernode per device;
    # "simulation": the same apps on Flower's simulation runtime.
    runtime: str = checked("deployment", one_of("deployment", "simulation"))
    # How many devices (the first in id order) get a SuperNode; null (or more than the data set
    # has) = every device of the data set.
    devices: int | None = checked(None, positive_or_null)
    local_epochs: int = checked(1, positive)
    # How the local SuperNodes and their ClientApps run. "warm": the SuperNodes are forked from one
    # parent that imported Flower once (clients/supernodes.py) and run with --isolation process;
    # one executor process (clients/executor.py) that imports torch and flwr once forks a child per
    # ClientApp task. "subprocess": Flower's stock way, separate SuperNode processes, each starting
    # a fresh flwr-clientapp process per message.
    isolation: str = checked("warm", one_of("warm", "subprocess"))
    # ClientApps the warm executor runs at once. Much of a task's time is waiting (Kafka, the
    # SuperNode's runtime API), not CPU, so more than the cores pays off.
    executor_capacity: int = checked(16, positive)
    executor_poll_seconds: float = checked(0.2, positive)  # its wait between polls of the SuperNodes when busy
    # Warm SuperNodes tell the executor of each new task (no polling of 53 nodes); it still asks every
    # node once this often, in case a word was lost.
    executor_full_pass_seconds: float = checked(30.0, positive)
    # A warm SuperNode's wait between two pulls that found no message (Flower's own: 3 s, the least).
    # null: a third of fl.local_training_interval_seconds, from 3 to 10 s. 53 nodes at 3 s made
    # 18 signed requests/s, most of an idle SuperLink's CPU.
    supernode_pull_seconds: float | None = checked(None, positive_or_null)
    # A warm SuperNode's heartbeat interval; the SuperLink deems a node offline after twice that
    # (Flower's own: 30 s, 2.6 heartbeats/s for 53 nodes). Flower takes 10 s to 1800 s.
    supernode_heartbeat_seconds: float = checked(60.0, between(10.0, 1800.0))
    # An update computed from a global model more than this many rounds old is dropped.
    max_staleness_rounds: int = checked(2, non_negative)
    # How a tick's updates are combined (server/robust.py): "fedavg", the mean weighted by examples;
    # "trimmed_mean" (Flower's FedTrimmedAvg) or "median" (FedMedian), per coordinate, unweighted.
    aggregator: str = checked("trimmed_mean", one_of("fedavg", "trimmed_mean", "median"))
    # Devices left out at each end (at least one of three or more): by trimmed_mean, and of the devices'
    # own quantiles that clamp the global threshold whatever the aggregator.
    trim_fraction: float = checked(0.2, below_half)
    # An update farther from the global weights than this x the tick's typical (median) distance is
    # rejected; with fewer than 3 devices the last such tick's typical distance is the reference.
    max_distance_factor: float = checked(3.0, at_least_one)
    # A device's example count (and histogram) weighs at most this x the tick's median.
    max_weight_factor: float = checked(3.0, at_least_one)
    # Which threshold marks a reading an anomaly: "global", the federation's pooled score quantile, or
    # "per_device", each device's own quantile of the global model's scores (the global one until a
    # device has sent its own). Both are sent with every update; this picks what the scorer uses.
    threshold: str = checked("global", one_of("global", "per_device"))
    duration_seconds: float | None = checked(None, positive_or_null)  # the ServerApp stops after this long
    # A train message not answered in this long is given up and the device gets a new one (a
    # ClientApp that died holding it never answers). null = max(4 local intervals, 120 s): a stock
    # SuperNode starts a fresh ClientApp process per message, 20-40 s on a loaded 2-core machine.
    message_ttl_seconds: float | None = checked(None, positive_or_null)
    # Until the first global round exists, train messages go out this often (instead of every local
    # interval) and the first round is made as soon as enough devices sent an update, instead of on the
    # global clock: the first model comes ~1 local interval after the first windows. 0: no warm-up.
    warmup_train_seconds: float = checked(10.0, non_negative)
    model: ModelConfig = field(default_factory=ModelConfig)
    security: FLSecurityConfig = field(default_factory=FLSecurityConfig)


# ------------------------------------------------------------------ analytics
@dataclass
class ScorerConfig:
    """The streaming anomaly scorer (``fl-app spark stream``, analytics/scorer.py)."""

    enabled: bool = True  # started by `fl-app run`
    checkpoint_dir: str = "${paths.data_dir}/spark/checkpoints/scorer"  # the query's progress: delete to rescore
    # One micro-batch per interval (and a model check). Most of a micro-batch's cost is fixed: at 5 s
    # and 4 partitions the scorer took 55 % of a core at 10 readings/s, at 15 s and 2 partitions 14 %
    # (issue 22). Predictions lag by up to this much.
    trigger_seconds: float = checked(15.0, positive)
    # Spark tasks per step of a micro-batch: the Kafka source's partitions coalesced, and the devices'
    # state partitions (a checkpoint keeps the number it was made with). One Python task each.
    partitions: int = checked(2, between(1, 1024))
    max_offsets_per_trigger: int = checked(20000, positive)  # readings per micro-batch at most
    model_poll_seconds: float = checked(5.0, positive)  # before the first global model: how often to look


@dataclass
class BatchConfig:
    """Batch analytics (``fl-app spark batch``, analytics/batch.py)."""

    enabled: bool = True  # run on a schedule (spark.batch_interval_seconds) by `fl-app run`
    # The SQL serving store Superset reads: any SQLAlchemy URL (e.g. postgresql://user@host/db).
    store_url: str = "sqlite:///${paths.data_dir}/analytics.db"
    # A run reads the documents made since the last one, up to this many seconds ago: what a writer is
    # inserting right now waits for the next run (at least 1: an ObjectId's time is whole seconds).
    settle_seconds: float = checked(2.0, between(1, 3600))
    # Every so often, and on the first run of a process, the tables are rebuilt from all documents:
    # that catches a document inserted long after its _id was made (a writer's retry) and keeps
    # the longest gaps exact.
    rebuild_seconds: float = checked(3600.0, between(60, 10**7))


def spark_master(value: str, _: AppConfig) -> str | None:
    if re.fullmatch(r"local(\[([1-9][0-9]{0,3}|\*)(,[0-9]{1,3})?\])?", value):
        return None
    if value.startswith("spark://"):
        return None if _split_address(value.removeprefix("spark://")) else "must look like spark://host:7077"
    if re.fullmatch(r"[a-z0-9]+://\S+|yarn", value):
        return None
    return "must be local[N], spark://host:port or a master URL"


@dataclass
class LocalSparkClusterConfig:
    """The standalone cluster ``fl-app services up`` starts when ``spark.master`` is a ``spark://``
    URL of this machine: a master and workers, each a process of pyspark's own ``bin/spark-class``
    (``org.apache.spark.deploy.master.Master`` / ``...worker.Worker``)."""

    enabled: bool = True
    workers: int = checked(2, between(1, 16))
    # Cores each worker offers (may exceed the machine's: they are slots). With 2 x 2 and
    # spark.cores_max 2 the scorer and the batch (spark.one_session=false) run side by side, an executor on
    # each worker; one application (spark serve) shares its 2 cores between them.
    cores_per_worker: int = checked(2, between(1, 64))
    worker_memory: str = checked("1g", jvm_memory(512))  # what a worker offers its executors
    worker_base_port: int = checked(7078, tcp_port)  # worker i listens on worker_base_port + i - 1
    webui_port: int = checked(8090, tcp_port)  # the master's web UI and its /json status
    startup_timeout_seconds: float = checked(60.0, positive)


@dataclass
class SparkConfig:
    # local[*]-style masters run here; spark://host:7077 (or any master URL) runs the jobs on that cluster,
    # whose workers must have this project and its environment at the same path.
    master: str = checked("local[2]", spark_master)
    # The driver's heap (with spark.one_session, one heap for the scorer, its state store and the batch:
    # an OutOfMemoryError ends both). 1g made the batch's JVM 1.4 GB PSS and the scorer's 0.5 GB of it was
    # used (issue 22). 512m runs the tests' and the pipeline benchmark's rebuilds (tens of thousands of
    # documents) beside the scorer; a rebuild of a day of readings (0.9 M) at 512m is not measured yet:
    # give 1g if one fails with OutOfMemoryError.
    driver_memory: str = checked("512m", jvm_memory(256))
    # The serial collector: no parallel GC threads on a small heap. Its heap gives memory back after a
    # full collection (Spark asks for one every 2 min, analytics/session.py) down to the live data plus
    # 30 % (the free ratios), never below the initial heap: the default one (1/64 of this machine's
    # memory, 384m) kept the batch's JVM at 700-820 MB PSS. With these (and the batch's compact labels)
    # the batch's processes 1,062 -> 860 MB, the scorer's 1,015 -> 834 (pipeline benchmark, 10/s, the
    # same session; issue 22); the batch spent 8.7 s in 27 full GCs over ~5 min (~3 % of a core, with
    # the free ratios and the 2-min GC, before -Xms64m). Only the first JIT tier
    # (C1): the drivers run small jobs, and C2 compiling Spark's generated code cost CPU it never paid
    # back (30 rounds of two small jobs, local[2], 512m: JVM CPU 31.1 -> 22.4 s, PSS 524 -> 483 MB).
    driver_java_options: str = checked("-XX:+UseSerialGC -Xms64m -XX:MinHeapFreeRatio=10 -XX:MaxHeapFreeRatio=30 "
                                       "-XX:TieredStopAtLevel=1", no_max_heap)
    # On a cluster (a spark:// master): each job's share and its executors' size.
    cores_max: int = checked(2, between(1, 1024))
    executor_memory: str = checked("512m", jvm_memory(384))
    local_cluster: LocalSparkClusterConfig = field(default_factory=LocalSparkClusterConfig)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    # `fl-app run` runs the scorer and the batch schedule in one process on one Spark session (`fl-app spark
    # serve`) when both are enabled: one JVM and one Python driver, not two (their PSS 836 + 838 -> 1,303 MB,
    # CPU 16 -> 17 % of a core; pipeline benchmark at 10/s, issue 22). false: a process each (`spark stream`,
    # `spark batch --schedule`), so that one's failure or restart leaves the other alone.
    one_session: bool = True
    # Between batch runs while the pipeline runs: a run reads only what is new (analytics/batch.py), so
    # the dashboards can stay within a minute of MongoDB (Superset refreshes them every 30 s).
    batch_interval_seconds: float = checked(20.0, positive)


@dataclass
class ApiConfig:
    """The FastAPI service and live page (``fl-app api``, fl_app/api)."""

    enabled: bool = True  # started by `fl-app run`
    host: str = "127.0.0.1"
    port: int = checked(8000, tcp_port)
    # The key admin actions need (header X-API-Key). "" = $FL_APP_API_KEY; with neither, admin
    # actions are refused (403) and everything else works.
    api_key: str = checked("${oc.env:FL_APP_API_KEY,''}", set_in_production)  # required in production
    max_page_size: int = checked(500, positive)
    # How often the service samples counts, offsets and lag for rates and the live page.
    sample_seconds: float = checked(5.0, positive)


@dataclass
class SupersetConfig:
    """Superset (``fl-app superset up``, analytics/superset): dashboards on the batch analytics' store."""

    enabled: bool = True  # started by `fl-app run`
    host: str = "127.0.0.1"
    port: int = checked(8088, tcp_port)
    python_env: str = ""  # Superset's own virtualenv; "" = <project root>/.venv-superset (made by `make setup`)
    home: str = "${paths.data_dir}/superset"  # metadata database (SQLite), secret key, generated password
    admin_user: str = "admin"
    # The admin's password. "" = $SUPERSET_ADMIN_PASSWORD, else one generated on first set-up and
    # kept in <home>/admin_password (0600); `fl-app run` prints where. There is no default password.
    admin_password: str = "${oc.env:SUPERSET_ADMIN_PASSWORD,''}"
    workers: int = checked(1, positive)  # gunicorn workers (~350 MB each)
    startup_timeout_seconds: float = checked(300.0, positive)  # first set-up (migrations, import) included


# ---------------------------------------------------------------------- root
@dataclass
class AppConfig:
    """Everything the platform reads; one instance per process."""

    profile_name: str = "testing"  # the default profile; every other profile names itself
    paths: PathsConfig = field(default_factory=PathsConfig)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    mongo: MongoConfig = field(default_factory=MongoConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    flink: FlinkConfig = field(default_factory=FlinkConfig)
    fl: FLConfig = field(default_factory=FLConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    superset: SupersetConfig = field(default_factory=SupersetConfig)


@functools.cache
def _register_schema() -> None:
    """Give Hydra the schema ``conf/config.yaml`` extends, once per process, when a config is first
    composed: not at import, because a ClientApp process imports this module for its dataclasses only,
    and building the structured config took a quarter of each such process's CPU (py-spy, issue 22)."""
    ConfigStore.instance().store(name="base_config", node=AppConfig)


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``conf/`` with ``overrides`` into an (unresolved) ``DictConfig``.

    Raises
    ------
    ConfigError
        If an override names an unknown key or group option, or a value does
        not fit the key's type. The message names the key.
    """
    _register_schema()
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


def validate(node: Any, app: AppConfig | None = None, prefix: str = "") -> None:
    """Run every field's declared checks, depth first; raise ConfigError naming the first bad key."""
    root = app if app is not None else node
    for f in fields(node):
        value = getattr(node, f.name)
        key = f"{prefix}{f.name}"
        for check in f.metadata.get("checks", ()):
            problem = check(value, root)
            if problem:
                shown = MASK if value and is_secret_key(key) else redact_url(repr(value))
                raise ConfigError(f"{key} {problem}, got {shown}")
        if is_dataclass(value):
            validate(value, root, key + ".")


def host_port(value: str) -> tuple[str, int]:
    """Split ``host:port`` (the first of a comma-separated list)."""
    split = _split_address(value)
    if split is None:
        raise ConfigError(f"address must look like host:port, got {value!r}")
    return split


def _explain(exc: Exception) -> str:
    """Hydra nests the useful message (with ``full_key``) in the cause chain."""
    parts: list[str] = []
    seen: BaseException | None = exc
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
