"""A device's own window stream: its partition of the window topic, read committed.

Each train message reads what arrived since the last one: the consumer
group ``<prefix>-<device>`` remembers the position, and the position is
committed only by :meth:`WindowReader.commit`, which the ClientApp calls once
its reply is built. A crash before that re-reads the same windows next time;
nothing is ever skipped.

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

from core.records import SENSOR_FIELDS

T = TypeVar("T")
log = logging.getLogger(__name__)


def parse_window(value: bytes | None, device: int) -> tuple[dict[str, Any] | None, list[str]]:
    """``(window, problems)``: the record with only the readings the model can take (finite sensor
    values, a ``source_time`` with a zone), or None if it is no window of ``device``; each reading
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
        self.next_offset: int | None = None

    def read_new(self, max_seconds: float = 5.0, idle_seconds: float = 0.5) -> list[dict[str, Any]]:
        """Every committed window record after the group's position, up to the end of the partition.

        Stops at the readable end of the partition (records of a Flink transaction still open
        are not readable yet: they come next time), or when nothing more arrives for ``idle_seconds``.
        """
        tp = TopicPartition(self.topic, self.partition)
        committed = _retry(lambda: self.consumer.committed([tp], timeout=10)[0].offset)
        low, high = _retry(lambda: self.consumer.get_watermark_offsets(tp, timeout=10))
        if committed >= high or high == low:
            return []  # nothing new: the common case, answered without fetching
        self.consumer.assign([TopicPartition(self.topic, self.partition, committed if committed >= 0 else low)])
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
                        continue
                    raise KafkaException(error)
                window, problems = parse_window(message.value(), self.device)
                if problems:
                    log.warning("device %d, offset %s: left out %d: %s", self.device, message.offset(),
                                len(problems), "; ".join(sorted(set(problems))))
                if window is not None:
                    windows.append(window)
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
