"""Imports run one way: core <- components <- orchestration (see ARCHITECTURE.md, "Layers").

Every import statement of the project's packages is read (module level,
inside functions, under TYPE_CHECKING alike) and checked against the rule.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from fl_app.config import PROJECT_ROOT

# Everything that knows every component: the CLI, what it runs, and the API that shows it all.
ORCHESTRATION = {"fl_app.cli", "fl_app.pipeline", "fl_app.flow", "fl_app.flower", "fl_app.supervisor"}
ORCHESTRATION_PACKAGES = ("fl_app.api",)
# Components: each is a top-level package; it imports the core and itself, never another component.
COMPONENTS = {"stream", "clients", "server", "analytics"}
# The core is the rest of fl_app: config, schemas, storage, topics, logs, services, component, model.
FIRST_PARTY = {"fl_app", *COMPONENTS}


def layer(module: str) -> str:
    top = module.split(".")[0]
    if module in ORCHESTRATION or module.startswith(tuple(f"{p}." for p in ORCHESTRATION_PACKAGES)) \
            or module in ORCHESTRATION_PACKAGES:
        return "orchestration"
    if top in COMPONENTS:
        return f"component {top}"
    return "core"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PROJECT_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every first-party import in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path).split(".")
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
            # `from fl_app import storage` imports the submodule fl_app.storage.
            found += [(node.lineno, f"{base}.{alias.name}" if base in FIRST_PARTY else base) for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] in FIRST_PARTY]


def allowed(importer: str, imported: str) -> bool:
    source, target = layer(importer), layer(imported)
    if source == "orchestration":
        return True
    if source == "core":
        return target == "core"
    return target in ("core", source)  # a component: the core and itself


def project_files() -> list[Path]:
    return sorted(p for top in FIRST_PARTY for p in (PROJECT_ROOT / top).rglob("*.py"))


def test_imports_run_one_way() -> None:
    wrong = [f"{path.relative_to(PROJECT_ROOT)}:{line} ({layer(module_name(path))}) imports {name} ({layer(name)})"
             for path in project_files() for line, name in imports(path)
             if not allowed(module_name(path), name)]
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


@pytest.mark.parametrize(("importer", "imported", "ok"), [
    ("fl_app.storage", "stream.producer", False),  # core -> component
    ("fl_app.config", "fl_app.cli", False),  # core -> orchestration
    ("stream.producer", "fl_app.pipeline", False),  # component -> orchestration
    ("server.strategy", "clients.client_app", False),  # component -> another component
    ("stream.flink.job", "fl_app.storage", True),
    ("stream.flink.launch", "stream.data", True),
    ("fl_app.cli", "stream.producer", True),
])
def test_the_rule(importer: str, imported: str, ok: bool) -> None:
    assert allowed(importer, imported) is ok


def test_the_checker_sees_imports_inside_functions(tmp_path: Path) -> None:
    source = PROJECT_ROOT / "fl_app" / "flow.py"
    assert "stream.producer" in {name for _, name in imports(source)}  # flow reads the producer's state via its API
