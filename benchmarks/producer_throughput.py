"""Maximum sustained producer throughput (pacing off) vs the raw broker baseline.

Both run in the same process against the same private broker, alternating,
so the ratio is fair on a shared, noisy machine:

    raw      confluent-kafka producing pre-serialised reading-sized JSON
    producer stream.producer.ReplayProducer: serialise each reading, track
             every delivery, save the resume position every second

    python -m benchmarks.producer_throughput [--records 100000] [--repeats 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks._stack import private_stack
from benchmarks.baselines import kafka_produce
from core.dataset import synthetic
from stream.producer import ReplayProducer

console = Console()


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)

    frame = synthetic.generate(max(args.records, 53))
    raw_rates, producer_rates = [], []
    console.print(f"[bold]producer throughput[/]: {args.records:,} readings x {args.repeats}, pacing off")
    with private_stack() as cfg, tempfile.TemporaryDirectory() as tmp:
        kafka_produce(cfg, 5_000)  # warm-up: producer id, partition leaders, JIT
        for i in range(args.repeats):
            raw = kafka_produce(cfg, args.records)
            raw_rates.append(raw.per_second)
            run_cfg = dataclasses.replace(cfg, stream=dataclasses.replace(
                cfg.stream, pace=False, max_records=args.records, dataset_records=len(frame),
                state_file=str(Path(tmp) / f"state-{i}.json")))
            stats = ReplayProducer(run_cfg, frame, "bench").run()
            assert stats.delivered == args.records
            producer_rates.append(stats.rate)
            console.print(f"  repeat {i + 1}: raw {raw.per_second:,.0f}/s, producer {stats.rate:,.0f}/s")

    raw_rate, producer_rate = statistics.median(raw_rates), statistics.median(producer_rates)
    table = Table(title="Producer vs raw broker (median of repeats)", title_justify="left")
    for col in ("measure", "records/s"):
        table.add_column(col, justify="left" if col == "measure" else "right")
    table.add_row("raw confluent-kafka produce (acks=all, idempotent)", f"{raw_rate:,.0f}")
    table.add_row("ReplayProducer, pacing off", f"{producer_rate:,.0f}")
    table.add_row("ratio producer / raw", f"{producer_rate / raw_rate:.2f}")
    console.print(table)
    return {"raw": raw_rate, "producer": producer_rate, "ratio": producer_rate / raw_rate}


if __name__ == "__main__":
    main()
