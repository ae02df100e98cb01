"""What a device's window reader accepts from its partition (clients.windows.parse_window)."""

from __future__ import annotations

import json
from typing import Any

from clients.windows import parse_window
from core.records import window_record
from tests.support.poison import GOOD


def test_a_good_window_passes_whole() -> None:
    window = window_record(1, "s", "e", [GOOD, {**GOOD, "event_id": "p-1"}])
    assert parse_window(json.dumps(window).encode(), 1) == (window, [])


def test_records_that_are_no_window_of_this_device_are_refused() -> None:
    for value in (None, b"", b"{", b"\xff", b"[]", b'{"readings": 3}', b"[" * 5000 + b"]" * 5000,
                  json.dumps(window_record(2, "s", "e", [GOOD])).encode(),
                  json.dumps({**window_record(1, "s", "e", [GOOD]), "device_id": True}).encode()):
        window, problems = parse_window(value, 1)
        assert window is None and len(problems) == 1, value


def test_readings_the_model_cannot_take_are_left_out() -> None:
    bad: list[Any] = [{**GOOD, "humidity": None}, {**GOOD, "light": True}, {**GOOD, "voltage": "2.7"},
           {**GOOD, "source_time": "2004-02-28T01:00:00"}, {**GOOD, "source_time": 5}, {**GOOD, "device_id": 2},
           {k: v for k, v in GOOD.items() if k != "temperature"}, [1, 2], "x",
           # An update's lineage names its readings by event id (core.messages.Source).
           {k: v for k, v in GOOD.items() if k != "event_id"}, {**GOOD, "event_id": ""}, {**GOOD, "event_id": 7},
           {**GOOD, "event_id": "e" * 129}]
    value = json.dumps(window_record(1, "s", "e", [*bad, GOOD])).replace('"voltage": 2.7}]', '"voltage": NaN}]')
    window, problems = parse_window(json.dumps(window_record(1, "s", "e", [*bad, GOOD])).encode(), 1)
    assert window is not None and window["readings"] == [GOOD] and len(problems) == len(bad)
    window, problems = parse_window(value.encode(), 1)  # NaN: JSON's parser takes it, the model would not
    assert window is not None and window["readings"] == [] and len(problems) == len(bad) + 1
