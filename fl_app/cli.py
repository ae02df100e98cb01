"""``fl-app``: the single entry point for users.

Every command takes trailing Hydra overrides (``key=value`` words), e.g.::

    fl-app run profile=production stream.records_per_second=100
    fl-app services up kafka.bootstrap_servers=127.0.0.1:29092
    fl-app config profile=production          # print the composed config

``--cfg`` on any command prints the configuration it would use and exits.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from core.config import AppConfig, ConfigError, load_config, to_yaml
from core.services.runner import ServiceError, State, Status

if TYPE_CHECKING:
    from analytics.batch import BatchResult
    from core.dataset.summary import Summary
    from core.services import Readiness
    from core.storage import Storage
    from fl_app.pipeline import Stopped

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Streaming federated learning on IoT sensor data.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
services_app = typer.Typer(no_args_is_help=True, help="Local Kafka broker and MongoDB-wire server.")
app.add_typer(services_app, name="services")
data_app = typer.Typer(no_args_is_help=True, help="The IoT data set (generate, inspect).")
app.add_typer(data_app, name="data")
fl_cli = typer.Typer(no_args_is_help=True, help="Federated learning with Flower (simulate, up, down).")
app.add_typer(fl_cli, name="fl")
spark_cli = typer.Typer(no_args_is_help=True, help="Spark analytics (streaming anomaly scoring).")
app.add_typer(spark_cli, name="spark")
superset_cli = typer.Typer(no_args_is_help=True, help="Superset dashboards on the batch analytics (up, down, serve).")
app.add_typer(superset_cli, name="superset")

console = Console(stderr=False)
err = Console(stderr=True)

OVERRIDES = typer.Argument(None, metavar="[KEY=VALUE]...", help="Hydra overrides, e.g. profile=production")
PRINT_CFG = typer.Option(False, "--cfg", help="Print the composed configuration and exit.")


def _load(overrides: list[str] | None, print_cfg: bool, log_name: str) -> AppConfig:
    """Compose the config (exit 2 with the key named if bad) and set up logging."""
    try:
        cfg = load_config(overrides or [])
    except ConfigError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
        raise typer.Exit(2) from None
    if print_cfg:
        console.print(to_yaml(cfg), highlight=False, markup=False)
        raise typer.Exit(0)
    from core.logs import setup_logging

    # On a terminal, log lines show there too; in the background (fl-app run)
    # stdout is already the log file, so only the file handler writes.
    setup_logging(cfg.paths.logs_dir, log_name, console=sys.stderr.isatty())
    return cfg


def _fail(exc: Exception) -> NoReturn:
    err.print(f"[bold red]error:[/] {exc}", highlight=False)
    raise typer.Exit(2 if isinstance(exc, ConfigError) else 1)


# Failures a user can cause and fix (a missing file, a bad data set, a server
# that is not there): one readable line instead of a traceback. ServiceError
# is a RuntimeError.
USER_ERRORS = (ConfigError, OSError, ValueError, RuntimeError)


def _print_readiness(cfg: AppConfig, ready: Readiness) -> None:
    _print_status(ready.services)
    topics = Table(title="Kafka topics", title_justify="left")
    topics.add_column("topic")
    topics.add_column("partitions", justify="right")
    for name, partitions in ready.topics.items():
        topics.add_row(name, str(partitions))
    console.print(topics)
    colls = Table(title=f"MongoDB {cfg.mongo.database}", title_justify="left")
    colls.add_column("collection")
    colls.add_column("documents", justify="right")
    for name, count in ready.collections.items():
        colls.add_row(name, str(count))
    console.print(colls)


def _print_stopped(stopped: list[str]) -> None:
    console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


STATE_COLORS = {State.RUNNING: "green", State.EXTERNAL: "cyan", State.UNHEALTHY: "yellow", State.STOPPED: "red"}


def _print_status(statuses: list[Status], title: str = "Services") -> None:
    table = Table(title=title, title_justify="left")
    for col in ("service", "state", "address", "pid", "detail"):
        table.add_column(col)
    for s in statuses:
        table.add_row(s.name, f"[{STATE_COLORS[s.state]}]{s.state.value}[/]", s.address, str(s.pid or ""), s.detail)
    console.print(table)


FOLLOW = typer.Option(None, "--follow/--detach", help="Stay in the foreground showing progress until Ctrl-C, "
                      "which stops everything (default when run from a terminal), or return once all runs.")


@app.command()
def run(overrides: list[str] | None = OVERRIDES, follow: bool | None = FOLLOW, print_cfg: bool = PRINT_CFG) -> None:
    """Run the whole pipeline on this machine: services, topics, collections, then every component
    (fl_app.pipeline.COMPONENTS) under a supervisor that restarts what crashes. In a terminal it stays
    in the foreground until Ctrl-C; `--detach` returns (then `fl-app stop` stops it)."""
    cfg = _load(overrides, print_cfg, "fl_app")
    from fl_app import pipeline

    follow = sys.stdin.isatty() and sys.stdout.isatty() if follow is None else follow
    # A shell starts a background job (`... &` without job control, as CI runners do) with SIGINT
    # ignored, and Python then never raises KeyboardInterrupt: Ctrl-C stops `run`, whatever it inherited.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    already = [s.name for s in pipeline.status(cfg) if s.state == State.RUNNING]
    if pipeline.expected(cfg) and already:
        console.print(f"[bold]already running[/] ({', '.join(already)}); nothing changed. "
                      "See `fl-app status`; stop it with `fl-app stop`.")
        return
    console.print(f"profile [bold]{cfg.profile_name}[/]: starting services, logs in {cfg.paths.logs_dir}")
    try:
        report = pipeline.run(cfg, overrides or [])
    except KeyboardInterrupt:
        _stop_here(cfg)
        raise typer.Exit(130) from None
    except USER_ERRORS as exc:
        _fail(exc)
    _print_readiness(cfg, report.ready)
    for note in report.notes:
        console.print(note)
    _print_status(report.components, title="Pipeline")
    _print_where_to_look(cfg)
    if not follow:
        console.print("[bold green]running.[/] Watch it with `fl-app status` or `fl-app view --watch`; "
                      "stop it with `fl-app stop`.")
        return
    console.print("[bold green]running.[/] Ctrl-C stops everything (`fl-app stop` from another terminal too).")
    _follow(cfg)


def _print_where_to_look(cfg: AppConfig) -> None:
    console.print(f"[bold green]API and live page:[/] http://{cfg.api.host}:{cfg.api.port}/  "
                  f"(OpenAPI: /docs)" if cfg.api.enabled else "API: off (api.enabled=false)")
    if cfg.superset.enabled:
        _print_superset(cfg)
        console.print("  (its first start takes about a minute; dashboards fill after the first batch run, "
                      f"every {cfg.spark.batch_interval_seconds:g} s)")
    console.print(f"logs: {cfg.paths.logs_dir}/ (rounds: global_server.log; restarts: supervisor.log)")


PROGRESS_SECONDS = 10.0


def _follow(cfg: AppConfig) -> None:
    """One progress line every 10 s until one of:

    - Ctrl-C or SIGTERM: stop everything here (:func:`_stop_here`), exit 0;
    - `fl-app stop` (or `reset`) from elsewhere: it removes the pipeline marker first
      (``pipeline.stop``); seen within a second, one line, exit 0 (that command stops it all).

    MongoDB being unreachable (stopped, paused) shows in the line; it never ends the loop.
    """
    import signal
    import time as clock

    from core.storage import Storage
    from fl_app import pipeline

    def on_term(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        with Storage(cfg.mongo.uri, cfg.mongo.database, timeout_ms=2000) as store:
            next_line = 0.0
            while pipeline.expected(cfg):
                if clock.monotonic() >= next_line:
                    next_line = clock.monotonic() + PROGRESS_SECONDS
                    console.print(_progress(cfg, store))
                clock.sleep(0.5)
    except KeyboardInterrupt:
        _stop_here(cfg)
        return
    console.print("stopped by `fl-app stop`")


def _progress(cfg: AppConfig, store: Storage) -> str:
    """The progress line: the four collections' counts (or "MongoDB unreachable") and what is down."""
    import time as clock

    from pymongo.errors import PyMongoError

    from fl_app import pipeline

    try:
        counts = store.counts()
        flow = (f"readings {counts.get('device_data', 0):,}  local updates {counts.get('local_models', 0):,}  "
                f"global rounds {counts.get('global_model', 0):,}  predictions {counts.get('predictions', 0):,}")
    except PyMongoError:
        flow = "[yellow]MongoDB unreachable[/] (readings, local updates, global rounds, predictions: unknown)"
    down = [s.name for s in pipeline.status(cfg) if s.state != State.RUNNING]
    return f"{clock.strftime('%H:%M:%S')}  {flow}" + (f"  [red]down: {', '.join(down)}[/]" if down else "")


