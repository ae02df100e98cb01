"""After a production-profile start of the components that take secrets, none is in the open.

The API (its key, the MongoDB URI), Superset (the admin's password) and the
Flink job's launcher (the MongoDB URI, into ``.run/flink_job.json``) are
started as `fl-app run` starts them (the service runner), with dummy secrets
given the worst way: as command-line overrides. Then no log under logs/, no
process's command line (``/proc/*/cmdline``, what ``ps`` shows every local
user) and no world- or group-readable file under .run/ holds any of them; the
admin's password given that way still logs in (it reached Superset, through
its environment).
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from core.config import PROJECT_ROOT, AppConfig, load_config
from core.services.runner import ManagedProcess, free_port, port_is_open
from tests.support.stack import tenant_overrides

pytestmark = [pytest.mark.integration, pytest.mark.slow]

API_KEY = "dummy-api-key-" + uuid.uuid4().hex[:12]
SUPERSET_PASSWORD = "dummy-superset-" + uuid.uuid4().hex[:12]
MONGO_PASSWORD = "dummy-mongo-" + uuid.uuid4().hex[:12]
KAFKA_PASSWORD = "dummy-kafka-" + uuid.uuid4().hex[:12]
SECRETS = (API_KEY, SUPERSET_PASSWORD, MONGO_PASSWORD, KAFKA_PASSWORD)
FL_APP = [str(Path(sys.executable).parent / "fl-app")]


def cmdlines() -> dict[int, bytes]:
    found = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                found[int(proc.name)] = (proc / "cmdline").read_bytes()
            except OSError:
                continue
    return found


def test_no_secret_in_logs_process_arguments_or_readable_run_files(stack: AppConfig, tmp_path: Path) -> None:
    if not (PROJECT_ROOT / ".venv-superset" / "bin" / "superset").exists():
        pytest.skip("Superset's environment is missing (make setup)")
    host, port = stack.mongo.uri.removeprefix("mongodb://").rsplit(":", 1)
    overrides = [*tenant_overrides(stack, tmp_path, uuid.uuid4().hex[:8]), "profile=production",
                 "stream.dataset_records=3000", f"api.port={free_port()}", f"superset.port={free_port()}",
                 f"api.api_key={API_KEY}", f"superset.admin_password={SUPERSET_PASSWORD}",
                 f"kafka.sasl.password={KAFKA_PASSWORD}",
                 f"mongo.uri=mongodb://fluser:{MONGO_PASSWORD}@{host}:{port}"]
    cfg = load_config(overrides)
    run_dir, logs_dir = Path(cfg.paths.run_dir), Path(cfg.paths.logs_dir)

    def component(name: str, *command: str, timeout: float = 60, check=None) -> ManagedProcess:
        return ManagedProcess(name=name, argv=[*FL_APP, *command, *overrides], run_dir=run_dir, logs_dir=logs_dir,
                              health_check=check, startup_timeout=timeout, stop_timeout=20, cwd=PROJECT_ROOT)

    settings = run_dir / "flink_job.json"
    procs = [component("api", "api", check=lambda: port_is_open("127.0.0.1", cfg.api.port)),
             component("superset", "superset", "serve", timeout=cfg.superset.startup_timeout_seconds,
                       check=lambda: port_is_open("127.0.0.1", cfg.superset.port)),
             component("flink_job", "flink", timeout=120, check=settings.exists)]
    try:
        for proc in procs:
            proc.start()
            leaked = {pid: line for pid, line in cmdlines().items() if any(s.encode() in line for s in SECRETS)}
            assert not leaked, f"after {proc.name}: {leaked}"
        # The password given on the command line reached Superset (its environment), and works.
        login = httpx.post(f"http://127.0.0.1:{cfg.superset.port}/api/v1/security/login", timeout=30,
                           json={"username": "admin", "password": SUPERSET_PASSWORD, "provider": "db"})
        assert login.status_code == 200, login.text[:500]
        httpx.post(f"http://127.0.0.1:{cfg.api.port}/api/admin/aggregate", headers={"X-API-Key": API_KEY}, timeout=30)
        time.sleep(2)  # let the components log what they do with it
        leaked = {pid: line for pid, line in cmdlines().items() if any(s.encode() in line for s in SECRETS)}
        assert not leaked, leaked
    finally:
        for proc in reversed(procs):
            proc.stop()

    logs = [p for p in logs_dir.rglob("*") if p.is_file()]
    assert any(p.name == "superset.log" for p in logs) and any(p.name == "api.log" for p in logs)
    for path in logs:
        text = path.read_text(errors="replace")
        assert not [s for s in SECRETS if s in text], path
        assert path.stat().st_mode & 0o077 == 0, path  # and nobody else may read them anyway
    assert MONGO_PASSWORD in settings.read_text()  # the job needs it: the file is its owner's only
    for path in (p for p in run_dir.rglob("*") if p.is_file()):
        if path.stat().st_mode & 0o077:
            text = path.read_text(errors="replace")
            assert not [s for s in SECRETS if s in text], f"{path} is readable by others and holds a secret"
