"""The check that the Flink job's operators import nothing from outside their environment."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream.flink.interpreter import foreign_modules


@pytest.fixture
def modules_in(tmp_path: Path) -> Iterator[Path]:
    """Two importable modules: one inside a fake Flink env, one in some other site-packages."""
    inside = tmp_path / "venv-flink" / "lib" / "python3.11" / "site-packages"
    outside = tmp_path / "base" / "lib" / "python3.11" / "site-packages"
    for folder, name in ((inside, "fl_test_inside"), (outside, "fl_test_outside")):
        folder.mkdir(parents=True)
        (folder / f"{name}.py").write_text("VALUE = 1\n")
        sys.path.insert(0, str(folder))
    try:
        importlib.import_module("fl_test_inside")
        importlib.import_module("fl_test_outside")
        yield tmp_path
    finally:
        for name in ("fl_test_inside", "fl_test_outside"):
            sys.modules.pop(name, None)
        sys.path[:] = [p for p in sys.path if not p.startswith(str(tmp_path))]


def test_a_module_from_another_site_packages_is_foreign(modules_in: Path) -> None:
    found = foreign_modules(modules_in / "venv-flink", own_packages=[])
    assert "fl_test_outside" in found
    assert found["fl_test_outside"].endswith("base/lib/python3.11/site-packages/fl_test_outside.py")
    assert "fl_test_inside" not in found


def test_the_standard_library_and_own_packages_are_not_foreign(modules_in: Path) -> None:
    own = Path(__file__).resolve().parents[3] / "stream"
    found = foreign_modules(modules_in / "venv-flink", own_packages=[own])
    assert "json" not in found and json.__name__ == "json"  # stdlib
    assert "stream.flink.interpreter" not in found  # the project's own package
