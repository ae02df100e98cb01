"""How the orchestration starts the API: last, once there is something to show."""

from __future__ import annotations

from core.component import Component

API = Component(name="api", command=("api",), stop_timeout=15.0)
COMPONENTS = (API,)
