"""What a pipeline component tells the orchestration: how to prepare and run it.

Each component package (``stream``, later ``clients``, ``server``,
``analytics``, the API) declares its long-running processes as
:class:`Component` values; ``fl_app.pipeline`` lists them in start order and
runs each as ``fl-app <command>`` in the background. Adding a component is
adding an entry there, not editing ``fl-app run``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from core.config import AppConfig


@dataclass(frozen=True)
class Component:
    """A long-running part of the pipeline.

    Parameters
    ----------
    name
        Process name: ``.run/<name>.pid``, ``logs/<name>.log``, ``fl-app status``.
    command
        The ``fl-app`` subcommand that runs it in the foreground (Hydra overrides are appended).
    prepare
        Optional work done once before any component starts (e.g. caching the data
        set, so that concurrent starters do not all generate it); returns a line for the user.
    stop_timeout
        Seconds between SIGTERM and SIGKILL on stop (the producer flushes and saves its position).
    """

    name: str
    command: tuple[str, ...]
    prepare: Callable[[AppConfig], str] | None = None
    stop_timeout: float = 30.0
