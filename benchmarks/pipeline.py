"""The whole pipeline on this machine (`fl-app run`, every component) at 10 and 100 readings/s and flat out.

For each rate, on a fresh private home with its own broker and MongoDB-wire server:

1. ``fl-app run --detach`` (testing profile: 53 devices, 30 s local, 60 s global); the time from
   invoking it to the first global model (target: under 90 s after set-up) and to the first
   prediction;
2. then ``--minutes`` of steady state, sampled every 5 s: readings stored per second
   (``device_data``), readings produced per second (``iot_stream``), the Flink job's lag, machine
   CPU, and the PSS and CPU of each component (its processes: the session of its pid file);
3. what the run made ``--counts-after`` minutes (default 10) after invoking ``fl-app run``, if the run lasts
   that long: readings stored, local updates (stored, and pending for the next round), global rounds,
   predictions (the seed project's 10-minute run at 10 readings/s: ~6,000 readings, ~1,060 local
   updates, ~10 rounds);
4. ``fl-app stop``.

The flat-out run asks the producer for far more than the pipeline stores (``--max-rate``): what
it stores then is the highest rate this machine sustains, and the lag shows the rest piling up.
Send-to-stored latency (``stored_at - event_time``) is of the readings stored while measuring. Last,
the Flink job alone on the same machine, flat out (:mod:`benchmarks.flink_pipeline`): the ceiling
the whole pipeline's ingest is compared with.

    python -m benchmarks.pipeline [--rates 10,100] [--max-rate 5000] [--minutes 3] [--counts-after 10] \
        [--flink-alone-records 20000]
    python -m benchmarks.pipeline --rates 10 --max-rate 0 --minutes 9   # the 10-minute run

Writes logs/pipeline_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks import flink_pipeline
from benchmarks.fl_supernodes import cpu_times, pss_mb
from benchmarks.flink_pipeline import percentile
from core import storage
from core.config import PROJECT_ROOT, AppConfig, load_config
from core.services.runner import pid_from_file
from fl_app import flow
from tests.support.stack import private_overrides

console = Console(width=None if sys.stdout.isatty() else 180)
FL_APP = Path(sys.executable).parent / "fl-app"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    rate: float  # asked of the producer, readings/s
    run_seconds: float = 0.0  # `fl-app run --detach` until it returned
    first_global_s: float | None = None  # from invoking `fl-app run`
    first_prediction_s: float | None = None
    produced_per_s: float = 0.0
    stored_per_s: float = 0.0
    flink_lag_start: int | None = None
    flink_lag_end: int | None = None
    latency_p50_ms: float | None = None  # send (event_time) to stored, of the readings stored while measuring
    latency_p99_ms: float | None = None
    cpu_percent: float = 0.0  # of the whole machine (2 cores = 200 %)
    load_average: float = 0.0
    pss_mb: dict[str, float] = field(default_factory=dict)  # mean per component
    cpu_percent_by_component: dict[str, float] = field(default_factory=dict)  # of one core
    total_pss_mb: float = 0.0
    # The last sample's: a JVM's heap and Kafka's indexes grow for minutes, so the mean of a short
    # window is below where the memory settles.
    last_pss_mb: float = 0.0
    rounds: int = 0
    counts: dict[str, int] = field(default_factory=dict)  # documents per collection --counts-after min after run
    error: str = ""


def session_of(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def components(cfg: AppConfig) -> dict[int, str]:
    """Session id -> component name, from the pid files (SuperNodes grouped as one)."""
    out = {}
    for pid_file in Path(cfg.paths.run_dir).glob("*.pid"):
        pid = pid_from_file(pid_file)
        sid = session_of(pid) if pid is not None else None
        if sid is not None:
            out[sid] = "supernodes" if pid_file.stem.startswith("fl_supernode_") else pid_file.stem
    return out


def proc_cpu_seconds(pid: int) -> float:
    """The process's CPU time and that of its children it has reaped: a component's short-lived children
    (the ClientApp processes the executor forks for each task) are gone by the next sample."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(f) for f in fields[11:15]) / CLOCK_TICKS
    except (OSError, IndexError, ValueError):
        return 0.0


# Started by the SuperLink in sessions of their own, so in no pid file's session: counted by name.
SERVERAPP_PROCESSES = ("flwr-serverapp", "flower-superexec")


def component_of(pid: int, names: dict[int, str]) -> str | None:
    """The component a process belongs to: the ServerApp's processes by name, the others by the session of
    a pid file, or failing that by their parent's (a process that started a session of its own)."""
    for _ in range(16):  # a few generations at most
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return None
        if any(name.encode() in cmdline for name in SERVERAPP_PROCESSES):
            return "fl_serverapp"
        name = names.get(session_of(pid) or -1)
        if name is not None or parent <= 1:
            return name
        pid = parent
    return None


