"""Hostile ``iot_stream`` records, each with the dead-letter reason it must get.

Shared by the Flink job's and the Spark scorer's fault tests (real servers) and
the validation's unit test, so both consumers of the topic and the rules they
share are tried with the same corpus. The first kinds
are the ones that once halted the pipeline (dates that leave Python's range
when converted to UTC, 64-bit overflow, odd JSON types); the others probe
what each consumer of a valid reading needs (BSON, UTF-8, Kafka's sizes,
pandas' timestamp range, JSON parser limits).
"""

from __future__ import annotations

import json
from typing import Any

GOOD: dict[str, Any] = {
    "event_id": "p-0", "device_id": 1, "event_time": "2026-11-28T04:00:00.000000+00:00",
    "source_time": "2004-02-28T01:00:00.000000+00:00", "loop": 7, "seq": 0,
    "temperature": 20.0, "humidity": 40.0, "light": 100.0, "voltage": 2.7}


def _with(**changes: Any) -> bytes:
    return json.dumps({**GOOD, **changes}).encode()


def _text(template: str) -> bytes:
    """GOOD as JSON with one value replaced by raw JSON text (what json.dumps cannot write)."""
    return json.dumps({**GOOD, "seq": "@"}).replace('"@"', template).encode()


# name -> (Kafka value, dead-letter reason)
POISON: dict[str, tuple[bytes | None, str]] = {
    # Seen to halt the Flink job (OverflowError in the writer) before validation converted times to UTC.
    "year 1 at +14:00": (_with(event_time="0001-01-01T00:00:00+14:00"), "out of range: event_time"),
    "year 9999 at -14:00": (_with(source_time="9999-12-31T23:59:59-14:00"), "out of range: source_time"),
    "year 9999 at -00:01, microseconds": (_with(event_time="9999-12-31T23:59:59.999999-00:01"),
                                          "out of range: event_time"),
    "seq 2**63": (_text(str(2**63)), "bad type: seq"),
    "loop below int64": (_with(loop=-(2**63) - 1), "bad type: loop"),
    "temperature 2**64": (_with(temperature=2**64), "out of range: temperature"),
    "device id as text": (_with(device_id="1"), "bad type: device_id"),
    "device id true": (_with(device_id=True), "bad type: device_id"),
    "device id 1.0": (_with(device_id=1.0), "bad type: device_id"),
    "event id a number": (_with(event_id=17), "bad type: event_id"),
    "humidity a list": (_with(humidity=[40.0]), "bad type: humidity"),
    "voltage an object": (_with(voltage={"v": 2.7}), "bad type: voltage"),
    "light null": (_with(light=None), "bad type: light"),
    "json array": (b"[1, 2, 3]", "not a json object"),
    # Our own: what the stores, encoders and parsers downstream cannot take.
    "before pandas' range": (_with(event_time="1600-01-01T00:00:00+00:00"), "out of range: event_time"),
    "after pandas' range": (_with(source_time="2262-04-12T00:00:00+00:00"), "out of range: source_time"),
    "no time zone": (_with(event_time="2026-11-28T04:00:00"), "bad timestamp: event_time"),
    "30 February": (_with(event_time="2026-02-30T04:00:00+00:00"), "bad timestamp: event_time"),
    "offset of 24 h": (_with(event_time="2026-11-28T04:00:00+24:00"), "bad timestamp: event_time"),
    "lone surrogate in event id": (_with(event_id="\ud800"), "bad text: event_id"),
    "event id of 10 kB": (_with(event_id="e" * 10_000), "too long: event_id"),
    "1e400 (infinity)": (json.dumps({**GOOD, "temperature": "@"}).replace('"@"', "1e400").encode(),
                         "not finite: temperature"),
    "NaN literal": (json.dumps({**GOOD, "voltage": float("nan")}).encode(), "not finite: voltage"),
    "integer of 5,000 digits": (_text("9" * 5000), "bad json"),
    "nesting 5,000 deep": (b"[" * 5000 + b"]" * 5000, "bad json"),
    "100 kB record": (_with(padding="x" * 100_000), "too large"),
    "not UTF-8": (b"\xff\xfe\xfa" + _with(), "bad json"),
    "empty value": (None, "empty record"),
    "a bare string": (b'"hello"', "not a json object"),
    "last duplicate key wins": (_with()[:-1] + b', "device_id": "x"}', "bad type: device_id"),
    "device id past the data set": (_with(device_id=2**62), "unknown device"),
    "negative seq": (_with(seq=-1), "bad type: seq"),
}
