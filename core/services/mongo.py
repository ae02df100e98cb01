"""The local MongoDB-wire server: SecantusDB (WiredTiger storage) as a process.

Why SecantusDB and not FerretDB: it installs from PyPI with the main
environment (no Go build), and it enforces what the storage layer relies on:
``$jsonSchema`` validators, unique indexes (duplicate key error 11000) and
data intact after restart or kill -9. See README "Why SecantusDB".
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path
from urllib.parse import urlsplit

from core import mongo_auth
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


def _user_marker(cfg: AppConfig) -> Path:
    return mongo_auth.password_file(cfg.mongo).with_name("user-created")


def _create_user(cfg: AppConfig, argv: list[str], port: int) -> None:
    """SecantusDB's --auth has no localhost exception: the user is created once by a short run without it,
    on the loopback only, before the server ever holds data (the password is sent over the wire, not argv)."""
    import subprocess
    import time

    from pymongo import MongoClient
    from pymongo.errors import OperationFailure

    bootstrap = list(argv)
    bootstrap[bootstrap.index("--host") + 1] = "127.0.0.1"
    proc = subprocess.Popen(bootstrap, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        client: MongoClient = MongoClient(f"mongodb://127.0.0.1:{port}/", serverSelectionTimeoutMS=1000)
        deadline = time.monotonic() + cfg.mongo.local_server.startup_timeout_seconds
        while True:
            try:
                client.admin.command("ping")
                break
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise ServiceError("cannot start SecantusDB to create the MongoDB user") from None
                time.sleep(0.2)
        user, secret = cfg.mongo.username, mongo_auth.password(cfg.mongo)
        roles = [{"role": "readWrite", "db": cfg.mongo.database}, {"role": "dbAdmin", "db": cfg.mongo.database}]
        try:
            client.admin.command("createUser", user, pwd=secret, roles=roles, mechanisms=[mongo_auth.MECHANISM])
        except OperationFailure:  # it exists (the marker was lost): set its password
            client.admin.command("updateUser", user, pwd=secret, roles=roles, mechanisms=[mongo_auth.MECHANISM])
        client.close()
    finally:  # its whole group, so nothing of it keeps the port
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    _user_marker(cfg).write_text("")


def _argv(cfg: AppConfig, host: str, port: int) -> list[str]:
    argv = [
        _server_binary(), "--host", "127.0.0.1" if host == "localhost" else host,
        "--port", str(port), "--storage-path", str(storage_dir(cfg)),
        "--cache-size", cfg.mongo.local_server.cache_size, "--log-level", "INFO",
    ]
    if not cfg.mongo.auth:
        return argv
    if not _user_marker(cfg).exists():
        _create_user(cfg, argv, port)
    return [*argv, "--auth"]


def server_process(cfg: AppConfig) -> ManagedProcess:
    from core import storage  # pymongo import kept out of module import time

    host, port = uri_host_port(cfg.mongo.uri)
    return ManagedProcess(
        name=NAME,
        argv=[],
        # Looked up only when starting, so status/stop work even if it is not installed.
        prepare=lambda: _argv(cfg, host, port),
        run_dir=Path(cfg.paths.run_dir),
        logs_dir=Path(cfg.paths.logs_dir),
        ports=[(host if host != "localhost" else "127.0.0.1", port)],
        health_check=lambda: storage.ping(mongo_auth.client_uri(cfg.mongo), timeout_ms=1000),
        startup_timeout=cfg.mongo.local_server.startup_timeout_seconds,
        address=f"{host}:{port}",
    )