class _Forced(BaseException):
    """A second Ctrl-C while stopping (BaseException: no `except Exception` on the way swallows it)."""


def _stop_here(cfg: AppConfig) -> None:
    """Stop everything (bounded, ~30 s at most); a second Ctrl-C (or SIGTERM) meanwhile SIGKILLs
    everything at once and exits with 130."""
    import signal

    from fl_app import pipeline

    def force(*_: object) -> None:
        raise _Forced

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, force)
    console.print("stopping everything (at most 30 s; Ctrl-C again kills it all at once) ...")
    try:
        _print_pipeline_stopped(pipeline.stop(cfg))
    except _Forced:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the kill below must not be interrupted
        killed = pipeline.kill(cfg)
        console.print(f"forced: killed {', '.join(killed) if killed else 'nothing (all had stopped)'}")
        raise typer.Exit(130) from None


def _print_pipeline_stopped(done: Stopped) -> None:
    console.print(f"stopped: {', '.join(done.names) if done.names else 'nothing was running'}"
                  + (f" in {done.seconds:.1f} s" if done.names else ""))
    if done.killed:
        console.print(f"  killed after their stop budget: {', '.join(done.killed)}")


@app.command()
def stop(overrides: list[str] | None = OVERRIDES, print_cfg: bool = PRINT_CFG) -> None:
    """Stop everything `fl-app run` started, within ~30 s: the supervisor, then every component at once,
    then the services (SIGKILL for what outlives its budget). A foreground `fl-app run` elsewhere sees
    it, says "stopped by `fl-app stop`" and exits 0."""
    cfg = _load(overrides, print_cfg, "fl_app")
    from fl_app import pipeline

    _print_pipeline_stopped(pipeline.stop(cfg))


