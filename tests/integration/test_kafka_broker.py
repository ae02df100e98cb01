"""The real local Kafka broker: topics as configured, keyed messages without loss."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from core import topics
from core.config import AppConfig

pytestmark = pytest.mark.integration


def test_topics_exist_with_the_configured_partitions(stack: AppConfig) -> None:
    described = topics.describe_topics(stack)
    assert described == {
        stack.kafka.topics.readings.name: stack.kafka.topics.readings.partitions,
        stack.kafka.topics.windows.name: 53,
        stack.kafka.topics.dead_letter.name: stack.kafka.topics.dead_letter.partitions,
    }


def test_ensure_topics_is_idempotent(stack: AppConfig) -> None:
    again = topics.ensure_topics(stack)
    assert all(not t.created for t in again)


def test_ensure_topics_grows_partitions_but_never_shrinks(stack: AppConfig) -> None:
    import dataclasses

    name = f"grow_{uuid.uuid4().hex[:8]}"
    small = dataclasses.replace(stack.kafka.topics.dead_letter, name=name, partitions=2)
    cfg = dataclasses.replace(stack, kafka=dataclasses.replace(
        stack.kafka, topics=dataclasses.replace(stack.kafka.topics, dead_letter=small)))
    assert {t.name: t.partitions for t in topics.ensure_topics(cfg)}[name] == 2
    cfg.kafka.topics.dead_letter.partitions = 4
    assert {t.name: t.partitions for t in topics.ensure_topics(cfg)}[name] == 4
    cfg.kafka.topics.dead_letter.partitions = 1
    assert {t.name: t.partitions for t in topics.ensure_topics(cfg)}[name] == 4


def test_ten_thousand_keyed_messages_arrive_without_loss(stack: AppConfig) -> None:
    topic = stack.kafka.topics.readings.name
    n, devices = 10_000, 53
    run = uuid.uuid4().hex
    producer = Producer({
        "bootstrap.servers": stack.kafka.bootstrap_servers,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
    })
    failures: list[str] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            failures.append(str(err))

    for i in range(n):
        device = i % devices + 1
        value = json.dumps({"run": run, "seq": i, "device_id": device}).encode()
        while True:
            try:
                producer.produce(topic, key=str(device).encode(), value=value, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(30) == 0
    assert failures == []

    consumer = Consumer({
        "bootstrap.servers": stack.kafka.bootstrap_servers,
        "group.id": f"test-{run}",
        "enable.auto.commit": False,
    })
    partitions = [TopicPartition(topic, p, 0) for p in range(stack.kafka.topics.readings.partitions)]
    consumer.assign(partitions)  # assign(): no group join delay
    seen: dict[int, int] = {}
    partition_of_device: dict[int, set[int]] = {}
    deadline = time.monotonic() + 60
    try:
        while len(seen) < n and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=1000, timeout=1.0):
                assert msg.error() is None, msg.error()
                body = json.loads(msg.value() or b"")
                if body["run"] != run:
                    continue
                assert msg.key() == str(body["device_id"]).encode()
                seen[body["seq"]] = seen.get(body["seq"], 0) + 1
                partition_of_device.setdefault(body["device_id"], set()).add(msg.partition() or 0)
    finally:
        consumer.close()
    assert len(seen) == n, f"lost {n - len(seen)} messages"
    assert set(seen) == set(range(n))
    assert max(seen.values()) == 1, "duplicates delivered"
    # Keyed by device: each device's readings live in exactly one partition.
    assert all(len(parts) == 1 for parts in partition_of_device.values())
    assert len({p for parts in partition_of_device.values() for p in parts}) > 1
