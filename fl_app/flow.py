"""What is flowing: message counts per topic, documents per collection, the
producer's position, the consumers' lag, the newest messages. Read-only; used
by `fl-app status`, `fl-app view` and the API."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from core import storage, topics
from core.config import AppConfig
from core.kafka_auth import client_config


@dataclass
class FlowRow:
    where: str
    count: int
    note: str = ""
    rate: float | None = None  # per second, measured over snapshot()'s interval
    down: bool = False  # what this row describes has stopped working (`fl-app status` says so)


def topic_message_counts(cfg: AppConfig, timeout: float = 5.0) -> dict[str, int]:
    """Messages currently held per pipeline topic (sum of high minus low watermarks)."""
    consumer = _consumer(cfg)
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


def _consumer(cfg: AppConfig, group: str = "fl-app-status") -> Consumer:
    # Never subscribes, never commits: asking for a group's committed offsets does not join it.
    return Consumer(client_config(cfg.kafka, **{"group.id": group, "enable.auto.commit": False}))


def end_offsets(cfg: AppConfig, topic: str, partitions: int, timeout: float = 5.0) -> dict[int, int]:
    """The high watermark of each partition of ``topic``."""
    consumer = _consumer(cfg)
    try:
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1]
                for p in range(partitions)}
    finally:
        consumer.close()


def readings_end_offsets(cfg: AppConfig, timeout: float = 5.0) -> dict[int, int]:
    """:func:`end_offsets` of ``iot_stream`` (what both lags below are measured against)."""
    topic = cfg.kafka.topics.readings
    return end_offsets(cfg, topic.name, topic.partitions, timeout)


def flink_lag(cfg: AppConfig, timeout: float = 5.0, ends: dict[int, int] | None = None) -> int | None:
    """Readings of ``iot_stream`` the Flink job has not committed yet (its source commits its
    offsets to Kafka at each checkpoint); None before its first commit. ``ends``: the topic's
    end offsets if the caller has them."""
    topic = cfg.kafka.topics.readings
    ends = readings_end_offsets(cfg, timeout) if ends is None else ends
    consumer = _consumer(cfg, cfg.flink.group_id)
    try:
        committed = consumer.committed([TopicPartition(topic.name, p) for p in ends], timeout=timeout)
    finally:
        consumer.close()
    if all(tp.offset < 0 for tp in committed):
        return None
    return sum(max(0, ends[tp.partition] - max(tp.offset, 0)) for tp in committed)


def scorer_lag(cfg: AppConfig, timeout: float = 5.0, ends: dict[int, int] | None = None) -> int | None:
    """Readings of ``iot_stream`` the Spark scorer has not planned a batch for yet (Structured
    Streaming keeps its offsets in its checkpoint, not in Kafka); None before its first batch.
    ``ends``: as for :func:`flink_lag`."""
    offsets_dir = Path(cfg.spark.scorer.checkpoint_dir) / "offsets"
    files = [f for f in offsets_dir.glob("*") if f.name.isdigit()] if offsets_dir.is_dir() else []
    if not files:
        return None
    latest = max(files, key=lambda f: int(f.name))
    try:  # "v1", the batch's metadata, then one line per source: {topic: {partition: offset}}
        planned = json.loads(latest.read_text().splitlines()[-1])[cfg.kafka.topics.readings.name]
    except (ValueError, KeyError, IndexError):
        return None
    ends = readings_end_offsets(cfg, timeout) if ends is None else ends
    return sum(max(0, end - int(planned.get(str(p), 0))) for p, end in ends.items())


def newest_messages(cfg: AppConfig, topic: str, partitions: int, count: int = 10,
                    timeout: float = 2.0) -> list[dict[str, Any]]:
    """The newest ``count`` messages of ``topic`` (across its partitions), newest first:
    partition, offset, timestamp (ms), key and value as text."""
    consumer = _consumer(cfg)
    messages: list[dict[str, Any]] = []
    try:
        highs = {}
        for p in range(partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
            if high > low:
                highs[p] = (max(low, high - count), high)
        if not highs:
            return []
        consumer.assign([TopicPartition(topic, p, start) for p, (start, _) in highs.items()])
        left = {p: high - start for p, (start, high) in highs.items()}  # transaction markers: fewer arrive
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(left.values()):
            for m in consumer.consume(sum(left.values()), timeout=0.2):
                partition, offset = m.partition(), m.offset()
                if m.error() is None and partition is not None and offset is not None:
                    left[partition] = max(0, highs[partition][1] - 1 - offset)
                    messages.append({"partition": partition, "offset": offset, "timestamp": m.timestamp()[1],
                                     "key": (m.key() or b"").decode(errors="replace"),
                                     "value": (m.value() or b"").decode(errors="replace")})
    finally:
        consumer.close()
    return sorted(messages, key=lambda m: m["timestamp"], reverse=True)[:count]


def producer_position(cfg: AppConfig) -> str:
    from stream.producer import PositionStore

    try:
        saved = PositionStore.read(cfg.stream.state_file)
    except RuntimeError as exc:
        return str(exc)
    if saved is None:
        return "not started"
    return f"next: loop {saved.position.loop}, seq {saved.position.seq:,} (saved {saved.updated_at[:19]})"


def snapshot(cfg: AppConfig, rate_seconds: float = 2.0) -> list[FlowRow]:
    """Topics, dead letters, consumer lag, collections and the FL layer; rates from two readings of
    the topics' offsets and the collections' counts ``rate_seconds`` apart (0: no rates)."""
    rows = []
    position = producer_position(cfg)
    transactional = {cfg.kafka.topics.windows.name, cfg.kafka.topics.dead_letter.name}
    with storage.Storage.from_config(cfg.mongo) as store:
        started = time.monotonic()
        messages, documents = topic_message_counts(cfg), store.counts()
        later_messages, later_documents = messages, documents
        if rate_seconds > 0:
            time.sleep(rate_seconds)
            later_messages, later_documents = topic_message_counts(cfg), store.counts()
        span = time.monotonic() - started

        def rate(before: dict[str, int], after: dict[str, int], name: str) -> float | None:
            return (after.get(name, 0) - before.get(name, 0)) / span if rate_seconds > 0 else None

        for name, count in later_messages.items():
            note = f"producer {position}" if name == cfg.kafka.topics.readings.name else ""
            if name in transactional:  # written by Flink's exactly-once sink
                note = "offsets; includes one commit marker per partition and checkpoint"
            rows.append(FlowRow(f"kafka {name}", count, note, rate(messages, later_messages, name)))
        ends = readings_end_offsets(cfg)
        for who, lag in (("Flink job", flink_lag(cfg, ends=ends)), ("Spark scorer", scorer_lag(cfg, ends=ends))):
            rows.append(FlowRow(f"  lag of the {who}", lag if lag is not None else 0,
                                "not consuming yet" if lag is None else "readings not yet consumed"))
        for reason, count in sorted(topics.dead_letter_reasons(cfg).items()):
            rows.append(FlowRow("  dead letters", count, reason))
        for name, count in later_documents.items():
            rows.append(FlowRow(f"mongo {name}", count, rate=rate(documents, later_documents, name)))
        rows += federation_rows(store, cfg.fl.global_update_interval_minutes * 60)
    return rows


def federation_rows(store: storage.Storage, aggregate_every: float) -> list[FlowRow]:
    """The FL layer: its last aggregation tick (round, devices online, replies, message-to-reply latency),
    the last aggregation, the updates the ServerApp holds for its next one; and whether the federation
    is down (:func:`federation_down`; ``aggregate_every``: the configured global interval, seconds)."""
    tick = store.fl_rounds.find_one(sort=[("at", -1)])
    state = store.server_state()
    silent = federation_down(tick, state, aggregate_every)
    health = ([FlowRow("fl federation", int(silent), f"down: no aggregation tick for {silent:.0f}s (more than two "
                       "global intervals)", down=True)] if silent is not None else [])
    pending = ([FlowRow("fl updates pending", int(state["pending"]),
                        f"for the aggregation at {state['next_aggregation_at']:%H:%M:%S} UTC, from devices "
                        + (", ".join(map(str, state.get("pending_devices", []))) or "none"))]
               if state else [])
    latest = store.latest_global_model({"round": 1, "created_at": 1})
    last = [FlowRow("fl last aggregation", int(latest["round"]), f"round made {latest['created_at']:%H:%M:%S} UTC")
            ] if latest else []
    if tick is None:
        return [*health, FlowRow("fl round", 0, "no aggregation tick yet"), *last, *pending]
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
    return [*health, *rows, *last, *pending]


def federation_down(tick: dict[str, Any] | None, state: dict[str, Any] | None, aggregate_every: float,
                    now: datetime | None = None) -> float | None:
    """Seconds without an aggregation tick if that is more than two global intervals (the operator's
    interval where the ServerApp reported one), else None. Before the first tick, counted from the
    ServerApp's last report (fl_server "state"); with neither, nothing is known (None)."""
    every = (state or {}).get("aggregate_every_seconds") or aggregate_every
    since = tick["at"] if tick else (state or {}).get("at")
    if not isinstance(since, datetime):
        return None
    silent = ((now or datetime.now(UTC)) - since.astimezone(UTC)).total_seconds()
    return silent if silent > 2 * float(every) else None