YES = typer.Option(False, "--yes", "-y", help="Do not ask (for scripts); without it, reset asks on a terminal "
                   "and refuses otherwise.")
INCLUDE_REMOTE = typer.Option(False, "--include-remote", help="With kafka=remote or mongo=remote: also delete "
                              "the configured topics there and drop the configured database (refused without it).")


@app.command()
def reset(overrides: list[str] | None = OVERRIDES, yes: bool = YES, include_remote: bool = INCLUDE_REMOTE,
          print_cfg: bool = PRINT_CFG) -> None:
    """Start afresh (e.g. after a poisoned topic): stop everything, then remove every record of what
    flowed: the local Kafka broker's data (topics, consumer offsets), the local MongoDB server's data
    (collections), the Flink and Spark checkpoints, the producer's position, the batch analytics'
    serving tables and .run/ (pid files, supervisor and run records). Keeps the package caches (.cache:
    jars, the generated data set), Flower's certificates, Superset's secret, password and metadata,
    and the logs. Remote Kafka/MongoDB data is deleted only with --include-remote."""
    cfg = _load(overrides, print_cfg, "fl_app")
    from fl_app import pipeline

    plan = pipeline.reset_plan(cfg)
    console.print("reset removes:")
    for what, path in plan.remove:
        console.print(f"  {what}: {path}", highlight=False)
    for what in plan.remote:
        console.print(f"  {what} [bold](remote; only with --include-remote)[/]", highlight=False)
    console.print("and keeps:")
    for what, path in plan.keep:
        console.print(f"  {what}: {path}", highlight=False)
    if plan.remote and not include_remote:
        _fail(ServiceError("remote data is deleted only with --include-remote; nothing was stopped or removed"))
    if not yes:
        if not sys.stdin.isatty():
            _fail(ValueError("not a terminal: pass --yes to reset without asking; nothing was stopped or removed"))
        typer.confirm("Stop everything and remove the above?", abort=True)
    try:
        stopped, removed = pipeline.reset(cfg, include_remote)
    except USER_ERRORS as exc:
        _fail(exc)
    _print_pipeline_stopped(stopped)
    for line in removed:
        console.print(f"removed {line}", highlight=False)
    console.print(f"[bold green]reset.[/] {len(removed)} removed; `fl-app run` starts afresh.")


