"""How the orchestration starts the analytics: the streaming anomaly scorer, the batch schedule, Superset."""

from __future__ import annotations

from core.component import Component

# After the federation: it scores with the global models the federation makes.
SCORER = Component(name="spark_scorer", command=("spark", "stream"), stop_timeout=60.0)
BATCH = Component(name="spark_batch", command=("spark", "batch", "--schedule"), stop_timeout=60.0)
# Its first start migrates Superset's metadata and imports the dashboards (about a minute).
SUPERSET = Component(name="superset", command=("superset", "serve"), stop_timeout=30.0)
COMPONENTS = (SCORER, BATCH, SUPERSET)
