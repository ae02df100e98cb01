"""The scorer's PySpark daemon: :mod:`pyspark.daemon`, with the scoring modules imported before it forks
the workers.

Spark starts ``python -m <spark.python.daemon.module>`` once and forks every Python worker from it, so
what is imported here is shared copy-on-write instead of imported by each worker. Scoring is numpy
(:mod:`core.inference`): workers that imported torch themselves held ~480 MB of private memory each,
four of them, and still ~110 MB each when forked from a daemon with torch (PSS, issue 22).

Only modules that start no thread may be imported here: a fork does not carry threads over. pandas and
pyarrow start one, the background thread of the jemalloc that pyarrow bundles (``jemalloc_bg_thd``); it
is switched off here (pyarrow allocates with mimalloc, and jemalloc purges on its own allocations), so
they are imported too: each of the scorer's four workers 101 -> 71 MB PSS, the daemon 40 -> 56.
"""

from __future__ import annotations

import gc
import os

# Read when pyarrow loads; jemalloc takes the last of repeated options, so this one wins over any inherited.
os.environ["JE_ARROW_MALLOC_CONF"] = ",".join(filter(None, (os.environ.get("JE_ARROW_MALLOC_CONF"),
                                                             "background_thread:false")))

import numpy  # noqa: E402, F401
import pandas  # noqa: E402, F401
import pyarrow  # type: ignore[import-untyped]  # noqa: E402, F401
import pymongo  # noqa: E402, F401
from pyspark import daemon  # noqa: E402
from pyspark.sql.pandas import serializers  # noqa: E402, F401

from core import config, features, inference, storage  # noqa: E402, F401

gc.collect()
gc.freeze()  # a worker's collections then leave the shared pages alone

if __name__ == "__main__":
    daemon.manager()
