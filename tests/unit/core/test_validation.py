"""Validation of raw iot_stream records (the Flink job's first step)."""

import json

import pytest

from core.validation import validate
from tests.support.poison import POISON

KNOWN = frozenset({1, 2, 3})
RANGES = {"temperature": (-40, 130), "humidity": (-20, 150), "light": (0, 100000), "voltage": (0, 5)}
GOOD = {"event_id": "0-1", "device_id": 1, "event_time": "2026-11-28T04:00:00.000000+00:00",
        "source_time": "2004-02-28T01:00:00.000000+00:00", "loop": 0, "seq": 1,
        "temperature": 20.5, "humidity": 40, "light": 0.0, "voltage": 2.7}


def check(record: object) -> str:
    raw = record if isinstance(record, str) or record is None else json.dumps(record)
    return validate(raw, KNOWN, RANGES)[1]


def test_timestamps_come_out_in_utc_in_the_wire_format() -> None:
    reading, reason = validate(json.dumps({**GOOD, "event_time": "2026-11-28T18:00:00+14:00",
                                           "source_time": "2004-02-28T01:00:00Z"}), KNOWN, RANGES)
    assert reason == "" and reading is not None
    assert reading["event_time"] == "2026-11-28T04:00:00.000000+00:00"
    assert reading["source_time"] == "2004-02-28T01:00:00.000000+00:00"


def test_a_good_record_passes_unchanged() -> None:
    reading, reason = validate(json.dumps({**GOOD, "extra": "ignored"}), KNOWN, RANGES)
    assert reason == "" and reading == GOOD


def test_a_dying_battery_is_data_not_garbage() -> None:
    assert check({**GOOD, "temperature": 122.153, "humidity": -3.9, "voltage": 2.03}) == ""


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (None, "empty record"),
        ("  ", "empty record"),
        ('{"event_id": ', "bad json"),
        ("[1, 2]", "not a json object"),
        ({k: v for k, v in GOOD.items() if k != "seq"}, "missing field: seq"),
        ({**GOOD, "event_id": ""}, "bad type: event_id"),
        ({**GOOD, "device_id": "1"}, "bad type: device_id"),
        ({**GOOD, "device_id": True}, "bad type: device_id"),
        ({**GOOD, "seq": -1}, "bad type: seq"),
        ({**GOOD, "event_time": "yesterday"}, "bad timestamp: event_time"),
        ({**GOOD, "source_time": "2004-02-28T01:00:00"}, "bad timestamp: source_time"),  # no zone
        ({**GOOD, "light": "bright"}, "bad type: light"),
        ({**GOOD, "temperature": float("nan")}, "not finite: temperature"),
        ({**GOOD, "voltage": float("inf")}, "not finite: voltage"),
        ({**GOOD, "humidity": 900}, "out of range: humidity"),
        ({**GOOD, "light": -1}, "out of range: light"),
        ({**GOOD, "device_id": 99}, "unknown device"),
        (json.dumps({**GOOD, "temperature": 0}).replace('"temperature": 0', '"temperature": ' + "9" * 400),
         "out of range: temperature"),  # a huge JSON integer must not crash the job
        ({**GOOD, "seq": 2**64}, "bad type: seq"),  # beyond what BSON can store
        # Times that parse but do not convert to UTC, or that pandas (the batch analytics) cannot hold.
        ({**GOOD, "event_time": "0001-01-01T00:00:00+14:00"}, "out of range: event_time"),
        ({**GOOD, "source_time": "9999-12-31T23:59:59-14:00"}, "out of range: source_time"),
        ({**GOOD, "event_time": "1600-01-01T00:00:00+00:00"}, "out of range: event_time"),
        ({**GOOD, "event_time": "2262-04-12T00:00:00+00:00"}, "out of range: event_time"),
        ({**GOOD, "event_time": "2026-11-28T04:00:00" + "0" * 80 + "+00:00"}, "bad timestamp: event_time"),
        ({**GOOD, "event_time": 1764302400}, "bad type: event_time"),
        ({**GOOD, "event_time": "2026-11-28T04:00:00\ud800+00:00"}, "bad timestamp: event_time"),
        # Strings no encoder downstream takes, or too long for an index key.
        ({**GOOD, "event_id": "\ud800"}, "bad text: event_id"),
        ({**GOOD, "event_id": "x" * 129}, "too long: event_id"),
        ({**GOOD, "event_id": ["0-1"]}, "bad type: event_id"),
        ({**GOOD, "loop": 2**63}, "bad type: loop"),
        ({**GOOD, "loop": 1.0}, "bad type: loop"),
        ({**GOOD, "device_id": None}, "bad type: device_id"),
        ({**GOOD, "voltage": {"v": 2.7}}, "bad type: voltage"),
        ({**GOOD, "light": -(2**70)}, "out of range: light"),
        (json.dumps({**GOOD, "pad": "x" * 20_000}), "too large"),
        ("[" * 100_000 + "]" * 100_000, "too large"),
        ("[" * 5000 + "]" * 5000, "bad json"),  # nesting past the recursion limit
        (json.dumps(GOOD).replace('"seq": 1', '"seq": ' + "9" * 5000), "bad json"),  # past int's digit limit
        ("\x00\x01\x02", "bad json"),
    ],
)
def test_each_defect_has_its_reason(record: object, reason: str) -> None:
    assert check(record) == reason


@pytest.mark.parametrize("name", list(POISON))
def test_the_poison_corpus_gets_its_reasons(name: str) -> None:
    """The records the Flink and scorer fault tests send (tests/support/poison.py), decoded as Kafka's
    consumers decode them (invalid UTF-8 replaced)."""
    raw, reason = POISON[name]
    assert validate(None if raw is None else raw.decode("utf-8", "replace"), KNOWN, RANGES)[1] == reason
