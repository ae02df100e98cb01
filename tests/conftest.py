"""Shared fixtures.

``stack`` starts a real Kafka broker and a real MongoDB-wire server once per
test session, on free ports and under a temporary home, through the same
``fl_app.services`` code users run; it stops them at the end. Jars are shared
with the project's cache so Maven runs at most once.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fl_app import services
from fl_app.config import AppConfig


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppConfig]:
    with services.private_stack(tmp_path_factory.mktemp("stack")) as cfg:
        yield cfg
