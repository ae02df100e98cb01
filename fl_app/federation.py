"""The Flower message contract between the ServerApp (``server/``) and the ClientApps (``clients/``).

Train message, server -> device (``RecordDict``)::

    "arrays"  ArrayRecord   the global model's weights, packed into one flat array
    "config"  ConfigRecord  {"layout": the weights' shapes (see :func:`pack`),
                             "server-round": the global round of those weights,
                             "threshold": the global anomaly threshold,
                             "local-epochs": passes over the device's replay buffer}

Reply, device -> server::

    "arrays"  ArrayRecord   the locally trained weights, packed (empty when no new data)
    "metrics" MetricRecord  {"num-examples": new readings trained on (0: nothing new),
                             "loss", "score-mean",
                             "score-histogram": counts of the received global model's
                             scores on the device's buffer per fixed bin
                             (fl_app.model.HISTOGRAM_EDGES), for the threshold}
    "config"  ConfigRecord  {"layout", "device-id", "base-round": the "server-round" trained from,
                             "window-start", "window-end": ISO times of the readings, or "",
                             "delivery-seconds": from the train message's creation to the
                             ClientApp's start (SuperLink, SuperNode, executor; clocks of two
                             machines may differ), "work-seconds": the ClientApp's own time}

Both sides import only this module for it (components never import each other).

Why one flat array: Flower moves every array of a message as objects of their
own (an array and its chunk, each one request to the SuperLink and one from
it). Eight weight arrays made a message 20 objects; packed, it is 6, and 53
devices a tick then make a third of the requests.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fl_app.atomic import write_json
from fl_app.config import AppConfig, ModelConfig
from fl_app.schemas import window_partitions

ARRAYS, METRICS, CONFIG = "arrays", "metrics", "config"
NUM_EXAMPLES = "num-examples"  # FedAvg's weighting key
HISTOGRAM = "score-histogram"


def pack(weights: list[np.ndarray]) -> tuple[list[np.ndarray], list[int]]:
    """``(arrays, layout)``: the weights as one flat array (none for no weights) and their shapes,
    each as its number of dimensions followed by the dimensions."""
    if len({w.dtype for w in weights}) > 1:
        raise ValueError(f"weights of mixed dtypes {sorted({str(w.dtype) for w in weights})} cannot be packed")
    layout = [n for w in weights for n in (w.ndim, *w.shape)]
    return ([np.concatenate([np.ravel(w) for w in weights])] if weights else []), layout


def unpack(arrays: list[np.ndarray], layout: list[int]) -> list[np.ndarray]:
    """The inverse of :func:`pack`; raises ValueError if the sizes do not add up."""
    if not arrays:
        if layout:
            raise ValueError("a layout but no weights")
        return []
    flat, shapes, i = arrays[0], [], 0
    while i < len(layout):
        ndim = layout[i]
        shapes.append(tuple(layout[i + 1:i + 1 + ndim]))
        i += 1 + ndim
    sizes = [int(np.prod(shape)) for shape in shapes]
    if len(arrays) != 1 or flat.ndim != 1 or sum(sizes) != flat.size:
        raise ValueError(f"packed weights of {flat.size} values do not fit the layout {shapes}")
    return [part.reshape(shape) for part, shape in zip(np.split(flat, np.cumsum(sizes)[:-1]), shapes, strict=True)]


@dataclass
class TrainInstruction:
    weights: list[np.ndarray]
    server_round: int
    threshold: float
    local_epochs: int

    def to_record(self) -> RecordDict:
        arrays, layout = pack(self.weights)
        return RecordDict({ARRAYS: ArrayRecord(arrays), CONFIG: ConfigRecord({
            "layout": layout, "server-round": self.server_round, "threshold": float(self.threshold),
            "local-epochs": self.local_epochs})})

    @classmethod
    def from_record(cls, content: RecordDict) -> TrainInstruction:
        config = content.config_records[CONFIG]
        return cls(weights=unpack(content.array_records[ARRAYS].to_numpy_ndarrays(),
                                  list(config["layout"])),  # type: ignore[arg-type]
                   server_round=int(config["server-round"]), threshold=float(config["threshold"]),  # type: ignore[arg-type]
                   local_epochs=int(config["local-epochs"]))  # type: ignore[arg-type]


@dataclass
class LocalUpdate:
    """One device's reply to one train message."""

    device_id: int
    base_round: int
    num_examples: int
    weights: list[np.ndarray]
    metrics: dict[str, float] = field(default_factory=dict)
    histogram: list[float] = field(default_factory=list)
    window_start: str = ""
    window_end: str = ""
    delivery_seconds: float = float("nan")  # message created -> ClientApp started (where messages wait)
    work_seconds: float = float("nan")  # ClientApp started -> reply built
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def to_record(self) -> RecordDict:
        arrays, layout = pack(self.weights)
        return RecordDict({
            ARRAYS: ArrayRecord(arrays),
            METRICS: MetricRecord({NUM_EXAMPLES: self.num_examples, HISTOGRAM: list(self.histogram), **self.metrics}),
            CONFIG: ConfigRecord({"layout": layout, "device-id": self.device_id, "base-round": self.base_round,
                                  "window-start": self.window_start, "window-end": self.window_end,
                                  "delivery-seconds": float(self.delivery_seconds),
                                  "work-seconds": float(self.work_seconds)}),
        })

    @classmethod
    def from_record(cls, content: RecordDict) -> LocalUpdate:
        """Parse a reply; raises ValueError (with what is missing) on a malformed one."""
        try:
            config = content.config_records[CONFIG]
            metrics = dict(content.metric_records[METRICS])
            arrays = content.array_records[ARRAYS]
        except KeyError as exc:
            raise ValueError(f"reply lacks record {exc}") from exc
        try:
            num_examples = int(metrics.pop(NUM_EXAMPLES))  # type: ignore[arg-type]
            histogram = [float(v) for v in metrics.pop(HISTOGRAM, [])]  # type: ignore[union-attr]
            return cls(device_id=int(config["device-id"]), base_round=int(config["base-round"]),  # type: ignore[arg-type]
                       num_examples=num_examples, histogram=histogram,
                       weights=unpack(arrays.to_numpy_ndarrays(), list(config.get("layout", []))),  # type: ignore[arg-type]
                       metrics={k: float(v) for k, v in metrics.items()},  # type: ignore[arg-type]
                       window_start=str(config.get("window-start", "")), window_end=str(config.get("window-end", "")),
                       delivery_seconds=float(config.get("delivery-seconds", math.nan)),  # type: ignore[arg-type]
                       work_seconds=float(config.get("work-seconds", math.nan)))  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed reply: {exc!r}") from exc


