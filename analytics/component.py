"""How `fl-app run` starts the analytics: the streaming anomaly scorer, the batch schedule, Superset."""

from __future__ import annotations

from core.component import Component

# After the federation: it scores with the global models the federation makes.
SCORER = Component(name="spark_scorer", command=("spark", "stream"), stop_timeout=60.0,
                   enabled=lambda cfg: cfg.spark.scorer.enabled)
BATCH = Component(name="spark_batch", command=("spark", "batch", "--schedule"), stop_timeout=60.0,
                  enabled=lambda cfg: cfg.spark.batch.enabled)
# Its first start migrates Superset's metadata and imports the dashboards (about a minute).
SUPERSET = Component(name="superset", command=("superset", "serve"), stop_timeout=30.0,
                     enabled=lambda cfg: cfg.superset.enabled)
COMPONENTS = (SCORER, BATCH, SUPERSET)
