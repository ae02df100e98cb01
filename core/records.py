"""Message contracts shared by the producer, the Flink job and the clients.

Standard library only: the Flink job imports this module from its own
environment (``.venv-flink``), which does not have the main dependencies.

``iot_stream`` message
    key = device id (decimal string); value = JSON :class:`Reading`.
Dead-letter message
    JSON :class:`DeadLetter`: the raw payload and why it was rejected.
Window message (the window topic, one partition per device; with Kafka SASL one topic per device)
    key = device id; partition = ``window_partitions(devices)[device id]``
    (topic ``device_window_topic(...)``, partition 0, with SASL);
    value = JSON ``{device_id, window_start, window_end, count, readings[]}``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
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
    return ts.astimezone(UTC).isoformat(timespec="microseconds")


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
        # Not dataclasses.asdict: it deep-copies, and the producer calls this per reading.
        return json.dumps({name: getattr(self, name) for name in READING_FIELDS}, separators=(",", ":")).encode()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Reading:
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})


READING_FIELDS = tuple(Reading.__dataclass_fields__)
assert READING_FIELDS[-len(SENSOR_FIELDS):] == SENSOR_FIELDS  # the sensor values close the record


MAX_DEAD_LETTER_RAW = 16_384  # characters of the raw record kept: the letter must fit in a Kafka message


@dataclass(frozen=True)
class DeadLetter:
    """A record the pipeline rejected, kept with the reason (``raw`` cut to :data:`MAX_DEAD_LETTER_RAW`)."""

    reason: str
    raw: str
    topic: str
    partition: int
    offset: int
    seen_at: str

    @classmethod
    def of(cls, reason: str, raw: str | None, topic: str, partition: int, offset: int) -> DeadLetter:
        """A letter seen now; a raw record past the limit keeps its start and says how long it was."""
        raw = raw if raw is not None else ""
        if len(raw) > MAX_DEAD_LETTER_RAW:
            raw = f"{raw[:MAX_DEAD_LETTER_RAW]}...[{len(raw):,} characters in all]"
        return cls(reason=reason, raw=raw, topic=topic, partition=int(partition), offset=int(offset),
                   seen_at=datetime.now(UTC).isoformat(timespec="milliseconds"))

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()


def window_partitions(device_ids: list[int] | set[int]) -> dict[int, int]:
    """Each device's own partition of the window topic: devices in id order, 0, 1, 2, ...

    The Flink job writes a device's windows there and that device's ClientApp
    reads only there, so both sides must use this one mapping.
    """
    return {device: index for index, device in enumerate(sorted(device_ids))}


def device_window_topic(windows_topic: str, device_id: int) -> str:
    """A device's own window topic (with Kafka SASL: ACLs name topics, not partitions)."""
    return f"{windows_topic}.{device_id}"


def device_group(windows_topic: str, device_id: int) -> str:
    """The consumer group that keeps a device's read position in its windows."""
    return f"fl-device-{windows_topic}-{device_id}"


def window_record(device_id: int, window_start: str, window_end: str, readings: list[dict]) -> dict[str, Any]:
    """The value of one window message."""
    return {"device_id": device_id, "window_start": window_start, "window_end": window_end,
            "count": len(readings), "readings": readings}
