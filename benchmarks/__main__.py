"""Run the quick benchmarks in turn (baselines, producer, Flink pipeline): `python -m benchmarks`
(or `make bench`)."""

from benchmarks import baselines, flink_pipeline, producer_throughput

if __name__ == "__main__":
    baselines.main([])
    producer_throughput.main([])
    flink_pipeline.main([])
