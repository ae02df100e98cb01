"""Imports run one way, by package name: core <- components <- fl_app (see ARCHITECTURE.md, "Layers").

Every import statement of the project's packages is read (module level,
inside functions, under TYPE_CHECKING alike) and checked against the rule. The
layer of a module is its top-level package: no list of modules to keep.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from core.config import PROJECT_ROOT

CORE = "core"  # imports only itself
COMPONENTS = ("stream", "clients", "server", "analytics")  # each imports the core and itself
PROGRAM = "fl_app"  # the program on top: may import anything
LAYERS = {CORE: 0, **dict.fromkeys(COMPONENTS, 1), PROGRAM: 2}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PROJECT_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, name: str | None = None) -> list[tuple[int, str]]:
    """(line, module) of every first-party import in the file (module ``name``, by default its own)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = (name or module_name(path)).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this file's package
                base = ".".join([*package[:len(package) - node.level + 1], *([base] if base else [])])
            # `from core import storage` imports the submodule core.storage.
            found += [(node.lineno, f"{base}.{alias.name}" if base in LAYERS else base) for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] in LAYERS]


def allowed(importer: str, imported: str) -> bool:
    source, target = importer.split(".")[0], imported.split(".")[0]
    if source == PROGRAM:
        return True
    if source == CORE:
        return target == CORE
    return target in (CORE, source)  # a component: the core and itself


def project_files() -> list[Path]:
    return sorted(p for top in LAYERS for p in (PROJECT_ROOT / top).rglob("*.py"))


def test_every_top_level_package_has_a_layer() -> None:
    """A new top-level package must say where it stands before it can be imported from."""
    packages = {p.parent.name for p in PROJECT_ROOT.glob("*/__init__.py")}
    assert packages - {"tests", "benchmarks"} == set(LAYERS), "add the new package to LAYERS"


def test_imports_run_one_way() -> None:
    wrong = [f"{path.relative_to(PROJECT_ROOT)}:{line} imports {name}"
             for path in project_files() for line, name in imports(path)
             if not allowed(module_name(path), name)]
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


@pytest.mark.parametrize(("importer", "imported", "ok"), [
    ("core.storage", "stream.producer", False),  # core -> component
    ("core.config", "fl_app.cli", False),  # core -> program
    ("core.dataset.csv_file", "core.records", True),
    ("stream.producer", "fl_app.pipeline", False),  # component -> program
    ("server.aggregation", "clients.client_app", False),  # component -> another component
    ("analytics.batch", "fl_app.flow", False),
    ("stream.flink.job", "core.storage", True),
    ("stream.flink.launch", "core.dataset", True),
    ("fl_app.cli", "stream.producer", True),
    ("fl_app.federation.deployment", "clients.supernodes", True),
])
def test_the_rule(importer: str, imported: str, ok: bool) -> None:
    assert allowed(importer, imported) is ok


def test_the_checker_sees_imports_inside_functions(tmp_path: Path) -> None:
    source = PROJECT_ROOT / "fl_app" / "flow.py"
    assert "stream.producer" in {name for _, name in imports(source)}  # flow reads the producer's state via its API


def test_a_wrong_way_import_is_caught(tmp_path: Path) -> None:
    """The violation I tried: the core importing the program, inside a function (as a lazy import would)."""
    bad = tmp_path / "probe.py"
    bad.write_text("from . import storage\n\ndef f():\n    from fl_app import pipeline\n")
    found = imports(bad, "core.probe")
    assert [name for _, name in found if not allowed("core.probe", name)] == ["fl_app.pipeline"]
    assert ("core.storage") in [name for _, name in found]  # the relative import, resolved


def test_architecture_md_lists_the_layers_the_rule_enforces() -> None:
    """ARCHITECTURE.md's layer table names exactly the packages of each layer here."""
    text = (PROJECT_ROOT / "ARCHITECTURE.md").read_text()
    table = text.split("<!-- layers -->")[1].split("<!-- /layers -->")[0]
    rows = {m.group(2): int(m.group(1)) for m in re.finditer(r"^\| (\d) \| `(\w+)/` \|", table, re.M)}
    assert rows == LAYERS
