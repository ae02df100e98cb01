"""A device's own window stream: its partition of the window topic, read committed.

Each train message reads what arrived since the last one: the consumer
group ``<prefix>-<device>`` remembers the position, and the position is
committed only by :meth:`WindowReader.commit`, which the ClientApp calls once
its reply is built. A crash before that re-reads the same windows next time;
nothing is ever skipped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

T = TypeVar("T")


def _retry(call: Callable[[], T], attempts: int = 12) -> T:
    """A group coordinator that is still loading answers NOT_COORDINATOR for a moment: ask again."""
    for attempt in range(attempts):
        try:
            return call()
        except KafkaException as exc:
            if attempt == attempts - 1 or not exc.args[0].retriable():
                raise
            time.sleep(min(0.25 * (attempt + 1), 1.5))
    raise AssertionError("unreachable")


class WindowReader:
    """Reads the new window records of one device's partition."""

    def __init__(self, bootstrap: str, topic: str, partition: int, group: str) -> None:
        self.topic, self.partition = topic, partition
        self.consumer = Consumer({
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
                windows.append(json.loads(message.value() or b"{}"))
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
