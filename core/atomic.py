"""Writing a file so that a reader (or a crash) sees the old or the new version, never half.

Standard library only: the Flink job's environment imports it too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def read_json(path: str | Path, default: Any) -> Any:
    """What :func:`write_json` wrote to ``path``; ``default`` if there is no such file (or it is not JSON)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default


def write_json(path: str | Path, value: Any, mode: int | None = None) -> None:
    """Write ``value`` as JSON, atomically (:func:`write_text`)."""
    write_text(path, json.dumps(value, indent=2), mode)


def write_text(path: str | Path, text: str, mode: int | None = None) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it into place.

    The temporary name carries the pid, so concurrent writers never share one; ``mode``
    (e.g. ``0o600`` for a file with credentials) is set before the file becomes visible.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as out:
        if mode is not None:
            os.chmod(tmp, mode)  # before any secret is in it
        out.write(text)
    tmp.replace(target)
