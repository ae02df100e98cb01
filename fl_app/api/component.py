"""How `fl-app run` starts the API: last, once there is something to show."""

from __future__ import annotations

from core.component import Component

API = Component(name="api", command=("api",), stop_timeout=15.0, enabled=lambda cfg: cfg.api.enabled)
COMPONENTS = (API,)