def by_component(cfg: AppConfig) -> tuple[dict[str, float], dict[str, float]]:
    """(PSS MB, CPU seconds so far) summed per component over its processes."""
    names = components(cfg)
    pss: dict[str, float] = {}
    cpu: dict[str, float] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        name = component_of(int(proc.name), names)
        if name is None:
            continue
        pss[name] = pss.get(name, 0.0) + pss_mb(int(proc.name))
        cpu[name] = cpu.get(name, 0.0) + proc_cpu_seconds(int(proc.name))
    return pss, cpu


def fl_app(overrides: list[str], *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(FL_APP), *args, *overrides], capture_output=True, text=True, timeout=timeout,
                          cwd=PROJECT_ROOT, env={**os.environ, "COLUMNS": "200"})


def run_one(rate: float, minutes: float, counts_after: float) -> Result:
    result = Result(rate=rate)
    with tempfile.TemporaryDirectory(prefix="fl-bench-") as tmp:
        home = Path(tmp)
        overrides = [*private_overrides(home), f"stream.records_per_second={rate}",
                     f"stream.batch_size={max(10, int(rate // 10))}"]
        cfg = load_config(overrides)
        console.print(f"[bold]{rate:g} readings/s[/]: fl-app run --detach (home {home})")
        started = time.monotonic()
        try:
            up = fl_app(overrides, "run", "--detach")
            result.run_seconds = time.monotonic() - started
            if up.returncode != 0:
                result.error = f"fl-app run failed: {(up.stdout + up.stderr)[-1500:]}"
                return result
            with storage.Storage.from_config(cfg.mongo) as store:
                deadline = started + 600
                while time.monotonic() < deadline and (result.first_global_s is None
                                                       or result.first_prediction_s is None):
                    if result.first_global_s is None and store.global_model.find_one({}, {"round": 1}):
                        result.first_global_s = time.monotonic() - started
                        console.print(f"  first global model after {result.first_global_s:.0f}s")
                    if result.first_prediction_s is None and store.predictions.find_one({}, {"_id": 1}):
                        result.first_prediction_s = time.monotonic() - started
                        console.print(f"  first prediction after {result.first_prediction_s:.0f}s")
                    time.sleep(1)
                measure(cfg, store, result, minutes, started, counts_after)
        finally:
            fl_app(overrides, "stop")
            leftovers = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _mentions(p, home)]
            if leftovers:
                result.error += f" {len(leftovers)} processes left after stop"
    return result


def _mentions(proc: Path, home: Path) -> bool:
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z" and str(home).encode() in (proc / "cmdline").read_bytes()
    except OSError:
        return False


def measure(cfg: AppConfig, store: storage.Storage, result: Result, minutes: float, started: float,
            counts_after_minutes: float) -> None:
    """Sample the steady state for ``minutes``; count the documents ``counts_after_minutes`` after ``started``."""
    topic = cfg.kafka.topics.readings
    console.print(f"  measuring {minutes:g} min")

    def produced() -> int:
        return sum(flow.end_offsets(cfg, topic.name, topic.partitions).values())

    since = datetime.now(UTC)
    stored0, produced0, busy0, total0 = store.device_data.estimated_document_count(), produced(), *cpu_times()
    _, cpu0 = by_component(cfg)
    result.flink_lag_start = flow.flink_lag(cfg)
    t0 = time.monotonic()
    pss_samples: list[dict[str, float]] = []
    while time.monotonic() - t0 < minutes * 60:
        time.sleep(5)
        pss, _ = by_component(cfg)
        pss_samples.append(pss)
        if not result.counts and time.monotonic() >= started + counts_after_minutes * 60:
            result.counts = {name: store.db[name].count_documents({}) for name in (
                storage.DEVICE_DATA, storage.LOCAL_MODELS, storage.GLOBAL_MODEL, storage.PREDICTIONS)}
            # local_models are stored with their round: the updates since the last one wait in the ServerApp
            result.counts["pending_updates"] = int((store.server_state() or {}).get("pending", 0))
            console.print(f"  documents after the first {counts_after_minutes:g} min: {result.counts}")
    span = time.monotonic() - t0
    busy1, total1 = cpu_times()
    _, cpu1 = by_component(cfg)
    result.stored_per_s = (store.device_data.estimated_document_count() - stored0) / span
    result.produced_per_s = (produced() - produced0) / span
    result.flink_lag_end = flow.flink_lag(cfg)
    result.cpu_percent = 100 * (busy1 - busy0) / (total1 - total0) * (os.cpu_count() or 1)
    result.load_average = os.getloadavg()[0]
    names = sorted({n for s in pss_samples for n in s})
    result.pss_mb = {n: sum(s.get(n, 0.0) for s in pss_samples) / len(pss_samples) for n in names}
    result.total_pss_mb = sum(result.pss_mb.values())
    result.last_pss_mb = sum(pss_samples[-1].values()) if pss_samples else 0.0
    result.cpu_percent_by_component = {n: 100 * (cpu1.get(n, 0.0) - cpu0.get(n, 0.0)) / span for n in names}
    result.rounds = store.global_model.estimated_document_count()
    latencies = sorted((d["stored_at"] - d["event_time"]).total_seconds() * 1000 for d in store.device_data.find(
        {"stored_at": {"$gte": since}}, {"event_time": 1, "stored_at": 1, "_id": 0}))
    if latencies:
        result.latency_p50_ms = percentile(latencies, 50)
        result.latency_p99_ms = percentile(latencies, 99)


