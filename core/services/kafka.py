"""The local Apache Kafka broker: one JVM in KRaft mode (broker + controller).

Its classpath comes from ``poms/kafka-broker.xml`` (Maven Central), its
storage lives in ``<data_dir>/kafka`` and is formatted once, and its
configuration is written from the Hydra config on every start so a changed
port takes effect.
"""

from __future__ import annotations

import base64
import subprocess
import uuid
from pathlib import Path

from core.config import AppConfig, host_port
from core.services import jars
from core.services.runner import LOOPBACK, ManagedProcess, ServiceError

NAME = "kafka"

_LOG4J2 = """\
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = info
logger.state.name = state.change.logger
logger.state.level = warn
logger.request.name = kafka.request.logger
logger.request.level = warn
logger.network.name = kafka.network.RequestChannel$
logger.network.level = warn
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = warn
"""


def storage_dir(cfg: AppConfig) -> Path:
    return Path(cfg.paths.data_dir) / "kafka"


def _server_properties(cfg: AppConfig) -> str:
    host, port = host_port(cfg.kafka.bootstrap_servers)
    ctl = cfg.kafka.local_broker.controller_port
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{host}:{ctl}",
        "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{ctl}",
        "advertised.listeners": f"PLAINTEXT://{host}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(storage_dir(cfg)),
        # Topics are created explicitly by core.topics, never by accident.
        "auto.create.topics.enable": "false",
        "num.partitions": "1",
        # A single node: every internal topic has one replica.
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
    }
    return "".join(f"{k}={v}\n" for k, v in props.items())


def _write_configs(cfg: AppConfig) -> tuple[Path, Path]:
    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    props = run_dir / "kafka-server.properties"
    props.write_text(_server_properties(cfg))
    log4j = run_dir / "kafka-log4j2.properties"
    log4j.write_text(_LOG4J2)
    return props, log4j


def _format_storage_once(java: str, classpath: str, props: Path, cfg: AppConfig) -> None:
    """KRaft needs its log dir formatted with a cluster id, exactly once."""
    if (storage_dir(cfg) / "meta.properties").is_file():
        return
    storage_dir(cfg).mkdir(parents=True, exist_ok=True)
    cluster_id = "-"
    while cluster_id.startswith("-"):  # a leading dash would read as a command-line flag
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    proc = subprocess.run(
        [java, "-cp", classpath, "kafka.tools.StorageTool", "format",
         "-t", cluster_id, "-c", str(props), "--ignore-formatted"],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        raise ServiceError(f"formatting Kafka storage failed:\n{(proc.stdout + proc.stderr)[-2000:]}")


def broker_process(cfg: AppConfig) -> ManagedProcess:
    """The broker as a ManagedProcess (jars and storage are prepared on launch)."""
    from core import topics  # confluent_kafka import kept out of module import time

    host, port = host_port(cfg.kafka.bootstrap_servers)
    return ManagedProcess(
        name=NAME,
        argv=[],
        prepare=lambda: _prepare(cfg),
        run_dir=Path(cfg.paths.run_dir),
        logs_dir=Path(cfg.paths.logs_dir),
        ports=[(host, port), (host, cfg.kafka.local_broker.controller_port)],
        health_check=lambda: topics.broker_ready(cfg.kafka.bootstrap_servers, timeout=2.0),
        startup_timeout=cfg.kafka.local_broker.startup_timeout_seconds,
        address=f"{host}:{port}",
    )


def _prepare(cfg: AppConfig) -> list[str]:
    """Resolve the classpath, write configs, format storage; return the command line."""
    java = jars.require_java()
    classpath = str(jars.resolve("kafka-broker", Path(cfg.paths.cache_dir)) / "*")
    props, log4j = _write_configs(cfg)
    _format_storage_once(java, classpath, props, cfg)
    heap = cfg.kafka.local_broker.heap
    return [
        java, f"-Xmx{heap}", f"-Xms{heap}", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
        "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={log4j}",
        "-cp", classpath, "kafka.Kafka", str(props),
    ]


def runs_locally(cfg: AppConfig) -> bool:
    """Start our own broker only when enabled and the bootstrap address is on this machine."""
    host, _ = host_port(cfg.kafka.bootstrap_servers)
    return cfg.kafka.local_broker.enabled and host in LOOPBACK
