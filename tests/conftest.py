"""Shared fixtures.

``stack`` starts a real Kafka broker and a real MongoDB-wire server once per
test session, on free ports and under a temporary home, through the same
``core.services`` code users run; it stops them at the end. Jars are shared
with the project's cache so Maven runs at most once.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from core.config import AppConfig
from tests.support.stack import private_stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppConfig]:
    with private_stack(tmp_path_factory.mktemp("stack")) as cfg:
        yield cfg
