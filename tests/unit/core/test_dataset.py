"""The data set: the real-format loader, the deterministic generator, the configured source."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from core import dataset
from core.config import ConfigError, load_config
from core.dataset import csv_file, synthetic
from core.dataset.intel_lab import load_intel_lab
from core.dataset.summary import plot_devices, summarize

REAL_FORMAT = """\
2004-02-28 00:59:16.02785 3 1 19.9884 37.0933 45.08 2.69964
2004-02-28 00:58:46.002832 2 1 19.3024 38.4629 45.08 2.68742
2004-02-28 01:03:16.33393 11 2 19.175 38.8379 45.08 2.69964
2004-02-28 01:06:16.013453 17 1 19.1652 38.8039 45.08 2.68742
2004-02-28 01:06:46.778088 18 2
2004-02-28 01:08:45.992524 abc 3 19.1456 38.7357 45.08 2.68742
2004-02-28 01:08:46.5 20 abc 19.1456 38.7357 45.08 2.68742
2004-02-28 01:09:22.323858 21 99 19.1456 38.7357 45.08 2.68742
2004-02-28 01:09:46.109598 22 3 nan 38.7357 45.08 2.68742
2004-02-28 01:10:16 23 3 hot 38.7357 45.08 2.68742
2004-13-45 01:10:46.5 24 3 19.1 38.7 45.08 2.68742
2004-03-01 10:10:16.5 9000 2 41.2 -3.91901 11.04 2.39
2004-03-01 10:10:46.5 9001 2 122.153 -3.91901 11.04 2.03397
2004-03-01 10:11:16 9002 1 19.0 38.0 45.0 2.6

