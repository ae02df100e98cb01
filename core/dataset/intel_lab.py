"""A loader for the real Intel Berkeley Research Lab file (``data.txt``)."""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from core.dataset.table import NORMAL, LoadReport, finish
from core.records import SENSOR_FIELDS
from core.validation import EARLIEST, LATEST

log = logging.getLogger(__name__)

MAX_MOTE_ID = 58  # the real file has ids up to 58 for a few stray rows; 1-54 are motes
BATTERY_FAILURE_CELSIUS = 40.0  # from a mote's first reading above this on, its battery is failing


def load_intel_lab(path: str | Path, limit: int | None = None) -> tuple[pd.DataFrame, LoadReport]:
    """Read the Intel Berkeley Research Lab file (``data.txt``).

    Each line is ``date time epoch moteid temperature humidity light voltage``.
    Short rows, bad timestamps, bad mote ids and non-numeric values are
    skipped and counted by reason in the returned :class:`LoadReport`.
    The real data has no labels; ``anomaly`` is derived as the analyses do:
    from a mote's first reading over 40 C on, its battery is failing.

    Parameters
    ----------
    path
        The file.
    limit
        Keep only the first ``limit`` readings in time order.
    """
    report = LoadReport()
    times: list[datetime] = []
    rows: list[tuple[int, float, float, float, float]] = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            parts = line.split()
            if not parts:
                continue
            report.rows_read += 1
            if len(parts) < 8:
                report.skipped[f"short row ({len(parts)} of 8 fields)"] += 1
                continue
            try:
                ts = _parse_timestamp(parts[0], parts[1])
            except ValueError:
                report.skipped["bad timestamp"] += 1
                continue
            if not EARLIEST <= ts < LATEST:  # what the pipeline can store and chart (core.validation)
                report.skipped["bad timestamp"] += 1
                continue
            try:
                mote = int(parts[3])
            except ValueError:
                report.skipped["bad device id"] += 1
                continue
            if not 1 <= mote <= MAX_MOTE_ID:
                report.skipped["bad device id"] += 1
                continue
            try:
                values = tuple(float(v) for v in parts[4:8])
            except ValueError:
                report.skipped["non-numeric value"] += 1
                continue
            if not all(math.isfinite(v) for v in values):
                report.skipped["non-numeric value"] += 1
                continue
            times.append(ts)
            rows.append((mote, *values))  # type: ignore[arg-type]
    frame = pd.DataFrame(rows, columns=["device_id", *SENSOR_FIELDS])
    frame.insert(1, "source_time", pd.to_datetime(times, utc=True))
    frame = frame.sort_values(["source_time", "device_id"], kind="stable").reset_index(drop=True)
    if limit is not None:
        frame = frame.iloc[:limit].copy()
    over = frame["temperature"] > BATTERY_FAILURE_CELSIUS
    failing = over.groupby(frame["device_id"]).cummax()  # from the first reading over 40 C on
    frame["anomaly"] = np.where(failing, "battery_failure", NORMAL)
    report.rows_kept = len(frame)
    if report.skipped:
        log.warning("%s: %s", path, report)
    return finish(frame), report


def _parse_timestamp(date: str, time: str) -> datetime:
    if "." in time:
        head, frac = time.split(".", 1)
        time = f"{head}.{frac[:6].ljust(6, '0')}"
        fmt = "%Y-%m-%d %H:%M:%S.%f"
    else:
        fmt = "%Y-%m-%d %H:%M:%S"
    return datetime.strptime(f"{date} {time}", fmt).replace(tzinfo=UTC)
