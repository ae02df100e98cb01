"""Running the federation: Flower's simulation runtime, or a SuperLink with one SuperNode per device.

Orchestration layer: it knows both apps (``server.server_app:app`` and
``clients.client_app:app``) and hands them the same settings, derived from
the Hydra config (:class:`fl_app.federation.RunSettings`), so Hydra stays the
one source of truth. The server-only settings (MongoDB, log folder) go to
``.run/fl_server.json``, readable by the server's user only.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from fl_app.config import AppConfig
from fl_app.federation import RUN_CONFIG_ENV, RunSettings, ServerSettings

log = logging.getLogger(__name__)


def devices(cfg: AppConfig) -> list[int]:
    """The devices that get a client: the first ``fl.devices`` of the data set, in id order."""
    from stream import data

    return data.device_ids(cfg.stream, cfg.paths.cache_dir)[: cfg.fl.devices or None]


def run_settings(cfg: AppConfig) -> RunSettings:
    """Write the server-only settings file; return the run settings for both apps."""
    from stream import data

    path = Path(cfg.paths.run_dir) / "fl_server.json"
    ServerSettings.from_config(cfg).save(str(path))
    # The partition mapping covers every device of the data set, whichever of them get a client.
    return RunSettings.from_config(cfg, data.device_ids(cfg.stream, cfg.paths.cache_dir), str(path))


def simulate(cfg: AppConfig) -> None:
    """Run the ServerApp and one ClientApp per device on Flower's simulation runtime (blocks).

    Flower's simulation Python API passes no run config, so the settings travel
    in ``$FL_APP_RUN_CONFIG`` (read by ``RunSettings.from_context``); the
    virtual SuperNodes' ``partition-id`` picks each one's device.
    """
    from flwr.simulation import run_simulation

    from clients.client_app import app as client_app
    from server.server_app import app as server_app

    settings = run_settings(cfg)
    chosen = devices(cfg)
    if chosen != settings.devices[: len(chosen)]:
        raise AssertionError("devices are taken in partition order")
    os.environ[RUN_CONFIG_ENV] = json.dumps(settings.to_run_config())
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    log.info("simulation: %d devices, train every %gs, aggregate every %gs", len(chosen), settings.train_every,
             settings.aggregate_every)
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=len(chosen),
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": max(1, os.cpu_count() or 1), "num_gpus": 0,
                                                 "include_dashboard": False}})