@app.command()
def status(overrides: list[str] | None = OVERRIDES, print_cfg: bool = PRINT_CFG) -> None:
    """What runs and what flows: services, components (pid, address), messages and documents with
    their rates, the consumers' lag, the last aggregation and the pending updates.

    Exit code 3 when a service is unreachable, 4 when a component that `fl-app run` started is down.
    """
    cfg = _load(overrides, print_cfg, "fl_app")
    from core import services
    from fl_app import flow, pipeline

    service_states = services.status(cfg)
    _print_status(service_states)
    components = pipeline.status(cfg)
    _print_status(components, title="Pipeline")
    reachable = all(s.state == State.RUNNING or s.detail == "reachable" for s in service_states)
    if not reachable:
        raise typer.Exit(3)
    table = Table(title="Flow", title_justify="left")
    table.add_column("where")
    table.add_column("count", justify="right")
    table.add_column("per second", justify="right")
    table.add_column("note")
    rows = flow.snapshot(cfg)
    for row in rows:
        table.add_row(row.where, f"{row.count:,}", "" if row.rate is None else f"{row.rate:,.1f}", row.note)
    console.print(table)
    down = [c.name for c in components if c.name in pipeline.expected(cfg) and c.state != State.RUNNING]
    down += [f"{r.where} ({r.note})" for r in rows if r.down and "federation" in pipeline.expected(cfg)]
    if down:
        err.print(f"[bold red]down:[/] {', '.join(down)} (started by `fl-app run`; logs in {cfg.paths.logs_dir})")
        raise typer.Exit(4)


WATCH = typer.Option(False, "--watch", "-w", help="Refresh until Ctrl-C (every --every seconds).")
EVERY = typer.Option(2.0, "--every", min=0.5, help="Seconds between refreshes with --watch.")
NEWEST = typer.Option(5, "--newest", "-n", min=1, max=100, help="Newest documents shown per collection.")


@app.command()
def view(overrides: list[str] | None = OVERRIDES, watch: bool = WATCH, every: float = EVERY, newest: int = NEWEST,
         print_cfg: bool = PRINT_CFG) -> None:
    """The data: counts and the newest documents of device_data, local_models, global_model and
    predictions (`--watch` follows them grow)."""
    cfg = _load(overrides, print_cfg, "fl_app")
    import time as clock

    from rich.console import Group
    from rich.live import Live

    from core.storage import Storage
    from fl_app import flow

    previous: dict[str, int] = {}

    def render(store: Storage) -> Group:
        tables = []
        for name, (count, docs) in flow.newest_documents(store, newest).items():
            grew = f" (+{count - previous[name]:,})" if name in previous else ""
            previous[name] = count
            table = Table(title=f"{name}: {count:,} documents{grew}", title_justify="left")
            fields = list(flow.VIEW[name][1])
            for f in fields:
                table.add_column(f, justify="right" if f not in ("event_id", "event_time", "created_at",
                                                                 "trained_at") else "left")
            for d in docs:
                table.add_row(*[_cell(d[f]) for f in fields])
            tables.append(table)
        return Group(*tables)

    try:
        with Storage.from_config(cfg.mongo) as store:
            if not watch:
                console.print(render(store))
                return
            with Live(render(store), console=console, auto_refresh=False) as live:
                while True:
                    clock.sleep(every)
                    live.update(render(store), refresh=True)
    except KeyboardInterrupt:
        pass
    except USER_ERRORS as exc:
        _fail(exc)


def _cell(value: object) -> str:
    from datetime import datetime

    if isinstance(value, datetime):
        return f"{value:%Y-%m-%d %H:%M:%S}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


@app.command("config")
def show_config(overrides: list[str] | None = OVERRIDES) -> None:
    """Print the composed configuration."""
    _load(overrides, True, "fl_app")


@services_app.command("up")
def services_up(overrides: list[str] | None = OVERRIDES, print_cfg: bool = PRINT_CFG) -> None:
    """Start the local servers (idempotent), create topics and collections."""
    cfg = _load(overrides, print_cfg, "services")
    from core import services

    try:
        ready = services.up(cfg)
    except ServiceError as exc:
        _fail(exc)
    _print_readiness(cfg, ready)


@services_app.command("down")
def services_down(overrides: list[str] | None = OVERRIDES, print_cfg: bool = PRINT_CFG) -> None:
    """Stop the local servers (data stays on disk)."""
    cfg = _load(overrides, print_cfg, "services")
    from core import services

    stopped = services.down(cfg)
    _print_stopped(stopped)


@services_app.command("status")
def services_status(overrides: list[str] | None = OVERRIDES, print_cfg: bool = PRINT_CFG) -> None:
    """Show whether each service runs and answers."""
    cfg = _load(overrides, print_cfg, "services")
    from core import services

    statuses = services.status(cfg)
    _print_status(statuses)
    if any(s.state in (State.STOPPED, State.UNHEALTHY) for s in statuses):
        raise typer.Exit(3)


