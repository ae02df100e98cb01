"""What a pipeline component tells the program on top: how to run it, when, and how to prepare it.

Each component package (``stream``, ``analytics``, and the federation and
the API inside ``fl_app``) declares its long-running processes as
:class:`Component` values in its ``component`` module and its commands as a
Typer app in its ``cli`` module. ``fl_app/components.py`` lists the packages,
in start order: adding a component is adding its package and one line there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from core.config import AppConfig


def always(cfg: AppConfig) -> bool:
    """The switch of a component that always runs."""
    return True


@dataclass(frozen=True)
class Component:
    """A long-running part of the pipeline.

    Parameters
    ----------
    name
        Process name: ``.run/<name>.pid``, ``logs/<name>.log``, ``fl-app status``.
    command
        The ``fl-app`` subcommand that runs it in the foreground (Hydra overrides are appended).
    enabled
        Whether this configuration runs it (its own switch in its own config section).
    prepare
        Optional work done once before any component starts (e.g. caching the data
        set, so that concurrent starters do not all generate it); returns a line for the user.
    stop_timeout
        Seconds between SIGTERM and SIGKILL on stop (the producer flushes and saves its position).
    kill_leftovers
        For a component whose processes leave its process group (sessions of their own): SIGKILL
        what a killed instance left, return the names; run after `stop` and before a restart.
    """

    name: str
    command: tuple[str, ...]
    enabled: Callable[[AppConfig], bool] = always
    prepare: Callable[[AppConfig], str] | None = None
    stop_timeout: float = 30.0
    kill_leftovers: Callable[[AppConfig], list[str]] | None = None
