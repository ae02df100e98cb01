"""Run the quick benchmarks in turn (baselines, producer, Flink pipeline): `python -m benchmarks`
(or `make bench`); `python -m benchmarks attacks [...]` runs the attack benchmark (~10 min, no servers)."""

import sys

from benchmarks import attacks, baselines, flink_pipeline, producer_throughput

if __name__ == "__main__":
    if sys.argv[1:2] == ["attacks"]:
        attacks.main(sys.argv[2:])
    else:
        baselines.main([])
        producer_throughput.main([])
        flink_pipeline.main([])
