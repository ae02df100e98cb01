"""``fl-app``: the single entry point for users.

Every command takes trailing Hydra overrides (``key=value`` words), e.g.::

    fl-app run profile=production stream.records_per_second=100
    fl-app services up kafka.bootstrap_servers=127.0.0.1:29092
    fl-app config profile=production          # print the composed config

``--cfg`` on any command prints the configuration it would use and exits.
"""

from __future__ import annotations

import sys
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from fl_app.config import AppConfig, ConfigError, load_config, to_yaml

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Streaming federated learning on IoT sensor data.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
services_app = typer.Typer(no_args_is_help=True, help="Local Kafka broker and MongoDB-wire server.")
app.add_typer(services_app, name="services")

console = Console(stderr=False)
err = Console(stderr=True)

OVERRIDES = typer.Argument(None, metavar="[KEY=VALUE]...", help="Hydra overrides, e.g. profile=production")
PRINT_CFG = typer.Option(False, "--cfg", help="Print the composed configuration and exit.")


def _load(overrides: Optional[List[str]], print_cfg: bool, log_name: str) -> AppConfig:
    """Compose the config (exit 2 with the key named if bad) and set up logging."""
    try:
        cfg = load_config(overrides or [])
    except ConfigError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
        raise typer.Exit(2)
    if print_cfg:
        console.print(to_yaml(cfg), highlight=False, markup=False)
        raise typer.Exit(0)
    from fl_app.logs import setup_logging

    setup_logging(cfg.paths.logs_dir, log_name)
    return cfg


def _fail(exc: Exception) -> None:
    err.print(f"[bold red]error:[/] {exc}", highlight=False)
    raise typer.Exit(1)


def _print_readiness(cfg: AppConfig, ready: "object") -> None:
    from fl_app.services import Readiness

    assert isinstance(ready, Readiness)
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


def _print_status(statuses: list) -> None:
    table = Table(title="Services", title_justify="left")
    for col in ("service", "state", "address", "pid", "detail"):
        table.add_column(col)
    colors = {"running": "green", "external": "cyan", "unhealthy": "yellow", "stopped": "red"}
    for s in statuses:
        color = colors.get(s.state.value, "white")
        table.add_row(s.name, f"[{color}]{s.state.value}[/]", s.address, str(s.pid or ""), s.detail)
    console.print(table)


@app.command()
def run(overrides: Optional[List[str]] = OVERRIDES, print_cfg: bool = PRINT_CFG) -> None:
    """Run the pipeline on this machine (today: services, topics, collections)."""
    cfg = _load(overrides, print_cfg, "fl_app")
    from fl_app import services

    console.print(f"profile [bold]{cfg.profile_name}[/]: starting services, logs in {cfg.paths.logs_dir}")
    try:
        ready = services.up(cfg)
    except services.ServiceError as exc:
        _fail(exc)
    _print_readiness(cfg, ready)
    unhealthy = [s.name for s in ready.services if s.state.value not in ("running", "external")]
    if unhealthy:
        _fail(services.ServiceError(f"not healthy: {', '.join(unhealthy)}"))
    console.print("[bold green]ready.[/] Stop everything with `fl-app stop`.")


@app.command()
def stop(overrides: Optional[List[str]] = OVERRIDES, print_cfg: bool = PRINT_CFG) -> None:
    """Stop everything `fl-app run` started."""
    cfg = _load(overrides, print_cfg, "fl_app")
    from fl_app import services

    stopped = services.down(cfg)
    console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@app.command("config")
def show_config(overrides: Optional[List[str]] = OVERRIDES) -> None:
    """Print the composed configuration."""
    _load(overrides, True, "fl_app")


@services_app.command("up")
def services_up(overrides: Optional[List[str]] = OVERRIDES, print_cfg: bool = PRINT_CFG) -> None:
    """Start the local servers (idempotent), create topics and collections."""
    cfg = _load(overrides, print_cfg, "services")
    from fl_app import services

    try:
        ready = services.up(cfg)
    except services.ServiceError as exc:
        _fail(exc)
    _print_readiness(cfg, ready)


@services_app.command("down")
def services_down(overrides: Optional[List[str]] = OVERRIDES, print_cfg: bool = PRINT_CFG) -> None:
    """Stop the local servers (data stays on disk)."""
    cfg = _load(overrides, print_cfg, "services")
    from fl_app import services

    stopped = services.down(cfg)
    console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@services_app.command("status")
def services_status(overrides: Optional[List[str]] = OVERRIDES, print_cfg: bool = PRINT_CFG) -> None:
    """Show whether each service runs and answers."""
    cfg = _load(overrides, print_cfg, "services")
    from fl_app import services

    statuses = services.status(cfg)
    _print_status(statuses)
    if any(s.state.value in ("stopped", "unhealthy") for s in statuses):
        raise typer.Exit(3)


def main() -> None:
    app(prog_name="fl-app")


if __name__ == "__main__":
    sys.exit(main())
