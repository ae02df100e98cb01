"""The Flower message contract between the ServerApp (``server/``) and the ClientApps (``clients/``).

Train message, server -> device (``RecordDict``)::

    "arrays"  ArrayRecord   the global model's weights, packed into one flat array
    "config"  ConfigRecord  {"layout": the weights' shapes (see :func:`pack`),
                             "server-round": the global round of those weights,
                             "threshold": the global anomaly threshold,
                             "centre", "scale": the global model's normalisation of the
                             row columns (core.summaries.Normalisation; [] in round 0),
                             "local-epochs": passes over the device's replay buffer}

Reply, device -> server::

    "arrays"  ArrayRecord   the locally trained weights, packed (empty when no new data)
    "metrics" MetricRecord  {"num-examples": new readings trained on (0: nothing new),
                             "loss", "score-mean",
                             "score-histogram": counts of the received global model's
                             scores on the device's buffer per fixed bin
                             (core.summaries.HISTOGRAM_EDGES), for the threshold,
                             "device-threshold": the device's own quantile of those scores,
                             "moments": count, sums and sums of squares of the new readings'
                             rows (core.summaries.Moments), for the normalisation}
    "config"  ConfigRecord  {"layout", "device-id", "base-round": the "server-round" trained from,
                             "window-start", "window-end": ISO times of the readings, or "",
                             "delivery-seconds": from the train message's creation to the
                             ClientApp's start (SuperLink, SuperNode, executor; clocks of two
                             machines may differ), "work-seconds": the ClientApp's own time}

Both sides import only this module for it (components never import each other).
The settings both apps read are here too: :class:`RunSettings` (Flower's run
config, derived from the Hydra config) and :class:`ServerSettings` (a file only
the server's machine has).

Why one flat array: Flower moves every array of a message as objects of their
own (an array and its chunk, each one request to the SuperLink and one from
it). Eight weight arrays made a message 20 objects; packed, it is 6, and 53
devices a tick then make a third of the requests.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # flwr (grpc, protobuf: ~40 MB) only where a record is built: the settings below are
    # also read by processes that never build one (the supervisor, the federation's launcher)
    from flwr.app import RecordDict

from core import mongo_auth
from core.atomic import write_json
from core.config import AppConfig, ModelConfig
from core.records import device_group, device_window_topic, window_partitions

ARRAYS, METRICS, CONFIG = "arrays", "metrics", "config"
NUM_EXAMPLES = "num-examples"  # FedAvg's weighting key
HISTOGRAM = "score-histogram"
DEVICE_THRESHOLD = "device-threshold"
MOMENTS = "moments"


# Bounds of a reply, from what consumes it: BSON's int64 (ids, rounds), FedAvg's weights (counts), the
# packed model (a few thousand values; these bounds only keep a hostile layout from costing anything).
MAX_ID = 2**63 - 1
MAX_COUNT = 2**31 - 1
MAX_NDIM = 8
MAX_ARRAYS = 256
MAX_HISTOGRAM = 1024  # bins (the contract's histogram has len(core.summaries.HISTOGRAM_EDGES) - 1)
MAX_COLUMNS = 256  # normalised row columns (a few per sensor field)
MAX_METRICS = 32
MAX_TIME_TEXT = 64  # characters of an ISO 8601 time
METRIC_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")  # a MongoDB field name: no "$", no "."


def pack(weights: list[np.ndarray]) -> tuple[list[np.ndarray], list[int]]:
    """``(arrays, layout)``: the weights as one flat array (none for no weights) and their shapes,
    each as its number of dimensions followed by the dimensions."""
    if len({w.dtype for w in weights}) > 1:
        raise ValueError(f"weights of mixed dtypes {sorted({str(w.dtype) for w in weights})} cannot be packed")
    layout = [n for w in weights for n in (w.ndim, *w.shape)]
    return ([np.concatenate([np.ravel(w) for w in weights])] if weights else []), layout


def shapes_of(layout: object, size: int) -> list[tuple[int, ...]]:
    """The shapes ``layout`` describes, checked before any use: a list of integers, at most
    :data:`MAX_ARRAYS` shapes of at most :data:`MAX_NDIM` dimensions >= 0, whose sizes add up
    to ``size`` (the packed values). Raises ValueError with the reason."""
    if not isinstance(layout, list) or len(layout) > MAX_ARRAYS * (1 + MAX_NDIM):
        raise ValueError(f"layout must be a list of at most {MAX_ARRAYS * (1 + MAX_NDIM)} integers")
    if any(type(n) is not int for n in layout):  # bool is an int subclass: excluded too
        raise ValueError("layout must hold integers only")
    shapes, i = [], 0
    while i < len(layout):
        ndim = layout[i]
        dims = tuple(layout[i + 1:i + 1 + ndim]) if 0 <= ndim <= MAX_NDIM else ()
        if not 0 <= ndim <= MAX_NDIM or len(dims) != ndim:
            raise ValueError(f"layout entry {i}: {ndim} dimensions (must be 0-{MAX_NDIM}, followed by as many)")
        if any(not 0 <= d <= MAX_COUNT for d in dims):
            raise ValueError(f"layout entry {i}: dimensions {list(dims)} must be 0-{MAX_COUNT}")
        shapes.append(dims)
        i += 1 + ndim
    if len(shapes) > MAX_ARRAYS:
        raise ValueError(f"layout of {len(shapes)} arrays, at most {MAX_ARRAYS}")
    if sum(math.prod(s) for s in shapes) != size:  # Python integers: bounded dims, no overflow
        raise ValueError(f"packed weights of {size} values do not fit the layout {shapes[:8]}")
    return shapes


def unpack(arrays: list[np.ndarray], layout: object) -> list[np.ndarray]:
    """The inverse of :func:`pack`; raises ValueError if the layout is malformed or the sizes do not add up."""
    if not arrays:
        if layout:
            raise ValueError("a layout but no weights")
        return []
    flat = arrays[0]
    if len(arrays) != 1 or flat.ndim != 1:
        raise ValueError(f"packed weights must be one flat array, got {len(arrays)} of shape {flat.shape}")
    shapes = shapes_of(layout, flat.size)
    if not shapes:
        return []
    sizes = [math.prod(shape) for shape in shapes]
    return [part.reshape(shape) for part, shape in zip(np.split(flat, np.cumsum(sizes)[:-1]), shapes, strict=True)]


# ------------------------------------------------------------ value checks
def integer(value: object, name: str, low: int = 0, high: int = MAX_ID) -> int:
    """``value`` if it is an integer (not a bool, not a float) in ``[low, high]``; else ValueError."""
    if type(value) is not int:
        raise ValueError(f"{name} must be an integer, got {_brief(value)}")
    if not low <= value <= high:
        raise ValueError(f"{name} {value} out of range [{low}, {high}]")
    return value


def number(value: object, name: str) -> float:
    """``value`` as a finite float (an int or a float, not a bool); else ValueError."""
    if type(value) not in (int, float) or not math.isfinite(value):  # type: ignore[arg-type]
        raise ValueError(f"{name} must be a finite number, got {_brief(value)}")
    return float(value)  # type: ignore[arg-type]


def seconds(value: object) -> float:
    """A measured duration (diagnostics only): a number, NaN where unknown or not finite."""
    if type(value) not in (int, float):
        raise ValueError(f"a duration must be a number, got {_brief(value)}")
    return float(value) if math.isfinite(value) and abs(value) < 1e9 else math.nan  # type: ignore[arg-type]


def utc_time(value: object, name: str) -> datetime | None:
    """An ISO 8601 time with a UTC offset, as a UTC datetime (BSON's dates); "" -> None. It must
    survive the conversion to UTC (year 1 at +14:00 does not)."""
    if value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_TIME_TEXT:
        raise ValueError(f"{name} must be an ISO 8601 time of at most {MAX_TIME_TEXT} characters, got {_brief(value)}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{name} {value!r} is not an ISO 8601 time") from None
    if parsed.tzinfo is None:
        raise ValueError(f"{name} {value!r} has no UTC offset")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{name} {value!r} is out of range in UTC") from None


def counts(value: object, name: str) -> list[float]:
    """A histogram: a list of at most :data:`MAX_HISTOGRAM` finite counts >= 0."""
    if not isinstance(value, list) or len(value) > MAX_HISTOGRAM:
        raise ValueError(f"{name} must be a list of at most {MAX_HISTOGRAM} counts, got {_brief(value)}")
    out = [number(v, name) for v in value]
    if any(v < 0 for v in out):
        raise ValueError(f"{name} has negative counts")
    return out


def _brief(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def time_text(value: datetime | None) -> str:
    return value.isoformat() if value is not None else ""


def numbers(value: object, name: str, most: int) -> list[float]:
    """A list of at most ``most`` finite numbers."""
    if not isinstance(value, list) or len(value) > most:
        raise ValueError(f"{name} must be a list of at most {most} numbers, got {_brief(value)}")
    return [number(v, name) for v in value]


@dataclass
class TrainInstruction:
    weights: list[np.ndarray]
    server_round: int
    threshold: float
    local_epochs: int
    centre: list[float] = field(default_factory=list)  # the normalisation; [] before the first round
    scale: list[float] = field(default_factory=list)
    # Where the device reads its windows from: the server's account (server/positions.py); None: from
    # its own Kafka position.
    read_from: int | None = None

    def to_record(self) -> RecordDict:
        from flwr.app import ArrayRecord, ConfigRecord, RecordDict

        arrays, layout = pack(self.weights)
        return RecordDict({ARRAYS: ArrayRecord(arrays), CONFIG: ConfigRecord({
            "layout": layout, "server-round": self.server_round, "threshold": float(self.threshold),
            "centre": [float(v) for v in self.centre], "scale": [float(v) for v in self.scale],
            "local-epochs": self.local_epochs, **({"read-from": self.read_from} if self.read_from is not None else {})
        })})

    @classmethod
    def from_record(cls, content: RecordDict) -> TrainInstruction:
        """Parse a train message; raises ValueError on a malformed one (the threshold may be +inf:
        round 0 has none)."""
        config = content.config_records[CONFIG]
        threshold = config.get("threshold")
        if type(threshold) is not float or math.isnan(threshold):
            raise ValueError(f"threshold must be a number, got {_brief(threshold)}")
        centre = numbers(config.get("centre", []), "centre", MAX_COLUMNS)
        scale = numbers(config.get("scale", []), "scale", MAX_COLUMNS)
        if len(centre) != len(scale) or any(v <= 0 for v in scale):
            raise ValueError("centre and scale must be as long, every scale > 0")
        return cls(weights=unpack(content.array_records[ARRAYS].to_numpy_ndarrays(), config.get("layout")),
                   server_round=integer(config.get("server-round"), "server-round"), threshold=threshold,
                   local_epochs=integer(config.get("local-epochs"), "local-epochs", 0, MAX_COUNT),
                   centre=centre, scale=scale,
                   read_from=integer(config["read-from"], "read-from") if "read-from" in config else None)


class MalformedReply(ValueError):
    """A reply that cannot be used, with the reason; ``device_id`` when the reply named a valid one
    (its rejection is then recorded against that device)."""

    def __init__(self, reason: str, device_id: int | None = None) -> None:
        super().__init__(f"malformed reply: {reason}")
        self.reason, self.device_id = reason, device_id


KAFKA_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")  # Kafka's own rule for a topic name


def event_text(value: object, name: str) -> str:
    """An event id as the readings' validation lets one in (core.validation): 1-128 characters of text."""
    from core.validation import MAX_EVENT_ID_CHARS

    if not isinstance(value, str) or not 0 < len(value) <= MAX_EVENT_ID_CHARS:
        raise ValueError(f"{name} must be text of 1-{MAX_EVENT_ID_CHARS} characters, got {_brief(value)}")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValueError(f"{name} is not valid text") from None
    return value


@dataclass(frozen=True)
class Source:
    """What one local update trained on (its lineage): the window records it consumed, by their Kafka
    position, and the readings in them. Each record is consumed by one update only: the device commits
    past ``last_offset`` once its reply is built (clients/windows.py). A reply of no readings names a
    source too when it consumed records (none the model could take): ``windows`` 0, no event ids."""

    topic: str
    partition: int
    first_offset: int  # the group's position before the read ...
    last_offset: int  # ... and after it, minus one: consecutive updates' ranges tile the partition
    windows: int  # records among first..last that held readings the model could take
    first_event_id: str  # of the first and the last reading trained on ("" with no readings)
    last_event_id: str
    replayed: int  # rows of the device's replay buffer trained on besides the new readings
    held_out: int  # new readings the received model flagged, kept out of training (model.learn_flagged off)

    KEYS = ("source-topic", "source-partition", "first-offset", "last-offset", "source-windows",
            "first-event-id", "last-event-id", "replayed", "held-out")

    def to_config(self) -> dict[str, Any]:
        return dict(zip(self.KEYS, (self.topic, self.partition, self.first_offset, self.last_offset, self.windows,
                                    self.first_event_id, self.last_event_id, self.replayed, self.held_out),
                        strict=True))

    def to_doc(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "first_offset": self.first_offset,
                "last_offset": self.last_offset, "windows": self.windows, "first_event_id": self.first_event_id,
                "last_event_id": self.last_event_id, "replayed": self.replayed, "held_out": self.held_out}

    @classmethod
    def from_config(cls, config: Mapping[str, Any], num_examples: int) -> Source | None:
        """The source a reply names (checked like the rest of it), or None if it names none (no readings)."""
        if not any(k in config for k in cls.KEYS):
            return None
        topic = config.get("source-topic")
        if not isinstance(topic, str) or not KAFKA_TOPIC.fullmatch(topic):
            raise ValueError(f"source-topic must be a Kafka topic name, got {_brief(topic)}")
        first = integer(config.get("first-offset"), "first-offset")
        # Below int64's end: the next offset (last + 1) must still be one a train message can name.
        last = integer(config.get("last-offset"), "last-offset", first, MAX_ID - 1)
        # Readings come in windows with readings, and none in none.
        windows = integer(config.get("source-windows"), "source-windows", 1 if num_examples else 0,
                          min(last - first + 1, MAX_COUNT) if num_examples else 0)
        events = [config.get(k) for k in ("first-event-id", "last-event-id")]
        if not windows and events != ["", ""]:
            raise ValueError(f"a source of no readings names no event ids, got {_brief(events)}")
        return cls(topic=topic, partition=integer(config.get("source-partition"), "source-partition", 0, MAX_COUNT),
                   first_offset=first, last_offset=last, windows=windows,
                   first_event_id=event_text(events[0], "first-event-id") if windows else "",
                   last_event_id=event_text(events[1], "last-event-id") if windows else "",
                   replayed=integer(config.get("replayed"), "replayed", 0, MAX_COUNT),
                   held_out=integer(config.get("held-out"), "held-out", 0, num_examples))


@dataclass
class LocalUpdate:
    """One device's reply to one train message."""

    device_id: int
    base_round: int
    num_examples: int
    weights: list[np.ndarray]
    metrics: dict[str, float] = field(default_factory=dict)
    histogram: list[float] = field(default_factory=list)
    window_start: datetime | None = None  # UTC; None when there were no readings
    window_end: datetime | None = None
    delivery_seconds: float = float("nan")  # message created -> ClientApp started (where messages wait)
    work_seconds: float = float("nan")  # ClientApp started -> reply built
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    threshold: float = math.nan  # the device's own quantile; NaN when it sent none
    moments: list[float] = field(default_factory=list)  # core.summaries.Moments.to_list(); [] when none
    source: Source | None = None  # what it trained on; None when there were no readings

    def to_record(self) -> RecordDict:
        from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

        arrays, layout = pack(self.weights)
        return RecordDict({
            ARRAYS: ArrayRecord(arrays),
            METRICS: MetricRecord({NUM_EXAMPLES: self.num_examples, HISTOGRAM: list(self.histogram),
                                   MOMENTS: list(self.moments), **self.metrics,
                                   **({DEVICE_THRESHOLD: self.threshold} if math.isfinite(self.threshold) else {})}),
            CONFIG: ConfigRecord({"layout": layout, "device-id": self.device_id, "base-round": self.base_round,
                                  "window-start": time_text(self.window_start),
                                  "window-end": time_text(self.window_end),
                                  "delivery-seconds": float(self.delivery_seconds),
                                  "work-seconds": float(self.work_seconds),
                                  **(self.source.to_config() if self.source is not None else {})}),
        })

    @classmethod
    def from_record(cls, content: RecordDict) -> LocalUpdate:
        """Parse a reply, totally: every field is checked before use (types, ranges, the layout against
        the packed size, times on receipt). Raises :class:`MalformedReply` (a ValueError) with the
        reason, whatever the record holds; never anything else."""
        device = None
        try:
            config = content.config_records[CONFIG]
            metrics = dict(content.metric_records[METRICS])
            arrays = content.array_records[ARRAYS]
            device = integer(config.get("device-id"), "device-id")  # first: a rejection names the device
            return cls._parse(device, config, metrics, arrays.to_numpy_ndarrays())
        except KeyError as exc:
            raise MalformedReply(f"lacks record {exc}", device) from exc
        except ValueError as exc:
            raise MalformedReply(str(exc), device) from exc
        except Exception as exc:  # a hostile record may raise anything (OverflowError, TypeError, ...)
            raise MalformedReply(f"{type(exc).__name__}: {str(exc)[:200]}", device) from exc

    @classmethod
    def _parse(cls, device: int, config: Mapping[str, Any], metrics: dict[str, Any],
               arrays: list[np.ndarray]) -> LocalUpdate:
        num_examples = integer(metrics.pop(NUM_EXAMPLES, None), NUM_EXAMPLES, 0, MAX_COUNT)
        histogram = counts(metrics.pop(HISTOGRAM, []), HISTOGRAM)
        moments = numbers(metrics.pop(MOMENTS, []), MOMENTS, 1 + 2 * MAX_COLUMNS)
        threshold = number(metrics.pop(DEVICE_THRESHOLD), DEVICE_THRESHOLD) if DEVICE_THRESHOLD in metrics else math.nan
        if threshold < 0:
            raise ValueError(f"{DEVICE_THRESHOLD} {threshold} is negative (a score is a squared error)")
        if len(metrics) > MAX_METRICS or not all(isinstance(k, str) and METRIC_NAME.fullmatch(k) for k in metrics):
            raise ValueError(f"at most {MAX_METRICS} metrics named like {METRIC_NAME.pattern}, "
                             f"got {_brief(list(metrics))}")
        weights = unpack(arrays, config.get("layout", []))
        if weights and weights[0].dtype.kind != "f":
            raise ValueError(f"weights must be floating point, got {weights[0].dtype}")
        start = utc_time(config.get("window-start", ""), "window-start")
        end = utc_time(config.get("window-end", ""), "window-end")
        if start is not None and end is not None and start > end:
            raise ValueError(f"window-start {start.isoformat()} is after window-end {end.isoformat()}")
        # Optional: the evaluation's devices train on a data set's rows, not on Kafka's records.
        source = Source.from_config(config, num_examples)
        return cls(device_id=device, base_round=integer(config.get("base-round"), "base-round"),
                   num_examples=num_examples, source=source, histogram=histogram, weights=weights, threshold=threshold,
                   moments=moments,
                   metrics={k: number(v, f"metric {k}") for k, v in metrics.items()},
                   window_start=start, window_end=end,
                   delivery_seconds=seconds(config.get("delivery-seconds", math.nan)),
                   work_seconds=seconds(config.get("work-seconds", math.nan)))


# ------------------------------------------------------------------ settings
RUN_CONFIG_ENV = "FL_APP_RUN_CONFIG"  # the run config as JSON, for Flower's simulation Python API
DEVICE_KEYS_FILE = "fl_device_keys.json"  # in the run folder, beside the SuperNode launcher's spec


@dataclass
class RunSettings:
    """What the ServerApp and the ClientApps read, derived from the Hydra config.

    Travels as Flower's run config (flat ``key = value``; ``flwr run --run-config``).
    Holds no MongoDB address: the devices see the run config too, so the
    server reads its database settings from ``server_settings``, a file on the
    server's machine only.
    """

    kafka_bootstrap: str  # what the devices dial: kafka.device_bootstrap_servers, else bootstrap_servers
    windows_topic: str
    devices: list[int]  # in partition order of the window topic (core.records.window_partitions)
    windows_per_device: bool  # a window topic per device (Kafka SASL: ACLs name topics), not a partition
    model: dict[str, Any]  # core.config.ModelConfig as a dict
    local_epochs: int
    train_every: float  # seconds
    aggregate_every: float  # seconds
    min_devices: int
    max_staleness_rounds: int
    aggregator: str  # fl.aggregator and its bounds (server.robust.Robustness)
    trim_fraction: float
    max_distance_factor: float
    max_weight_factor: float
    duration: float  # seconds the ServerApp runs; 0 = until stopped
    message_ttl: float  # seconds a train message may stay unanswered
    warmup_train_every: float  # seconds between train messages before the first global round; 0: off
    server_settings: str  # path of the server-only settings (MongoDB, log folder)

    @classmethod
    def from_config(cls, cfg: AppConfig, devices: list[int], server_settings: str) -> RunSettings:
        from dataclasses import asdict

        fl = cfg.fl
        return cls(kafka_bootstrap=cfg.kafka.device_bootstrap_servers or cfg.kafka.bootstrap_servers,
                   windows_topic=cfg.kafka.topics.windows.name,
                   devices=sorted(devices), windows_per_device=cfg.kafka.sasl.enabled,
                   model=asdict(fl.model), local_epochs=fl.local_epochs,
                   train_every=fl.local_training_interval_seconds,
                   aggregate_every=fl.global_update_interval_minutes * 60, min_devices=fl.min_devices_for_aggregation,
                   max_staleness_rounds=fl.max_staleness_rounds, aggregator=fl.aggregator,
                   trim_fraction=fl.trim_fraction, max_distance_factor=fl.max_distance_factor,
                   max_weight_factor=fl.max_weight_factor,
                   duration=fl.duration_seconds or 0.0,
                   message_ttl=fl.message_ttl_seconds or max(4 * fl.local_training_interval_seconds, 120.0),
                   warmup_train_every=fl.warmup_train_seconds,
                   server_settings=server_settings)

    # Flower's run config holds flat scalars only: these travel as JSON text.
    JSON_FIELDS = ("devices", "model")

    def to_run_config(self) -> dict[str, str | int | float]:
        return {name.replace("_", "-"): json.dumps(value) if name in self.JSON_FIELDS else value
                for name, value in self.__dict__.items()}

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> RunSettings:
        values = {name: run_config[name.replace("_", "-")] for name in cls.__dataclass_fields__}
        return cls(**{k: json.loads(v) if k in cls.JSON_FIELDS else v for k, v in values.items()})

    @classmethod
    def from_context(cls, run_config: Mapping[str, Any]) -> RunSettings:
        """From the run config, or, when it is empty (simulation Python API), from $FL_APP_RUN_CONFIG."""
        if not run_config:
            try:
                run_config = json.loads(os.environ[RUN_CONFIG_ENV])
            except KeyError:
                raise RuntimeError(
                    f"no run config: start the apps with `fl-app fl up` (or set {RUN_CONFIG_ENV})") from None
        return cls.from_run_config(run_config)

    def model_config(self) -> ModelConfig:
        return ModelConfig(**self.model)

    def device_of(self, node_config: Mapping[str, Any]) -> int:
        """The device a SuperNode serves: ``device-id`` (deployment), else the ``partition-id``'th device."""
        if "device-id" in node_config:
            return int(node_config["device-id"])
        return self.devices[int(node_config["partition-id"])]

    def window_source(self, device: int) -> tuple[str, int]:
        """Where a device's windows are: ``(topic, partition)``."""
        if self.windows_per_device:
            return device_window_topic(self.windows_topic, device), 0
        return self.windows_topic, window_partitions(self.devices)[device]

    def group_of(self, device: int) -> str:
        return device_group(self.windows_topic, device)


@dataclass
class ServerSettings:
    """What only the ServerApp's machine knows: where to persist, where to log, and what it trusts
    about devices (``server/admission.py``): how many readings the stream can bring a device, and
    each device's registered public key (with SuperNode authentication)."""

    mongo_uri: str
    mongo_database: str
    mongo_timeout_ms: int
    logs_dir: str
    records_per_second: float = 0.0  # the whole stream's (stream.records_per_second); 0: unpaced, no bound
    max_window_readings: int = 0  # readings one window record holds at most (flink.max_window_readings)
    device_keys: dict[str, str] = field(default_factory=dict)  # device id -> its public key (OpenSSH text)
    # Insecure warm SuperNodes' public keys, as their launcher (clients/supernodes.py) writes them; "": none.
    device_keys_file: str = ""

    @classmethod
    def from_config(cls, cfg: AppConfig) -> ServerSettings:
        auth = cfg.fl.security.supernode_auth
        launched = not auth and cfg.fl.isolation == "warm" and cfg.fl.runtime == "deployment"
        mongo = cfg.mongo
        return cls(mongo_auth.client_uri(mongo), mongo.database, mongo.server_selection_timeout_ms, cfg.paths.logs_dir,
                   records_per_second=cfg.stream.records_per_second if cfg.stream.pace else 0.0,
                   max_window_readings=cfg.flink.max_window_readings,
                   device_keys=registered_keys(Path(cfg.fl.security.certs_dir)) if auth else {},
                   device_keys_file=str(Path(cfg.paths.run_dir) / DEVICE_KEYS_FILE) if launched else "")

    def save(self, path: str) -> None:
        write_json(path, self.__dict__, mode=0o600)  # it may hold database credentials

    @classmethod
    def load(cls, path: str) -> ServerSettings:
        return cls(**json.loads(Path(path).read_text()))


def registered_keys(certs_dir: Path) -> dict[str, str]:
    """The devices' public keys under ``certs_dir`` (``core.certs``: ``supernodes/device-<id>.pub``, the
    keys ``fl-app fl up`` registers with the SuperLink), by device id."""
    from core.certs import CertPaths

    folder = CertPaths(certs_dir).supernode_public_key(0).parent
    keys = {}
    for path in sorted(folder.glob("device-*.pub")):
        device = path.stem.removeprefix("device-")
        if device.isdigit():
            keys[device] = path.read_text().strip()
    return keys
