"""End-to-end throughput and latency: producer -> Kafka -> Flink -> MongoDB.

Against a private broker and MongoDB-wire server, with the real Flink job on a
mini-cluster, in one run:

1. baselines: raw Kafka produce and raw MongoDB insert (validator + indexes)
2. paced: 100 readings/s for ``--paced-seconds``
3. flat out: ``--records`` readings with pacing off

Throughput = readings stored / (last stored_at - first event_time).
Latency = stored_at - event_time per reading (send time to stored), p50/p99.

    python -m benchmarks.flink_pipeline [--records 30000] [--paced-seconds 30]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks._stack import private_stack
from benchmarks.baselines import kafka_produce, mongo_insert
from core import services, storage
from core.config import AppConfig, load_config
from core.dataset import synthetic
from core.services.runner import ManagedProcess
from stream.producer import ReplayProducer
from tests.support.stack import tenant_overrides

console = Console()
FL_APP = Path(sys.executable).parent / "fl-app"


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def measure(store: storage.Storage, loop: int) -> dict[str, float]:
    docs = list(store.device_data.find({"loop": loop}, {"event_time": 1, "stored_at": 1, "_id": 0}))
    latencies = [(d["stored_at"] - d["event_time"]).total_seconds() * 1000 for d in docs]
    span = (max(d["stored_at"] for d in docs) - min(d["event_time"] for d in docs)).total_seconds()
    return {"stored": len(docs), "rate": len(docs) / span, "p50": percentile(latencies, 50),
            "p99": percentile(latencies, 99), "mean": statistics.fmean(latencies)}


def wait_stored(store: storage.Storage, loop: int, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while store.device_data.count_documents({"loop": loop}) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {store.device_data.count_documents({'loop': loop})} of {n} stored")
        time.sleep(0.5)


def run_producer(cfg: AppConfig, frame, loop: int, **stream: Any) -> int:
    """Replay from the start of ``loop`` (event ids are new each loop)."""
    state = Path(cfg.paths.run_dir) / f"bench-producer-{loop}.json"
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text(f'{{"dataset": "bench", "loop": {loop}, "seq": 0, "updated_at": ""}}')
    run = dataclasses.replace(cfg, stream=dataclasses.replace(cfg.stream, state_file=str(state), **stream))
    return ReplayProducer(run, frame, "bench").run().delivered


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=30_000)
    parser.add_argument("--paced-seconds", type=float, default=30.0)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for the job, e.g. flink.bundle_size=2000")
    args = parser.parse_args(argv)

    frame = synthetic.generate(max(args.records, 5000))
    results: dict = {}
    with private_stack() as base, tempfile.TemporaryDirectory() as home:
        console.print("[bold]baselines[/] (same run, same servers)")
        results["raw_kafka"] = kafka_produce(base, 50_000).per_second
        results["raw_mongo"] = mongo_insert(base, 20_000).per_second
        tag = uuid.uuid4().hex[:8]
        overrides = [*tenant_overrides(base, Path(home), tag), f"stream.dataset_records={len(frame)}",
                     *args.overrides]
        cfg = load_config(overrides)
        services.provision(cfg)
        job = ManagedProcess(name="flink_job", argv=[str(FL_APP), "flink", *overrides], run_dir=Path(home) / "run",
                             logs_dir=Path(home) / "logs", startup_timeout=10)
        job.start()
        try:
            with storage.Storage.from_config(cfg.mongo) as store:
                console.print("  starting the Flink job and warming up ...")
                run_producer(cfg, frame, 1, pace=False, max_records=500)
                wait_stored(store, 1, 500, timeout=240)

                n = int(100 * args.paced_seconds)
                console.print(f"[bold]paced[/]: {n:,} readings at 100/s")
                run_producer(cfg, frame, 2, records_per_second=100, batch_size=10, max_records=n)
                wait_stored(store, 2, n, timeout=120)
                results["paced"] = measure(store, 2)

                console.print(f"[bold]flat out[/]: {args.records:,} readings, pacing off")
                run_producer(cfg, frame, 3, pace=False, max_records=args.records)
                wait_stored(store, 3, args.records, timeout=900)
                results["max"] = measure(store, 3)
        finally:
            job.stop()

    table = Table(title="Producer -> Kafka -> Flink -> MongoDB", title_justify="left")
    for col in ("run", "stored", "readings/s", "p50 ms", "p99 ms", "vs raw Kafka", "vs raw Mongo"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for name, label in (("paced", "paced 100/s"), ("max", "flat out")):
        r = results[name]
        table.add_row(label, f"{r['stored']:,}", f"{r['rate']:,.0f}", f"{r['p50']:,.0f}", f"{r['p99']:,.0f}",
                      f"{r['rate'] / results['raw_kafka']:.3f}", f"{r['rate'] / results['raw_mongo']:.2f}")
    table.add_row("raw Kafka produce", "", f"{results['raw_kafka']:,.0f}", "", "", "1", "")
    table.add_row("raw Mongo insert (validated, indexed)", "", f"{results['raw_mongo']:,.0f}", "", "", "", "1")
    console.print(table)
    return results


if __name__ == "__main__":
    main()
