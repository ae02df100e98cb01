"""How `fl-app run` starts the stream: the Flink job and the replay producer.

A module of its own, not the package's ``__init__``: the Flink job imports
``stream`` from its own environment, which has no Hydra.
"""

from __future__ import annotations

from core.component import Component
from core.config import AppConfig


def _cache_dataset(cfg: AppConfig) -> str:
    from core import dataset

    frame = dataset.load(cfg.stream, cfg.paths.cache_dir)
    return f"data set: {len(frame):,} readings from {frame['device_id'].nunique()} devices"


# In start order: the job first, so it is consuming when the first readings arrive.
FLINK_JOB = Component(name="flink_job", command=("flink",), prepare=_cache_dataset)
PRODUCER = Component(name="kafka_producer", command=("produce",))
COMPONENTS = (FLINK_JOB, PRODUCER)
