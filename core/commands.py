"""What every ``fl-app`` command shares: Hydra overrides, ``--cfg``, logging, readable errors.

Each package owns its commands as a Typer app (``stream/cli.py``,
``analytics/cli.py``, ...) that the root CLI (``fl_app/cli.py``) mounts. A
command is a function of the composed config, registered with :func:`command`::

    @command(app, log="kafka_producer")
    def produce(cfg: AppConfig) -> None:
        ...

The decorator gives it trailing ``KEY=VALUE`` overrides and ``--cfg`` (print
the composed configuration and exit), sets up ``logs/<log>.log``, exits 2 with
the key named for a bad config (and never a secret: :mod:`core.secrets`), and turns a failure a user can cause and fix
into one red line and exit 1 instead of a traceback. A command that needs the
raw overrides (to start processes with the same ones) takes a parameter named
``overrides``.

Heavy imports (torch, Spark, Flower) stay inside the commands, so that
``fl-app --help`` and the light commands start in a fraction of a second.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

import click
import typer
from rich.console import Console
from rich.table import Table

from core import secrets
from core.config import AppConfig, ConfigError, load_config, to_yaml
from core.services.runner import State, Status

# soft_wrap: a line (a list of stopped components, an address) stays one line however long, so it
# can be copied and searched; rich otherwise breaks it at 80 columns when output is not a terminal.
console = Console(stderr=False, soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

# Failures a user can cause and fix (a missing file, a bad data set, a server that is not there).
# ServiceError is a RuntimeError.
USER_ERRORS = (ConfigError, OSError, ValueError, RuntimeError)

OVERRIDES = typer.Argument(None, metavar="[KEY=VALUE]...", help="Hydra overrides, e.g. profile=production")
PRINT_CFG = typer.Option(False, "--cfg", help="Print the composed configuration and exit.")

Command = TypeVar("Command", bound=Callable[..., None])


PRIVATE_UMASK = 0o077  # files this process makes (logs, .run/flink_job.json, ...) are its owner's only


def with_secret_overrides(overrides: list[str] | None) -> list[str]:
    """The command line's overrides plus the secret ones the service runner passed in the environment
    (:mod:`core.secrets`: never on a command line, which every local user can read)."""
    return [*(overrides or []), *secrets.take_env_overrides()]


def load(overrides: list[str] | None, print_cfg: bool, log_name: str) -> AppConfig:
    """Compose the config (exit 2 with the key named if bad) and set up logging; secrets never
    reach the output, the log or a file another local user can read."""
    os.umask(PRIVATE_UMASK | os.umask(PRIVATE_UMASK))
    try:
        cfg = load_config(overrides or [])
    except ConfigError as exc:
        err.print(f"[bold red]error:[/] {secrets.redact_url(str(exc))}", highlight=False, markup=True)
        raise typer.Exit(2) from None
    if print_cfg:
        console.print(to_yaml(secrets.redacted(cfg)), highlight=False, markup=False)
        raise typer.Exit(0)
    from core.logs import setup_logging

    # On a terminal, log lines show there too; in the background (fl-app run)
    # stdout is already the log file, so only the file handler writes.
    setup_logging(cfg.paths.logs_dir, log_name, console=sys.stderr.isatty())
    secrets.install_log_filter(secrets.values(cfg))
    return cfg


def fail(exc: Exception) -> NoReturn:
    """One red line, exit 2 for a bad config and 1 for anything else."""
    err.print(f"[bold red]error:[/] {secrets.redact_url(str(exc))}", highlight=False)
    raise typer.Exit(2 if isinstance(exc, ConfigError) else 1)


def command(app: typer.Typer, name: str | None = None, *, log: str) -> Callable[[Command], Command]:
    """Register ``fn(cfg, ...options)`` on ``app`` as a command that takes overrides and ``--cfg``
    (see the module docstring); ``log``: the name of its log file."""

    def register(fn: Command) -> Command:
        own = inspect.signature(fn, eval_str=True)
        takes_overrides = "overrides" in own.parameters
        options = [p for p in list(own.parameters.values())[1:] if p.name != "overrides"]

        @functools.wraps(fn)
        def run(overrides: list[str] | None = None, print_cfg: bool = False, **values: object) -> None:
            overrides = with_secret_overrides(overrides)
            cfg = load(overrides, print_cfg, log)
            if takes_overrides:
                values["overrides"] = overrides
            try:
                fn(cfg, **values)
            except (click.exceptions.Exit, click.exceptions.Abort):  # RuntimeErrors, but not failures
                raise
            except USER_ERRORS as exc:
                fail(exc)

        kind = inspect.Parameter.KEYWORD_ONLY
        params = [inspect.Parameter("overrides", kind, default=OVERRIDES, annotation=list[str] | None),
                  *(p.replace(kind=kind) for p in options),
                  inspect.Parameter("print_cfg", kind, default=PRINT_CFG, annotation=bool)]
        run.__signature__ = inspect.Signature(params, return_annotation=None)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params}
        app.command(name)(run)
        return fn

    return register


def group(parent: typer.Typer, name: str, help_text: str) -> typer.Typer:
    """A command group ``fl-app <name> <command>`` under ``parent``; shows its help given no command."""
    commands = typer.Typer(no_args_is_help=True, help=help_text)
    parent.add_typer(commands, name=name)
    return commands


STATE_COLORS = {State.RUNNING: "green", State.EXTERNAL: "cyan", State.UNHEALTHY: "yellow", State.STOPPED: "red"}


def print_status(statuses: list[Status], title: str = "Services") -> None:
    table = Table(title=title, title_justify="left")
    for col in ("service", "state", "address", "pid", "detail"):
        table.add_column(col)
    for s in statuses:
        table.add_row(s.name, f"[{STATE_COLORS[s.state]}]{s.state.value}[/]", s.address, str(s.pid or ""), s.detail)
    console.print(table)


def print_stopped(stopped: list[str]) -> None:
    console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
