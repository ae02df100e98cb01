"""The reply contract is total: every malformed reply a device can send is refused with a reason,
as a ValueError (MalformedReply), never another exception, a hang, or a value that fails later
(at the round write, in MongoDB)."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from flwr.app import ArrayRecord, RecordDict

from core.messages import (
    ARRAYS,
    CONFIG,
    DEVICE_THRESHOLD,
    HISTOGRAM,
    METRICS,
    MOMENTS,
    NUM_EXAMPLES,
    LocalUpdate,
    MalformedReply,
    Source,
    unpack,
)
from core.summaries import HISTOGRAM_EDGES

DEVICE = 7


def good() -> RecordDict:
    return LocalUpdate(DEVICE, 4, 16, [np.zeros((3, 2), np.float32), np.ones(2, np.float32)],
                       {"loss": 0.1, "score-mean": 0.2}, [1.0] * (len(HISTOGRAM_EDGES) - 1),
                       datetime(2026, 11, 28, 1, 0, tzinfo=UTC), datetime(2026, 11, 28, 1, 0, 30, tzinfo=UTC),
                       0.5, 0.25, source=SOURCE).to_record()


SOURCE = Source("windows.7", 0, 120, 124, 4, "0-1001", "0-1016", replayed=40, held_out=2)


def config(key: str, value: Any) -> Callable[[RecordDict], None]:
    return lambda r: r.config_records[CONFIG].__setitem__(key, value)


def metric(key: str, value: Any) -> Callable[[RecordDict], None]:
    return lambda r: r.metric_records[METRICS].__setitem__(key, value)


def arrays(*values: np.ndarray) -> Callable[[RecordDict], None]:
    return lambda r: r.__setitem__(ARRAYS, ArrayRecord(list(values)))


# (how the reply is broken, words of the reason, whether the device is still known)
MALFORMED: dict[str, tuple[Callable[[RecordDict], object], str, bool]] = {
    # The reproduced ones (issue 18): a hang, three OverflowErrors, a late failure at the write, BSON.
    "negative layout entry": (config("layout", [-1, 5]), "dimensions", True),
    "inf num-examples": (metric(NUM_EXAMPLES, math.inf), "num-examples must be an integer", True),
    "inf base-round": (config("base-round", math.inf), "base-round must be an integer", True),
    "inf device-id": (config("device-id", math.inf), "device-id must be an integer", False),
    "unparsable window-start": (config("window-start", "yesterday"), "not an ISO 8601 time", True),
    "device id 2**63": (config("device-id", 2**63), "out of range", False),
    # Our own.
    "negative device id": (config("device-id", -1), "out of range", False),
    "bool device id": (config("device-id", True), "device-id must be an integer", False),
    "string base-round": (config("base-round", "7"), "base-round must be an integer", True),
    "negative base-round": (config("base-round", -3), "out of range", True),
    "float num-examples": (metric(NUM_EXAMPLES, 16.0), "num-examples must be an integer", True),
    "negative num-examples": (metric(NUM_EXAMPLES, -5), "out of range", True),
    "num-examples past 2**31": (metric(NUM_EXAMPLES, 2**40), "out of range", True),
    "missing num-examples": (lambda r: r.metric_records[METRICS].pop(NUM_EXAMPLES), "num-examples", True),
    "NaN histogram": (metric(HISTOGRAM, [math.nan] * 8), "finite number", True),
    "negative histogram": (metric(HISTOGRAM, [-1.0] * 8), "negative", True),
    "histogram too long": (metric(HISTOGRAM, [1.0] * 5000), "at most", True),
    "histogram a scalar": (metric(HISTOGRAM, 3.0), "list", True),
    "NaN moments": (metric(MOMENTS, [math.nan] * 5), "finite number", True),
    "moments a scalar": (metric(MOMENTS, 3.0), "list", True),
    "moments too long": (metric(MOMENTS, [1.0] * 100_000), "at most", True),
    "inf device-threshold": (metric(DEVICE_THRESHOLD, math.inf), "finite number", True),
    "negative device-threshold": (metric(DEVICE_THRESHOLD, -0.5), "negative", True),
    "device-threshold a list": (metric(DEVICE_THRESHOLD, [1.0]), "finite number", True),
    "inf metric": (metric("loss", math.inf), "metric loss must be a finite number", True),
    "metric named $where": (metric("$where", 1.0), "metrics named", True),
    "metric a list": (metric("loss", [1.0, 2.0]), "metric loss", True),
    "huge layout": (config("layout", [8, *[2**30] * 8]), "do not fit", True),
    "dimension past 2**31": (config("layout", [1, 2**62]), "dimensions", True),
    "layout of a million arrays": (config("layout", [0] * 1_000_000), "at most", True),
    "layout ends inside a shape": (config("layout", [2, 3]), "followed by as many", True),
    "layout that does not fit": (config("layout", [2, 3, 3]), "do not fit", True),
    "layout a string": (config("layout", "2,3,2"), "list", True),
    "layout of bools": (config("layout", [True, True]), "integers only", True),
    "layout of floats": (config("layout", [1.0, 8.0]), "integers only", True),
    "integer weights": (lambda r: arrays(np.zeros(8, np.int64))(r), "floating point", True),
    "two arrays": (arrays(np.zeros(4, np.float32), np.zeros(4, np.float32)), "one flat array", True),
    "a 2-d packed array": (arrays(np.zeros((2, 4), np.float32)), "one flat array", True),
    "window year 1 at +14:00": (config("window-start", "0001-01-01T00:00:00+14:00"), "out of range in UTC", True),
    "window year 9999 at -14:00": (config("window-end", "9999-12-31T23:59:59-14:00"), "out of range in UTC", True),
    "window without an offset": (config("window-start", "2026-11-28T01:00:00"), "no UTC offset", True),
    "window a number": (config("window-start", 1.5), "ISO 8601", True),
    "window text too long": (config("window-start", "2026-11-28T01:00:00+00:00" + " " * 100), "at most", True),
    "window ends before it starts": (config("window-end", "2026-11-27T00:00:00+00:00"), "after window-end", True),
    "no config record": (lambda r: r.pop(CONFIG), "lacks record", False),
    "no metrics record": (lambda r: r.pop(METRICS), "lacks record", False),
    "delivery-seconds a string": (config("delivery-seconds", "fast"), "duration must be a number", True),
    # Its lineage (core.messages.Source): what MongoDB, Kafka's names and the counts can hold.
    "source topic with a slash": (config("source-topic", "../windows"), "Kafka topic name", True),
    "source topic of 300 characters": (config("source-topic", "w" * 300), "Kafka topic name", True),
    "source topic a number": (config("source-topic", 7), "Kafka topic name", True),
    "source named by halves": (lambda r: r.config_records[CONFIG].pop("source-topic"), "source-topic", True),
    "negative partition": (config("source-partition", -1), "out of range", True),
    "last offset before the first": (config("last-offset", 119), "out of range", True),
    "offset past int64": (config("last-offset", 2**63), "out of range", True),
    "last offset at int64's end": (config("last-offset", 2**63 - 1), "out of range", True),  # next: past it
    "float offset": (config("first-offset", 120.0), "must be an integer", True),
    "more windows than records": (config("source-windows", 6), "out of range", True),
    "no windows": (config("source-windows", 0), "out of range", True),
    "empty event id": (config("first-event-id", ""), "1-128 characters", True),
    "event id of 200 characters": (config("last-event-id", "e" * 200), "1-128 characters", True),
    "event id with a lone surrogate": (config("last-event-id", "\udc80"), "not valid text", True),
    "event id a list": (config("first-event-id", ["0-1"]), "1-128 characters", True),
    "negative replayed": (config("replayed", -1), "out of range", True),
    "more held out than readings": (config("held-out", 17), "out of range", True),
}


def parse_in_time(content: RecordDict, seconds: float = 10.0) -> BaseException | LocalUpdate:
    """The outcome of parsing, from a thread, so that a parser that loops forever fails the test."""
    out: list[BaseException | LocalUpdate] = []

    def work() -> None:
        try:
            out.append(LocalUpdate.from_record(content))
        except BaseException as exc:  # noqa: BLE001 - the test inspects whatever it is
            out.append(exc)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(seconds)
    assert out, f"parsing did not end within {seconds:g}s"
    return out[0]


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_every_malformed_reply_is_refused_with_its_reason(kind: str) -> None:
    breaks, why, device_known = MALFORMED[kind]
    content = good()
    breaks(content)
    outcome = parse_in_time(content)
    assert isinstance(outcome, MalformedReply), f"{kind}: {outcome!r}"
    assert why in outcome.reason and str(outcome).startswith("malformed reply: "), outcome.reason
    assert outcome.device_id == (DEVICE if device_known else None)
    assert len(str(outcome)) < 400  # a reason fit for a tick document, not the whole value


def test_a_good_reply_is_parsed_with_utc_times() -> None:
    content = good()
    content.config_records[CONFIG]["window-start"] = "2026-11-28T03:00:00.500+02:00"
    update = LocalUpdate.from_record(content)
    assert update.device_id == DEVICE and update.base_round == 4 and update.num_examples == 16
    assert update.window_start == datetime(2026, 11, 28, 1, 0, 0, 500000, tzinfo=UTC)
    assert update.window_start.utcoffset() == timedelta(0)
    assert [w.shape for w in update.weights] == [(3, 2), (2,)] and update.metrics == {"loss": 0.1, "score-mean": 0.2}
    assert update.delivery_seconds == 0.5 and update.work_seconds == 0.25
    assert update.source == SOURCE  # its lineage, as sent


def test_a_reply_of_no_readings_names_the_records_it_consumed() -> None:
    """Records consumed with no reading the model could take: a source of no windows and no event ids,
    so that the lineage check does not count them as consumed without a trace."""
    none = Source("windows.7", 0, 125, 127, 0, "", "", 0, 0)
    update = LocalUpdate.from_record(LocalUpdate(DEVICE, 0, 0, [], source=none).to_record())
    assert update.num_examples == 0 and update.source == none
    for bad, why in ((Source("windows.7", 0, 125, 127, 0, "0-1", "0-2", 0, 0), "names no event ids"),
                     (Source("windows.7", 0, 125, 127, 1, "0-1", "0-2", 0, 0), "out of range")):
        with pytest.raises(MalformedReply, match=why):
            LocalUpdate.from_record(LocalUpdate(DEVICE, 0, 0, [], source=bad).to_record())


def test_a_reply_without_data_has_no_times_and_unknown_durations() -> None:
    update = LocalUpdate.from_record(LocalUpdate(DEVICE, 0, 0, []).to_record())
    assert update.weights == [] and update.window_start is None and update.window_end is None
    assert math.isnan(update.delivery_seconds)


def test_infinite_durations_are_unknown_not_a_refusal() -> None:
    content = good()
    content.config_records[CONFIG]["delivery-seconds"] = math.inf
    assert math.isnan(LocalUpdate.from_record(content).delivery_seconds)


def test_unpack_checks_the_layout_before_using_it() -> None:
    flat = [np.zeros(6, np.float32)]
    for layout in ([-1, 5], [9, *[1] * 9], [1, -6], [2, 3]):
        with pytest.raises(ValueError):
            unpack(flat, layout)
    assert [w.shape for w in unpack(flat, [2, 3, 2])] == [(3, 2)]
    assert [w.shape for w in unpack([np.zeros(1, np.float32)], [0])] == [()]


def test_a_train_message_names_where_to_read_only_as_an_offset() -> None:
    from core.messages import TrainInstruction

    told = TrainInstruction([np.zeros(2, np.float32)], 3, 1.0, 1, read_from=120)
    assert TrainInstruction.from_record(told.to_record()).read_from == 120
    assert TrainInstruction.from_record(replace(told, read_from=None).to_record()).read_from is None
    for bad in (-1, 1.5, "120", 2**63):
        content = told.to_record()
        content.config_records[CONFIG]["read-from"] = bad
        with pytest.raises(ValueError, match="read-from"):
            TrainInstruction.from_record(content)
