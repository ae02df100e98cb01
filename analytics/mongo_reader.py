"""The one way the analytics jobs read MongoDB into Spark: pymongo -> pandas (Arrow) -> Spark.

MongoDB's Spark connector for this Spark line (``mongo-spark-connector_2.13``)
is not served here (see ``../shared/notes/stack.md``), so the driver reads
with pymongo through :class:`core.storage.Storage`, in batches, into one
pandas frame that Spark takes over with Arrow. Fine for the pipeline's sizes
(the batch benchmark reads 1.5M readings); a connector would let the workers
read in parallel instead.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
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
    return _frame(spark, fields, _rows(store, collection, fields, dict(query or {}), batch_size))


# The local MongoDB-wire server matches every document an index finds against the whole $in list
# (SecantusDB 0.7, secantus/query.py `_op_matches`): 2,000 event ids among 20,000 predictions took
# 9.9 s in one query, 1.1 s in chunks of 500, 0.22 s in chunks of 50 and 1.0 s one by one.
IN_CHUNK = 50


def in_chunks(key: str, values: Sequence[Any]) -> Iterator[dict[str, Any]]:
    """``{key: {"$in": ...}}`` queries that together ask for every one of ``values``."""
    for start in range(0, len(values), IN_CHUNK):
        yield {key: {"$in": list(values[start:start + IN_CHUNK])}}


def read_in(spark: SparkSession, store: Storage, collection: str, fields: Mapping[str, str], key: str,
            values: Sequence[Any]) -> DataFrame:
    """Like :func:`read`, for the documents whose ``key`` is one of ``values`` (asked in chunks)."""
    rows = [row for query in in_chunks(key, values) for row in _rows(store, collection, fields, query, IN_CHUNK)]
    return _frame(spark, fields, rows)


def _rows(store: Storage, collection: str, fields: Mapping[str, str], query: dict[str, Any],
          batch_size: int) -> list[list[Any]]:
    paths = list(fields)
    cursor = store.db[collection].find(query, projection={**{p: 1 for p in paths}, "_id": 0}, batch_size=batch_size)
    return [[_get(doc, p) for p in paths] for doc in cursor]


def _frame(spark: SparkSession, fields: Mapping[str, str], rows: list[list[Any]]) -> DataFrame:
    import pandas as pd

    paths = list(fields)
    columns = [p.replace(".", "_") for p in paths]
    schema = ", ".join(f"{c} {fields[p]}" for p, c in zip(paths, columns, strict=True))
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