@data_app.command("generate")
def data_generate(overrides: list[str] | None = OVERRIDES, print_cfg: bool = PRINT_CFG,
                  force: bool = typer.Option(False, "--force", help="Regenerate even if cached.")) -> None:
    """Prepare the data set the producer replays and summarise it: the file at
    stream.dataset_path if set, else the generated stand-in (cached as Parquet)."""
    cfg = _load(overrides, print_cfg, "data")
    from core import dataset
    from core.dataset.summary import summarize

    if force and not cfg.stream.dataset_path:
        dataset.cached_path(cfg.paths.cache_dir, cfg.stream.dataset_records, cfg.stream.num_devices,
                         cfg.stream.seed).unlink(missing_ok=True)
    try:
        frame = dataset.load(cfg.stream, cfg.paths.cache_dir)
    except USER_ERRORS as exc:
        _fail(exc)
    console.print(f"data set: {dataset.source(cfg.stream, cfg.paths.cache_dir)}")
    _print_summary(summarize(frame))


@data_app.command("inspect")
def data_inspect(overrides: list[str] | None = OVERRIDES, print_cfg: bool = PRINT_CFG,
                 plot: str | None = typer.Option(None, "--plot",
                                                 help="PNG path (default: <data_dir>/dataset_preview.png)."),
                 devices: str | None = typer.Option(None, "--devices", help="Comma-separated device ids to plot.")
                 ) -> None:
    """Summarise the data set the producer replays and plot a few devices' series."""
    cfg = _load(overrides, print_cfg, "data")
    from pathlib import Path

    from core import dataset
    from core.dataset.summary import plot_devices, summarize

    try:
        frame = dataset.load(cfg.stream, cfg.paths.cache_dir)
    except USER_ERRORS as exc:
        _fail(exc)
    _print_summary(summarize(frame))
    out = Path(plot) if plot else Path(cfg.paths.data_dir) / "dataset_preview.png"
    chosen = [int(d) for d in devices.split(",")] if devices else None
    console.print(f"plot: {plot_devices(frame, out, chosen)}")


def _print_summary(summary: Summary) -> None:
    table = Table(title="Data set", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    for what, value in summary.rows():
        table.add_row(what, value)
    console.print(table)


@app.command()
def produce(overrides: list[str] | None = OVERRIDES, print_cfg: bool = PRINT_CFG) -> None:
    """Replay the data set into Kafka (iot_stream) at stream.records_per_second."""
    cfg = _load(overrides, print_cfg, "kafka_producer")
    import logging
    import signal

    from rich.progress import Progress, TextColumn, TimeElapsedColumn

    from core import dataset
    from stream.producer import Position, ProduceStats, ReplayProducer

    try:
        frame = dataset.load(cfg.stream, cfg.paths.cache_dir)
        producer = ReplayProducer(cfg, frame, dataset.dataset_id(cfg.stream))
    except USER_ERRORS as exc:
        _fail(exc)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: producer.stop())
    size = len(frame)
    log = logging.getLogger("stream.producer")
    with Progress(TextColumn("[bold]producing[/]"), TimeElapsedColumn(), TextColumn("{task.description}"),
                  console=console, transient=False, disable=not console.is_terminal) as progress:
        task = progress.add_task("", total=None)
        last_log = [0.0]

        def on_progress(stats: ProduceStats, pos: Position) -> None:
            progress.update(task, description=(
                f"sent {stats.sent:,}  acked {stats.delivered:,}  {stats.rate:,.1f} rec/s  "
                f"loop {pos.loop}  position {pos.seq:,}/{size:,}"))
            if stats.elapsed - last_log[0] >= 10:  # a line in the log every 10 s
                last_log[0] = stats.elapsed
                log.info("sent %d, acked %d, %.1f rec/s, loop %d position %d/%d",
                         stats.sent, stats.delivered, stats.rate, pos.loop, pos.seq, size)

        stats = producer.run(on_progress)
    end = stats.end or Position()
    console.print(f"sent {stats.sent:,} readings ({stats.delivered:,} acknowledged, {stats.resent} re-sent) "
                  f"in {stats.elapsed:.1f}s = {stats.rate:,.1f} rec/s; next: loop {end.loop} seq {end.seq}")


