"""The apps on Flower's simulation runtime: ``fl.runtime=simulation``, `fl-app fl simulate`, and the
federated part of `fl-app evaluate`.

Flower's simulation Python API passes no run config, so the settings travel
in an environment variable the apps read (``$FL_APP_RUN_CONFIG``, or the
evaluation's own); the virtual SuperNodes' ``partition-id`` picks each one's
device.
"""

from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING

from core.config import AppConfig
from core.messages import RUN_CONFIG_ENV
from fl_app.federation.settings import devices, run_settings

if TYPE_CHECKING:
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

log = logging.getLogger(__name__)


def run_apps(server_app: ServerApp, client_app: ClientApp, supernodes: int, env: dict[str, str],
             log_to_driver: bool = True) -> None:
    """Run ``server_app`` with ``supernodes`` virtual SuperNodes of ``client_app`` (blocks), the
    settings in ``env`` exported first; one CPU per ClientApp, as many at once as the machine has."""
    from flwr.simulation import run_simulation

    os.environ.update(env)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=supernodes,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": max(1, os.cpu_count() or 1), "num_gpus": 0,
                                                 "include_dashboard": False, "log_to_driver": log_to_driver}})


def simulate(cfg: AppConfig) -> None:
    """Run the ServerApp and one ClientApp per device on Flower's simulation runtime (blocks)."""
    from clients.client_app import app as client_app
    from server.server_app import app as server_app

    settings = run_settings(cfg)
    chosen = devices(cfg)  # the first ones in id order: partition-id i is settings.devices[i]
    log.info("simulation: %d devices, train every %gs, aggregate every %gs", len(chosen), settings.train_every,
             settings.aggregate_every)
    run_apps(server_app, client_app, len(chosen), {RUN_CONFIG_ENV: json.dumps(settings.to_run_config())})
