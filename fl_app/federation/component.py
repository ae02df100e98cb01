"""How `fl-app run` starts the federation: one `fl-app fl serve` process (SuperLink, SuperNodes and
the run, or the simulation runtime with ``fl.runtime=simulation``)."""

from __future__ import annotations

from core.component import Component
from core.config import AppConfig


def _kill_leftovers(cfg: AppConfig) -> list[str]:
    from fl_app.federation import deployment  # Flower's modules load only when needed

    return deployment.kill_leftovers(cfg)


# After the stream: devices train on its windows.
FEDERATION = Component(name="federation", command=("fl", "serve"), stop_timeout=60.0,
                       kill_leftovers=_kill_leftovers)
COMPONENTS = (FEDERATION,)