# ------------------------------------------------------------------ settings
RUN_CONFIG_ENV = "FL_APP_RUN_CONFIG"  # the run config as JSON, for Flower's simulation Python API


@dataclass
class RunSettings:
    """What the ServerApp and the ClientApps read, derived from the Hydra config.

    Travels as Flower's run config (flat ``key = value``; ``flwr run --run-config``).
    Holds no MongoDB address: the devices see the run config too, so the
    server reads its database settings from ``server_settings``, a file on the
    server's machine only.
    """

    kafka_bootstrap: str
    windows_topic: str
    devices: list[int]  # in partition order of the window topic (fl_app.schemas.window_partitions)
    group_prefix: str  # a device's consumer group: "<prefix>-<device id>"
    model: dict[str, Any]  # fl_app.config.ModelConfig as a dict
    local_epochs: int
    train_every: float  # seconds
    aggregate_every: float  # seconds
    min_devices: int
    max_staleness_rounds: int
    max_update_norm: float
    duration: float  # seconds the ServerApp runs; 0 = until stopped
    message_ttl: float  # seconds a train message may stay unanswered
    warmup_train_every: float  # seconds between train messages before the first global round; 0: off
    server_settings: str  # path of the server-only settings (MongoDB, log folder)

    @classmethod
    def from_config(cls, cfg: AppConfig, devices: list[int], server_settings: str) -> RunSettings:
        from dataclasses import asdict

        fl = cfg.fl
        return cls(kafka_bootstrap=cfg.kafka.bootstrap_servers, windows_topic=cfg.kafka.topics.windows.name,
                   devices=sorted(devices), group_prefix=f"fl-device-{cfg.kafka.topics.windows.name}",
                   model=asdict(fl.model), local_epochs=fl.local_epochs,
                   train_every=fl.local_training_interval_seconds,
                   aggregate_every=fl.global_update_interval_minutes * 60, min_devices=fl.min_devices_for_aggregation,
                   max_staleness_rounds=fl.max_staleness_rounds, max_update_norm=fl.max_update_norm,
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

    def partition_of(self, device: int) -> int:
        return window_partitions(self.devices)[device]


@dataclass
class ServerSettings:
    """What only the ServerApp's machine knows: where to persist, where to log."""

    mongo_uri: str
    mongo_database: str
    mongo_timeout_ms: int
    logs_dir: str

    @classmethod
    def from_config(cls, cfg: AppConfig) -> ServerSettings:
        return cls(cfg.mongo.uri, cfg.mongo.database, cfg.mongo.server_selection_timeout_ms, cfg.paths.logs_dir)

    def save(self, path: str) -> None:
        write_json(path, self.__dict__, mode=0o600)  # it may hold database credentials

    @classmethod
    def load(cls, path: str) -> ServerSettings:
        return cls(**json.loads(Path(path).read_text()))
