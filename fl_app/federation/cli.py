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
lineage_group = group(app, "lineage", "Which readings made which model: check what MongoDB records.")


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


EVAL_ROUNDS = typer.Option(20, min=1, help="Holdout: federated rounds (each device trains every round).")
EVAL_EPOCHS = typer.Option(1, min=1, help="Holdout: passes over a device's rows per round.")
EVAL_TRAIN = typer.Option(0.7, min=0.05, max=0.95, help="Holdout: the first part of each device's series that trains.")
EVAL_PROTOCOL = typer.Option("both", help="holdout, prequential or both.")
EVAL_PEERS = typer.Option(True, "--peers/--no-peers", help="Add the peer detectors (needs `make setup-eval`).")
EVAL_JSON = typer.Option(None, "--json", help="Where to write the results (default: <logs>/learning_quality.json).")


@command(app, log="evaluation")
def evaluate(cfg: AppConfig, rounds: int = EVAL_ROUNDS, local_epochs: int = EVAL_EPOCHS,
             train_fraction: float = EVAL_TRAIN, protocol: str = EVAL_PROTOCOL, peers: bool = EVAL_PEERS,
             json_out: Path | None = EVAL_JSON) -> None:
    """Learning quality on the labelled data set (the generated one, or stream.dataset_path with
    stream.csv for a CSV): the same model trained federated (this project's aggregation; on Flower's
    simulation runtime for the holdout), centrally, and per device alone, beside peer detectors
    (PyOD IsolationForest, River HalfSpaceTrees); precision, recall, F1 and AUROC, on the held-out
    later part of each device's series (holdout) and over the replayed stream, each window scored
    before it is trained on (prequential)."""
    from fl_app.federation import evaluate as experiment

    protocols = experiment.PROTOCOLS if protocol == "both" else (protocol,)
    if any(p not in experiment.PROTOCOLS for p in protocols):
        raise typer.BadParameter(f"--protocol must be holdout, prequential or both, not {protocol!r}")
    if "holdout" in protocols:
        console.print(f"[bold]holdout[/]: {rounds} rounds x {local_epochs} epoch(s); the first "
                      f"{train_fraction:.0%} of each device's series trains, the rest is held out")
    if "prequential" in protocols:
        console.print(f"[bold]prequential[/]: windows of {cfg.fl.local_training_interval_seconds:g}s at "
                      f"{cfg.stream.records_per_second:g} readings/s, aggregated every "
                      f"{cfg.fl.global_update_interval_minutes * 60:g}s")
    result = experiment.evaluate(cfg, rounds, local_epochs, train_fraction, protocols, peers)
    _print_evaluation(result)
    out = json_out or Path(cfg.paths.logs_dir) / "learning_quality.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rounds": rounds, "local_epochs": local_epochs, "train_fraction": train_fraction,
                               "features": list(cfg.fl.model.features), "context": list(cfg.fl.model.context),
                               **result.to_json()}, indent=2))
    console.print(f"written: {out}")


def _print_evaluation(result: Evaluation) -> None:
    from rich import box
    from rich.table import Table

    for protocol, results in result.results.items():
        first = next(iter(results.values()))
        table = Table(title=f"{protocol}: {result.readings:,} readings, {result.devices} devices; "
                            f"{first.readings:,} scored, {first.anomalies:,} labelled anomalies among them",
                      title_justify="left", box=box.SIMPLE_HEAD)
        for col in ("approach", "precision", "recall", "F1", "AUROC", "threshold", "flagged", "time"):
            table.add_column(col, justify="left" if col == "approach" else "right", no_wrap=True)
        for name, r in results.items():
            table.add_row(name, f"{r.precision:.3f}", f"{r.recall:.3f}", f"{r.f1:.3f}", f"{r.auroc:.3f}",
                          f"{r.threshold:.3g}", f"{r.flagged:,}", f"{result.seconds[protocol][name]:.0f}s")
        console.print(table, width=max(console.width, 110))  # whole numbers, also in a log or a pipe
    if "holdout" in result.results:
        console.print(f"holdout, local, mean of the devices' own F1: {result.local_mean_f1:.3f}")


SINCE = typer.Option(None, "--since-minutes", min=0.0, help="Only the rounds of the last this many minutes.")
AS_JSON = typer.Option(False, "--json", help="Print the report as JSON.")


@command(lineage_group, "check", log="fl_app")
def lineage_check(cfg: AppConfig, since_minutes: float | None = SINCE, as_json: bool = AS_JSON) -> None:
    """Check the lineage MongoDB records: no window record trained on twice or consumed without a trace,
    every local update in exactly one round, each round's readings the sum of its updates'. Exit 1 if not."""
    from datetime import UTC, datetime, timedelta

    from core.storage import Storage
    from fl_app.federation import lineage

    since = datetime.now(UTC) - timedelta(minutes=since_minutes) if since_minutes is not None else None
    with Storage.from_config(cfg.mongo) as store:
        report = lineage.check(store, since)
    if as_json:
        console.print_json(json.dumps(report.to_json()))
    else:
        console.print(f"lineage: {report.rounds} rounds, {report.updates} local updates, {report.readings:,} readings, "
                      f"{report.records:,} window records ({report.left_out} updates left out, "
                      f"{report.without_source} without a source)")
        for kind, items in report.problems.items():
            console.print(f"[red]{kind}: {len(items)}[/]")
            for item in items[:lineage.MAX_LISTED]:
                console.print(f"  {item}")
        console.print("[green]consistent.[/]" if report.ok else "[red]inconsistent.[/]")
    if not report.ok:
        raise typer.Exit(1)
