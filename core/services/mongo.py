"""The local MongoDB-wire server: SecantusDB (WiredTiger storage) as a process.

Why SecantusDB and not FerretDB: it installs from PyPI with the main
environment (no Go build), and it enforces what the storage layer relies on:
``$jsonSchema`` validators, unique indexes (duplicate key error 11000) and
data intact after restart or kill -9. See README "Why SecantusDB".
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from urllib.parse import urlsplit

from core.config import AppConfig
from core.services.runner import LOOPBACK, ManagedProcess, ServiceError

NAME = "mongo"


def uri_host_port(uri: str) -> tuple[str, int]:
    parts = urlsplit(uri)
    host = parts.hostname or "127.0.0.1"
    return host, parts.port or 27017


def runs_locally(cfg: AppConfig) -> bool:
    """Start our own server only when enabled and mongo.uri points at this machine."""
    host, _ = uri_host_port(cfg.mongo.uri)
    return cfg.mongo.local_server.enabled and host in LOOPBACK and "+srv" not in cfg.mongo.uri


def _server_binary() -> str:
    # Prefer the one next to our interpreter (the project's .venv).
    beside = Path(sys.executable).parent / "secantusd-py"
    if beside.is_file():
        return str(beside)
    found = shutil.which("secantusd-py")
    if found is None:
        raise ServiceError(
            "secantusd-py (SecantusDB) is not installed; run `make setup`, "
            "or point mongo.uri at a MongoDB and set mongo.local_server.enabled=false"
        )
    return found


def storage_dir(cfg: AppConfig) -> Path:
    return Path(cfg.paths.data_dir) / "mongo"


def server_process(cfg: AppConfig) -> ManagedProcess:
    from core import storage  # pymongo import kept out of module import time

    host, port = uri_host_port(cfg.mongo.uri)
    return ManagedProcess(
        name=NAME,
        argv=[],
        # Looked up only when starting, so status/stop work even if it is not installed.
        prepare=lambda: [
            _server_binary(), "--host", "127.0.0.1" if host == "localhost" else host,
            "--port", str(port), "--storage-path", str(storage_dir(cfg)),
            "--cache-size", cfg.mongo.local_server.cache_size, "--log-level", "INFO",
        ],
        run_dir=Path(cfg.paths.run_dir),
        logs_dir=Path(cfg.paths.logs_dir),
        ports=[(host if host != "localhost" else "127.0.0.1", port)],
        health_check=lambda: storage.ping(cfg.mongo.uri, timeout_ms=1000),
        startup_timeout=cfg.mongo.local_server.startup_timeout_seconds,
        address=f"{host}:{port}",
    )