def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="10,100", help="paced rates, readings/s")
    parser.add_argument("--max-rate", type=float, default=5000.0, help="the flat-out run's asked rate (0: skip)")
    parser.add_argument("--minutes", type=float, default=3.0, help="steady-state measuring time per rate")
    parser.add_argument("--counts-after", type=float, default=10.0,
                        help="count the documents this many minutes after invoking fl-app run")
    parser.add_argument("--flink-alone-records", type=int, default=20_000,
                        help="readings for the Flink job alone, flat out, after the pipeline runs (0: skip)")
    args = parser.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",") if r] + ([args.max_rate] if args.max_rate > 0 else [])
    results = [run_one(rate, args.minutes, args.counts_after) for rate in rates]
    flink_alone = None
    if args.flink_alone_records > 0:  # the same machine, nothing else running: the ceiling of ingest
        console.print("[bold]the Flink job alone[/] (benchmarks.flink_pipeline, flat out)")
        flink_alone = flink_pipeline.main(["--records", str(args.flink_alone_records), "--paced-seconds", "10"])

    table = Table(title="Whole pipeline (fl-app run, testing profile, 53 devices)", title_justify="left")
    for col in ("asked /s", "run returned", "first global", "first prediction", "produced /s", "stored /s",
                "Flink lag start -> end", "send to stored p50 / p99", "CPU (of 200 %)", "load",
                "PSS total (mean / last)", "rounds",
                f"readings / local updates / rounds at {args.counts_after:g} min", "error"):
        table.add_column(col)

    def seconds(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f} s"

    for r in results:
        table.add_row(f"{r.rate:g}", seconds(r.run_seconds), seconds(r.first_global_s), seconds(r.first_prediction_s),
                      f"{r.produced_per_s:,.1f}", f"{r.stored_per_s:,.1f}", f"{r.flink_lag_start} -> {r.flink_lag_end}",
                      "-" if r.latency_p99_ms is None else f"{r.latency_p50_ms:,.0f} / {r.latency_p99_ms:,.0f} ms",
                      f"{r.cpu_percent:.0f} %", f"{r.load_average:.1f}",
                      f"{r.total_pss_mb / 1024:.1f} / {r.last_pss_mb / 1024:.1f} GB",
                      str(r.rounds), f"{r.counts[storage.DEVICE_DATA]:,} / {r.counts[storage.LOCAL_MODELS]:,} "
                      f"(+{r.counts['pending_updates']} pending) / {r.counts[storage.GLOBAL_MODEL]}"
                      if r.counts else "-",
                      r.error[:60])
    console.print(table)
    if flink_alone is not None:
        alone = flink_alone["max"]["rate"]
        flat = max((r.stored_per_s for r in results), default=0.0)
        console.print(f"Flink job alone, flat out: {alone:,.0f} readings/s; the whole pipeline's highest stored rate "
                      f"{flat:,.0f}/s = {flat / alone:.2f} of it")
    per = Table(title="Per component: PSS MB / CPU % of one core", title_justify="left")
    per.add_column("component")
    for r in results:
        per.add_column(f"{r.rate:g}/s")
    for name in sorted({n for r in results for n in r.pss_mb}):
        per.add_row(name, *[f"{r.pss_mb.get(name, 0):,.0f} / {r.cpu_percent_by_component.get(name, 0):.0f} %"
                            for r in results])
    console.print(per)
    out = PROJECT_ROOT / "logs" / "pipeline_bench.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"runs": [asdict(r) for r in results], "flink_alone": flink_alone}, indent=2,
                              default=str))
    console.print(f"written: {out}")
    return results


if __name__ == "__main__":
    main()
