"""Set up and serve Superset: ``fl-app superset up|down|serve`` and the ``superset`` component.

Superset 6.1 runs from its own virtualenv (``.venv-superset``, made by
``make setup`` from ``analytics/superset/requirements.lock``): its pins clash
with the main environment's. This module, in the main environment, drives it
through Superset's own CLI and gunicorn:

1. first start (or after the lock file changed): ``superset db upgrade``,
   ``superset fab create-admin``, ``superset init``, with the metadata
   database (SQLite) and a generated secret key under ``superset.home``;
2. every start: the admin's password set if it changed, and the dashboards'
   bundle (``bundle/``) imported with the serving store's URL
   (``spark.batch.store_url``) filled in, replacing what an earlier import made;
3. ``gunicorn`` serves on ``superset.host:port``, in place of this process.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import subprocess
import tempfile
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

from core.atomic import write_text
from core.config import PROJECT_ROOT, AppConfig
from core.services.runner import ManagedProcess, ServiceError, port_is_open

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
BUNDLE_DIR = PACKAGE_DIR / "bundle"
LOCK_FILE = PACKAGE_DIR / "requirements.lock"
STORE_URL_PLACEHOLDER = "__SERVING_STORE_URL__"
PASSWORD_ENV = "SUPERSET_ADMIN_PASSWORD"
DASHBOARDS = ("fl-pipeline", "fl-devices", "fl-federated-learning", "fl-anomalies")  # slugs in the bundle


def python_env(cfg: AppConfig) -> Path:
    return Path(cfg.superset.python_env or PROJECT_ROOT / ".venv-superset")


def url(cfg: AppConfig) -> str:
    return f"http://{cfg.superset.host}:{cfg.superset.port}"


def _home(cfg: AppConfig) -> Path:
    home = Path(cfg.superset.home)
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    return home


def _secret(path: Path) -> str:
    """The value kept in ``path`` (0600), made once with :mod:`secrets`."""
    if not path.exists():
        write_text(path, secrets.token_urlsafe(32) + "\n", mode=0o600)
    return path.read_text().strip()


def admin_password(cfg: AppConfig) -> tuple[str, str]:
    """The admin's password and where it comes from: ``superset.admin_password`` (or
    $SUPERSET_ADMIN_PASSWORD, which the config reads), else one generated once into
    ``<superset.home>/admin_password``."""
    if cfg.superset.admin_password:
        return cfg.superset.admin_password, f"superset.admin_password / ${PASSWORD_ENV}"
    path = _home(cfg) / "admin_password"
    return _secret(path), str(path)


def environment(cfg: AppConfig) -> dict[str, str]:
    home = _home(cfg)
    _secret(home / "secret_key")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    venv = python_env(cfg)
    env.update({"SUPERSET_CONFIG_PATH": str(PACKAGE_DIR / "superset_config.py"), "FL_SUPERSET_HOME": str(home),
                "FLASK_APP": "superset", "VIRTUAL_ENV": str(venv),
                "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"})
    return env


def bundle_zip(cfg: AppConfig, dest: Path) -> Path:
    """The dashboards' bundle as the ZIP Superset imports, with the serving store's URL filled in."""
    with zipfile.ZipFile(dest, "w") as archive:
        for path in sorted(BUNDLE_DIR.rglob("*.yaml")):
            text = path.read_text().replace(STORE_URL_PLACEHOLDER, cfg.spark.batch.store_url)
            # Superset's importer drops the first folder of every name in the archive.
            archive.writestr(f"fl_iot_dashboards/{path.relative_to(BUNDLE_DIR)}", text)
    return dest


def password_env(command: str, password: str) -> dict[str, str]:
    """The admin's password for ``superset fab <command>`` in its environment, not on its command line
    (world-readable in ``ps``): Flask's CLI reads an option from ``FLASK_<GROUP>_<COMMAND>_<OPTION>``
    (``auto_envvar_prefix="FLASK"``, flask/cli.py FlaskGroup)."""
    return {f"FLASK_FAB_{command.upper().replace('-', '_')}_PASSWORD": password}


def _superset(cfg: AppConfig, *args: str, timeout: float = 300, secret_env: dict[str, str] | None = None) -> str:
    venv = python_env(cfg)
    command = [str(venv / "bin" / "superset"), *args]
    started = time.monotonic()
    # A session of its own: no terminal to prompt on, should an option be missing (the password).
    proc = subprocess.run(command, env={**environment(cfg), **(secret_env or {})}, capture_output=True, text=True,
                          timeout=timeout, cwd=_home(cfg), stdin=subprocess.DEVNULL, start_new_session=True)
    shown = " ".join(args)
    if proc.returncode != 0:
        raise ServiceError(f"`superset {shown}` failed (exit {proc.returncode}):\n"
                           + (proc.stdout + proc.stderr)[-3000:])
    log.info("superset %s: %.1fs", shown, time.monotonic() - started)
    return proc.stdout + proc.stderr


def prepare(cfg: AppConfig) -> None:
    """Steps 1 and 2 of the module's docstring: idempotent, a few seconds when nothing changed."""
    if not (python_env(cfg) / "bin" / "superset").exists():
        raise ServiceError(f"Superset's environment is missing ({python_env(cfg)}): run `make setup`")
    home = _home(cfg)
    user = cfg.superset.admin_user
    password, _ = admin_password(cfg)
    installed = hashlib.sha256(LOCK_FILE.read_bytes()).hexdigest()
    stamp = home / "set_up_for"
    password_stamp = home / "admin_password.sha256"
    # Salted with the secret key: tells a changed password without keeping one.
    digest = hashlib.sha256(f"{_secret(home / 'secret_key')}\0{user}\0{password}".encode()).hexdigest()
    if not stamp.exists() or stamp.read_text().strip() != installed:
        _superset(cfg, "db", "upgrade")
        _superset(cfg, "fab", "create-admin", "--username", user, "--firstname", "FL", "--lastname", "Admin",
                  "--email", f"{user}@localhost", secret_env=password_env("create-admin", password))
        _superset(cfg, "init")
        write_text(stamp, installed + "\n")
        if not password_stamp.exists():  # the admin was made just now, with this password
            write_text(password_stamp, digest + "\n", mode=0o600)
    if password_stamp.read_text().strip() != digest:  # changed in the config since
        _superset(cfg, "fab", "reset-password", "--username", user, secret_env=password_env("reset-password", password))
        write_text(password_stamp, digest + "\n", mode=0o600)
    with tempfile.TemporaryDirectory() as tmp:
        _superset(cfg, "import-dashboards", "-p", str(bundle_zip(cfg, Path(tmp) / "dashboards.zip")), "-u", user)


