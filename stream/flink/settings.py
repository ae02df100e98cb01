"""What the Flink job needs to know, handed over as one JSON file.

Hydra stays the one source of truth: ``fl-app flink`` (main environment)
composes the config, derives these settings (:func:`stream.flink.launch.settings`), writes
them next to the job's pid file, and starts ``stream/flink/job.py`` in the
Flink environment, which reads them with :meth:`JobSettings.load`.
Standard library only (both environments import it).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from core.atomic import write_json


@dataclass
class JobSettings:
    """Every value comes from the Hydra config (see ``stream/flink/launch.py``); no defaults here,
    so the two can never disagree."""

    bootstrap_servers: str
    readings_topic: str
    windows_topic: str
    dead_letter_topic: str
    group_id: str
    mongo_uri: str
    mongo_database: str
    known_devices: list[int]
    window_partition: dict[str, int]  # device id (as text, JSON keys) -> partition
    windows_per_device: bool  # Kafka SASL: each device's windows in a topic of its own (partition 0)
    kafka_properties: dict[str, str]  # the Kafka clients' login (SASL), empty without; why save() is 0600
    window_seconds: float
    checkpoint_interval_ms: int
    checkpoint_dir: str
    parallelism: int
    jobmanager: str
    jars: list[str]
    python_executable: str
    python_env_report: str  # where the operators write which interpreter and packages they use
    bulk_size: int
    bulk_max_delay_ms: int
    bundle_size: int
    bundle_time_ms: int
    transaction_timeout_ms: int
    valid_ranges: dict[str, list[float]]
    python_execution_mode: str
    max_window_readings: int
    dedup_ttl_seconds: float  # how long a window remembers an event id (see DeviceWindows)
    mongo_timeout_ms: int
    resume_from: str | None  # a retained checkpoint to restore state and offsets from

    def save(self, path: Path) -> None:
        write_json(path, asdict(self), mode=0o600)  # the MongoDB URI and Kafka login may hold passwords

    @classmethod
    def load(cls, path: Path) -> JobSettings:
        return cls(**json.loads(Path(path).read_text()))


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest completed checkpoint (a ``chk-N`` folder with ``_metadata``) of any past run."""
    done = [p.parent for p in Path(checkpoint_dir).glob("*/chk-*/_metadata")]
    return max(done, key=lambda p: p.stat().st_mtime, default=None)
