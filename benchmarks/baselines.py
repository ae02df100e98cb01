"""Raw broker and raw MongoDB throughput on this machine.

These are the baselines the pipeline benchmarks report ratios against, measured
again on their own servers with the functions here (``producer_throughput``:
producer rate / raw produce rate; ``flink_pipeline``: Flink->Mongo rate / raw
insert rate; ``analytics``: scorer rate / raw consume rate).
Messages and documents have the shape of a real reading (~200 bytes of JSON).

    python -m benchmarks.baselines [--messages 200000] [--docs 50000]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from pymongo import InsertOne, UpdateOne
from rich.console import Console
from rich.table import Table

from benchmarks._stack import private_stack
from core import storage
from core.config import AppConfig

RESULTS = Path(__file__).resolve().parent / "results"
console = Console()


@dataclass
class Result:
    name: str
    items: int
    seconds: float
    bytes: int = 0

    @property
    def per_second(self) -> float:
        return self.items / self.seconds

    @property
    def mb_per_second(self) -> float:
        return self.bytes / self.seconds / 1e6


def reading(i: int, loop: int = 0) -> dict:
    return {
        "event_id": f"{loop}-{i}",
        "device_id": i % 53 + 1,
        "event_time": "2026-11-28T04:00:00.000000+00:00",
        "source_time": "2004-02-28T00:58:46.002832+00:00",
        "loop": loop,
        "seq": i,
        "temperature": 19.9884,
        "humidity": 37.0933,
        "light": 45.08,
        "voltage": 2.69964,
    }


def kafka_produce(cfg: AppConfig, n: int) -> Result:
    topic = cfg.kafka.topics.readings.name
    payloads = [(str(i % 53 + 1).encode(), json.dumps(reading(i)).encode()) for i in range(n)]
    producer = Producer({
        "bootstrap.servers": cfg.kafka.bootstrap_servers,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
        "compression.type": "lz4",
        "logger": logging.getLogger("benchmarks.librdkafka"),
    })
    errors = 0

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        nonlocal errors
        errors += err is not None

    started = time.perf_counter()
    for key, value in payloads:
        while True:
            try:
                producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    producer.flush(120)
    seconds = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{errors} deliveries failed")
    return Result("kafka produce (acks=all, idempotent)", n, seconds, sum(len(v) for _, v in payloads))


def kafka_consume(cfg: AppConfig, n: int) -> Result:
    topic = cfg.kafka.topics.readings.name
    consumer = Consumer({"bootstrap.servers": cfg.kafka.bootstrap_servers, "group.id": "bench",
                         "enable.auto.commit": False, "fetch.max.bytes": 52428800})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(cfg.kafka.topics.readings.partitions)])
    got, nbytes = 0, 0
    started = time.perf_counter()
    deadline = started + 120
    while got < n and time.perf_counter() < deadline:
        for msg in consumer.consume(num_messages=10_000, timeout=1.0):
            if msg.error() is None:
                got += 1
                nbytes += len(msg.value() or b"")
    seconds = time.perf_counter() - started
    consumer.close()
    if got < n:
        raise RuntimeError(f"consumed only {got} of {n}")
    return Result("kafka consume (assign, from start)", got, seconds, nbytes)


def mongo_docs(n: int, loop: int) -> list[dict]:
    now = datetime.now(UTC)
    docs = []
    for i in range(n):
        doc = reading(i, loop)
        doc["event_time"] = now
        doc["source_time"] = now
        docs.append(doc)
    return docs


def mongo_insert(cfg: AppConfig, n: int, batch: int = 1000) -> Result:
    docs = mongo_docs(n, loop=1)
    with storage.Storage.from_config(cfg.mongo) as store:
        started = time.perf_counter()
        for i in range(0, n, batch):
            store.device_data.bulk_write([InsertOne(d) for d in docs[i:i + batch]], ordered=False)
        seconds = time.perf_counter() - started
        assert store.device_data.count_documents({"loop": 1}) == n
    return Result(f"mongo insert_many (batch {batch}, validated, indexed)", n, seconds)


def mongo_insert_plain(cfg: AppConfig, n: int, batch: int = 1000) -> Result:
    """The same inserts into a collection with no validator and no index: the server's floor."""
    docs = mongo_docs(n, loop=3)
    with storage.Storage.from_config(cfg.mongo) as store:
        scratch = store.db["bench_plain"]
        scratch.drop()
        started = time.perf_counter()
        for i in range(0, n, batch):
            scratch.insert_many(docs[i:i + batch], ordered=False)
        seconds = time.perf_counter() - started
        scratch.drop()
    return Result(f"mongo insert_many (batch {batch}, no validator/index)", n, seconds)


def mongo_upsert(cfg: AppConfig, n: int, batch: int = 1000) -> Result:
    """The other idempotent write, upsert on the unique event_id, for comparison: the pipeline's
    (``Storage.insert_readings``) is an unordered insert that skips duplicate keys."""
    docs = mongo_docs(n, loop=2)
    with storage.Storage.from_config(cfg.mongo) as store:
        started = time.perf_counter()
        for i in range(0, n, batch):
            store.device_data.bulk_write(
                [UpdateOne({"event_id": d["event_id"]}, {"$setOnInsert": d}, upsert=True) for d in docs[i:i + batch]],
                ordered=False,
            )
        seconds = time.perf_counter() - started
        assert store.device_data.count_documents({"loop": 2}) == n
    return Result(f"mongo upsert on event_id (batch {batch})", n, seconds)


def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--docs", type=int, default=50_000)
    args = parser.parse_args(argv)

    console.print("[bold]baselines[/]: starting a private Kafka broker and MongoDB-wire server ...")
    with private_stack() as cfg:
        results = []
        for label, fn, n in (
            ("kafka produce", kafka_produce, args.messages),
            ("kafka consume", kafka_consume, args.messages),
            ("mongo insert, plain collection", mongo_insert_plain, args.docs),
            ("mongo insert", mongo_insert, args.docs),
            ("mongo upsert", mongo_upsert, args.docs),
        ):
            console.print(f"  {label}: {n:,} items ...")
            results.append(fn(cfg, n))

    table = Table(title="Baselines on this machine", title_justify="left")
    for col in ("measure", "items", "seconds", "items/s", "MB/s"):
        table.add_column(col, justify="left" if col == "measure" else "right")
    for r in results:
        table.add_row(r.name, f"{r.items:,}", f"{r.seconds:.2f}", f"{r.per_second:,.0f}",
                      f"{r.mb_per_second:.1f}" if r.bytes else "")
    console.print(table)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "baselines.json"
    out.write_text(json.dumps(
        {"measured_at": datetime.now(UTC).isoformat(),
         "results": [{**asdict(r), "per_second": r.per_second} for r in results]}, indent=2))
    console.print(f"saved {out}")
    return results


if __name__ == "__main__":
    main()
