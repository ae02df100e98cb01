"""The devices that get a client and the settings both apps read, derived from the Hydra config.

The server-only settings (MongoDB, log folder) go to ``.run/fl_server.json``,
readable by the server's user only.
"""

from __future__ import annotations

from pathlib import Path

from core import dataset
from core.config import AppConfig
from core.messages import RunSettings, ServerSettings


def devices(cfg: AppConfig) -> list[int]:
    """The devices that get a client: the first ``fl.devices`` of the data set, in id order."""
    return dataset.device_ids(cfg.stream, cfg.paths.cache_dir)[: cfg.fl.devices or None]


def every_device(cfg: AppConfig) -> list[int]:
    """Every device of the data set: each may connect, from this machine or from another."""
    return dataset.device_ids(cfg.stream, cfg.paths.cache_dir)


def run_settings(cfg: AppConfig) -> RunSettings:
    """Write the server-only settings file; return the run settings for both apps."""
    path = Path(cfg.paths.run_dir) / "fl_server.json"
    ServerSettings.from_config(cfg).save(str(path))
    # The partition mapping covers every device of the data set, whichever of them get a client.
    return RunSettings.from_config(cfg, every_device(cfg), str(path))
