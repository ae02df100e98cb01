"""A private Kafka + MongoDB-wire stack for a benchmark run (free ports, temp home)."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from core.config import AppConfig
from tests.support import stack


@contextlib.contextmanager
def private_stack(extra: list[str] | None = None) -> Iterator[AppConfig]:
    with tempfile.TemporaryDirectory(prefix="fl-bench-") as home, \
            stack.private_stack(Path(home), extra or []) as cfg:
        yield cfg
