"""How the orchestration starts the federation: one `fl-app fl serve` process (SuperLink,
SuperNodes and the run, or the simulation runtime with ``fl.runtime=simulation``)."""

from __future__ import annotations

from core.component import Component

# After the stream (fl_app.pipeline orders the components): devices train on its windows.
FEDERATION = Component(name="federation", command=("fl", "serve"), stop_timeout=60.0)
COMPONENTS = (FEDERATION,)
