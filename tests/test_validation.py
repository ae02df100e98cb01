"""Validation of raw iot_stream records (the Flink job's first step)."""

import json

import pytest

from fl_app.validation import validate

KNOWN = frozenset({1, 2, 3})
RANGES = {"temperature": (-40, 130), "humidity": (-20, 150), "light": (0, 100000), "voltage": (0, 5)}
GOOD = {"event_id": "0-1", "device_id": 1, "event_time": "2026-11-28T04:00:00.000000+00:00",
        "source_time": "2004-02-28T01:00:00.000000+00:00", "loop": 0, "seq": 1,
        "temperature": 20.5, "humidity": 40, "light": 0.0, "voltage": 2.7}


def check(record: object) -> str:
    raw = record if isinstance(record, str) or record is None else json.dumps(record)
    return validate(raw, KNOWN, RANGES)[1]


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
    ],
)
def test_each_defect_has_its_reason(record: object, reason: str) -> None:
    assert check(record) == reason
