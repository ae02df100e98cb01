"""Logging: readable lines on the terminal, full lines in ``logs/<name>.log``."""

from __future__ import annotations

import logging
from pathlib import Path

from rich.logging import RichHandler

_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup_logging(logs_dir: str | Path, name: str, level: int = logging.INFO, console: bool = True) -> Path:
    """Send records to ``<logs_dir>/<name>.log`` and, if ``console``, to the terminal.

    Returns the log file's path. Calling it again replaces the handlers, so a
    process that changes role can re-point its log.
    """
    path = Path(logs_dir) / f"{name}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    file_handler = logging.FileHandler(path, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter(_FORMAT))
    root.addHandler(file_handler)
    if console:
        root.addHandler(RichHandler(show_path=False, rich_tracebacks=False, markup=False))
    root.setLevel(level)
    return path
