"""The `fl-app` console command: help, config printing, errors naming the key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fl_app.cli import app
from fl_app.config import PROJECT_ROOT
from tests.conftest import isolated_overrides

runner = CliRunner()
FL_APP = Path(sys.executable).parent / "fl-app"


def test_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("run", "stop", "services", "config"):
        assert command in result.output


def test_config_prints_the_composed_profile() -> None:
    result = runner.invoke(app, ["config", "profile=production", "stream.records_per_second=55"])
    assert result.exit_code == 0, result.output
    assert "profile_name: production" in result.output
    assert "records_per_second: 55.0" in result.output
    assert "local_training_interval_seconds: 300.0" in result.output


def test_cfg_flag_prints_without_running() -> None:
    result = runner.invoke(app, ["run", "--cfg", "kafka.bootstrap_servers=127.0.0.1:1"])
    assert result.exit_code == 0, result.output
    assert "bootstrap_servers: 127.0.0.1:1" in result.output


def test_console_script_rejects_a_bad_key_by_name() -> None:
    proc = subprocess.run([str(FL_APP), "run", "stream.recordz_per_second=5"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "stream.recordz_per_second" in proc.stderr


@pytest.mark.integration
def test_services_status_up_status_down(tmp_path: Path) -> None:
    overrides = isolated_overrides(tmp_path)
    env = {**os.environ, "COLUMNS": "200"}

    def fl_app(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(FL_APP), *args, *overrides], capture_output=True, text=True,
                              timeout=300, env=env, cwd=PROJECT_ROOT)

    try:
        before = fl_app("services", "status")
        assert before.returncode == 3 and "stopped" in before.stdout
        up = fl_app("run")
        assert up.returncode == 0, up.stdout + up.stderr
        assert "ready." in up.stdout
        for name in ("iot_stream", "device_windows", "iot_stream_dlq", "device_data", "global_model"):
            assert name in up.stdout
        assert (tmp_path / "logs" / "kafka.log").is_file()
        assert (tmp_path / "logs" / "mongo.log").is_file()
        assert (tmp_path / "logs" / "fl_app.log").is_file()
        status = fl_app("services", "status")
        assert status.returncode == 0 and status.stdout.count("running") == 2
    finally:
        down = fl_app("stop")
    assert down.returncode == 0 and "stopped: mongo, kafka" in down.stdout
