"""``fl-app report``: PNG plots and a Markdown summary for terminal users.

Reads the tables the batch analytics wrote to the serving store
(:mod:`analytics.batch`, ``spark.batch.store_url``), the same ones Superset
shows, so both tell the same numbers. ``fl-app report --refresh`` runs the
batch first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

TABLES = ("round_convergence", "device_stats", "ingest_per_minute", "pipeline_counts")
OPTIONAL_TABLES = ("prediction_quality",)  # only when the data set has labels


@dataclass
class Report:
    directory: Path
    plots: list[Path]
    summary: Path


def read_tables(store_url: str) -> dict[str, pd.DataFrame]:
    """The serving store's tables the report uses; ``ValueError`` naming what is missing."""
    import pandas as pd
    from sqlalchemy import create_engine, inspect

    engine = create_engine(store_url)
    try:
        present = set(inspect(engine).get_table_names())
        missing = [t for t in TABLES if t not in present]
        if missing:
            raise ValueError(f"the serving store has no {', '.join(missing)} yet: run `fl-app spark batch` "
                             "(or `fl-app report --refresh`)")
        return {t: pd.read_sql_table(t, engine) for t in (*TABLES, *OPTIONAL_TABLES) if t in present}
    finally:
        engine.dispose()


def _plot(path: Path, title: str, x: pd.Series, ys: dict[str, pd.Series], kind: str, xlabel: str,
          ylabel: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    if kind == "bar":
        width = 0.8 / max(len(ys), 1)
        positions = range(len(x))
        for i, (label, y) in enumerate(ys.items()):
            ax.bar([p + i * width for p in positions], y, width=width, label=label)
        ax.set_xticks([p + width * (len(ys) - 1) / 2 for p in positions], [str(v) for v in x],
                      rotation=90 if len(x) > 20 else 0, fontsize=7 if len(x) > 20 else 9)
    else:
        for label, y in ys.items():
            ax.plot(x, y, marker="o", markersize=3, label=label)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(ys) > 1:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write(tables: dict[str, pd.DataFrame], directory: Path) -> Report:
    """The four plots and ``report.md`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    rounds, devices, ingest = tables["round_convergence"], tables["device_stats"], tables["ingest_per_minute"]
    plots = [
        _plot(directory / "loss_per_round.png", "Mean local loss per global round", rounds["round"],
              {"mean loss": rounds["mean_loss"]}, "line", "global round", "loss"),
        _plot(directory / "participants_per_round.png", "Devices per global round", rounds["round"],
              {"participants": rounds["participants"], "rejected": rounds["rejected"], "stale": rounds["stale"]},
              "bar", "global round", "devices"),
        _plot(directory / "anomaly_rate_per_device.png", "Anomaly rate per device (streaming predictions)",
              devices["device_id"], {"anomaly rate": devices["anomaly_rate"].fillna(0.0)}, "bar", "device",
              "share of readings flagged"),
        _plot(directory / "ingest_per_minute.png", "Readings stored per minute", ingest["minute"],
              {"readings": ingest["readings"]}, "line", "minute (UTC)", "readings"),
    ]
    summary = directory / "report.md"
    summary.write_text(markdown(tables, plots))
    return Report(directory, plots, summary)


def markdown(tables: dict[str, pd.DataFrame], plots: list[Path]) -> str:
    rounds, devices = tables["round_convergence"], tables["device_stats"]
    ingest, counts = tables["ingest_per_minute"], tables["pipeline_counts"]
    collections = counts[counts["kind"] == "collection"]
    dead = counts[(counts["kind"] == "dead_letter") & (counts["name"] != "(all reasons)")]
    lines = [f"# Pipeline report, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", "",
             "From the serving store the batch analytics last wrote (`fl-app spark batch`).", "", "## Data", ""]
    lines += [f"- {name}: {int(n):,} documents"
              for name, n in zip(collections["name"], collections["documents"], strict=True)]
    reasons = ", ".join(f"{name}: {int(n):,}" for name, n in zip(dead["name"], dead["documents"], strict=True))
    lines += [f"- dead letters: {int(dead['documents'].sum()):,}" + (f" ({reasons})" if reasons else "")]
    if not ingest.empty:
        lines += [f"- readings per minute: mean {ingest['readings'].mean():,.0f}, last full minute "
                  f"{int(ingest['readings'].iloc[-2] if len(ingest) > 1 else ingest['readings'].iloc[-1]):,}"]
    lines += ["", "## Federated learning", ""]
    if rounds.empty:
        lines += ["No global round yet."]
    else:
        last = rounds.iloc[-1]
        lines += [f"- global rounds: {len(rounds)} (last: round {int(last['round'])}, mean loss "
                  f"{last['mean_loss']:.4f}, {int(last['participants'])} devices, threshold {last['threshold']:.4f})",
                  f"- mean loss: first round {rounds['mean_loss'].iloc[0]:.4f}, last {last['mean_loss']:.4f}",
                  f"- devices per round: mean {rounds['participants'].mean():.1f}, min "
                  f"{int(rounds['participants'].min())}, max {int(rounds['participants'].max())}",
                  f"- updates rejected: {int(rounds['rejected'].sum())}, stale: {int(rounds['stale'].sum())}"]
    lines += ["", "## Anomalies", ""]
    scored = devices.dropna(subset=["anomaly_rate"])
    if scored.empty:
        lines += ["No streaming predictions yet."]
    else:
        flagged = (scored["anomaly_rate"] * scored["scored"]).sum()
        top = scored.nlargest(5, "anomaly_rate")
        lines += [f"- readings scored: {int(scored['scored'].sum()):,}, flagged: {int(round(flagged)):,} "
                  f"({flagged / scored['scored'].sum():.1%})", "- highest anomaly rates: " + ", ".join(
                      f"device {int(d)} {rate:.1%}" for d, rate in
                      zip(top["device_id"], top["anomaly_rate"], strict=True))]
    quality = tables.get("prediction_quality")
    if quality is not None and not quality[quality["scope"] == "overall"].empty:
        q = quality[quality["scope"] == "overall"].iloc[0]
        shown = {k: "n/a" if q[k] is None or q[k] != q[k] else f"{q[k]:.3f}" for k in ("precision", "recall", "f1")}
        lines += [f"- against the data set's labels: precision {shown['precision']}, recall {shown['recall']}, "
                  f"F1 {shown['f1']} (tp {int(q['tp'])}, fp {int(q['fp'])}, fn {int(q['fn'])})"]
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"
