"""Which Python the job's operators really run on, and where their modules come from.

In ``thread`` mode PyFlink runs the operators in a CPython embedded in the
TaskManager JVM (PEMJA). That interpreter is the base installation the
virtualenv was made from, not the virtualenv: it sees the Flink
environment's packages only through ``python.pythonpath``. A package found
anywhere else (the system Python's site-packages, another venv) works on one
machine and breaks on the next, so the first operator to open reports what it
sees (:func:`describe`), the job logs it, and the tests fail on any module
from outside the Flink environment.

Standard library only.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Iterable
from pathlib import Path
from typing import Any

PACKAGE_DIRS = ("site-packages", "dist-packages")


def _module_files() -> Iterable[tuple[str, Path]]:
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file:
            yield name, Path(os.path.realpath(file))


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def foreign_modules(env_root: Path, own_packages: Iterable[Path]) -> dict[str, str]:
    """Imported modules whose files lie outside the allowed places, ``{module: file}``.

    Allowed: the Flink environment (``env_root``), the project's own packages
    (``own_packages``), and the interpreter's standard library, except any
    ``site-packages``/``dist-packages`` folder inside it.
    """
    env_root = Path(os.path.realpath(env_root))
    own = [Path(os.path.realpath(p)) for p in own_packages]
    stdlib = {Path(os.path.realpath(sysconfig.get_paths()[k])) for k in ("stdlib", "platstdlib")}
    out = {}
    for name, path in _module_files():
        if _within(path, env_root) or any(_within(path, p) for p in own):
            continue
        in_stdlib = any(_within(path, root) for root in stdlib)
        if in_stdlib and not any(part in PACKAGE_DIRS for part in path.parts):
            continue
        out[name] = str(path)
    return dict(sorted(out.items()))


def describe(env_root: Path, own_packages: Iterable[Path]) -> dict[str, Any]:
    """The interpreter, the ``pyflink``/``pemja`` it imported, and any foreign modules."""
    import pyflink

    try:
        import pemja  # only thread mode needs it, but it ships with apache-flink
        pemja_file = str(Path(os.path.realpath(pemja.__file__)))
    except ImportError as exc:
        pemja_file = f"(not importable: {exc})"
    return {
        "pid": os.getpid(),
        "executable": sys.executable,
        "prefix": sys.prefix,
        "base_prefix": sys.base_prefix,
        "version": sys.version.split()[0],
        "pyflink": str(Path(os.path.realpath(pyflink.__file__))),
        "pemja": pemja_file,
        "flink_env": str(Path(os.path.realpath(env_root))),
        "foreign_modules": foreign_modules(env_root, own_packages),
    }


def summary(report: dict[str, Any]) -> str:
    """One log line."""
    foreign = report["foreign_modules"]
    outside = (f"{len(foreign)} modules from OUTSIDE the Flink environment: "
               + ", ".join(f"{k} ({v})" for k, v in list(foreign.items())[:5])) if foreign else \
        "no module from outside the Flink environment"
    return (f"Python operators run on {report['executable'] or '(embedded)'} (Python {report['version']}, "
            f"prefix {report['prefix']}); pyflink {report['pyflink']}; pemja {report['pemja']}; {outside}")
