"""The data set's table: one row per reading, the same for every source.

Sorted by time with all devices interleaved (the replay order):
``seq`` (position), ``device_id``, ``source_time`` (UTC), the sensor fields
(``core.records.SENSOR_FIELDS``: temperature C, humidity %, light lux,
voltage V) and the ground truth ``anomaly`` (``"normal"`` or the kind). The
label stays beside the data: the producer never sends it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from core.records import SENSOR_FIELDS

if TYPE_CHECKING:  # pandas (~60 MB) only in the processes that load a table, not in all that import this
    import pandas as pd

COLUMNS = ["seq", "device_id", "source_time", *SENSOR_FIELDS, "anomaly"]
NORMAL = "normal"
ANOMALY_KINDS = ("battery_failure", "stuck_sensor", "spike", "offset_shift", "light_saturation")
LABELLED = "labelled"  # a CSV file's label 1 (the file does not say which kind)


@dataclass
class LoadReport:
    """What a file loader read and what it skipped, by reason."""

    rows_read: int = 0
    rows_kept: int = 0
    skipped: Counter = field(default_factory=Counter)

    def __str__(self) -> str:
        reasons = ", ".join(f"{n} {reason}" for reason, n in self.skipped.most_common()) or "none"
        return f"read {self.rows_read} rows, kept {self.rows_kept}, skipped: {reasons}"


def finish(frame: pd.DataFrame) -> pd.DataFrame:
    """Number the rows in order and give every column its type and place."""
    frame = frame.reset_index(drop=True)
    frame.insert(0, "seq", np.arange(len(frame), dtype=np.int64))
    frame["device_id"] = frame["device_id"].astype(np.int64)
    frame["anomaly"] = frame["anomaly"].astype(str)
    return frame[COLUMNS]
