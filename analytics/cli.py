"""The analytics' commands: ``fl-app spark serve|stream|batch`` (the scorer and the batch analytics, in
one process or each alone), ``fl-app report``, ``fl-app superset serve|up|down``. ``fl-app run`` starts
the scorer and the batch schedule (``spark serve``, or each alone) and Superset (``analytics/component.py``)."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from core.commands import command, console, group, print_stopped
from core.config import AppConfig

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import SparkSession

    from analytics.batch import Batches, BatchResult

log = logging.getLogger(__name__)
app = typer.Typer()
spark_app = group(app, "spark", "Spark analytics (streaming anomaly scoring, batch analytics).")
superset_app = group(app, "superset", "Superset dashboards on the batch analytics (up, down, serve).")


@command(spark_app, "stream", log="spark_scorer")
def spark_stream(cfg: AppConfig) -> None:
    """Score every valid reading of iot_stream with the newest global model, in the foreground
    (Spark Structured Streaming; predictions in MongoDB). Waits for the first global model."""
    from analytics import scorer as scoring
    from core import dataset

    scorer = scoring.Scorer(cfg, dataset.device_ids(cfg.stream, cfg.paths.cache_dir))
    stop_on_signals(scorer.stop)
    scorer.run()


def labels(cfg: AppConfig) -> pd.DataFrame:
    """The data set's labels for the batch analytics' detection quality: ``seq``, ``label``."""
    from core import dataset

    frame = dataset.load(cfg.stream, cfg.paths.cache_dir)
    return frame[["seq"]].assign(label=(frame["anomaly"] != dataset.NORMAL).to_numpy())


def run_batch(cfg: AppConfig, rebuild: bool = True) -> BatchResult:
    """One batch analytics run (a rebuild unless told), with the data set's labels and the dead letters so far."""
    from analytics.batch import Batches
    from core.topics import dead_letter_reasons

    batches = Batches(cfg, labels(cfg))
    try:
        return batches.run(dead_letter_reasons(cfg), rebuild=rebuild)
    finally:
        batches.close()


SCHEDULE = typer.Option(False, "--schedule", help="Run again every spark.batch_interval_seconds until stopped.")
REBUILD = typer.Option(False, "--rebuild", help="Recompute from every document, not from the sums kept.")


def stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT set ``stop`` (each command's loop then ends its work and cleans up)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())


def batch_schedule(cfg: AppConfig, batches: Batches, stop: threading.Event, rebuild: bool = False,
                   schedule: bool = True, contain: bool = False) -> None:
    """Run the batch analytics every ``spark.batch_interval_seconds`` until ``stop`` (the first run of a
    schedule rebuilds); without ``schedule``, once. ``contain``: a failed run is logged and the next one
    tried, for a schedule that shares its process (``spark serve``: the scorer goes on), unless Spark
    itself is gone (:func:`spark_alive`), which is raised; without ``contain`` every failure is raised,
    and the supervisor restarts the process with a fresh Spark."""
    from core.topics import dead_letter_reasons

    first = True
    while not stop.is_set():
        try:
            result = batches.run(dead_letter_reasons(cfg), rebuild=rebuild or (schedule and first))
        except Exception:
            if stop.is_set():  # stopping: SIGTERM reached the JVM too and ended the run
                log.info("batch analytics run ended by the stop")
                break
            if not contain or (batches.spark is not None and not spark_alive(batches.spark)):
                raise
            log.exception("batch analytics run failed; the next one in %gs", cfg.spark.batch_interval_seconds)
        else:
            console.print(f"{'rebuild' if result.rebuilt else 'incremental'}: "
                          f"{', '.join(f'{v:,} {k}' for k, v in result.counts.items())} in {result.seconds:.1f}s; "
                          f"tables {', '.join(sorted(result.tables))}")
            first = False
        if not schedule:
            break
        stop.wait(cfg.spark.batch_interval_seconds)


def spark_alive(spark: SparkSession) -> bool:
    """Whether ``spark``'s JVM answers and its context runs (False after an OOM kill or a crash of the JVM)."""
    try:
        return not spark.sparkContext._jsc.sc().isStopped()
    except Exception:  # py4j cannot reach the JVM
        return False


@command(spark_app, "batch", log="spark_batch")
def spark_batch(cfg: AppConfig, schedule: bool = SCHEDULE, rebuild: bool = REBUILD) -> None:
    """Batch analytics: per-device statistics, convergence per round, participation, predictions
    against the data set's labels; tables in the SQL serving store (spark.batch.store_url). Reads
    what is new since the last run; the first run of a schedule rebuilds."""
    from analytics.batch import Batches

    stop = threading.Event()
    stop_on_signals(stop)
    batches = Batches(cfg, labels(cfg))
    try:
        batch_schedule(cfg, batches, stop, rebuild, schedule)
    finally:
        batches.close()


@command(spark_app, "serve", log="spark")
def spark_serve(cfg: AppConfig) -> None:
    """The scorer and the batch schedule in one process, on one Spark session (one JVM, not two): what
    `fl-app run` starts when spark.one_session (the default) and both are enabled."""
    from analytics import scorer as scoring
    from analytics.batch import Batches
    from core import dataset

    scorer = scoring.Scorer(cfg, dataset.device_ids(cfg.stream, cfg.paths.cache_dir))
    stop_on_signals(scorer.stop)
    spark = scoring.session(cfg)
    # A session of its own on the same SparkContext: its SQL settings (shuffle partitions) stay the batch's.
    batches = Batches(cfg, labels(cfg), spark.newSession())
    ended: list[BaseException] = []

    def run_schedule() -> None:
        """The batch's thread: if it ends other than by the stop (Spark gone, a bug), the process stops too,
        with an error, so that the supervisor restarts both rather than keep a scorer without its batch."""
        try:
            batch_schedule(cfg, batches, scorer.stop, contain=True)
        except BaseException as exc:
            ended.append(exc)
            scorer.stop.set()

    schedule = threading.Thread(target=run_schedule, name="batch-schedule", daemon=True)
    schedule.start()
    try:
        scorer.run(spark)  # waits for the first global model; the batch runs meanwhile
    finally:
        scorer.stop.set()
        with contextlib.suppress(Exception):  # ends the batch's Spark jobs in progress, not the scorer's
            batches.spark.interruptAll()  # type: ignore[union-attr]
        schedule.join(5)  # within `fl-app stop`'s 10 s per component
        try:
            spark.stop()
        except Exception as exc:  # SIGTERM reached the JVM too, whose shutdown hook may have stopped it
            log.warning("stopping the Spark session: %s", str(exc).splitlines()[0] if str(exc) else exc)
    if ended:
        raise RuntimeError(f"the batch schedule ended: {ended[0]!r}") from ended[0]


REFRESH = typer.Option(False, "--refresh", help="Run the batch analytics first (fl-app spark batch).")
REPORT_OUT = typer.Option(None, "--out", help="Folder for the plots and report.md (default: <paths.home>/report).")


@command(app, log="report")
def report(cfg: AppConfig, refresh: bool = REFRESH, out: Path | None = REPORT_OUT) -> None:
    """PNG plots (loss and participants per round, anomaly rate per device, ingest rate) and a
    Markdown summary, from the batch analytics' serving store."""
    from analytics import report as reporting

    if refresh:
        with console.status("running the batch analytics (Spark)"):
            run_batch(cfg)
    written = reporting.write(reporting.read_tables(cfg.spark.batch.store_url), out or Path(cfg.paths.home) / "report")
    console.print(f"[bold green]report:[/] {written.summary}")
    for plot in written.plots:
        console.print(f"  {plot}")


@command(superset_app, "serve", log="superset")
def superset_serve(cfg: AppConfig) -> None:
    """Set up Superset (metadata, admin, dashboards from the repo's bundle) and serve it in the
    foreground (what `fl-app run` starts)."""
    from analytics.superset import server

    sys.stdout.flush()
    server.serve(cfg)  # becomes gunicorn


@command(superset_app, "up", log="superset_launcher")
def superset_up(cfg: AppConfig, overrides: list[str]) -> None:
    """Start Superset in the background on superset.host:port; returns once it answers
    (the first start migrates its metadata database, about a minute)."""
    from analytics.superset import server

    proc = server.process(cfg, overrides)
    with console.status(f"starting Superset on {server.url(cfg)} (log: {proc.log_file})"):
        proc.start()
    print_superset(cfg)


@command(superset_app, "down", log="superset_launcher")
def superset_down(cfg: AppConfig) -> None:
    """Stop the Superset that `fl-app superset up` started."""
    from analytics.superset import server

    print_stopped(["superset"] if server.process(cfg).stop() else [])


def print_superset(cfg: AppConfig) -> None:
    """Where Superset is, who logs in, and the dashboards' addresses."""
    from analytics.superset import server

    _, where = server.admin_password(cfg)
    console.print(f"[bold green]Superset:[/] {server.url(cfg)}/dashboard/list/  "
                  f"(user {cfg.superset.admin_user}, password in {where})")
    console.print("  dashboards: " + ", ".join(f"{server.url(cfg)}/superset/dashboard/{slug}/"
                                              for slug in server.DASHBOARDS))
