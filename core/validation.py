"""Validation of raw ``iot_stream`` records (standard library only).

A record is valid when it is a JSON object with every field of the
``iot_stream`` contract (:class:`core.records.Reading`), of the right type,
with finite sensor values inside the physical ranges and a known device id.
Anything else gets a short, stable reason (the dead-letter topic's
``reason`` and the per-reason counters use it).

The rules come from what the consumers of a valid reading need, so that a
record that passes can be stored, windowed, trained on and scored without
an error further down (one such error used to halt the Flink job for good):

- MongoDB (BSON): integers within int64, strings encodable as UTF-8 (a JSON
  ``"\\ud800"`` escape decodes to a lone surrogate, which no encoder takes),
  ``event_id`` short enough for a unique index key;
- the Flink job's Java side (Beam's string coder: UTF-8 again) and Kafka
  (a record, and its dead letter, below the broker's message size);
- timestamps: converted to UTC on the way in (an offset can push a year-1
  or year-9999 time out of Python's range) and inside pandas'
  ``datetime64[ns]`` range: Superset's pandas 2.1 reads the serving tables
  the batch analytics derive from them (minutes of ``event_time``).

A valid reading's timestamps come out in the one wire format
(:func:`core.records.iso`, UTC), so every consumer parses the same form.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from core.records import READING_FIELDS, SENSOR_FIELDS, iso

REQUIRED = READING_FIELDS
INT64_MAX = 2**63 - 1  # what BSON (and so MongoDB) can store
# A reading is ~250 bytes of JSON; anything near Kafka's 1 MB message limit is not one, and its
# dead letter (the raw text, JSON-escaped) must still fit in a Kafka message.
MAX_RECORD_CHARS = 16_384
MAX_EVENT_ID_CHARS = 128  # an index key; MongoDB before 4.2 refuses keys over 1,024 bytes
MAX_TIMESTAMP_CHARS = 64  # the longest ISO 8601 form is ~40 characters
# pandas.Timestamp.min/max (datetime64[ns]), rounded inwards to whole days.
EARLIEST = datetime(1677, 9, 22, tzinfo=UTC)
LATEST = datetime(2262, 4, 11, tzinfo=UTC)


def validate(raw: str | None, known_devices: set[int] | frozenset[int],
             ranges: Mapping[str, Sequence[float]]) -> tuple[dict[str, Any] | None, str]:
    """Return ``(reading, "")`` for a valid record, else ``(None, reason)``. Never raises."""
    if raw is None or not raw.strip():
        return None, "empty record"
    if len(raw) > MAX_RECORD_CHARS:
        return None, "too large"
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # ValueError includes integers past Python's digit limit
        return None, "bad json"
    if not isinstance(data, dict):
        return None, "not a json object"
    missing = [name for name in REQUIRED if name not in data]
    if missing:
        return None, f"missing field: {missing[0]}"
    reason = _event_id(data["event_id"])
    if reason:
        return None, reason
    for name in ("device_id", "loop", "seq"):
        value = data[name]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= INT64_MAX:
            return None, f"bad type: {name}"
    reading = {name: data[name] for name in REQUIRED}
    for name in ("event_time", "source_time"):
        stamp, reason = _timestamp(data[name], name)
        if stamp is None:
            return None, reason
        reading[name] = stamp
    for name in SENSOR_FIELDS:
        value = data[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None, f"bad type: {name}"
        if isinstance(value, int) and abs(value) > INT64_MAX:  # isfinite() would overflow on it
            return None, f"out of range: {name}"
        if not math.isfinite(value):
            return None, f"not finite: {name}"
        low, high = ranges[name]
        if not low <= value <= high:
            return None, f"out of range: {name}"
    if data["device_id"] not in known_devices:
        return None, "unknown device"
    return reading, ""


def _event_id(value: object) -> str:
    if not isinstance(value, str) or not value:
        return "bad type: event_id"
    if len(value) > MAX_EVENT_ID_CHARS:
        return "too long: event_id"
    return "" if _utf8(value) else "bad text: event_id"


def _timestamp(value: object, name: str) -> tuple[str | None, str]:
    """``(the time in the wire format, "")`` or ``(None, reason)``."""
    if not isinstance(value, str):
        return None, f"bad type: {name}"
    if len(value) > MAX_TIMESTAMP_CHARS or not _utf8(value):
        return None, f"bad timestamp: {name}"
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        return None, f"bad timestamp: {name}"
    if stamp.tzinfo is None:
        return None, f"bad timestamp: {name}"
    try:
        utc = stamp.astimezone(UTC)
    except (OverflowError, ValueError):  # e.g. 0001-01-01T00:00:00+14:00 is in year 0
        return None, f"out of range: {name}"
    if not EARLIEST <= utc < LATEST:
        return None, f"out of range: {name}"
    return iso(utc), ""


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