@app.command()
def flink(overrides: list[str] | None = OVERRIDES, print_cfg: bool = PRINT_CFG) -> None:
    """Run the Flink job (validate, store, per-device windows) in the foreground.

    It runs in its own environment (.venv-flink) and resumes from its last
    retained checkpoint if there is one.
    """
    cfg = _load(overrides, print_cfg, "flink_launcher")
    import os

    from stream.flink import launch

    try:
        argv, env = launch.prepare(cfg)
    except USER_ERRORS as exc:
        _fail(exc)
    sys.stdout.flush()
    os.execve(argv[0], argv, env)  # same pid: `fl-app run` supervises the job itself


@spark_cli.command("stream")
def spark_stream(overrides: list[str] | None = OVERRIDES, print_cfg: bool = PRINT_CFG) -> None:
    """Score every valid reading of iot_stream with the newest global model, in the foreground
    (Spark Structured Streaming; predictions in MongoDB). Waits for the first global model."""
    cfg = _load(overrides, print_cfg, "spark_scorer")
    from analytics import scorer
    from core import dataset

    try:
        known = dataset.device_ids(cfg.stream, cfg.paths.cache_dir)
        scorer.serve(cfg, known)
    except USER_ERRORS as exc:
        _fail(exc)


def _run_batch(cfg: AppConfig) -> BatchResult:
    """One batch analytics run, with the data set's labels and the dead letters so far."""
    from analytics import batch
    from core import dataset
    from fl_app.flow import dead_letter_reasons

    frame = dataset.load(cfg.stream, cfg.paths.cache_dir)
    labels = frame[["seq"]].assign(label=(frame["anomaly"] != dataset.NORMAL).to_numpy())
    return batch.run(cfg, labels, dead_letter_reasons(cfg))


SCHEDULE = typer.Option(False, "--schedule", help="Run again every spark.batch_interval_seconds until stopped.")


@spark_cli.command("batch")
def spark_batch(overrides: list[str] | None = OVERRIDES, schedule: bool = SCHEDULE,
                print_cfg: bool = PRINT_CFG) -> None:
    """Batch analytics: per-device statistics, convergence per round, participation, predictions
    against the data set's labels; tables in the SQL serving store (spark.batch.store_url)."""
    cfg = _load(overrides, print_cfg, "spark_batch")
    import signal
    import threading

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.is_set():
            result = _run_batch(cfg)
            console.print(f"{', '.join(f'{v:,} {k}' for k, v in result.counts.items())} in {result.seconds:.1f}s; "
                          f"tables {', '.join(sorted(result.tables))}")
            if not schedule:
                break
            stop.wait(cfg.spark.batch_interval_seconds)
    except USER_ERRORS as exc:
        _fail(exc)


@app.command()
def supervise(overrides: list[str] | None = OVERRIDES, print_cfg: bool = PRINT_CFG) -> None:
    """Restart the components `fl-app run` started when they crash, with backoff (what `run` starts)."""
    cfg = _load(overrides, print_cfg, "supervisor")
    from fl_app import pipeline, supervisor

    supervisor.serve(cfg, pipeline.processes(cfg, overrides or []), pipeline.expected(cfg),
                     before_restart=lambda name: pipeline.before_restart(cfg, name))


@app.command()
def api(overrides: list[str] | None = OVERRIDES, print_cfg: bool = PRINT_CFG) -> None:
    """Serve the API (api.host:api.port; OpenAPI at /docs) and the live page (/) in the foreground."""
    cfg = _load(overrides, print_cfg, "api")
    from core import dataset
    from fl_app.api.app import serve

    try:
        serve(cfg, dataset.device_ids(cfg.stream, cfg.paths.cache_dir))
    except USER_ERRORS as exc:
        _fail(exc)


REFRESH = typer.Option(False, "--refresh", help="Run the batch analytics first (fl-app spark batch).")
REPORT_OUT = typer.Option(None, "--out", help="Folder for the plots and report.md (default: <paths.home>/report).")


@app.command()
def report(overrides: list[str] | None = OVERRIDES, refresh: bool = REFRESH, out: Path | None = REPORT_OUT,
           print_cfg: bool = PRINT_CFG) -> None:
    """PNG plots (loss and participants per round, anomaly rate per device, ingest rate) and a
    Markdown summary, from the batch analytics' serving store."""
    cfg = _load(overrides, print_cfg, "report")
    from analytics import report as reporting

    try:
        if refresh:
            with console.status("running the batch analytics (Spark)"):
                _run_batch(cfg)
        written = reporting.write(reporting.read_tables(cfg.spark.batch.store_url),
                                  out or Path(cfg.paths.home) / "report")
    except USER_ERRORS as exc:
        _fail(exc)
    console.print(f"[bold green]report:[/] {written.summary}")
    for plot in written.plots:
        console.print(f"  {plot}")


