"""Shared fixtures.

``stack`` starts a real Kafka broker and a real MongoDB-wire server once per
test session, on free ports and under a temporary home, through the same
``fl_app.services`` code users run; it stops them at the end. Jars are shared
with the project's cache so Maven runs at most once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from fl_app.config import PROJECT_ROOT, AppConfig, load_config
from fl_app.services.runner import free_port


def isolated_overrides(home: Path) -> list[str]:
    """Overrides that give a config its own home and ports (not the user's)."""
    return [
        f"paths.home={home}",
        f"paths.cache_dir={PROJECT_ROOT / '.cache'}",
        f"kafka.bootstrap_servers=127.0.0.1:{free_port()}",
        f"kafka.local_broker.controller_port={free_port()}",
        f"mongo.uri=mongodb://127.0.0.1:{free_port()}",
    ]


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppConfig]:
    from fl_app import services

    home = tmp_path_factory.mktemp("stack")
    cfg = load_config(isolated_overrides(home))
    try:
        services.up(cfg)
        yield cfg
    finally:
        services.down(cfg)
