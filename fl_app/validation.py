"""Validation of raw ``iot_stream`` records (standard library only).

A record is valid when it is a JSON object with every field of the
``iot_stream`` contract (:class:`fl_app.schemas.Reading`), of the right type,
with finite sensor values inside the physical ranges and a known device id.
Anything else gets a short, stable reason (the dead-letter topic's
``reason`` and the per-reason counters use it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from fl_app.schemas import READING_FIELDS, SENSOR_FIELDS

REQUIRED = READING_FIELDS
INT64_MAX = 2**63 - 1  # what BSON (and so MongoDB) can store


def validate(raw: str | None, known_devices: set[int] | frozenset[int],
             ranges: Mapping[str, Sequence[float]]) -> tuple[dict[str, Any] | None, str]:
    """Return ``(reading, "")`` for a valid record, else ``(None, reason)``."""
    if raw is None or not raw.strip():
        return None, "empty record"
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return None, "bad json"
    if not isinstance(data, dict):
        return None, "not a json object"
    missing = [name for name in REQUIRED if name not in data]
    if missing:
        return None, f"missing field: {missing[0]}"
    if not isinstance(data["event_id"], str) or not data["event_id"]:
        return None, "bad type: event_id"
    for name in ("device_id", "loop", "seq"):
        value = data[name]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= INT64_MAX:
            return None, f"bad type: {name}"
    for name in ("event_time", "source_time"):
        value = data[name]
        if not isinstance(value, str):
            return None, f"bad type: {name}"
        try:
            stamp = datetime.fromisoformat(value)
        except ValueError:
            return None, f"bad timestamp: {name}"
        if stamp.tzinfo is None:
            return None, f"bad timestamp: {name}"
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
    return {name: data[name] for name in REQUIRED}, ""