"""


def test_loader_reads_the_real_format_and_reports_what_it_skipped(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text(REAL_FORMAT)
    frame, report = load_intel_lab(path)
    assert report.rows_read == 14
    assert report.rows_kept == 8 == len(frame)  # the epoch column is not used, so "abc" there is harmless
    assert report.skipped == {
        "short row (4 of 8 fields)": 1,
        "bad device id": 2,  # "abc" and 99
        "non-numeric value": 2,  # "nan" and "hot"
        "bad timestamp": 1,
    }
    assert "kept 8" in str(report) and "bad device id" in str(report)
    assert list(frame.columns) == dataset.COLUMNS
    assert frame["source_time"].is_monotonic_increasing  # replay order, whatever the file's order
    assert frame["seq"].tolist() == list(range(8))
    first = frame.iloc[0]
    assert (first["device_id"], first["temperature"]) == (1, 19.3024)
    assert str(first["source_time"]) == "2004-02-28 00:58:46.002832+00:00"
    # The analyses' rule: from a mote's first reading over 40 C on, its battery is failing.
    labels = dict(zip(zip(frame["device_id"], frame["temperature"], strict=True), frame["anomaly"], strict=True))
    assert labels[(2, 41.2)] == "battery_failure"
    assert labels[(2, 122.153)] == "battery_failure"
    assert labels[(1, 19.0)] == "normal"
    assert labels[(2, 19.175)] == "normal"


def test_loader_limit_keeps_the_earliest(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text(REAL_FORMAT)
    frame, _ = load_intel_lab(path, limit=2)
    assert frame["temperature"].tolist() == [19.3024, 19.9884]


def test_generator_is_deterministic() -> None:
    a = synthetic.generate(3000, 53, seed=7)
    b = synthetic.generate(3000, 53, seed=7)
    pd.testing.assert_frame_equal(a, b)
    c = synthetic.generate(3000, 53, seed=8)
    assert not a[["temperature", "humidity"]].equals(c[["temperature", "humidity"]])


@pytest.fixture(scope="module")
def full() -> pd.DataFrame:
    return synthetic.generate()  # the default: 152,533 readings, 53 devices


def test_default_size_and_shape(full: pd.DataFrame) -> None:
    assert len(full) == 152_533
    assert full["device_id"].nunique() == 53
    assert sorted(full["device_id"].unique()) == synthetic.device_ids(53)
    assert full["seq"].tolist() == list(range(len(full)))
    assert full["source_time"].is_monotonic_increasing
    per_device = full.groupby("device_id").size()
    assert per_device.sum() == 152_533
    assert 2600 < per_device.median() < 3200  # ~2,878 readings per device
    assert per_device.min() < 0.7 * per_device.median()  # some motes are sparse


def test_readings_come_every_31_seconds_with_gaps(full: pd.DataFrame) -> None:
    gaps = full.groupby("device_id")["source_time"].diff().dt.total_seconds().dropna()
    assert 30 < gaps.median() < 32
    assert (gaps > 60).mean() > 0.01  # missed epochs
    assert gaps.max() > 600  # outages
    span_hours = (full["source_time"].max() - full["source_time"].min()).total_seconds() / 3600
    assert 22 < span_hours < 40


# The real slice's clean ranges, stated here independently of the generator (which clips to
# its own copy of them): clipping must be a guard for rare outliers, not what shapes the data.
REAL_CLEAN = {"temperature": (14.0, 28.0), "humidity": (25.0, 52.5), "light": (0.0, 1847.0), "voltage": (2.41, 3.16)}
REAL_MEDIANS = {"temperature": (18.0, 24.0), "humidity": (33.0, 45.0), "voltage": (2.5, 2.9)}


def test_clean_readings_look_like_the_real_slice_without_leaning_on_clipping(full: pd.DataFrame) -> None:
    clean = full[full["anomaly"] == dataset.NORMAL]
    for name, (low, high) in REAL_CLEAN.items():
        values = clean[name]
        assert values.between(low, high).all(), name
        at_a_bound = values.isin([low, high]).mean()
        if name != "light":  # light is 0 at night by nature: the low bound is a real value
            assert at_a_bound < 0.001, f"{at_a_bound:.1%} of {name} pinned to a clip bound"
    for name, (low, high) in REAL_MEDIANS.items():
        assert low < clean[name].median() < high, name


def test_daily_cycles_and_physics(full: pd.DataFrame) -> None:
    clean = full[full["anomaly"] == dataset.NORMAL]
    hour = clean["source_time"].dt.hour
    assert clean[hour.between(0, 4)]["light"].median() < 10  # dark at night
    assert clean[hour.between(11, 14)]["light"].median() > 200  # office by day
    assert clean["light"].max() > 1500  # some motes near windows
    corr = clean.groupby("device_id")[["temperature", "humidity"]].corr().xs("temperature", level=1)["humidity"]
    assert corr.median() < -0.5  # temperature and humidity move inversely
    drift = clean.groupby("device_id")["voltage"].agg(lambda v: v.iloc[-200:].mean() - v.iloc[:200].mean())
    assert (drift < 0).mean() > 0.8  # batteries drain
    assert (drift > -0.06).all()  # slowly (~0.04 V/day at most)


def test_every_anomaly_kind_is_injected_and_labelled(full: pd.DataFrame) -> None:
    counts = full["anomaly"].value_counts()
    for kind in dataset.ANOMALY_KINDS:
        assert counts.get(kind, 0) > 0, kind
    assert 0.005 < (full["anomaly"] != dataset.NORMAL).mean() < 0.05
    dying = full[full["anomaly"] == "battery_failure"]
    assert (dying["temperature"] > 40).all() and dying["temperature"].max() > 100
    assert (dying["voltage"] < 2.4).all()
    assert (~dying["humidity"].between(0, 100)).all()
    stuck = full[full["anomaly"] == "stuck_sensor"]
    assert any(stuck.groupby("device_id")[s].nunique().min() == 1 for s in ("temperature", "humidity", "voltage"))
    assert (full[full["anomaly"] == "light_saturation"]["light"] == 1847.0).all()


def test_small_data_sets_still_get_every_kind() -> None:
    small = synthetic.generate(5000, 53, seed=42)
    assert set(dataset.ANOMALY_KINDS) <= set(small["anomaly"].unique())


def test_cache_writes_once_and_reuses(tmp_path: Path) -> None:
    stream = load_config(["stream.dataset_records=2000", "stream.num_devices=10", "stream.seed=3"]).stream
    first = dataset.load(stream, tmp_path)
    path = dataset.cached_path(tmp_path, 2000, 10, 3)
    stamp = path.stat().st_mtime_ns
    second = dataset.load(stream, tmp_path)
    assert path.stat().st_mtime_ns == stamp
    pd.testing.assert_frame_equal(first, second)


def test_the_configured_file_is_loaded_instead_of_the_stand_in(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text(REAL_FORMAT)
    stream = load_config([f"stream.dataset_path={path}", "stream.num_devices=3"]).stream
    frame = dataset.load(stream, tmp_path)
    assert len(frame) == 8 and dataset.device_ids(stream, tmp_path) == [1, 2, 3]
    assert dataset.dataset_id(stream).startswith("intel_lab:") and not (tmp_path / "dataset").exists()


def test_summary_and_plot(tmp_path: Path) -> None:
    frame = synthetic.generate(4000, 53, seed=1)
    summary = summarize(frame)
    assert summary.records == 4000 and summary.devices == 53
    assert sum(summary.anomalies.values()) == int((frame["anomaly"] != "normal").sum())
    rows = dict(summary.rows())
    assert rows["records"] == "4,000"
    png = plot_devices(frame, tmp_path / "preview.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_too_few_records_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one reading per device"):
        synthetic.generate(10, 53)


CSV_FILE = """site,ts,temp_c,rh,is_anomaly,extra
7,2004-03-01T00:00:30Z,19.5,40.1,0,x
3,2004-03-01T00:00:00Z,20.0,38.0,0,x
3,2004-03-01T00:00:31Z,45.0,38.5,1,x
abc,2004-03-01T00:01:00Z,20.0,38.0,0,x
3,not a time,20.0,38.0,0,x
7,2004-03-01T00:01:00Z,,38.0,0,x
7,2004-03-01T00:01:30Z,19.0,38.0,2,x
"""
CSV_MAPPING = ["stream.csv.device_id=site", "stream.csv.timestamp=ts", "stream.csv.fields.temperature=temp_c",
               "stream.csv.fields.humidity=rh", "stream.csv.fields.light=null", "stream.csv.fields.voltage=null",
               "stream.csv.label=is_anomaly"]


def test_a_csv_file_with_a_column_mapping(tmp_path: Path) -> None:
    path = tmp_path / "readings.csv"
    path.write_text(CSV_FILE)
    cfg = load_config([f"stream.dataset_path={path}", *CSV_MAPPING])
    frame, report = csv_file.load_csv(path, cfg.stream.csv)
    assert report.rows_read == 7 and report.rows_kept == 3
    assert report.skipped == {"bad device id": 1, "bad timestamp": 1, "non-numeric value": 1, "bad label (not 0/1)": 1}
    assert frame["device_id"].tolist() == [3, 7, 3]  # in time order
    assert frame["temperature"].tolist() == [20.0, 19.5, 45.0] and frame["humidity"].tolist() == [38.0, 40.1, 38.5]
    assert (frame["light"] == cfg.stream.csv.fill["light"]).all()  # not in the file: the fill constant
    assert frame["anomaly"].tolist() == ["normal", "normal", "labelled"]
    assert list(frame.columns) == dataset.COLUMNS and str(frame["source_time"].dt.tz) == "UTC"
    # The data set loader reads it by its .csv suffix; the producer's position names the format.
    loaded = dataset.load(cfg.stream, tmp_path)
    pd.testing.assert_frame_equal(loaded, frame)
    assert dataset.device_ids(cfg.stream, tmp_path) == [3, 7] and dataset.dataset_id(cfg.stream).startswith("csv:")


def test_csv_numeric_timestamps_and_unmapped_columns(tmp_path: Path) -> None:
    path = tmp_path / "readings.csv"
    path.write_text("device_id,timestamp,temperature,humidity,light,voltage\n1,1078099200,20,40,100,2.7\n")
    cfg = load_config([f"stream.dataset_path={path}", "stream.csv.label=null"])
    frame = dataset.load(cfg.stream, tmp_path)
    assert frame["source_time"].iloc[0] == pd.Timestamp("2004-03-01T00:00:00Z") and frame["anomaly"].iloc[0] == "normal"
    wrong = load_config([f"stream.dataset_path={path}", "stream.csv.fields.humidity=rh"])
    with pytest.raises(ValueError, match="stream.csv.fields.humidity='rh'"):
        dataset.load(wrong.stream, tmp_path)


def test_a_csv_mapping_without_any_sensor_field_is_refused() -> None:
    with pytest.raises(ConfigError, match="stream.csv.fields"):
        load_config([f"stream.csv.fields.{f}=null" for f in ("temperature", "humidity", "light", "voltage")])


def test_the_real_format_loader_survives_hostile_rows(tmp_path: Path) -> None:
    """Rows the pipeline could not store or chart are skipped with a reason; the rest are kept."""
    path = tmp_path / "data.txt"
    path.write_bytes(
        b"2004-03-01 10:00:00.1 1 1 19.0 38.0 45.0 2.6\n"
        b"0001-01-01 00:00:00 2 1 19.0 38.0 45.0 2.6\n"  # before pandas' datetime64[ns] range
        b"9999-12-31 23:59:59 3 1 19.0 38.0 45.0 2.6\n"  # after it
        b"2004-03-01 10:00:01 4 2 1e400 38.0 45.0 2.6\n"  # infinity
        b"2004-03-01 10:00:02 5 99999999999999999999999 19 38 45 2.6\n"  # an id past int64
        b"\xff\xfe\x00garbage\x00 \x01\n"  # binary noise: a short row
        b"2004-03-01 10:00:03.123456789 6 3 19.0 38.0 45.0 2.6 extra fields are ignored\n"
    )
    frame, report = load_intel_lab(path)
    assert report.rows_read == 7 and report.rows_kept == 2 == len(frame)
    assert report.skipped == {"bad timestamp": 2, "non-numeric value": 1, "bad device id": 1,
                              "short row (2 of 8 fields)": 1}
    assert frame["device_id"].tolist() == [1, 3]


def test_a_csv_file_survives_hostile_rows(tmp_path: Path) -> None:
    path = tmp_path / "readings.csv"
    path.write_bytes(
        b"site,ts,temp_c,rh,is_anomaly\n"
        b"3,2004-03-01T00:00:00Z,20.0,38.0,0\n"
        b"3,0001-01-01T00:00:00+14:00,20.0,38.0,0\n"  # year 0 in UTC
        b"3,9999-12-31T23:59:59-14:00,20.0,38.0,0\n"  # year 10000 in UTC
        b"1e30,2004-03-01T00:00:30Z,20.0,38.0,0\n"  # an id no int64 holds
        b"-4,2004-03-01T00:00:30Z,20.0,38.0,0\n"  # a negative id
        b"3,2004-03-01T00:01:00Z,20.0,38.0,0,one field too many\n"  # read by its mapped columns
        b"3,2004-03-01T00:01:10Z,20.0\n"  # too few: the missing ones are empty
        b"3,2004-03-01T00:01:30Z,\xff\xfe,38.0,0\n"  # not UTF-8: replaced, then not a number
        b"7,2004-03-01T00:02:00Z,19.0,40.0,1\n"
    )
    cfg = load_config([f"stream.dataset_path={path}", *CSV_MAPPING])
    frame, report = csv_file.load_csv(path, cfg.stream.csv)
    assert report.rows_read == 9 and report.rows_kept == 3
    assert report.skipped == {"bad timestamp": 2, "bad device id": 2, "non-numeric value": 2}
    assert frame["device_id"].tolist() == [3, 3, 7]


@pytest.mark.parametrize("content", [b"", b"\n\n", b"\x00\x01\x02"])
def test_a_file_that_is_no_csv_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "readings.csv"
    path.write_bytes(content)
    cfg = load_config([f"stream.dataset_path={path}", *CSV_MAPPING])
    with pytest.raises(ValueError, match="readings.csv"):
        csv_file.load_csv(path, cfg.stream.csv)
