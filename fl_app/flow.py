"""What is flowing: message counts per topic, documents per collection, the
producer's position. Read-only; used by `fl-app status` (and later the API)."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

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


def dead_letter_reasons(cfg: AppConfig, max_seconds: float = 10.0) -> Counter:
    """How many dead letters there are for each reason (committed ones, read from the topic)."""
    topic = cfg.kafka.topics.dead_letter
    consumer = Consumer({"bootstrap.servers": cfg.kafka.bootstrap_servers, "group.id": "fl-app-status",
                         "enable.auto.commit": False, "isolation.level": "read_committed"})
    reasons: Counter = Counter()
    try:
        # OFFSET_BEGINNING, not 0: after retention deleted old segments, 0 is out of range.
        consumer.assign([TopicPartition(topic.name, p, OFFSET_BEGINNING) for p in range(topic.partitions)])
        deadline, idle_since = time.monotonic() + max_seconds, time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - idle_since < 1.0:
            batch = [m for m in consumer.consume(1000, timeout=0.3) if m.error() is None]
            if batch:
                idle_since = time.monotonic()
            for message in batch:
                try:
                    reasons[json.loads(message.value() or b"")["reason"]] += 1
                except (ValueError, KeyError, TypeError):
                    reasons["(unreadable dead letter)"] += 1
    finally:
        consumer.close()
    return reasons


def producer_position(cfg: AppConfig) -> str:
    from stream.producer import PositionStore

    try:
        saved = PositionStore.read(cfg.stream.state_file)
    except RuntimeError as exc:
        return str(exc)
    if saved is None:
        return "not started"
    return f"next: loop {saved.position.loop}, seq {saved.position.seq:,} (saved {saved.updated_at[:19]})"


def snapshot(cfg: AppConfig) -> list[FlowRow]:
    rows = []
    position = producer_position(cfg)
    transactional = {cfg.kafka.topics.windows.name, cfg.kafka.topics.dead_letter.name}
    for name, count in topic_message_counts(cfg).items():
        note = f"producer {position}" if name == cfg.kafka.topics.readings.name else ""
        if name in transactional:  # written by Flink's exactly-once sink
            note = "offsets; includes one commit marker per partition and checkpoint"
        rows.append(FlowRow(f"kafka {name}", count, note))
    for reason, count in sorted(dead_letter_reasons(cfg).items()):
        rows.append(FlowRow("  dead letters", count, reason))
    with storage.Storage.from_config(cfg.mongo) as store:
        for name, count in store.counts().items():
            rows.append(FlowRow(f"mongo {name}", count))
        rows += federation_rows(store)
    return rows


def federation_rows(store: storage.Storage) -> list[FlowRow]:
    """The FL layer at its last aggregation tick: round, devices online, replies, message-to-reply latency."""
    tick = store.fl_rounds.find_one(sort=[("at", -1)])
    if tick is None:
        return [FlowRow("fl round", 0, "no aggregation tick yet")]
    when = f"{tick['at']:%H:%M:%S}"
    rows = [FlowRow("fl round", int(tick["round"]), f"last tick {when} UTC: {tick['status']}"
                    + (f" ({tick['reason']})" if tick.get("reason") else f", {len(tick.get('accepted', []))} devices"))]
    t = tick.get("transport")
    if t:
        rows.append(FlowRow("fl devices online", int(t["online"]), f"{t['replies']} replies to {t['sent']} train "
                            f"messages since the tick before, {t['outstanding']} pending, {t['expired']} expired"))
        if t["replies"]:
            latency = f"p50 {t['latency_p50']:.1f}s, p99 {t['latency_p99']:.1f}s, max {t['latency_max']:.1f}s"
            if "delivery_p50" in t:
                latency += (f" (p50 of delivery {t['delivery_p50']:.1f}s, work {t['work_p50']:.1f}s, "
                            f"return {t['return_p50']:.1f}s)")
            rows.append(FlowRow("fl message -> reply", int(t["replies"]), latency))
    return rows