def serve(cfg: AppConfig) -> None:
    """Set up, then become gunicorn serving Superset (SIGTERM stops it)."""
    prepare(cfg)
    gunicorn = python_env(cfg) / "bin" / "gunicorn"
    argv = [str(gunicorn), "--workers", str(cfg.superset.workers), "--threads", "4", "--timeout", "120",
            "--bind", f"{cfg.superset.host}:{cfg.superset.port}", "--access-logfile", "-", "--no-control-socket",
            "superset.app:create_app()"]
    log.info("serving Superset on %s (dashboards: %s)", url(cfg), ", ".join(DASHBOARDS))
    os.execve(str(gunicorn), argv, environment(cfg))


def process(cfg: AppConfig, overrides: Sequence[str] = ()) -> ManagedProcess:
    """``fl-app superset serve`` as a managed process (``fl-app superset up``), with the caller's
    Hydra overrides."""
    import sys

    host, port = cfg.superset.host, cfg.superset.port
    return ManagedProcess(
        name="superset", argv=[sys.executable, "-m", "fl_app.cli", "superset", "serve", *overrides],
        run_dir=Path(cfg.paths.run_dir), logs_dir=Path(cfg.paths.logs_dir), ports=[(host, port)],
        health_check=lambda: port_is_open(host, port), startup_timeout=cfg.superset.startup_timeout_seconds,
        stop_timeout=30, address=f"{host}:{port}")
