"""The scorer's PySpark daemon: :mod:`pyspark.daemon`, with the scoring modules imported before it forks
the workers.

Spark starts ``python -m <spark.python.daemon.module>`` once and forks every Python worker from it, so
what is imported here is shared copy-on-write instead of imported by each worker. Scoring is numpy
(:mod:`core.inference`): workers that imported torch themselves held ~480 MB of private memory each,
four of them, and still ~110 MB each when forked from a daemon with torch (PSS, issue 22). Only modules
that start no thread: pandas and pyarrow start threads when imported, which a fork would not carry
over, so they stay after the fork as in the stock daemon.
"""

from __future__ import annotations

import gc

import numpy  # noqa: F401
import pymongo  # noqa: F401
from pyspark import daemon

from core import config, features, inference, storage  # noqa: F401

gc.collect()
gc.freeze()  # a worker's collections then leave the shared pages alone

if __name__ == "__main__":
    daemon.manager()
