"""A device's own window stream: its partition of the window topic, read committed.

Each train message reads what arrived since the last one: from where the
message says (the server's account of what it received, server/positions.py),
else from the position the consumer group ``<prefix>-<device>`` remembers,
committed by :meth:`WindowReader.commit` once the ClientApp's reply is built.
A crash before that re-reads the same windows next time, and a reply lost
after it is read again from the server's position; nothing is ever skipped.

A window record is checked before it is used (:func:`parse_window`): one
that is not a window of this device, or a reading in it that the model
cannot take, is left out and logged, and the position moves past it. A
record that failed every time would otherwise stop the device for good
(its windows never committed, the same record read again at every message).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from core.messages import event_text
from core.records import SENSOR_FIELDS

T = TypeVar("T")
log = logging.getLogger(__name__)


def parse_window(value: bytes | None, device: int) -> tuple[dict[str, Any] | None, list[str]]:
    """``(window, problems)``: the record with only the readings the model can take (finite sensor
    values, a ``source_time`` with a zone, an event id), or None if it is no window of ``device``; each reading
    or record left out gives one line in ``problems``."""
    try:
        window = json.loads(value or b"")
    except (ValueError, RecursionError, UnicodeDecodeError):
        return None, ["a window record that is not JSON"]
    if not isinstance(window, dict) or not isinstance(window.get("readings"), list):
        return None, ["a window record without a list of readings"]
    if window.get("device_id") != device or isinstance(window.get("device_id"), bool):
        return None, [f"a window record of device {str(window.get('device_id'))[:40]!r} in this device's partition"]
    readings, problems = [], []
    for reading in window["readings"]:
        problem = _reading_problem(reading, device)
        if problem:
            problems.append(problem)
        else:
            readings.append(reading)
    return {**window, "readings": readings}, problems


def _reading_problem(reading: object, device: int) -> str:
    if not isinstance(reading, dict) or reading.get("device_id") != device:
        return "a reading of another device (or none)"
    try:  # the update's lineage names its readings by event id (core.messages.Source)
        event_text(reading.get("event_id"), "event_id")
    except ValueError:
        return "a reading without a valid event_id"
    for name in SENSOR_FIELDS:
        value = reading.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"a reading whose {name} is not a finite number"
    try:
        stamp = datetime.fromisoformat(str(reading.get("source_time")))
    except ValueError:
        stamp = None
    return "" if stamp is not None and stamp.tzinfo is not None else "a reading without a zoned source_time"


# librdkafka does not flag these retriable for committed(); a fresh broker answers them while
# __consumer_offsets loads (seen on a new SASL broker: NOT_COORDINATOR for several seconds).
_COORDINATOR_MOVING = (KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                       KafkaError.COORDINATOR_NOT_AVAILABLE)


def _retry(call: Callable[[], T], attempts: int = 12) -> T:
    """A group coordinator that is still loading answers NOT_COORDINATOR for a moment: ask again."""
    for attempt in range(attempts):
        try:
            return call()
        except KafkaException as exc:
            if attempt == attempts - 1 or not (exc.args[0].retriable() or exc.args[0].code() in _COORDINATOR_MOVING):
                raise
            time.sleep(min(0.25 * (attempt + 1), 1.5))
    raise AssertionError("unreachable")


class WindowReader:
    """Reads the new window records of one device's partition."""

    def __init__(self, bootstrap: str, topic: str, partition: int, group: str, device: int,
                 login: dict[str, Any] | None = None) -> None:
        self.topic, self.partition, self.device = topic, partition, device
        self.consumer = Consumer({
            **(login or {}),  # the device's own Kafka login (SASL), if the broker wants one
            "bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
            "isolation.level": "read_committed",  # only windows of committed Flink checkpoints
            "auto.offset.reset": "earliest",
            # Tells when the readable end is reached: with read_committed the partition's high
            # watermark lies past a commit marker (or an open transaction) and is never reached.
            "enable.partition.eof": True,
            # The broker answers a fetch at the end at once, not after its default 500 ms wait for
            # more data: a read stops at the end, so that wait was every task's idle half second.
            "fetch.wait.max.ms": 10,
        })
        # The positions read_new moved the group between, for the update's lineage (core.messages.Source):
        # offsets, not records, because each of Flink's transactions leaves a commit marker that takes an
        # offset and is never delivered. Consecutive reads thus tile the partition with no gap.
        self.first_offset: int | None = None
        self.next_offset: int | None = None

    def read_new(self, max_seconds: float = 5.0, idle_seconds: float = 0.5,
                 start: int | None = None) -> list[dict[str, Any]]:
        """Every committed window record from ``start`` (the server's account of this device,
        server/positions.py; without one, the group's position) up to the end of the partition.

        Stops at the readable end of the partition (records of a Flink transaction still open
        are not readable yet: they come next time), or when nothing more arrives for ``idle_seconds``.
        """
        tp = TopicPartition(self.topic, self.partition)
        committed = _retry(lambda: self.consumer.committed([tp], timeout=10)[0].offset)
        low, high = _retry(lambda: self.consumer.get_watermark_offsets(tp, timeout=10))
        if start is not None and start > high:  # the server counts records this partition never had
            log.warning("device %d: told to read from offset %d, past the end %d of %s[%d] (a topic made "
                        "anew?): reading from the group's position", self.device, start, high, self.topic,
                        self.partition)
            start = None
        if start is None:
            start = committed if committed >= 0 else low
        if start >= high or high == low:
            return []  # nothing new: the common case, answered without fetching
        start = max(start, low)  # records before low were deleted (retention) before they were read
        self.consumer.assign([TopicPartition(self.topic, self.partition, start)])
        windows: list[dict[str, Any]] = []
        started = time.monotonic()
        last_new = started + 1.0  # allow a second for the first fetch
        while time.monotonic() - started < max_seconds and time.monotonic() - last_new < idle_seconds:
            messages = self.consumer.consume(500, timeout=0.1)
            at_end = False
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        at_end = True
                        # The readable end: past the last record read and past the commit marker Flink's
                        # transaction wrote after it. Committing it spares the next read a fetch.
                        if self.next_offset is not None and (message.offset() or 0) > self.next_offset:
                            self.next_offset = message.offset()
                        continue
                    raise KafkaException(error)
                window, problems = parse_window(message.value(), self.device)
                if problems:
                    log.warning("device %d, offset %s: left out %d: %s", self.device, message.offset(),
                                len(problems), "; ".join(sorted(set(problems))))
                if window is not None:
                    windows.append(window)
                if self.first_offset is None:
                    self.first_offset = start
                self.next_offset = (message.offset() or 0) + 1
                last_new = time.monotonic()
            if at_end or (self.next_offset is not None and self.next_offset >= high):
                break
        return windows

    def commit(self) -> None:
        """Move the group's position past what :meth:`read_new` returned."""
        if self.next_offset is not None:
            self.consumer.commit(offsets=[TopicPartition(self.topic, self.partition, self.next_offset)],
                                 asynchronous=False)

    def close(self) -> None:
        self.consumer.close()
