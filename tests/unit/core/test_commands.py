"""`core.commands.command`: overrides and --cfg for every command, one red line for a user's error."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.testing import CliRunner

from core.commands import command
from core.config import AppConfig

runner = CliRunner()


def make_app(tmp_path: Path) -> tuple[typer.Typer, list[tuple[float, list[str], int]]]:
    app = typer.Typer()
    seen: list[tuple[float, list[str], int]] = []

    @command(app, log="probe")
    def probe(cfg: AppConfig, overrides: list[str], times: int = typer.Option(1, min=1)) -> None:
        """A probe."""
        seen.append((cfg.stream.records_per_second, overrides, times))
        if times > 5:
            raise ValueError("too many times")

    @command(app, log="probe")
    def other(cfg: AppConfig) -> None:
        raise typer.Exit(7)  # a RuntimeError, not a failure

    return app, seen


def test_a_command_gets_the_composed_config_its_overrides_and_its_options(tmp_path: Path) -> None:
    app, seen = make_app(tmp_path)
    overrides = [f"paths.home={tmp_path}", "stream.records_per_second=42"]
    result = runner.invoke(app, ["probe", *overrides, "--times", "3"])
    assert result.exit_code == 0, result.output
    assert seen == [(42.0, overrides, 3)]
    assert (tmp_path / "logs" / "probe.log").exists()


def test_cfg_prints_and_runs_nothing(tmp_path: Path) -> None:
    app, seen = make_app(tmp_path)
    result = runner.invoke(app, ["probe", f"paths.home={tmp_path}", "--cfg"])
    assert result.exit_code == 0 and "records_per_second" in result.output and seen == []


def test_a_bad_key_exits_2_naming_it_and_a_users_error_exits_1_in_one_line(tmp_path: Path) -> None:
    app, seen = make_app(tmp_path)
    bad = runner.invoke(app, ["probe", "stream.no_such_key=1"])
    assert bad.exit_code == 2 and "no_such_key" in bad.output and seen == []
    failed = runner.invoke(app, ["probe", f"paths.home={tmp_path}", "--times", "9"])
    assert failed.exit_code == 1 and "error: too many times" in failed.output
    assert "Traceback" not in failed.output


def test_an_exit_passes_through(tmp_path: Path) -> None:
    app, _ = make_app(tmp_path)
    assert runner.invoke(app, ["other", f"paths.home={tmp_path}"]).exit_code == 7


def test_a_long_stop_line_stays_one_line_when_output_is_not_a_terminal(capsys) -> None:
    # CI failed so: rich broke "stopped: ..., mongo, kafka in 13.9 s" at 80 columns and a search for it missed.
    from core.commands import print_stopped

    names = [f"fl_supernode_{n}" for n in range(1, 20)]
    print_stopped(names)
    out = capsys.readouterr().out
    assert out == f"stopped: {', '.join(names)}\n"
