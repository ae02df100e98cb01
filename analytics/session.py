"""The one way the analytics jobs get a Spark session.

``spark.master`` says where the jobs run: ``local[2]`` (the default) in this
process's JVM, or a cluster's master URL. The Python workers run this
project's interpreter (``PYSPARK_PYTHON``) with the project on their path, so
they import ``core`` and ``analytics`` like the driver. Jars that pyspark
lacks (the Kafka source) come from ``core.services.jars``, resolved once
from Maven Central; those pyspark already ships are left out, so its own
versions stay the only ones on the classpath.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from core.config import PROJECT_ROOT, AppConfig

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


def extra_jars(cfg: AppConfig, names: Sequence[str]) -> list[str]:
    """The jars of the pom sets ``names`` (``core/services/poms``) that pyspark does not ship."""
    import pyspark

    from core.services import jars

    shipped = {_artifact(j.name) for j in (Path(pyspark.__file__).parent / "jars").glob("*.jar")}
    found = []
    for name in names:
        found += [str(j) for j in sorted(jars.resolve(name, Path(cfg.paths.cache_dir)).glob("*.jar"))
                  if _artifact(j.name) not in shipped]
    return found


def _artifact(jar: str) -> str:
    """``kafka-clients-3.9.2.jar`` -> ``kafka-clients`` (the part after the last dash is the version)."""
    name, _, version = jar.removesuffix(".jar").rpartition("-")
    return name if name and version[:1].isdigit() else jar.removesuffix(".jar")


def spark_session(cfg: AppConfig, app_name: str, jars: Sequence[str] = (),
                  conf: Mapping[str, str] | None = None) -> SparkSession:
    """A Spark session for ``cfg.spark``; quiet (no UI, warnings only); ``conf``: the job's own settings."""
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    python_path = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    builder = (SparkSession.builder.master(cfg.spark.master).appName(app_name)
               .config("spark.driver.memory", cfg.spark.driver_memory)
               .config("spark.driver.extraJavaOptions", cfg.spark.driver_java_options)
               .config("spark.ui.enabled", "false")
               .config("spark.ui.showConsoleProgress", "false")  # a progress bar per stage, in a log file
               .config("spark.sql.shuffle.partitions", "4")
               # Spark frees a finished job's broadcasts and shuffle files once a GC of the driver finds them
               # unreferenced, and asks for one every 30 min by default: the batch's heap filled up to
               # spark.driver_memory meanwhile. Each of these full GCs also gives back what the heap does not
               # need (spark.driver_java_options' heap free ratios).
               .config("spark.cleaner.periodicGC.interval", "2min")
               .config("spark.sql.session.timeZone", "UTC")
               .config("spark.executorEnv.PYTHONPATH", python_path)
               .config("spark.executorEnv.OMP_NUM_THREADS", "1"))
    if cfg.spark.master.startswith("spark://"):
        # A share of the cluster, so the scorer and the batch run beside each other; one core per
        # executor spreads a job's executors over the workers.
        builder = (builder.config("spark.cores.max", str(cfg.spark.cores_max)).config("spark.executor.cores", "1")
                   .config("spark.executor.memory", cfg.spark.executor_memory))
    if jars:
        builder = builder.config("spark.jars", ",".join(jars))
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    log.info("Spark %s session %r on %s", session.version, app_name, cfg.spark.master)
    return session
