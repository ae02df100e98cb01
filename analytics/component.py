"""How `fl-app run` starts the analytics: the streaming anomaly scorer, the batch schedule, Superset."""

from __future__ import annotations

from core.component import Component
from core.config import AppConfig


def _one_session(cfg: AppConfig) -> bool:
    return cfg.spark.one_session and cfg.spark.scorer.enabled and cfg.spark.batch.enabled


# After the federation: it scores with the global models the federation makes.
SPARK = Component(name="spark", command=("spark", "serve"), stop_timeout=60.0, enabled=_one_session)
SCORER = Component(name="spark_scorer", command=("spark", "stream"), stop_timeout=60.0,
                   enabled=lambda cfg: cfg.spark.scorer.enabled and not _one_session(cfg))
BATCH = Component(name="spark_batch", command=("spark", "batch", "--schedule"), stop_timeout=60.0,
                  enabled=lambda cfg: cfg.spark.batch.enabled and not _one_session(cfg))
# Its first start migrates Superset's metadata and imports the dashboards (about a minute).
SUPERSET = Component(name="superset", command=("superset", "serve"), stop_timeout=30.0,
                     enabled=lambda cfg: cfg.superset.enabled)
COMPONENTS = (SPARK, SCORER, BATCH, SUPERSET)
