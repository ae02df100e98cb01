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

from core.config import AppConfig, KafkaConfig, host_port
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
    client = "SASL_PLAINTEXT" if cfg.kafka.sasl.enabled else "PLAINTEXT"
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{host}:{ctl}",
        "listeners": f"{client}://{host}:{port},CONTROLLER://{host}:{ctl}",
        "advertised.listeners": f"{client}://{host}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": client,
        "listener.security.protocol.map": f"{client}:{client},CONTROLLER:{client}",
        **_sasl_properties(cfg, client),
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


def _sasl_properties(cfg: AppConfig, client: str) -> dict[str, str]:
    """With SASL: the pipeline logs in with PLAIN (its user listed in the broker's own JAAS line, so
    nothing must be stored in Kafka before the broker can check it), devices with SCRAM-SHA-512
    (credentials kept by the controller, made by :func:`core.topics.ensure_device_access`); ACLs
    decide what each may do, and the pipeline's principal is the only super user."""
    from core import kafka_auth

    creds = kafka_auth.pipeline_credentials(cfg.kafka, local_broker=True)
    if creds is None:
        return {}
    plain = ("org.apache.kafka.common.security.plain.PlainLoginModule required "
             f'username="{creds.username}" password="{creds.password}" user_{creds.username}="{creds.password}";')
    name = client.lower()
    return {
        "sasl.enabled.mechanisms": f"PLAIN,{kafka_auth.DEVICE_MECHANISM}",
        "sasl.mechanism.inter.broker.protocol": "PLAIN",
        "sasl.mechanism.controller.protocol": "PLAIN",
        f"listener.name.{name}.plain.sasl.jaas.config": plain,
        f"listener.name.{name}.{kafka_auth.DEVICE_MECHANISM.lower()}.sasl.jaas.config":
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
        "listener.name.controller.plain.sasl.jaas.config": plain,
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users": f"User:{creds.username}",
        "allow.everyone.if.no.acl.found": "false",
    }


def _write_configs(cfg: AppConfig) -> tuple[Path, Path]:
    from core.atomic import write_text

    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    props = run_dir / "kafka-server.properties"
    write_text(props, _server_properties(cfg), mode=0o600)  # with SASL it holds the pipeline's password
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
        health_check=lambda: topics.broker_ready(cfg.kafka, timeout=2.0),
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
    return runs_locally_for(cfg.kafka)


def runs_locally_for(kafka: KafkaConfig) -> bool:
    host, _ = host_port(kafka.bootstrap_servers)
    return kafka.local_broker.enabled and host in LOOPBACK
