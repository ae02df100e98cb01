"""`fl-app report`: plots and summary from the serving store's tables (SQLite here, as by default)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import create_engine

from analytics import report


def store(tmp_path: Path, skip: str = "") -> str:
    url = f"sqlite:///{tmp_path / 'serving.db'}"
    minutes = pd.date_range("2026-11-28 10:00", periods=4, freq="min")
    tables = {
        "round_convergence": pd.DataFrame({"round": [1, 2, 3], "aggregated_at": minutes[:3],
                                           "participants": [3, 5, 4], "readings": [30, 50, 40],
                                           "mean_loss": [0.9, 0.5, 0.25], "rejected": [0, 1, 0], "stale": [0, 0, 2],
                                           "threshold": [1.5, 1.2, 1.1]}),
        "device_stats": pd.DataFrame({"device_id": [1, 2, 7], "readings": [10, 20, 30],
                                      "scored": [10, 20, None], "anomaly_rate": [0.1, 0.3, None]}),
        "ingest_per_minute": pd.DataFrame({"minute": minutes, "readings": [600, 590, 610, 120]}),
        "pipeline_counts": pd.DataFrame({"kind": ["collection", "collection", "dead_letter", "dead_letter"],
                                         "name": ["device_data", "predictions", "(all reasons)", "not JSON"],
                                         "documents": [1920, 30, 4, 4]}),
        "prediction_quality": pd.DataFrame({"scope": ["overall"], "key": ["all"], "tp": [3], "fp": [1], "fn": [2],
                                            "tn": [24], "precision": [0.75], "recall": [0.6], "f1": [2 / 3]}),
    }
    engine = create_engine(url)
    with engine.begin() as connection:
        for name, frame in tables.items():
            if name != skip:
                frame.to_sql(name, connection, index=False)
    engine.dispose()
    return url


def test_report_writes_four_plots_and_the_numbers(tmp_path: Path) -> None:
    written = report.write(report.read_tables(store(tmp_path)), tmp_path / "out")
    assert [p.name for p in written.plots] == ["loss_per_round.png", "participants_per_round.png",
                                               "anomaly_rate_per_device.png", "ingest_per_minute.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000 for p in written.plots)
    text = written.summary.read_text()
    assert "- device_data: 1,920 documents" in text and "- dead letters: 4 (not JSON: 4)" in text
    assert "global rounds: 3 (last: round 3, mean loss 0.2500, 4 devices" in text
    assert "first round 0.9000" in text and "updates rejected: 1, stale: 2" in text
    assert "readings scored: 30, flagged: 7 (23.3%)" in text  # 1 of 10 + 6 of 20; device 7 not scored
    assert "highest anomaly rates: device 2 30.0%, device 1 10.0%" in text
    assert "precision 0.750, recall 0.600, F1 0.667" in text
    assert "readings per minute: mean 480, last full minute 610" in text
    assert all(f"]({p.name})" in text for p in written.plots)


def test_a_store_without_batch_results_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no round_convergence yet: run `fl-app spark batch`"):
        report.read_tables(store(tmp_path, skip="round_convergence"))
