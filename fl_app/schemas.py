"""Message contracts shared by the producer, the Flink job and the clients.

Standard library only: the Flink job imports this module from its own
environment (``.venv-flink``), which does not have the main dependencies.

``iot_stream`` message
    key = device id (decimal string); value = JSON :class:`Reading`.
Dead-letter message
    JSON :class:`DeadLetter`: the raw payload and why it was rejected.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

SENSOR_FIELDS = ("temperature", "humidity", "light", "voltage")


def event_id(loop: int, seq: int) -> str:
    """The unique id of one replayed reading: ``"<loop>-<seq>"``.

    ``seq`` is the reading's position in the data set and ``loop`` how many
    times the data set was replayed before it, so a retry or a restart sends
    the same id again (stored once downstream) while a new loop makes new ids.
    """
    return f"{loop}-{seq}"


def iso(ts: datetime) -> str:
    """UTC ISO-8601 with microseconds, the one timestamp format on the wire."""
    return ts.astimezone(timezone.utc).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class Reading:
    """One sensor reading as it travels on ``iot_stream``.

    ``event_time`` is when the producer sent it; ``source_time`` is when the
    sensor took it in the data set. Ground-truth anomaly labels are not part
    of the message: they stay beside the data set, for evaluation only.
    """

    event_id: str
    device_id: int
    event_time: str
    source_time: str
    loop: int
    seq: int
    temperature: float
    humidity: float
    light: float
    voltage: float

    def key(self) -> bytes:
        return str(self.device_id).encode()

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Reading":
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class DeadLetter:
    """A record the pipeline rejected, kept with the reason."""

    reason: str
    raw: str
    topic: str
    partition: int
    offset: int
    seen_at: str

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()