@superset_cli.command("serve")
def superset_serve(overrides: list[str] | None = OVERRIDES, print_cfg: bool = PRINT_CFG) -> None:
    """Set up Superset (metadata, admin, dashboards from the repo's bundle) and serve it in the
    foreground (what `fl-app run` starts)."""
    cfg = _load(overrides, print_cfg, "superset")
    from analytics.superset import server

    try:
        sys.stdout.flush()
        server.serve(cfg)  # becomes gunicorn
    except USER_ERRORS as exc:
        _fail(exc)


@superset_cli.command("up")
def superset_up(overrides: list[str] | None = OVERRIDES, print_cfg: bool = PRINT_CFG) -> None:
    """Start Superset in the background on superset.host:port; returns once it answers
    (the first start migrates its metadata database, about a minute)."""
    cfg = _load(overrides, print_cfg, "superset_launcher")
    from analytics.superset import server

    proc = server.process(cfg, overrides or [])
    with console.status(f"starting Superset on {server.url(cfg)} (log: {proc.log_file})"):
        try:
            proc.start()
        except USER_ERRORS as exc:
            _fail(exc)
    _print_superset(cfg)


@superset_cli.command("down")
def superset_down(overrides: list[str] | None = OVERRIDES, print_cfg: bool = PRINT_CFG) -> None:
    """Stop the Superset that `fl-app superset up` started."""
    cfg = _load(overrides, print_cfg, "superset_launcher")
    from analytics.superset import server

    _print_stopped(["superset"] if server.process(cfg).stop() else [])


def _print_superset(cfg: AppConfig) -> None:
    from analytics.superset import server

    _, where = server.admin_password(cfg)
    console.print(f"[bold green]Superset:[/] {server.url(cfg)}/dashboard/list/  "
                  f"(user {cfg.superset.admin_user}, password in {where})")
    console.print("  dashboards: " + ", ".join(f"{server.url(cfg)}/superset/dashboard/{slug}/"
                                              for slug in server.DASHBOARDS))


@fl_cli.command("simulate")
def fl_simulate(overrides: list[str] | None = OVERRIDES, print_cfg: bool = PRINT_CFG) -> None:
    """Run the ServerApp and a ClientApp per device (fl.devices) on Flower's simulation runtime,
    in the foreground, until fl.duration_seconds (or Ctrl-C)."""
    cfg = _load(overrides, print_cfg, "fl_simulation")
    from fl_app.federation import simulation

    console.print(f"simulating {cfg.fl.devices or 'all'} devices; rounds in MongoDB {cfg.mongo.database}, "
                  f"log {cfg.paths.logs_dir}/global_server.log")
    try:
        simulation.simulate(cfg)
    except USER_ERRORS as exc:
        _fail(exc)


@fl_cli.command("up")
def fl_up(overrides: list[str] | None = OVERRIDES, print_cfg: bool = PRINT_CFG) -> None:
    """Start flower-superlink and one flower-supernode per device (fl.devices), then submit the
    run (`flwr run`, run config from Hydra). Returns once submitted; `fl-app fl down` stops it all."""
    cfg = _load(overrides, print_cfg, "fl_launcher")
    from fl_app.federation import deployment

    try:
        run_id = deployment.up(cfg)
    except USER_ERRORS as exc:
        _fail(exc)
    _print_status([p.status() for p in deployment.processes(cfg)], title="Federation")
    console.print(f"[bold green]run {run_id} submitted.[/] Rounds: {cfg.paths.logs_dir}/global_server.log")


EVAL_ROUNDS = typer.Option(20, min=1, help="Federated rounds (each device trains every round).")
EVAL_EPOCHS = typer.Option(1, min=1, help="Passes over a device's rows per round.")
EVAL_TRAIN = typer.Option(0.7, min=0.05, max=0.95, help="The first part of each device's series that trains.")
EVAL_JSON = typer.Option(None, "--json", help="Where to write the results (default: <logs>/learning_quality.json).")


