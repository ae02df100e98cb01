"""The scorer's PySpark daemon: :mod:`pyspark.daemon`, with torch imported before it forks the workers.

Spark starts ``python -m <spark.python.daemon.module>`` once and forks every Python worker from it.
The stock daemon imports nothing heavy, so each scoring worker imported torch itself: ~480 MB of
private memory per worker, four workers (PSS, issue 22). Imported here, the pages are shared
copy-on-write. Only torch (single-threaded, as the workers run it): pandas and pyarrow start threads
when imported, which a fork would not carry over, so they stay after the fork as in the stock daemon.
"""

from __future__ import annotations

import gc
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import torch  # noqa: E402
from pyspark import daemon  # noqa: E402

torch.set_num_threads(1)
gc.collect()
gc.freeze()  # a worker's collections then leave the shared pages alone

if __name__ == "__main__":
    daemon.manager()
