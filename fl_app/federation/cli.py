"""The federation's commands: ``fl-app fl serve|up|down|simulate|certs`` and ``fl-app evaluate``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from core.commands import command, console, group, print_status, print_stopped
from core.config import AppConfig

if TYPE_CHECKING:
    from fl_app.federation.evaluate import Evaluation

app = typer.Typer()
fl_group = group(app, "fl", "Federated learning with Flower (serve, up, down, simulate, certs).")


@command(fl_group, "serve", log="fl_launcher")
def fl_serve(cfg: AppConfig) -> None:
    """The federation as one foreground process (what `fl-app run` starts): up, wait, down on SIGTERM.
    With fl.runtime=simulation, the simulation runtime instead."""
    from fl_app.federation import deployment

    deployment.serve(cfg)


@command(fl_group, "up", log="fl_launcher")
def fl_up(cfg: AppConfig) -> None:
    """Start flower-superlink and one flower-supernode per device (fl.devices), then submit the
    run (`flwr run`, run config from Hydra). Returns once submitted; `fl-app fl down` stops it all."""
    from fl_app.federation import deployment

    run_id = deployment.up(cfg)
    print_status([p.status() for p in deployment.processes(cfg)], title="Federation")
    console.print(f"[bold green]run {run_id} submitted.[/] Rounds: {cfg.paths.logs_dir}/global_server.log")


@command(fl_group, "down", log="fl_launcher")
def fl_down(cfg: AppConfig) -> None:
    """Stop the SuperNodes, the SuperLink and the ServerApp/ClientApp processes they left."""
    from fl_app.federation import deployment

    print_stopped(deployment.down(cfg))


@command(fl_group, "simulate", log="fl_simulation")
def fl_simulate(cfg: AppConfig) -> None:
    """Run the ServerApp and a ClientApp per device (fl.devices) on Flower's simulation runtime,
    in the foreground, until fl.duration_seconds (or Ctrl-C)."""
    from fl_app.federation import simulation

    console.print(f"simulating {cfg.fl.devices or 'all'} devices; rounds in MongoDB {cfg.mongo.database}, "
                  f"log {cfg.paths.logs_dir}/global_server.log")
    simulation.simulate(cfg)


FORCE = typer.Option(False, "--force", help="Make everything new (new CA: every SuperNode needs the new ca.crt).")


@command(fl_group, "certs", log="fl_launcher")
def fl_certs(cfg: AppConfig, force: bool = FORCE) -> None:
    """Make the certificates and keys for fl.security (TLS, SuperNode authentication) under
    fl.security.certs_dir: a CA, the SuperLink certificate for fl.security.hostnames, one key pair
    per device. Keeps what exists. Copy ca.crt and device-<id>.key to a device's machine."""
    from fl_app.federation import security

    if not cfg.fl.security.supernode_auth:
        console.print("fl.security.supernode_auth is off: no SuperNode keys made")
    written = security.ensure_certificates(cfg, force=force)
    console.print(f"{len(written)} files written under {cfg.fl.security.certs_dir}" if written
                  else f"all present under {cfg.fl.security.certs_dir}; nothing changed")


EVAL_ROUNDS = typer.Option(20, min=1, help="Federated rounds (each device trains every round).")
EVAL_EPOCHS = typer.Option(1, min=1, help="Passes over a device's rows per round.")
EVAL_TRAIN = typer.Option(0.7, min=0.05, max=0.95, help="The first part of each device's series that trains.")
EVAL_JSON = typer.Option(None, "--json", help="Where to write the results (default: <logs>/learning_quality.json).")


@command(app, log="evaluation")
def evaluate(cfg: AppConfig, rounds: int = EVAL_ROUNDS, local_epochs: int = EVAL_EPOCHS,
             train_fraction: float = EVAL_TRAIN, json_out: Path | None = EVAL_JSON) -> None:
    """Learning quality on the labelled data set (the generated one, or stream.dataset_path with
    stream.csv for a CSV): the same model and budget trained federated (this project's aggregation
    on Flower's simulation runtime), centrally, and per device alone; precision, recall, F1 and
    AUROC on the held-out later part of each device's series."""
    from fl_app.federation import evaluate as experiment

    console.print(f"[bold]learning quality[/]: {rounds} rounds x {local_epochs} epoch(s); the first "
                  f"{train_fraction:.0%} of each device's series trains, the rest is held out")
    result = experiment.evaluate(cfg, rounds, local_epochs, train_fraction)
    _print_evaluation(result)
    out = json_out or Path(cfg.paths.logs_dir) / "learning_quality.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rounds": rounds, "local_epochs": local_epochs, "train_fraction": train_fraction,
                               **result.to_json()}, indent=2))
    console.print(f"written: {out}")


def _print_evaluation(result: Evaluation) -> None:
    from rich import box
    from rich.table import Table

    anomalies = next(iter(result.results.values())).anomalies
    table = Table(title=f"Held-out anomaly detection: {result.readings:,} readings, {result.devices} devices, "
                        f"{anomalies:,} labelled anomalies held out", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("approach", "precision", "recall", "F1", "AUROC", "threshold", "flagged", "time"):
        table.add_column(col, justify="left" if col == "approach" else "right", no_wrap=True)
    for name, r in result.results.items():
        table.add_row(name, f"{r.precision:.3f}", f"{r.recall:.3f}", f"{r.f1:.3f}", f"{r.auroc:.3f}",
                      f"{r.threshold:.3g}", f"{r.flagged:,}", f"{result.seconds[name]:.0f}s")
    console.print(table)
    console.print(f"local, mean of the devices' own F1: {result.local_mean_f1:.3f}")
