"""The one place the components are listed: `fl-app run` starts them in this order and `fl-app`
mounts their commands.

Each package named here has a ``component`` module (``COMPONENTS``: its
processes, each with its own switch, see :class:`core.component.Component`)
and a ``cli`` module (``app``: its commands). Adding a component is adding its
package and one line here.
"""

from __future__ import annotations

import importlib

import typer

from core.component import Component

# In start order: the stream first (the job consumes before the first readings arrive), the federation
# (devices train on the stream's windows), the analytics (they score with its models), the API last.
PACKAGES = (
    "stream",
    "fl_app.federation",
    "analytics",
    "fl_app.api",
)


def components() -> tuple[Component, ...]:
    """Every component's processes, in start order."""
    return tuple(c for package in PACKAGES for c in importlib.import_module(f"{package}.component").COMPONENTS)


def command_apps() -> list[typer.Typer]:
    """Every component's commands (the core's first: services and data)."""
    return [importlib.import_module(f"{package}.cli").app for package in ("core", *PACKAGES)]
