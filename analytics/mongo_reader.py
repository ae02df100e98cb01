"""The one way the analytics jobs read MongoDB into Spark: pymongo -> pandas (Arrow) -> Spark.

MongoDB's Spark connector for this Spark line (``mongo-spark-connector_2.13``)
is not served here (see ``../shared/notes/stack.md``), so the driver reads
with pymongo through :class:`core.storage.Storage`, in batches, into one
pandas frame that Spark takes over with Arrow. Fine for the pipeline's sizes
(the batch benchmark reads 1.5M readings); a connector would let the workers
read in parallel instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from core.storage import Storage


def read(spark: SparkSession, store: Storage, collection: str, fields: Mapping[str, str],
         query: Mapping[str, Any] | None = None, batch_size: int = 50_000) -> DataFrame:
    """``collection``'s documents matching ``query`` as a DataFrame with one column per entry of ``fields``.

    ``fields`` maps a (possibly dotted) document path to a Spark SQL type, e.g.
    ``{"device_id": "bigint", "metrics.loss": "double"}``; a dotted path becomes a
    column named with underscores (``metrics_loss``). A missing value is null.
    """
    import pandas as pd

    paths = list(fields)
    columns = [p.replace(".", "_") for p in paths]
    schema = ", ".join(f"{c} {fields[p]}" for p, c in zip(paths, columns, strict=True))
    cursor = store.db[collection].find(dict(query or {}), projection={**{p: 1 for p in paths}, "_id": 0},
                                       batch_size=batch_size)
    rows = [[_get(doc, p) for p in paths] for doc in cursor]
    frame = pd.DataFrame(rows, columns=columns)
    for path, column in zip(paths, columns, strict=True):
        if fields[path] == "timestamp" and not frame.empty:
            frame[column] = pd.to_datetime(frame[column], utc=True)
    return spark.createDataFrame(frame, schema=schema) if not frame.empty else spark.createDataFrame([], schema)


def _get(doc: Mapping[str, Any], path: str) -> Any:
    value: Any = doc
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value
