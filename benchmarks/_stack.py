"""A private Kafka + MongoDB-wire stack for a benchmark run (free ports, temp home)."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Iterator

from fl_app import services
from fl_app.config import PROJECT_ROOT, AppConfig, load_config
from fl_app.services.runner import free_port


@contextlib.contextmanager
def private_stack(extra: list[str] | None = None) -> Iterator[AppConfig]:
    with tempfile.TemporaryDirectory(prefix="fl-bench-") as home:
        cfg = load_config([
            f"paths.home={home}",
            f"paths.cache_dir={PROJECT_ROOT / '.cache'}",
            f"kafka.bootstrap_servers=127.0.0.1:{free_port()}",
            f"kafka.local_broker.controller_port={free_port()}",
            f"mongo.uri=mongodb://127.0.0.1:{free_port()}",
            *(extra or []),
        ])
        try:
            services.up(cfg)
            yield cfg
        finally:
            services.down(cfg)
            Path(home).mkdir(exist_ok=True)
