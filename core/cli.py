"""The core's commands: the local servers (``fl-app services ...``) and the data set (``fl-app data ...``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from core.commands import command, console, group, print_status, print_stopped
from core.config import AppConfig
from core.services.runner import State

if TYPE_CHECKING:
    from core.dataset.summary import Summary
    from core.services import Readiness

app = typer.Typer()
services_app = group(app, "services", "Local Kafka broker and MongoDB-wire server.")
data_app = group(app, "data", "The IoT data set (generate, inspect).")


@command(services_app, "up", log="services")
def services_up(cfg: AppConfig) -> None:
    """Start the local servers (idempotent), create topics and collections."""
    from core import services

    print_readiness(cfg, services.up(cfg))


@command(services_app, "down", log="services")
def services_down(cfg: AppConfig) -> None:
    """Stop the local servers (data stays on disk)."""
    from core import services

    print_stopped(services.down(cfg))


@command(services_app, "status", log="services")
def services_status(cfg: AppConfig) -> None:
    """Show whether each service runs and answers."""
    from core import services

    statuses = services.status(cfg)
    print_status(statuses)
    if any(s.state in (State.STOPPED, State.UNHEALTHY) for s in statuses):
        raise typer.Exit(3)


def print_readiness(cfg: AppConfig, ready: Readiness) -> None:
    """The services, the topics with their partitions, the collections with their documents."""
    print_status(ready.services)
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


FORCE = typer.Option(False, "--force", help="Regenerate even if cached.")


@command(data_app, "generate", log="data")
def data_generate(cfg: AppConfig, force: bool = FORCE) -> None:
    """Prepare the data set the producer replays and summarise it: the file at
    stream.dataset_path if set, else the generated stand-in (cached as Parquet)."""
    from core import dataset
    from core.dataset.summary import summarize

    if force and not cfg.stream.dataset_path:
        dataset.cached_path(cfg.paths.cache_dir, cfg.stream.dataset_records, cfg.stream.num_devices,
                            cfg.stream.seed).unlink(missing_ok=True)
    frame = dataset.load(cfg.stream, cfg.paths.cache_dir)
    console.print(f"data set: {dataset.source(cfg.stream, cfg.paths.cache_dir)}")
    _print_summary(summarize(frame))


PLOT = typer.Option(None, "--plot", help="PNG path (default: <data_dir>/dataset_preview.png).")
DEVICES = typer.Option(None, "--devices", help="Comma-separated device ids to plot.")


@command(data_app, "inspect", log="data")
def data_inspect(cfg: AppConfig, plot: str | None = PLOT, devices: str | None = DEVICES) -> None:
    """Summarise the data set the producer replays and plot a few devices' series."""
    from core import dataset
    from core.dataset.summary import plot_devices, summarize

    frame = dataset.load(cfg.stream, cfg.paths.cache_dir)
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
