"""``fl-app``: the single entry point for users; the root of the command tree.

Every command takes trailing Hydra overrides (``key=value`` words), e.g.::

    fl-app run profile=production stream.records_per_second=100
    fl-app services up kafka.bootstrap_servers=127.0.0.1:29092
    fl-app config profile=production          # print the composed config

``--cfg`` on any command prints the configuration it would use and exits.

The pipeline's own commands live here (run, stop, reset, status, view,
config, supervise); each component's come from its package's ``cli`` module
(``fl_app/components.py`` lists them), mounted below.
"""

from __future__ import annotations

import signal
import sys
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from analytics.cli import print_superset
from core import mongo_auth
from core.cli import print_readiness
from core.commands import OVERRIDES, command, console, err, load, print_status
from core.config import AppConfig
from core.services.runner import ServiceError, State
from fl_app.components import command_apps

if TYPE_CHECKING:
    from core.storage import Storage
    from fl_app.pipeline import Stopped

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Streaming federated learning on IoT sensor data.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
for commands in command_apps():
    app.add_typer(commands)


FOLLOW = typer.Option(None, "--follow/--detach", help="Stay in the foreground showing progress until Ctrl-C, "
                      "which stops everything (default when run from a terminal), or return once all runs.")


@command(app, log="fl_app")
def run(cfg: AppConfig, overrides: list[str], follow: bool | None = FOLLOW) -> None:
    """Run the whole pipeline on this machine: services, topics, collections, then every component
    (listed in fl_app/components.py) under a supervisor that restarts what crashes. In a terminal it stays
    in the foreground until Ctrl-C; `--detach` returns (then `fl-app stop` stops it)."""
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
        report = pipeline.run(cfg, overrides)
    except KeyboardInterrupt:
        _stop_here(cfg)
        raise typer.Exit(130) from None
    print_readiness(cfg, report.ready)
    for note in report.notes:
        console.print(note)
    print_status(report.components, title="Pipeline")
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
        print_superset(cfg)
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
        with Storage(mongo_auth.client_uri(cfg.mongo), cfg.mongo.database, timeout_ms=2000) as store:
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


@command(app, log="fl_app")
def stop(cfg: AppConfig) -> None:
    """Stop everything `fl-app run` started, within ~30 s: the supervisor, then every component at once,
    then what they left outside their process groups, then the services (SIGKILL for what outlives its
    budget). A foreground `fl-app run` elsewhere sees
    it, says "stopped by `fl-app stop`" and exits 0."""
    from fl_app import pipeline

    _print_pipeline_stopped(pipeline.stop(cfg))


YES = typer.Option(False, "--yes", "-y", help="Do not ask (for scripts); without it, reset asks on a terminal "
                   "and refuses otherwise.")
INCLUDE_REMOTE = typer.Option(False, "--include-remote", help="With kafka=remote or mongo=remote: also delete "
                              "the configured topics there and drop the configured database (refused without it).")


@command(app, log="fl_app")
def reset(cfg: AppConfig, yes: bool = YES, include_remote: bool = INCLUDE_REMOTE) -> None:
    """Start afresh (e.g. after a poisoned topic): stop everything, then remove every record of what
    flowed: the local Kafka broker's data (topics, consumer offsets), the local MongoDB server's data
    (collections), the Flink and Spark checkpoints, the producer's position, the batch analytics'
    serving tables and .run/ (pid files, supervisor and run records). Keeps the package caches (.cache:
    jars, the generated data set), Flower's certificates, Superset's secret, password and metadata,
    and the logs. Remote Kafka/MongoDB data is deleted only with --include-remote."""
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
        raise ServiceError("remote data is deleted only with --include-remote; nothing was stopped or removed")
    if not yes:
        if not sys.stdin.isatty():
            raise ValueError("not a terminal: pass --yes to reset without asking; nothing was stopped or removed")
        typer.confirm("Stop everything and remove the above?", abort=True)
    stopped, removed = pipeline.reset(cfg, include_remote)
    _print_pipeline_stopped(stopped)
    for line in removed:
        console.print(f"removed {line}", highlight=False)
    console.print(f"[bold green]reset.[/] {len(removed)} removed; `fl-app run` starts afresh.")


@command(app, log="fl_app")
def status(cfg: AppConfig) -> None:
    """What runs and what flows: services, components (pid, address), messages and documents with
    their rates, the consumers' lag, the last aggregation and the pending updates.

    Exit code 3 when a service is unreachable, 4 when a component that `fl-app run` started is down.
    """
    from core import services
    from fl_app import flow, pipeline

    service_states = services.status(cfg)
    print_status(service_states)
    components = pipeline.status(cfg)
    print_status(components, title="Pipeline")
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


@command(app, log="fl_app")
def view(cfg: AppConfig, watch: bool = WATCH, every: float = EVERY, newest: int = NEWEST) -> None:
    """The data: counts and the newest documents of device_data, local_models, global_model and
    predictions (`--watch` follows them grow)."""
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
    load(overrides, True, "fl_app")


@command(app, log="supervisor")
def supervise(cfg: AppConfig, overrides: list[str]) -> None:
    """Restart the components `fl-app run` started when they crash, with backoff (what `run` starts)."""
    from fl_app import pipeline, supervisor

    supervisor.serve(cfg, pipeline.processes(cfg, overrides), pipeline.expected(cfg),
                     before_restart=lambda name: pipeline.before_restart(cfg, name))


def main() -> None:
    app(prog_name="fl-app")


if __name__ == "__main__":
    main()
