"""The IoT data set the producer replays: the Intel Lab file, any CSV file, or a generated stand-in.

One module per job: :mod:`~core.dataset.table` (the table every source
returns), :mod:`~core.dataset.intel_lab` (the real-format loader),
:mod:`~core.dataset.csv_file` (any CSV file, columns mapped by ``stream.csv``),
:mod:`~core.dataset.synthetic` (the generator), :mod:`~core.dataset.summary`
(summary and plot), and this module, which picks the source the
configuration names (``stream.dataset_path`` in ``stream.dataset_format``, else the stand-in, generated
once and cached as Parquet).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from core.config import StreamConfig
from core.dataset import synthetic
from core.dataset.table import ANOMALY_KINDS, COLUMNS, NORMAL

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

__all__ = ["ANOMALY_KINDS", "COLUMNS", "NORMAL", "load", "dataset_id", "device_ids", "cached_path"]


def cached_path(cache_dir: str | Path, num_records: int, num_devices: int, seed: int) -> Path:
    """Where the stand-in of these parameters is cached."""
    name = f"synthetic-v{synthetic.GENERATOR_VERSION}-n{num_records}-d{num_devices}-s{seed}.parquet"
    return Path(cache_dir) / "dataset" / name


def load(stream: StreamConfig, cache_dir: str | Path) -> pd.DataFrame:
    """The data set to replay: ``stream.dataset_path`` if set, else the cached stand-in.

    The stand-in is generated once per (size, devices, seed, generator version)
    and kept as Parquet under ``<cache_dir>/dataset/``.

    Raises
    ------
    ValueError
        If ``stream.dataset_path`` names no file.
    """
    # Imported here: the long-running processes that only ask which devices there are (the supervisor,
    # the federation's launcher, the API) then never import pandas (~60 MB private memory each).
    import pandas as pd

    from core.dataset import csv_file, intel_lab

    if stream.dataset_path:
        if not Path(stream.dataset_path).is_file():
            raise ValueError(f"stream.dataset_path={stream.dataset_path!r}: no such file")
        if file_format(stream) == "csv":
            frame, _ = csv_file.load_csv(stream.dataset_path, stream.csv, limit=stream.dataset_records)
        else:
            frame, _ = intel_lab.load_intel_lab(stream.dataset_path, limit=stream.dataset_records)
        if frame.empty:
            raise ValueError(f"stream.dataset_path={stream.dataset_path!r}: no valid reading in the file")
        return frame
    path = cached_path(cache_dir, stream.dataset_records, stream.num_devices, stream.seed)
    if path.is_file():
        return pd.read_parquet(path)
    log.info("generating %d readings for %d devices (seed %d) into %s",
             stream.dataset_records, stream.num_devices, stream.seed, path)
    frame = synthetic.generate(stream.dataset_records, stream.num_devices, stream.seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.partial")  # several processes may generate at once
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)  # atomic: a crash never leaves a half file under the real name
    return frame


def file_format(stream: StreamConfig) -> str:
    """``csv`` or ``intel_lab``: ``stream.dataset_format``, or for ``auto`` the path's suffix."""
    if stream.dataset_format != "auto":
        return stream.dataset_format
    return "csv" if str(stream.dataset_path).lower().endswith(".csv") else "intel_lab"


def source(stream: StreamConfig, cache_dir: str | Path) -> str:
    """Where :func:`load` reads from: the real file, or the stand-in's cache file."""
    if stream.dataset_path:
        return str(Path(stream.dataset_path).resolve())
    return str(cached_path(cache_dir, stream.dataset_records, stream.num_devices, stream.seed))


def dataset_id(stream: StreamConfig) -> str:
    """Names the data set in the producer's saved position, so a different one starts at 0."""
    if stream.dataset_path:
        return f"{file_format(stream)}:{Path(stream.dataset_path).resolve()}:{stream.dataset_records}"
    return f"synthetic:n{stream.dataset_records}:d{stream.num_devices}:s{stream.seed}"


def device_ids(stream: StreamConfig, cache_dir: str | Path) -> list[int]:
    """The devices of the data set, in id order (the stand-in's without generating it)."""
    if stream.dataset_path:
        return sorted(int(d) for d in load(stream, cache_dir)["device_id"].unique())
    return sorted(synthetic.device_ids(stream.num_devices))
