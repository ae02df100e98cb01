"""How the orchestration starts the analytics: the streaming anomaly scorer and the batch schedule."""

from __future__ import annotations

from fl_app.component import Component

# After the federation: it scores with the global models the federation makes.
SCORER = Component(name="spark_scorer", command=("spark", "stream"), stop_timeout=60.0)
BATCH = Component(name="spark_batch", command=("spark", "batch", "--schedule"), stop_timeout=60.0)
COMPONENTS = (SCORER, BATCH)
