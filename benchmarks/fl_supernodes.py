"""53 real SuperNodes on this machine: the warm executor against Flower's stock isolation.

For each isolation (``fl.isolation=warm``, then ``subprocess``, the stock way,
usually shorter: it fails early on a small machine), in one run, on a private
Kafka + MongoDB-wire stack with the stream running (producer at the testing
profile's 10 readings/s, the Flink job) and the testing cadence (train every
30 s, aggregate every 60 s):

- devices online and train messages answered, per aggregation tick (what the
  ServerApp saw: ``fl_rounds.transport``);
- devices that sent a reply (update or "no new data") per aggregation tick, out of the devices, and
  of those the devices whose update went into the round, beside the devices that could not send one:
  no reading of theirs was produced from 30 s before the previous tick to this one (the data set has
  per-device gaps: at 10 readings/s, 50-52 of the 53 devices have a reading in most minutes);
- message-to-reply seconds: the median of the ticks' p50 and the largest p99;
- memory: proportional set size (PSS: shared pages split between the processes
  that share them, so forked children count what they add) of the FL layer
  (SuperLink, SuperNodes, executor and its children, ServerApp, stock
  ClientApp/SuperExec processes) and of the whole pipeline (plus the broker,
  MongoDB server, Flink job and producer), sampled every 5 s: mean and peak;
- CPU: busy share of the machine's cores and the load average.

    python -m benchmarks.fl_supernodes [--minutes 10] [--stock-minutes 4] [--devices 53]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks._stack import private_stack
from core import services, storage
from core.config import PROJECT_ROOT, AppConfig, load_config
from core.services.runner import ManagedProcess
from fl_app.federation import deployment
from tests.support.stack import federation_ports, tenant_overrides

console = Console(width=None if sys.stdout.isatty() else 200)  # a log file gets the whole table
FL_APP = Path(sys.executable).parent / "fl-app"
FL_NAMES = ("flower-superlink", "flower-supernode", "clients.supernodes", "flwr-serverapp", "flower-superexec",
            "flwr-clientapp",
            "clients.executor")


@dataclass
class Sample:
    at: float
    fl_pss_mb: float
    pipeline_pss_mb: float
    fl_processes: int


@dataclass
class Result:
    isolation: str
    devices: int
    minutes: float
    ticks: int = 0
    online_min: int = 0
    online_mean: float = 0.0
    replied_min: int = 0  # devices that replied within an aggregation interval (worst tick)
    replied_mean: float = 0.0
    ticks_with_all_but_one: float = 0.0  # share of ticks where >= devices - 1 replied
    updated_min: int = 0  # devices whose update went into the tick's round (worst tick)
    updated_mean: float = 0.0
    # devices with a reading since 30 s before the previous tick that sent no update into the round
    missed_max: int = 0
    missed_mean: float = 0.0
    idle_mean: float = 0.0  # devices that replied "no new data"
    aggregated: int = 0
    latency_p50: float = float("nan")
    latency_p99: float = float("nan")
    # medians over the ticks of each tick's p50 of a reply's hops (server/server_app.py, Transport)
    delivery_p50: float = float("nan")
    work_p50: float = float("nan")
    return_p50: float = float("nan")
    fl_pss_mean_mb: float = 0.0
    fl_pss_peak_mb: float = 0.0
    pipeline_pss_peak_mb: float = 0.0
    cpu_busy: float = 0.0
    load_average: float = 0.0
    error: str = ""  # why the run could not be measured as planned (e.g. the run was never submitted)
    per_tick: list[dict[str, Any]] = field(default_factory=list)


def pss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def processes_of(home: Path) -> tuple[list[int], list[int]]:
    """(FL layer pids, every pid of this benchmark's pipeline): those whose environment or command
    line names the benchmark's home."""
    marker = str(home).encode()
    fl, everything = [], []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            ours = marker in cmdline or marker in (proc / "environ").read_bytes()
        except OSError:
            continue
        if ours:
            everything.append(int(proc.name))
            if any(n.encode() in cmdline for n in FL_NAMES):
                fl.append(int(proc.name))
    return fl, everything


def cpu_times() -> tuple[float, float]:
    fields = [float(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def sampler(home: Path, stop: threading.Event, samples: list[Sample]) -> None:
    while not stop.wait(5):
        fl, everything = processes_of(home)
        samples.append(Sample(time.monotonic(), sum(map(pss_mb, fl)), sum(map(pss_mb, everything)), len(fl)))


def run_one(stack: AppConfig, isolation: str, devices: int, minutes: float) -> Result:
    home = Path(stack.paths.home) / f"fl-{isolation}"
    tag = uuid.uuid4().hex[:8]
    overrides = [
        *tenant_overrides(stack, home, tag), f"fl.devices={devices}", f"fl.isolation={isolation}",
        *federation_ports(),
    ]
    cfg = load_config(overrides)
    services.provision(cfg)

    def component(name: str, *command: str) -> ManagedProcess:
        return ManagedProcess(name=name, argv=[str(FL_APP), *command, *overrides], run_dir=home / ".run",
                              logs_dir=home / "logs", startup_timeout=5, stop_timeout=20)

    job, producer = component("flink_job", "flink"), component("kafka_producer", "produce")
    samples: list[Sample] = []
    stop = threading.Event()
    # Every process of the stack (broker, MongoDB server) and of this run names the stack's home.
    thread = threading.Thread(target=sampler, args=(Path(stack.paths.home), stop, samples), daemon=True)
    busy0, total0 = cpu_times()
    started = time.monotonic()
    try:
        job.start()
        producer.start()
        thread.start()
        console.print(f"[bold]{isolation}[/]: starting {devices} SuperNodes ...")
        error = ""
        try:
            deployment.up(cfg)
            console.print(f"  submitted after {time.monotonic() - started:.0f}s; running {minutes:g} min")
        except Exception as exc:  # noqa: BLE001 - a failed start is a result too (stock isolation)
            error = f"start failed after {time.monotonic() - started:.0f}s: {str(exc)[-300:]}"
            console.print(f"  [red]{error}[/]")
            minutes = 0.5  # measure what is there, then stop
        deadline = time.monotonic() + minutes * 60
        while time.monotonic() < deadline:
            time.sleep(min(30.0, max(0.0, deadline - time.monotonic())))
            with storage.Storage.from_config(cfg.mongo) as store:
                ticks = store.fl_rounds.count_documents({})
                rounds = store.global_model.count_documents({})
            fl_now = samples[-1].fl_pss_mb if samples else 0.0
            console.print(f"  {time.monotonic() - started:4.0f}s: {ticks} ticks, {rounds} global rounds, "
                          f"FL layer {fl_now / 1024:.1f} GB, load {os.getloadavg()[0]:.1f}")
    finally:
        load = os.getloadavg()[0]
        busy1, total1 = cpu_times()
        stop.set()
        deployment.down(cfg)
        producer.stop()
        job.stop()
        # The run's logs (ServerApp ticks, executor, SuperNodes) outlive the temporary home.
        kept = PROJECT_ROOT / "logs" / "fl_supernodes" / isolation
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(cfg.paths.logs_dir, kept)
    result = Result(isolation, devices, minutes, cpu_busy=(busy1 - busy0) / max(total1 - total0, 1),
                    load_average=load, error=error)
    with storage.Storage.from_config(cfg.mongo) as store:
        ticks_docs = [t for t in store.fl_rounds.find({}, sort=[("at", 1)]) if t.get("transport")]
        result.aggregated = store.global_model.count_documents({})
    if samples:
        result.fl_pss_mean_mb = statistics.fmean(s.fl_pss_mb for s in samples)
        result.fl_pss_peak_mb = max(s.fl_pss_mb for s in samples)
        result.pipeline_pss_peak_mb = max(s.pipeline_pss_mb for s in samples)
    first_tick = ticks_docs[0] if ticks_docs else {}
    ticks_docs = ticks_docs[1:-1]  # the first tick covers the start-up, the last one the shutdown
    if ticks_docs:
        replied = [len({*t["accepted"], *t["idle"], *t["stale"], *(r["device_id"] for r in t["rejected"])})
                   for t in ticks_docs]
        online = [t["transport"]["online"] for t in ticks_docs]
        result.ticks = len(ticks_docs)
        result.online_min, result.online_mean = min(online), statistics.fmean(online)
        result.replied_min, result.replied_mean = min(replied), statistics.fmean(replied)
        result.ticks_with_all_but_one = sum(r >= devices - 1 for r in replied) / len(replied)
        updated = [len(t["accepted"]) for t in ticks_docs]
        result.updated_min, result.updated_mean = min(updated), statistics.fmean(updated)
        with storage.Storage.from_config(cfg.mongo) as store:
            with_data = [devices_with_readings(store, before["at"] - timedelta(seconds=30), t["at"])
                         for before, t in zip([first_tick, *ticks_docs], ticks_docs, strict=False)]
        missed = [len(d - set(t["accepted"])) for d, t in zip(with_data, ticks_docs, strict=True)]
        result.missed_max, result.missed_mean = max(missed), statistics.fmean(missed)
        result.idle_mean = statistics.fmean(len(t["idle"]) for t in ticks_docs)
        p50s = [t["transport"]["latency_p50"] for t in ticks_docs if t["transport"]["replies"]]
        p99s = [t["transport"]["latency_p99"] for t in ticks_docs if t["transport"]["replies"]]
        result.latency_p50 = statistics.median(p50s) if p50s else float("nan")
        result.latency_p99 = max(p99s) if p99s else float("nan")
        for hop in ("delivery", "work", "return"):
            values = [t["transport"][f"{hop}_p50"] for t in ticks_docs if t["transport"].get(f"{hop}_p50") is not None]
            setattr(result, f"{hop}_p50", statistics.median(values) if values else float("nan"))
        result.per_tick = [{"online": t["transport"]["online"], "replied": r, "updated": len(t["accepted"]),
                            "with_readings": len(d), "missed": m, "idle": len(t["idle"]), "status": t["status"],
                            **{k: t["transport"].get(k) for k in ("latency_p50", "latency_p99", "delivery_p50",
                                                                  "work_p50", "return_p50")}}
                           for t, r, d, m in zip(ticks_docs, replied, with_data, missed, strict=True)]
    return result


def devices_with_readings(store: storage.Storage, since: datetime, until: datetime) -> set[int]:
    """Devices with a reading produced (``event_time``) in [since, until]."""
    query = {"event_time": {"$gte": since, "$lte": until}}
    return {d["device_id"] for d in store.device_data.find(query, {"device_id": 1, "_id": 0})}


def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="the warm executor's run")
    parser.add_argument("--stock-minutes", type=float, default=4.0, help="stock isolation's run (0: skip)")
    parser.add_argument("--devices", type=int, default=53)
    parser.add_argument("--json", type=Path, default=PROJECT_ROOT / "logs" / "fl_supernodes.json")
    args = parser.parse_args(argv)
    # A stopped benchmark still tears down what it started (its finally blocks run on SystemExit).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results = []
    args.json.parent.mkdir(parents=True, exist_ok=True)
    with private_stack() as stack:
        for isolation, minutes in (("warm", args.minutes), ("subprocess", args.stock_minutes)):
            if minutes > 0:
                results.append(run_one(stack, isolation, args.devices, minutes))
                args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))  # kept if a later run dies
    table = Table(title=f"{args.devices} SuperNodes, train every 30 s, aggregate every 60 s, stream running",
                  title_justify="left")
    for col in ("isolation", "minutes", "ticks", "online min/mean", "replied min/mean", "ticks >= n-1",
                "updated min/mean", "missed max/mean", "idle mean",
                "rounds", "reply p50", "reply p99", "delivery/work/return p50", "FL PSS mean/peak", "pipeline peak",
                "CPU busy", "load"):
        table.add_column(col, justify="left" if col == "isolation" else "right")
    for r in results:
        table.add_row(r.isolation, f"{r.minutes:g}", str(r.ticks), f"{r.online_min}/{r.online_mean:.1f}",
                      f"{r.replied_min}/{r.replied_mean:.1f}", f"{r.ticks_with_all_but_one:.0%}",
                      f"{r.updated_min}/{r.updated_mean:.1f}", f"{r.missed_max}/{r.missed_mean:.1f}",
                      f"{r.idle_mean:.1f}", str(r.aggregated),
                      f"{r.latency_p50:.1f}s", f"{r.latency_p99:.1f}s",
                      f"{r.delivery_p50:.1f}/{r.work_p50:.1f}/{r.return_p50:.1f}s",
                      f"{r.fl_pss_mean_mb / 1024:.2f}/{r.fl_pss_peak_mb / 1024:.2f} GB",
                      f"{r.pipeline_pss_peak_mb / 1024:.2f} GB", f"{r.cpu_busy:.0%}", f"{r.load_average:.1f}")
    console.print(table)
    for r in results:
        if r.error:
            console.print(f"{r.isolation}: {r.error}")
    console.print(f"written: {args.json}")
    return results


if __name__ == "__main__":
    main()
