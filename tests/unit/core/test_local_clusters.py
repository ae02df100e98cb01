"""The local Flink and Spark clusters: when they are started here, and the Flink cluster's configuration, written
onto the distribution's own config.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from core.config import ConfigError, load_config
from core.services import flink_cluster, spark_cluster


def test_our_settings_are_merged_into_the_distributions_nested_config(tmp_path: Path) -> None:
    cfg = load_config([f"paths.home={tmp_path}", "flink=cluster", "flink.jobmanager=127.0.0.1:18081",
                       "flink.local_cluster.slots_per_taskmanager=3", "flink.local_cluster.rpc_port=16123"])
    written = yaml.safe_load((flink_cluster.write_conf(cfg) / "config.yaml").read_text())
    assert written["rest"]["port"] == 18081 and written["rest"]["address"] == "127.0.0.1"
    assert written["jobmanager"]["rpc"] == {"address": "127.0.0.1", "port": 16123}
    assert written["taskmanager"]["numberOfTaskSlots"] == 3
    assert written["parallelism"]["default"] == 2  # flink=cluster's
    assert written["taskmanager"]["load-balance"]["mode"] == "SLOTS"
    assert "--add-opens=java.base/java.lang=ALL-UNNAMED" in written["env"]["java"]["opts"]["all"]  # kept
    assert not any("." in key for key in written)  # no flat key beside a nested one
    assert (flink_cluster.conf_dir(cfg) / "log4j-console.properties").is_file()  # flink-console.sh's logging


def test_only_a_jobmanager_on_this_machine_is_started_here(tmp_path: Path) -> None:
    home = f"paths.home={tmp_path}"
    assert not flink_cluster.runs_locally(load_config([home]))  # the mini-cluster
    assert flink_cluster.runs_locally(load_config([home, "flink=cluster", "flink.jobmanager=127.0.0.1:8081"]))
    assert not flink_cluster.runs_locally(load_config([home, "flink=cluster", "flink.jobmanager=flink.example:8081"]))
    assert not flink_cluster.runs_locally(load_config([home, "flink=cluster", "flink.local_cluster.enabled=false"]))


@pytest.mark.parametrize("value", ["8081", "host:", "host:99999", ""])
def test_a_jobmanager_that_is_not_local_or_host_port_is_refused(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match="flink.jobmanager"):
        load_config([f"paths.home={tmp_path}", f"flink.jobmanager={value}"])


def test_only_a_spark_master_on_this_machine_is_started_here(tmp_path: Path) -> None:
    home = f"paths.home={tmp_path}"
    assert not spark_cluster.runs_locally(load_config([home]))  # local[2]
    assert spark_cluster.runs_locally(load_config([home, "spark=cluster"]))
    assert spark_cluster.master_address(load_config([home, "spark=cluster"])) == ("127.0.0.1", 7077)
    assert not spark_cluster.runs_locally(load_config([home, "spark.master=spark://spark.example:7077"]))
    assert not spark_cluster.runs_locally(load_config([home, "spark=cluster", "spark.local_cluster.enabled=false"]))


@pytest.mark.parametrize("value", ["'local[0]'", "bogus", "spark://nohost", "spark://h:99999"])
def test_a_spark_master_that_is_no_master_url_is_refused(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match="spark.master"):
        load_config([f"paths.home={tmp_path}", f"spark.master={value}"])


@pytest.mark.parametrize("overrides", [["kafka.local_broker.nodes=2"], ["kafka.local_broker.nodes=1000"],
                                       ["kafka=cluster", "kafka.topics.readings.min_insync_replicas=4"]])
def test_a_kafka_cluster_that_cannot_work_is_refused(tmp_path: Path, overrides: list[str]) -> None:
    with pytest.raises(ConfigError, match="kafka.(local_broker.nodes|topics.readings.min_insync_replicas)"):
        load_config([f"paths.home={tmp_path}", *overrides])
