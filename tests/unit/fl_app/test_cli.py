"""The `fl-app` console command: help, config printing, errors naming the key, the data commands."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from core.config import load_config
from core.storage import Storage
from fl_app.cli import app

runner = CliRunner()
FL_APP = Path(sys.executable).parent / "fl-app"


def test_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("run", "stop", "services", "config", "lineage"):
        assert command in result.output


def test_config_prints_the_composed_profile() -> None:
    result = runner.invoke(app, ["config", "profile=production", "api.api_key=a-test-key-of-16-chars",
                                 "stream.records_per_second=55"])
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


def test_the_progress_line_says_mongodb_is_unreachable(tmp_path: Path) -> None:
    """A MongoDB that does not answer: the line says so within the client's short timeout, no exception."""
    from core.services.runner import free_port
    from fl_app.cli import _progress

    cfg = load_config([f"paths.home={tmp_path}"])
    with Storage(f"mongodb://127.0.0.1:{free_port()}", "x", timeout_ms=300) as store:
        started = time.monotonic()
        line = _progress(cfg, store)
    assert "MongoDB unreachable" in line and time.monotonic() - started < 10



def test_data_generate_and_inspect(tmp_path: Path) -> None:
    overrides = [f"paths.home={tmp_path}", "stream.dataset_records=3000"]
    gen = runner.invoke(app, ["data", "generate", *overrides])
    assert gen.exit_code == 0, gen.output
    assert (tmp_path / ".cache" / "dataset" / "synthetic-v1-n3000-d53-s42.parquet").is_file()
    assert "3,000" in gen.output and "battery_failure" in gen.output
    png = tmp_path / "preview.png"
    inspect = runner.invoke(app, ["data", "inspect", *overrides, "--plot", str(png), "--devices", "1,2"])
    assert inspect.exit_code == 0, inspect.output
    assert png.stat().st_size > 10_000


def test_data_generate_honours_the_configured_data_set_file(tmp_path: Path) -> None:
    """With stream.dataset_path set, `data generate` prepares that file, not the stand-in."""
    path = tmp_path / "data.txt"
    path.write_text("2004-02-28 00:58:46.002832 2 1 19.3024 38.4629 45.08 2.68742\n"
                    "2004-02-28 00:59:16.02785 3 2 19.9884 37.0933 45.08 2.69964\n"
                    "2004-02-28 01:03:16.33393 11 3 19.175 38.8379 45.08 2.69964\n")
    result = runner.invoke(app, ["data", "generate", f"paths.home={tmp_path}", f"stream.dataset_path={path}",
                                 "stream.num_devices=3"])
    assert result.exit_code == 0, result.output
    assert f"data set: {path}" in " ".join(result.output.split())  # a long path wraps at the console's width
    assert re.search(r"records\s*\W\s*3\b", result.output), result.output
    assert not (tmp_path / ".cache" / "dataset").exists()  # nothing generated


def test_a_bad_option_value_is_one_red_line_not_a_traceback(tmp_path: Path) -> None:
    """`--devices 1,x` (not an id): the command decorator turns the ValueError into exit 1 and one line."""
    result = runner.invoke(app, ["data", "inspect", f"paths.home={tmp_path}", "stream.dataset_records=3000",
                                 "--devices", "1,x", "--plot", str(tmp_path / "p.png")])
    assert result.exit_code == 1 and "error:" in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback escaped
