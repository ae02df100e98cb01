"""A data set at a glance: a summary table and a plot of a few devices."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from core.dataset.table import ANOMALY_KINDS, NORMAL
from core.records import SENSOR_FIELDS

UNITS = {"temperature": "C", "humidity": "%", "light": "lux", "voltage": "V"}


@dataclass
class Summary:
    records: int
    devices: int
    start: pd.Timestamp
    end: pd.Timestamp
    per_device_min: int
    per_device_median: float
    per_device_max: int
    median_interval_seconds: float
    anomalies: dict[str, int]

    def rows(self) -> Iterable[tuple[str, str]]:
        yield "records", f"{self.records:,}"
        yield "devices", str(self.devices)
        hours = (self.end - self.start).total_seconds() / 3600
        yield "time span", f"{self.start:%Y-%m-%d %H:%M} .. {self.end:%Y-%m-%d %H:%M} ({hours:.1f} h)"
        yield ("readings per device",
               f"min {self.per_device_min}, median {self.per_device_median:.0f}, max {self.per_device_max}")
        yield "median interval per device", f"{self.median_interval_seconds:.1f} s"
        for kind in [*ANOMALY_KINDS, *sorted(set(self.anomalies) - set(ANOMALY_KINDS))]:
            yield f"anomaly: {kind}", f"{self.anomalies.get(kind, 0):,}"


def summarize(frame: pd.DataFrame) -> Summary:
    per_device = frame.groupby("device_id").size()
    intervals = frame.groupby("device_id")["source_time"].diff().dt.total_seconds().dropna()
    labels = frame["anomaly"].value_counts()
    return Summary(
        records=len(frame),
        devices=int(frame["device_id"].nunique()),
        start=frame["source_time"].min(),
        end=frame["source_time"].max(),
        per_device_min=int(per_device.min()),
        per_device_median=float(per_device.median()),
        per_device_max=int(per_device.max()),
        median_interval_seconds=float(intervals.median()) if len(intervals) else float("nan"),
        anomalies={str(k): int(v) for k, v in labels.items() if k != NORMAL},
    )


def plot_devices(frame: pd.DataFrame, path: str | Path, devices: list[int] | None = None) -> Path:
    """Save a PNG of a few devices' four series, anomalies marked in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if devices is None:  # the devices with the most anomalies, plus one clean one
        bad = frame[frame["anomaly"] != NORMAL]["device_id"].value_counts().index.tolist()[:3]
        clean = [d for d in frame["device_id"].unique().tolist() if d not in bad][:1]
        devices = bad + clean
    fig, axes = plt.subplots(len(SENSOR_FIELDS), 1, figsize=(13, 10), sharex=True)
    for mote in devices:
        part = frame[frame["device_id"] == mote]
        for ax, name in zip(axes, SENSOR_FIELDS, strict=True):
            ax.plot(part["source_time"], part[name], lw=0.7, label=f"device {mote}")
            odd = part[part["anomaly"] != NORMAL]
            ax.scatter(odd["source_time"], odd[name], s=4, color="red", zorder=3)
    for ax, name in zip(axes, SENSOR_FIELDS, strict=True):
        ax.set_ylabel(f"{name} ({UNITS[name]})")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper left", ncol=len(devices), fontsize=8)
    axes[0].set_title("IoT data set: a few devices (red = labelled anomaly)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
