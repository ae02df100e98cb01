"""What is flowing: message counts per topic, documents per collection, the
producer's position. Read-only; used by `fl-app status` (and later the API)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from fl_app import storage, topics
from fl_app.config import AppConfig


@dataclass
class FlowRow:
    where: str
    count: int
    note: str = ""


def topic_message_counts(cfg: AppConfig, timeout: float = 5.0) -> dict[str, int]:
    """Messages currently held per pipeline topic (sum of high minus low watermarks)."""
    consumer = Consumer({"bootstrap.servers": cfg.kafka.bootstrap_servers, "group.id": "fl-app-status",
                         "enable.auto.commit": False})
    try:
        counts = {}
        for name, partitions in topics.describe_topics(cfg, timeout).items():
            total = 0
            for p in range(partitions):
                low, high = consumer.get_watermark_offsets(TopicPartition(name, p), timeout=timeout)
                total += max(0, high - low)
            counts[name] = total
        return counts
    finally:
        consumer.close()


def producer_position(cfg: AppConfig) -> str:
    try:
        state = json.loads(Path(cfg.stream.state_file).read_text())
    except (OSError, ValueError):
        return "not started"
    return f"next: loop {state['loop']}, seq {state['seq']:,} (saved {state['updated_at'][:19]})"


def snapshot(cfg: AppConfig) -> list[FlowRow]:
    rows = []
    position = producer_position(cfg)
    for name, count in topic_message_counts(cfg).items():
        note = f"producer {position}" if name == cfg.kafka.topics.readings.name else ""
        rows.append(FlowRow(f"kafka {name}", count, note))
    with storage.Storage(cfg.mongo) as store:
        for name, count in store.counts().items():
            rows.append(FlowRow(f"mongo {name}", count))
    return rows
