"""Benchmarks: one module per figure, each printing numbers (``python -m benchmarks.<module>``).

`make bench` runs the quick three (``baselines``, ``producer_throughput``, ``flink_pipeline``);
``analytics``, ``fl_supernodes`` and ``pipeline`` (minutes each) are run one by one, with their own options.
"""
