"""The orchestration of `fl-app run`: services, then every component, in the background.

Each component (:class:`fl_app.component.Component`, declared by its own
package) runs as its own ``fl-app <command>`` process under the one
service-runner (pid file, log in ``logs/``, clean stop), composed from the
same Hydra overrides the user gave, so every process sees one configuration.
This is the only module, with the CLI, that knows every component.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from analytics.component import COMPONENTS as ANALYTICS
from fl_app import services
from fl_app.api.component import COMPONENTS as API
from fl_app.atomic import read_json, write_json
from fl_app.component import Component
from fl_app.config import AppConfig
from fl_app.services.runner import ManagedProcess, ServiceError, State, Status
from server.component import COMPONENTS as FEDERATION
from stream.component import COMPONENTS as STREAM

# Last: it restarts the others when they crash (fl_app/supervisor.py); stopped first.
SUPERVISOR = Component(name="supervisor", command=("supervise",), stop_timeout=10.0)
# In start order.
COMPONENTS: tuple[Component, ...] = (*STREAM, *FEDERATION, *ANALYTICS, *API, SUPERVISOR)

# A component that cannot start (bad data set path, missing environment) dies within
# seconds; `run` waits this long so it can report it instead of "running".
SETTLE_SECONDS = 3.0


@dataclass
class RunReport:
    """What `run` did: services ready, preparation notes, the components' states."""

    ready: services.Readiness
    notes: list[str] = field(default_factory=list)
    components: list[Status] = field(default_factory=list)


def _process(cfg: AppConfig, component: Component, overrides: Sequence[str]) -> ManagedProcess:
    return ManagedProcess(
        name=component.name,
        argv=[sys.executable, "-m", "fl_app.cli", *component.command, *overrides],
        run_dir=Path(cfg.paths.run_dir),
        logs_dir=Path(cfg.paths.logs_dir),
        health_check=None,  # alive = healthy; each component logs its own progress
        startup_timeout=5.0,
        stop_timeout=component.stop_timeout,
    )


def enabled(cfg: AppConfig) -> tuple[Component, ...]:
    """The components this configuration runs (``spark.scorer.enabled=false`` leaves the scorer out,
    ``spark.batch.enabled=false`` the batch schedule, ``superset.enabled=false`` Superset,
    ``api.enabled=false`` the API)."""
    switches = {"spark_scorer": cfg.spark.scorer.enabled, "spark_batch": cfg.spark.batch.enabled,
                "superset": cfg.superset.enabled, "api": cfg.api.enabled}
    return tuple(c for c in COMPONENTS if switches.get(c.name, True))


def processes(cfg: AppConfig, overrides: Sequence[str] = ()) -> list[ManagedProcess]:
    """The pipeline components in start order."""
    return [_process(cfg, component, overrides) for component in enabled(cfg)]


def run(cfg: AppConfig, overrides: Sequence[str] = ()) -> RunReport:
    """Start the services and every component; raise ServiceError if anything is not up.

    Raises
    ------
    ServiceError
        A service is unhealthy, or a component died within :data:`SETTLE_SECONDS`
        (the message holds the last lines of its log).
    """
    ready = services.up(cfg)
    unhealthy = [s.name for s in ready.services if s.state not in (State.RUNNING, State.EXTERNAL)]
    if unhealthy:
        raise ServiceError(f"not healthy: {', '.join(unhealthy)}")
    report = RunReport(ready)
    report.notes = [c.prepare(cfg) for c in enabled(cfg) if c.prepare is not None]
    procs = processes(cfg, overrides)
    write_json(_marker(cfg), {"components": [p.name for p in procs]})  # what `status` expects to run
    for proc in procs:
        proc.start()
    time.sleep(SETTLE_SECONDS)
    dead = [p for p in procs if p.pid() is None]
    if dead:
        raise ServiceError("\n".join(f"{p.name} stopped; last lines of {p.log_file}:\n{p.tail()}" for p in dead))
    report.components = [p.status() for p in procs]
    return report


def stop(cfg: AppConfig) -> list[str]:
    """Stop the components (reverse start order), then the services; the names stopped."""
    _marker(cfg).unlink(missing_ok=True)
    return [proc.name for proc in reversed(processes(cfg)) if proc.stop()] + services.down(cfg)


def status(cfg: AppConfig) -> list[Status]:
    """Each component's state; the supervisor's restarts in ``detail``."""
    from fl_app import supervisor

    restarts = supervisor.records(cfg)
    out = []
    for proc in processes(cfg):
        s, r = proc.status(), restarts.get(proc.name, {})
        if r.get("gave_up"):
            s.detail = f"keeps crashing: left down after {len(r.get('crashes', []))} crashes; see {proc.log_file}"
        elif r.get("restarts"):
            s.detail = f"restarted {r['restarts']}x by the supervisor"
        out.append(s)
    return out


def expected(cfg: AppConfig) -> list[str]:
    """The components `run` started and `stop` has not stopped: they should be running."""
    return list(read_json(_marker(cfg), {}).get("components", []))


def _marker(cfg: AppConfig) -> Path:
    return Path(cfg.paths.run_dir) / "pipeline.json"
