"""A deterministic generator of a faithful stand-in for the Intel Lab slice.

What it reproduces (measured on the real 152,533-reading slice): 53 motes,
one reading per mote every ~31 s with jitter, missed epochs and rare
outages; a few sparse motes; daily cycles (light by day, temperature and
humidity moving inversely); per-mote offsets and amplitudes; slow battery
drain correlated with temperature; clean values inside :data:`CLEAN_RANGES`.
On top, labelled anomalies: dying battery (voltage under 2.4 V, temperature
past 40 C toward 120 C, invalid humidity), stuck sensor, spikes, offset
shifts and light saturation.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np

from core.dataset.table import NORMAL, finish

if TYPE_CHECKING:
    import pandas as pd

GENERATOR_VERSION = 1  # bump when the generator's output changes: invalidates caches

# Clean ranges of the real slice; anomalies leave them.
CLEAN_RANGES = {
    "temperature": (14.0, 28.0),
    "humidity": (25.0, 52.5),
    "light": (0.0, 1847.0),
    "voltage": (2.41, 3.16),
}
START_TIME = datetime(2004, 2, 28, 0, 58, 46, tzinfo=UTC)  # first reading of the real data
EPOCH_SECONDS = 31.0  # one reading per mote every ~31 s


def device_ids(num_devices: int) -> list[int]:
    """Mote ids of the stand-in: 1, 2, ... skipping 5 (nearly silent in the real data)."""
    ids = [i for i in range(1, num_devices + 2) if i != 5]
    return ids[:num_devices]


def generate(num_records: int = 152_533, num_devices: int = 53, seed: int = 42) -> pd.DataFrame:
    """A deterministic stand-in for the Intel Lab slice: same seed, same table.

    Parameters
    ----------
    num_records
        Exactly this many readings in all.
    num_devices
        Motes; their counts differ (a few are sparse) and add up to ``num_records``.
    seed
        Seeds every random draw.
    """
    import pandas as pd

    if num_records < num_devices:
        raise ValueError(f"need at least one reading per device: {num_records} < {num_devices}")
    rng = np.random.default_rng(seed)
    ids = device_ids(num_devices)
    counts = _device_counts(rng, num_records, num_devices)
    # Every mote covers about the same period; sparse ones just miss more epochs.
    span = num_records / num_devices * EPOCH_SECONDS * 1.07
    frames = [_device_series(rng, mote, n, span) for mote, n in zip(ids, counts, strict=True)]
    frame = pd.concat(frames, ignore_index=True)
    _inject_anomalies(rng, frame, ids)
    frame = frame.sort_values(["source_time", "device_id"], kind="stable").reset_index(drop=True)
    for name, decimals in (("temperature", 4), ("humidity", 4), ("light", 2), ("voltage", 5)):
        frame[name] = frame[name].round(decimals)
    return finish(frame)


def _device_counts(rng: np.random.Generator, total: int, devices: int) -> list[int]:
    """Per-device reading counts summing exactly to ``total``; ~8 % of motes sparse."""
    weights = rng.normal(1.0, 0.06, devices).clip(0.8, 1.2)
    sparse = rng.choice(devices, size=max(1, round(devices * 0.08)), replace=False)
    weights[sparse] = rng.uniform(0.35, 0.6, sparse.size)
    raw = weights / weights.sum() * total
    counts = np.floor(raw).astype(int).clip(min=1)
    # Largest remainder: hand out what flooring lost, to the biggest fractions.
    short = total - counts.sum()
    order = np.argsort(-(raw - np.floor(raw)))
    for i in range(abs(short)):
        counts[order[i % devices]] += 1 if short > 0 else -1
    assert counts.sum() == total
    return counts.tolist()


def _device_series(rng: np.random.Generator, mote: int, n: int, span: float) -> pd.DataFrame:
    """Clean readings of one mote over about ``span`` seconds: gaps, daily cycles, drift."""
    import pandas as pd

    # --- timing: ~31 s apart, jitter, missed epochs (more for sparse motes), rare outages
    steps = rng.normal(EPOCH_SECONDS, 1.0, n).clip(28.0, 34.0)
    mean_missed_run = 1 / 0.3  # epochs, geometric(0.3)
    p_miss = float(np.clip((span / (n * EPOCH_SECONDS) - 1) / mean_missed_run, 0.01, 0.9))
    missed = rng.random(n) < p_miss
    steps += missed * rng.geometric(0.3, n) * EPOCH_SECONDS
    outage = rng.random(n) < 0.0008
    steps += outage * rng.uniform(600, 5400, n)
    steps[0] = rng.uniform(0, 120)  # motes do not start in lockstep
    offsets = np.cumsum(steps)
    times = pd.Timestamp(START_TIME) + pd.to_timedelta(offsets, unit="s")
    hours = (offsets / 3600.0 + START_TIME.hour + START_TIME.minute / 60) % 24
    days = offsets / 86400.0

    # --- location of the mote: constant offsets and amplitudes
    temp_base = rng.uniform(18.0, 22.0)
    temp_amp = rng.uniform(1.2, 3.0)
    temp_peak = rng.uniform(14.0, 16.5)  # warmest in the afternoon
    hum_base = rng.uniform(35.0, 43.0)
    hum_gain = rng.uniform(1.2, 2.2)  # humidity falls as temperature rises
    by_window = rng.random() < 0.3
    daylight_amp = rng.uniform(800, 1750) if by_window else rng.uniform(40, 250)
    office_lights = rng.uniform(250, 450)
    volt_start = rng.uniform(2.62, 3.05)
    drain = rng.uniform(0.005, 0.04)  # V per day

    cycle = np.cos(2 * np.pi * (hours - temp_peak) / 24.0)
    temperature = temp_base + temp_amp * cycle + rng.normal(0, 0.12, n) + 0.15 * np.sin(2 * np.pi * days / 3)
    humidity = hum_base - hum_gain * (temperature - temp_base) + rng.normal(0, 0.4, n)
    sun = np.clip(np.sin(np.pi * (hours - 6.5) / 12.5), 0, None) ** 1.5  # 6:30 to 19:00
    lights_on = (hours > 7.5) & (hours < 19.5)
    light = daylight_amp * sun + office_lights * lights_on + rng.gamma(1.0, 1.5, n) + rng.normal(0, 3, n) * lights_on
    voltage = volt_start - drain * days + 0.004 * (temperature - temp_base) + rng.normal(0, 0.002, n)

    lo, hi = CLEAN_RANGES["temperature"]
    frame = pd.DataFrame({
        "device_id": np.full(n, mote, dtype=np.int64),
        "source_time": times,
        "temperature": temperature.clip(lo, hi),
        "humidity": humidity.clip(*CLEAN_RANGES["humidity"]),
        "light": light.clip(*CLEAN_RANGES["light"]),
        "voltage": voltage.clip(*CLEAN_RANGES["voltage"]),
        "anomaly": np.full(n, NORMAL, dtype=object),
    })
    return frame


def _inject_anomalies(rng: np.random.Generator, frame: pd.DataFrame, ids: list[int]) -> None:
    """Overwrite stretches of some motes with labelled anomalies (in place)."""
    rows_of = {mote: np.flatnonzero(frame["device_id"].to_numpy() == mote) for mote in ids}
    median = float(np.median([rows.size for rows in rows_of.values()]))
    big = [m for m in ids if rows_of[m].size >= 0.7 * median]  # room for long anomalies
    picks = list(rng.permutation(big))
    anomaly = frame["anomaly"].to_numpy()
    scale = min(1.0, median / 2900.0)  # run lengths shrink with small test data sets

    def run_length(low: int, high: int) -> int:
        return max(3, int(rng.integers(low, high) * scale))

    def take(k: int) -> list[int]:
        return [int(picks.pop()) for _ in range(min(k, len(picks)))]

    def free(rows: np.ndarray) -> np.ndarray:
        return rows[anomaly[rows] == NORMAL]

    # Dying battery: voltage under 2.4 V, temperature past 40 C toward 120 C,
    # humidity invalid; from onset to the mote's last reading.
    for mote in take(max(1, len(ids) // 25)):
        rows = rows_of[mote]
        onset = int(rows.size * rng.uniform(0.8, 0.92))
        part = rows[onset:]
        k = np.arange(part.size)
        heat = 40.5 + 79.5 * (1 - np.exp(-k / (150.0 * scale))) + rng.normal(0, 0.4, part.size)
        frame.loc[part, "temperature"] = np.maximum(heat, 40.05)  # onset = first reading over 40 C
        frame.loc[part, "voltage"] = np.clip(2.39 - 0.0006 * k + rng.normal(0, 0.003, part.size), 1.9, 2.399)
        invalid = np.where(rng.random(part.size) < 0.7, rng.uniform(-4.5, -0.5, part.size),
                           rng.uniform(100.5, 140.0, part.size))
        frame.loc[part, "humidity"] = invalid
        anomaly[part] = "battery_failure"

    # Stuck sensor: one value constant for a long run.
    for mote in take(3):
        rows = rows_of[mote]
        start = int(rows.size * rng.uniform(0.1, 0.6))
        part = free(rows[start:start + run_length(120, 300)])
        sensor = ("temperature", "humidity", "voltage")[int(rng.integers(0, 3))]
        frame.loc[part, sensor] = frame.loc[part[0], sensor]
        anomaly[part] = "stuck_sensor"

    # Offset shift: a sudden, lasting step in temperature (sensor recalibrated/moved).
    for mote in take(2):
        rows = rows_of[mote]
        start = int(rows.size * rng.uniform(0.3, 0.6))
        part = free(rows[start:start + run_length(300, 600)])
        shift = rng.choice([-1.0, 1.0]) * rng.uniform(4.0, 7.0)
        frame.loc[part, "temperature"] += shift
        anomaly[part] = "offset_shift"

    # Light saturation: the photodiode pinned at its maximum.
    for mote in take(2):
        rows = rows_of[mote]
        start = int(rows.size * rng.uniform(0.1, 0.8))
        part = free(rows[start:start + run_length(40, 120)])
        frame.loc[part, "light"] = CLEAN_RANGES["light"][1]
        anomaly[part] = "light_saturation"

    # Single-point spikes anywhere, ~0.15 % of readings.
    candidates = np.flatnonzero(anomaly == NORMAL)
    spikes = rng.choice(candidates, size=max(1, int(len(frame) * 0.0015)), replace=False)
    on_temp = rng.random(spikes.size) < 0.6
    t_rows, h_rows = spikes[on_temp], spikes[~on_temp]
    frame.loc[t_rows, "temperature"] += rng.choice([-1.0, 1.0], t_rows.size) * rng.uniform(10, 25, t_rows.size)
    frame.loc[h_rows, "humidity"] += rng.choice([-1.0, 1.0], h_rows.size) * rng.uniform(15, 30, h_rows.size)
    anomaly[spikes] = "spike"
    frame["anomaly"] = anomaly