# What `fl-app view` shows of each collection: its newest documents, these fields, newest first by this key.
VIEW: dict[str, tuple[str, tuple[str, ...]]] = {
    storage.DEVICE_DATA: ("event_time", ("event_time", "device_id", "event_id", "temperature", "humidity",
                                         "light", "voltage")),
    storage.LOCAL_MODELS: ("trained_at", ("trained_at", "device_id", "round", "aggregated_into", "num_examples",
                                          "metrics.loss")),
    storage.GLOBAL_MODEL: ("round", ("created_at", "round", "num_devices", "num_examples", "metrics.loss",
                                     "threshold", "rejected", "stale")),
    storage.PREDICTIONS: ("_id", ("event_time", "device_id", "event_id", "model_round", "score", "is_anomaly")),
}


def newest_documents(store: storage.Storage, count: int = 5) -> dict[str, tuple[int, list[dict[str, Any]]]]:
    """For each collection of :data:`VIEW`: its documents (estimated count) and the newest ``count``
    of them, flattened to the shown fields (weights never read)."""
    out = {}
    for name, (newest_first, fields) in VIEW.items():
        docs = store.db[name].find({}, {f: 1 for f in fields}, sort=[(newest_first, -1)], limit=count)
        out[name] = (store.db[name].estimated_document_count(), [{f: _field(d, f) for f in fields} for d in docs])
    return out


def _field(doc: dict[str, Any], path: str) -> Any:
    value: Any = doc
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value
