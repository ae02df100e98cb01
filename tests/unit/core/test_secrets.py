"""Secrets stay out of output, logs and command lines (core/secrets.py, the runner, `--cfg`)."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from core import secrets
from core.config import load_config
from core.services.runner import ManagedProcess
from fl_app.cli import app

KEY = "dummy-api-key-0123456789"
PASSWORD = "dummy-superset-pw-42"
MONGO_PASSWORD = "dummy-mongo-pw-77"
URI = f"mongodb://fluser:{MONGO_PASSWORD}@127.0.0.1:27017/admin"
SECRET_OVERRIDES = [f"api.api_key={KEY}", f"superset.admin_password={PASSWORD}", f"mongo.uri={URI}"]


def test_secret_keys_by_name_and_url_passwords() -> None:
    assert secrets.is_secret_key("api.api_key") and secrets.is_secret_key("superset.admin_password")
    assert secrets.is_secret_key("kafka.sasl.password")  # a later key is secret by its name alone
    assert not secrets.is_secret_key("mongo.uri") and not secrets.is_secret_key("api.port")
    assert secrets.redact_url(URI) == "mongodb://fluser:***@127.0.0.1:27017/admin"
    assert secrets.redact_url("mongodb://127.0.0.1:27017") == "mongodb://127.0.0.1:27017"  # nothing to hide
    assert secrets.redact_override(f"api.api_key={KEY}") == "api.api_key=***"
    assert secrets.redact_override(f"mongo.uri={URI}") == f"mongo.uri={secrets.redact_url(URI)}"
    assert not secrets.is_secret_override("api.api_key=")  # empty: nothing to hide
    assert not secrets.is_secret_override("stream.batch_size=5")


def test_redacted_config_and_values(tmp_path: Path) -> None:
    cfg = load_config([f"paths.home={tmp_path}", *SECRET_OVERRIDES, "spark.batch.store_url=postgresql://u:pgpw1234@h/db"])
    assert set(secrets.values(cfg)) == {KEY, PASSWORD, MONGO_PASSWORD, "pgpw1234"}
    shown = secrets.redacted(cfg)
    assert shown.api.api_key == "***" and shown.superset.admin_password == "***"
    assert shown.mongo.uri == secrets.redact_url(URI) and shown.spark.batch.store_url == "postgresql://u:***@h/db"
    assert cfg.api.api_key == KEY  # the original is untouched


def test_config_output_hides_every_secret(tmp_path: Path) -> None:
    for args in (["config"], ["services", "status", "--cfg"]):
        result = CliRunner().invoke(app, [*args, f"paths.home={tmp_path}", *SECRET_OVERRIDES])
        assert result.exit_code == 0, result.output
        for secret in (KEY, PASSWORD, MONGO_PASSWORD):
            assert secret not in result.output
        assert "api_key: '***'" in result.output or "api_key: ***" in result.output


def test_a_bad_secret_is_named_but_not_shown() -> None:
    result = CliRunner().invoke(app, ["config", "profile=production", "api.api_key=short-secret"])
    assert result.exit_code == 2 and "api.api_key" in result.output and "short-secret" not in result.output


def test_log_filter_masks_secrets_and_url_passwords() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "key %s uri %s", (KEY, URI), None)
    secrets.RedactingFilter([KEY]).filter(record)
    assert record.getMessage() == f"key *** uri {secrets.redact_url(URI)}"
    try:
        raise RuntimeError(f"cannot connect to {URI} with {KEY}")
    except RuntimeError:
        failed = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    secrets.RedactingFilter([KEY]).filter(failed)
    assert failed.exc_text is not None and KEY not in failed.exc_text and MONGO_PASSWORD not in failed.exc_text


def test_runner_moves_secret_overrides_from_argv_to_the_environment(tmp_path: Path) -> None:
    """The child gets them in FL_APP_SECRET_OVERRIDES; its command line and the log line do not hold them;
    the log and what the child writes are its owner's only."""
    out = tmp_path / "seen.json"
    script = ("import json, os, sys; from core import secrets; "
              f"json.dump({{'argv': sys.argv[1:], 'env': secrets.take_env_overrides(), "
              f"'left': os.environ.get(secrets.ENV)}}, open({str(out)!r}, 'w'))")
    proc = ManagedProcess(name="child", argv=[sys.executable, "-c", script, "stream.batch_size=5", *SECRET_OVERRIDES],
                          run_dir=tmp_path / "run", logs_dir=tmp_path / "logs", cwd=Path(__file__).parents[3],
                          env={secrets.ENV: json.dumps(["api.api_key=inherited-not-wanted"])})
    try:
        proc.start()
        deadline = time.monotonic() + 30
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        proc.stop()
    seen = json.loads(out.read_text())
    assert seen["argv"] == ["stream.batch_size=5"]
    assert seen["env"] == SECRET_OVERRIDES and seen["left"] is None
    log = proc.log_file.read_text()
    assert all(s not in log for s in (KEY, PASSWORD, MONGO_PASSWORD)) and "api.api_key=***" not in log
    assert proc.log_file.stat().st_mode & 0o077 == 0 and out.stat().st_mode & 0o077 == 0


def test_a_command_merges_the_secret_overrides_from_the_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(secrets.ENV, json.dumps([f"api.api_key={KEY}"]))
    from core.commands import with_secret_overrides

    assert with_secret_overrides(["stream.batch_size=5"]) == ["stream.batch_size=5", f"api.api_key={KEY}"]
    assert secrets.ENV not in os.environ  # not passed on to what it starts otherwise
