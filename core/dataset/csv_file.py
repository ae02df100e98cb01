"""A loader for any CSV data set, given which column holds what (``stream.csv``)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from core.config import CsvColumns
from core.dataset.table import LABELLED, NORMAL, LoadReport, finish
from core.records import SENSOR_FIELDS
from core.validation import EARLIEST, LATEST

log = logging.getLogger(__name__)


def load_csv(path: str | Path, columns: CsvColumns, limit: int | None = None) -> tuple[pd.DataFrame, LoadReport]:
    """Read a CSV file with a header into the data set's table.

    Rows with a missing or non-integer device id, an unreadable timestamp, a
    missing or non-finite sensor value or a label other than 0/1 are skipped
    and counted by reason in the returned :class:`LoadReport`. Sensor fields
    the mapping leaves out (``null``) get the constant ``columns.fill`` value.

    Raises
    ------
    ValueError
        If a mapped column is not in the file (naming the ``stream.csv`` key).
    """
    mapped = {f: c for f, c in columns.fields.items() if c}
    wanted = {"stream.csv.device_id": columns.device_id, "stream.csv.timestamp": columns.timestamp,
              **{f"stream.csv.fields.{f}": c for f, c in mapped.items()}}
    if columns.label:
        wanted["stream.csv.label"] = columns.label
    try:
        header = pd.read_csv(path, nrows=0, encoding_errors="replace").columns
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeError) as exc:
        raise ValueError(f"{path}: not a CSV file with a header ({exc})") from exc
    missing = [f"{key}={column!r}" for key, column in wanted.items() if column not in header]
    if missing:
        raise ValueError(f"{path}: no column {', '.join(missing)} (the file has: {', '.join(map(str, header))})")
    # Bytes that are not UTF-8 are replaced (as Kafka's consumers do), then fail the checks below.
    # With usecols, a row of the wrong width is read by its mapped columns (missing ones empty).
    raw = pd.read_csv(path, usecols=list(set(wanted.values())), dtype=str, keep_default_na=False,
                      encoding_errors="replace")
    report = LoadReport(rows_read=len(raw))
    keep = pd.Series(True, index=raw.index)

    def reject(bad: pd.Series, reason: str) -> None:
        nonlocal keep
        bad = bad & keep
        if bad.any():
            report.skipped[reason] += int(bad.sum())
        keep &= ~bad

    device = pd.to_numeric(raw[columns.device_id], errors="coerce")
    # Whole numbers a float holds exactly (the column is read as one), never negative (as validation wants).
    reject(device.isna() | (device != device.round()) | (device < 0) | (device > 2**53), "bad device id")
    stamps = _timestamps(raw[columns.timestamp])
    reject(stamps.isna() | (stamps < pd.Timestamp(EARLIEST)) | (stamps >= pd.Timestamp(LATEST)), "bad timestamp")
    frame = pd.DataFrame({"device_id": device, "source_time": stamps})
    for name in SENSOR_FIELDS:
        if name in mapped:
            values = pd.to_numeric(raw[mapped[name]], errors="coerce")
            reject(~pd.Series(np.isfinite(values.astype(float)), index=raw.index), "non-numeric value")
            frame[name] = values
        else:
            frame[name] = float(columns.fill[name])
    if columns.label:
        label = pd.to_numeric(raw[columns.label], errors="coerce")
        reject(~label.isin([0, 1]), "bad label (not 0/1)")
        frame["anomaly"] = np.where(label == 1, LABELLED, NORMAL)
    else:
        frame["anomaly"] = NORMAL
    frame = frame[keep].sort_values(["source_time", "device_id"], kind="stable")
    if limit is not None:
        frame = frame.iloc[:limit]
    report.rows_kept = len(frame)
    if report.skipped:
        log.warning("%s: %s", path, report)
    return finish(frame), report


def _timestamps(text: pd.Series) -> pd.Series:
    """ISO 8601 text (UTC unless it says otherwise), or numbers: seconds since 1970."""
    numbers = pd.to_numeric(text, errors="coerce")
    if numbers.notna().all() and len(text):
        return pd.to_datetime(numbers, unit="s", utc=True, errors="coerce")
    return pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601")