@app.command()
def evaluate(overrides: list[str] | None = OVERRIDES, rounds: int = EVAL_ROUNDS, local_epochs: int = EVAL_EPOCHS,
             train_fraction: float = EVAL_TRAIN, json_out: Path | None = EVAL_JSON,
    print_cfg: bool = PRINT_CFG) -> None:
    """Learning quality on the labelled data set (the generated one, or stream.dataset_path with
    stream.csv for a CSV): the same model and budget trained federated (this project's aggregation
    on Flower's simulation runtime), centrally, and per device alone; precision, recall, F1 and
    AUROC on the held-out later part of each device's series."""
    cfg = _load(overrides, print_cfg, "evaluation")
    import json
    from dataclasses import asdict

    from fl_app.federation import evaluate as evaluation

    console.print(f"[bold]learning quality[/]: {rounds} rounds x {local_epochs} epoch(s); the first "
                  f"{train_fraction:.0%} of each device's series trains, the rest is held out")
    try:
        result = evaluation.evaluate(cfg, rounds, local_epochs, train_fraction)
    except USER_ERRORS as exc:
        _fail(exc)
    from rich import box

    anomalies = next(iter(result.results.values())).anomalies
    table = Table(title=f"Held-out anomaly detection: {result.readings:,} readings, {result.devices} devices, "
                        f"{anomalies:,} labelled anomalies held out", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("approach", "precision", "recall", "F1", "AUROC", "threshold", "flagged", "time"):
        table.add_column(col, justify="left" if col == "approach" else "right", no_wrap=True)
    for name, r in result.results.items():
        table.add_row(name, f"{r.precision:.3f}", f"{r.recall:.3f}", f"{r.f1:.3f}", f"{r.auroc:.3f}",
                      f"{r.threshold:.3g}", f"{r.flagged:,}", f"{result.seconds[name]:.0f}s")
    console.print(table)
    console.print(f"local, mean of the devices' own F1: {result.local_mean_f1:.3f}")
    out = json_out or Path(cfg.paths.logs_dir) / "learning_quality.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rounds": rounds, "local_epochs": local_epochs, "train_fraction": train_fraction,
                               "readings": result.readings, "devices": result.devices,
                               "results": {k: asdict(v) for k, v in result.results.items()},
                               "local_mean_f1": result.local_mean_f1, "seconds": result.seconds}, indent=2))
    console.print(f"written: {out}")


@fl_cli.command("certs")
def fl_certs(overrides: list[str] | None = OVERRIDES, force: bool = typer.Option(
        False, "--force", help="Make everything new (new CA: every SuperNode needs the new ca.crt)."),
             print_cfg: bool = PRINT_CFG) -> None:
    """Make the certificates and keys for fl.security (TLS, SuperNode authentication) under
    fl.security.certs_dir: a CA, the SuperLink certificate for fl.security.hostnames, one key pair
    per device. Keeps what exists. Copy ca.crt and device-<id>.key to a device's machine."""
    cfg = _load(overrides, print_cfg, "fl_launcher")
    from fl_app.federation import security

    if not cfg.fl.security.supernode_auth:
        console.print("fl.security.supernode_auth is off: no SuperNode keys made")
    try:
        written = security.ensure_certificates(cfg, force=force)
    except USER_ERRORS as exc:
        _fail(exc)
    console.print(f"{len(written)} files written under {cfg.fl.security.certs_dir}" if written
                  else f"all present under {cfg.fl.security.certs_dir}; nothing changed")


@fl_cli.command("down")
def fl_down(overrides: list[str] | None = OVERRIDES, print_cfg: bool = PRINT_CFG) -> None:
    """Stop the SuperNodes, the SuperLink and the ServerApp/ClientApp processes they left."""
    cfg = _load(overrides, print_cfg, "fl_launcher")
    from fl_app.federation import deployment

    stopped = deployment.down(cfg)
    _print_stopped(stopped)


@fl_cli.command("serve")
def fl_serve(overrides: list[str] | None = OVERRIDES, print_cfg: bool = PRINT_CFG) -> None:
    """The federation as one foreground process (what `fl-app run` starts): up, wait, down on SIGTERM.
    With fl.runtime=simulation, the simulation runtime instead."""
    cfg = _load(overrides, print_cfg, "fl_launcher")
    from fl_app.federation import deployment

    try:
        deployment.serve(cfg)
    except USER_ERRORS as exc:
        _fail(exc)


def main() -> None:
    app(prog_name="fl-app")


if __name__ == "__main__":
    main()
