"""Reading a whole topic back in tests."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, TopicPartition


def read_topic(bootstrap_servers: str, topic: str, partitions: int, idle: float = 3.0,
               timeout: float = 120.0) -> list:
    """Every committed message of ``topic``, read until nothing new arrives for ``idle`` s."""
    consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": f"t-{uuid.uuid4()}",
                         "isolation.level": "read_committed", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out, last_new, started = [], time.monotonic(), time.monotonic()
    try:
        while time.monotonic() - last_new < idle and time.monotonic() - started < timeout:
            batch = [m for m in consumer.consume(1000, timeout=0.5) if m.error() is None]
            if batch:
                out += batch
                last_new = time.monotonic()
    finally:
        consumer.close()
    return out
