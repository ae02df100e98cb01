"""`fl-app reset`: removes exactly the records of what flowed, keeps caches and credentials, asks first."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from core import topics
from core.config import AppConfig, load_config
from core.services import provision
from core.storage import Storage
from fl_app.cli import app
from tests.support.stack import tenant_overrides

runner = CliRunner()

REMOVED = (".data/kafka/meta.properties", ".data/mongo/db.file", ".data/flink/checkpoints/chk-1/_metadata",
           ".data/spark/checkpoints/scorer/offsets/0", ".data/producer/state.json", ".data/analytics.db",
           ".run/pipeline.json", ".run/supervisor.json", ".run/flwr/state.db")
KEPT = (".cache/dataset/synthetic.parquet", ".cache/jars/flink/x.jar", ".data/flwr-certs/ca.crt",
        ".data/superset/superset_secret_key", ".data/superset/admin_password", ".data/superset/superset.db",
        "logs/fl_app.log", ".data/dataset_preview.png")


def populated(home: Path) -> list[str]:
    overrides = [f"paths.home={home}", "stream.dataset_records=2000"]
    for rel in (*REMOVED, *KEPT):
        (home / rel).parent.mkdir(parents=True, exist_ok=True)
        (home / rel).write_text("x")
    return overrides


def test_reset_removes_exactly_the_listed_paths_and_keeps_the_rest(tmp_path: Path) -> None:
    overrides = populated(tmp_path)
    result = runner.invoke(app, ["reset", "--yes", *overrides])
    assert result.exit_code == 0, result.output
    for rel in REMOVED:
        assert not (tmp_path / rel).exists(), rel
    for rel in KEPT:
        assert (tmp_path / rel).read_text() == "x", rel
    assert not (tmp_path / ".data/kafka").exists() and not (tmp_path / ".run").exists()
    text = " ".join(result.output.split())  # long paths wrap at the console's width
    for what in ("Kafka broker's data", "MongoDB server's data", "Flink job's checkpoints", "producer's position",
                 "and keeps:", "Superset's secret key", "certificates", "reset."):
        assert what in text, what
    again = runner.invoke(app, ["reset", "--yes", *overrides])  # nothing left to remove: fine
    assert again.exit_code == 0 and "0 removed" in again.output


def test_reset_without_yes_refuses_when_not_interactive(tmp_path: Path) -> None:
    overrides = populated(tmp_path)
    result = runner.invoke(app, ["reset", *overrides])  # CliRunner's stdin is not a terminal
    assert result.exit_code == 1
    assert "--yes" in result.output
    for rel in (*REMOVED, *KEPT):
        assert (tmp_path / rel).exists(), rel


def test_reset_refuses_remote_data_without_include_remote(tmp_path: Path) -> None:
    overrides = [*populated(tmp_path), "kafka=remote", "kafka.bootstrap_servers=10.0.0.1:9092"]
    result = runner.invoke(app, ["reset", "--yes", *overrides])
    assert result.exit_code == 1
    assert "--include-remote" in result.output and "10.0.0.1:9092" in " ".join(result.output.split())
    for rel in (*REMOVED, *KEPT):  # nothing removed, not even the local parts
        assert (tmp_path / rel).exists(), rel


@pytest.mark.integration
def test_reset_with_include_remote_deletes_the_remote_topics_and_database(stack: AppConfig, tmp_path: Path) -> None:
    """On real servers taken as remote: our topics and database go, another tenant's stay."""
    tag, other = uuid.uuid4().hex[:8], uuid.uuid4().hex[:8]
    remote = ["kafka=remote", "mongo=remote"]
    mine = load_config([*tenant_overrides(stack, tmp_path / "a", tag), *remote])
    theirs = load_config([*tenant_overrides(stack, tmp_path / "b", other), *remote])
    for cfg in (mine, theirs):
        provision(cfg)  # topics, and collections with their validators
    result = runner.invoke(app, ["reset", "--yes", "--include-remote",
                                 *tenant_overrides(stack, tmp_path / "a", tag), *remote])
    assert result.exit_code == 0, result.output
    names = set(topics.admin_client(stack.kafka).list_topics(timeout=10).topics)
    assert not {f"readings_{tag}", f"windows_{tag}", f"dlq_{tag}"} & names
    assert {f"readings_{other}", f"windows_{other}", f"dlq_{other}"} <= names
    with Storage.from_config(stack.mongo) as store:
        databases = store.client.list_database_names()
    assert f"run_{tag}" not in databases and f"run_{other}" in databases


def test_reset_of_a_local_kafka_cluster_removes_every_nodes_data(tmp_path: Path) -> None:
    from fl_app.pipeline import reset_plan

    removed = [path for _, path in reset_plan(load_config([f"paths.home={tmp_path}", "kafka=cluster"])).remove]
    assert {tmp_path / ".data" / name for name in ("kafka", "kafka-2", "kafka-3")} <= {Path(p) for p in removed}
