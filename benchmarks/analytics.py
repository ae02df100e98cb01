"""The Spark analytics: streaming scorer throughput, model-switch delay, batch job time.

On a private broker and MongoDB-wire server, in one run:

1. ``--records`` readings into the readings topic; the raw Kafka consume rate of
   them (confluent-kafka, from the start) is the baseline;
2. the scorer (``fl-app spark stream``, ``local[2]``) scores them all with one global
   model: predictions/s from its first micro-batch to the last prediction stored,
   and its ratio to the raw consume rate;
3. model switch: with 20 readings/s arriving, a new global round is stored; the
   delay until the first prediction of that round;
4. the batch job (``fl-app spark batch``'s work, in this process) on the readings
   and predictions of step 2, then with ``--large`` readings in ``device_data``.

    python -m benchmarks.analytics [--records 150000] [--large 1500000]
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from confluent_kafka import Producer
from rich.console import Console
from rich.table import Table

from benchmarks._stack import private_stack
from benchmarks.baselines import kafka_consume, kafka_produce, mongo_docs, reading
from core import dataset, features, model, services, storage
from core.config import PROJECT_ROOT, AppConfig, load_config
from core.services.runner import ManagedProcess
from tests.support.stack import tenant_overrides

console = Console(width=None if sys.stdout.isatty() else 160)
FL_APP = Path(sys.executable).parent / "fl-app"


def store_global(store: storage.Storage, cfg: AppConfig, round_: int) -> None:
    weights = model.get_weights(model.build(cfg.fl.model))
    width = features.normalised_width(cfg.fl.model)  # any valid normalisation: the scorer's cost is measured
    store.global_model.insert_one({"round": round_, "weights": storage.encode_weights(weights), "threshold": 1.0,
                                   "normalisation": {"centre": [0.0] * width, "scale": [1.0] * width},
                                   "num_devices": 3, "num_examples": 1, "created_at": datetime.now(UTC)})


def paced(cfg: AppConfig, stop: threading.Event, start: int, per_second: float = 20.0) -> None:
    producer = Producer({"bootstrap.servers": cfg.kafka.bootstrap_servers})
    i = start
    while not stop.is_set():
        value = reading(i, loop=2)
        value["event_time"] = datetime.now(UTC).isoformat()
        producer.produce(cfg.kafka.topics.readings.name, value=json.dumps(value).encode())
        producer.poll(0)
        i += 1
        stop.wait(1 / per_second)
    producer.flush(10)


def insert_readings(store: storage.Storage, n: int, loop: int, batch: int = 20_000) -> None:
    for start in range(0, n, batch):
        docs = mongo_docs(min(batch, n - start), loop)
        for k, doc in enumerate(docs):
            doc["event_id"], doc["seq"] = f"{loop}-{start + k}", start + k
            doc["device_id"] = (start + k) % 53 + 1
        store.device_data.insert_many([{**d, "stored_at": d["event_time"]} for d in docs], ordered=False)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=150_000)
    parser.add_argument("--large", type=int, default=1_500_000, help="readings for the second batch run (0: skip)")
    parser.add_argument("--json", type=Path, default=PROJECT_ROOT / "logs" / "analytics_bench.json")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a stopped run still tears down its servers
    results: dict[str, float] = {}
    with private_stack() as stack:
        home = Path(stack.paths.home) / "analytics"
        overrides = [*tenant_overrides(stack, home, uuid.uuid4().hex[:8]),
                     "spark.scorer.trigger_seconds=1", "spark.scorer.max_offsets_per_trigger=50000"]
        cfg = load_config(overrides)
        services.provision(cfg)
        store = storage.Storage.from_config(cfg.mongo)
        console.print(f"producing {args.records:,} readings ...")
        kafka_produce(cfg, args.records)
        known = set(dataset.device_ids(cfg.stream, cfg.paths.cache_dir))  # the others are invalid: not scored
        valid = sum(1 for i in range(args.records) if reading(i)["device_id"] in known)
        consume = kafka_consume(cfg, args.records)
        results["raw_consume_per_s"] = consume.per_second
        store_global(store, cfg, 1)
        scorer = ManagedProcess(name="spark_scorer", argv=[str(FL_APP), "spark", "stream", *overrides],
                                run_dir=home / ".run", logs_dir=home / "logs", startup_timeout=5, stop_timeout=60)
        try:
            scorer.start()
            deadline = time.monotonic() + 1800
            while store.predictions.estimated_document_count() < valid and time.monotonic() < deadline:
                time.sleep(0.5)
            first = store.predictions.find_one(sort=[("scored_at", 1)])
            last = store.predictions.find_one(sort=[("scored_at", -1)])
            scored = store.predictions.count_documents({})
            if first is None or last is None or scored < valid:
                raise RuntimeError(f"only {scored} of {valid} valid readings scored; see {scorer.log_file}")
            # From the first micro-batch's write to the last one's (Spark's start-up not counted).
            span = max((last["scored_at"] - first["scored_at"]).total_seconds(), 1e-3)
            batch_lines = [ln for ln in scorer.log_file.read_text().splitlines() if " batch " in ln]
            first_batch = next((ln for ln in batch_lines if "predictions stored" in ln), "")
            first_count = int(first_batch.split("batch ")[1].split(": ")[1].split(" ")[0]) if first_batch else 0
            results["scorer_per_s"] = (scored - first_count) / span if span > 1 else float("nan")
            results["scorer_ratio"] = results["scorer_per_s"] / results["raw_consume_per_s"]
            console.print(f"scored {scored:,}: {results['scorer_per_s']:,.0f}/s after the first micro-batch "
                          f"({first_count:,}), raw consume {consume.per_second:,.0f}/s")

            stop = threading.Event()
            feeder = threading.Thread(target=paced, args=(cfg, stop, 0), daemon=True)
            feeder.start()
            time.sleep(5)
            store_global(store, cfg, 2)
            switched = time.monotonic()
            while store.predictions.find_one({"model_round": 2}) is None and time.monotonic() - switched < 120:
                time.sleep(0.1)
            results["switch_delay_s"] = time.monotonic() - switched
            stop.set()
            feeder.join()
            console.print(f"model switch: first round-2 prediction after {results['switch_delay_s']:.1f}s")
        finally:
            scorer.stop()

        from analytics import batch
        from analytics.session import spark_session

        insert_readings(store, args.records, loop=0)
        spark = spark_session(cfg, "bench-batch")
        try:
            labels = None
            for label, n in (("batch_s_small", args.records), ("batch_s_large", args.large)):
                if n <= 0:
                    continue
                have = store.device_data.estimated_document_count()
                if have < n:
                    console.print(f"inserting {n - have:,} more readings ...")
                    insert_readings(store, n - have, loop=9)
                started = time.monotonic()
                result = batch.compute(spark, store, labels)
                results[label] = time.monotonic() - started
                results[label.replace("_s_", "_readings_")] = float(result.counts["readings"])
                console.print(f"batch on {result.counts['readings']:,} readings, {result.counts['predictions']:,} "
                              f"predictions: {results[label]:.1f}s")
        finally:
            spark.stop()
            store.close()
    table = Table(title="Spark analytics", title_justify="left")
    for col in ("measure", "value"):
        table.add_column(col)
    for k, v in results.items():
        table.add_row(k, f"{v:,.3f}" if not np.isnan(v) else "nan")
    console.print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
