"""The local Apache Kafka brokers: ``kafka.local_broker.nodes`` JVMs in KRaft mode, each a broker and
a controller (one by default; three with ``kafka=cluster``, a quorum that outlives one node).

Node ``n`` listens on the ``n``-th address of ``kafka.bootstrap_servers`` and on
``controller_port + n - 1``. The classpath comes from ``poms/kafka-broker.xml`` (Maven Central),
each node's storage lives in ``<data_dir>/kafka`` (node 1) or ``<data_dir>/kafka-<n>`` and is
formatted once with the cluster's one id, and the configuration is written from the Hydra config
on every start so a changed port takes effect.
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
DEVICES = "DEVICES"  # the listener name of kafka.device_bootstrap_servers

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


def storage_dir(cfg: AppConfig, node: int = 1) -> Path:
    return Path(cfg.paths.data_dir) / ("kafka" if node == 1 else f"kafka-{node}")


def node_name(node: int) -> str:
    return NAME if node == 1 else f"{NAME}_{node}"


def node_addresses(kafka: KafkaConfig) -> list[tuple[str, int]]:
    """``host:port`` of each local node, in node order (the bootstrap list)."""
    return [host_port(part) for part in kafka.bootstrap_servers.split(",") if part.strip()]


def _server_properties(cfg: AppConfig, node: int = 1) -> str:
    nodes = cfg.kafka.local_broker.nodes
    addresses = node_addresses(cfg.kafka)
    host, port = addresses[node - 1]
    ctl = cfg.kafka.local_broker.controller_port + node - 1
    voters = ",".join(f"{n}@{addresses[n - 1][0]}:{cfg.kafka.local_broker.controller_port + n - 1}"
                      for n in range(1, nodes + 1))
    client = "SASL_PLAINTEXT" if cfg.kafka.sasl.enabled else "PLAINTEXT"
    replicas = str(min(nodes, 3))  # Kafka's internal topics: on every node, up to three
    min_isr = str(min(nodes, 2))  # ... and writable with one of three down
    devices = device_addresses(cfg.kafka)
    device_listener = f",{DEVICES}://{devices[node - 1][0]}:{devices[node - 1][1]}" if devices else ""
    props = {
        "process.roles": "broker,controller",
        "node.id": str(node),
        "controller.quorum.voters": voters,
        "listeners": f"{client}://{host}:{port},CONTROLLER://{host}:{ctl}{device_listener}",
        "advertised.listeners": f"{client}://{host}:{port}{device_listener}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": client,
        "listener.security.protocol.map": f"{client}:{client},CONTROLLER:{client}"
                                          + (f",{DEVICES}:{client}" if devices else ""),
        **_sasl_properties(cfg, client, devices=bool(devices)),
        "log.dirs": str(storage_dir(cfg, node)),
        # Topics are created explicitly by core.topics, never by accident.
        "auto.create.topics.enable": "false",
        "num.partitions": "1",
        "offsets.topic.replication.factor": replicas,
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": min_isr,
        "share.coordinator.state.topic.replication.factor": replicas,
        "share.coordinator.state.topic.min.isr": min_isr,
        "group.initial.rebalance.delay.ms": "0",
    }
    return "".join(f"{k}={v}\n" for k, v in props.items())


def device_addresses(kafka: KafkaConfig) -> list[tuple[str, int]]:
    """``host:port`` of each local node's listener for devices (``kafka.device_bootstrap_servers``); none
    without one."""
    return [host_port(part) for part in (kafka.device_bootstrap_servers or "").split(",") if part.strip()]


def _sasl_properties(cfg: AppConfig, client: str, devices: bool = False) -> dict[str, str]:
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
        # The devices' listener (another network) takes device logins only: no password crosses it.
        **({f"listener.name.{DEVICES.lower()}.sasl.enabled.mechanisms": kafka_auth.DEVICE_MECHANISM,
            f"listener.name.{DEVICES.lower()}.{kafka_auth.DEVICE_MECHANISM.lower()}.sasl.jaas.config":
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"} if devices else {}),
        "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
        "listener.name.controller.plain.sasl.jaas.config": plain,
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users": f"User:{creds.username}",
        "allow.everyone.if.no.acl.found": "false",
    }


def _write_configs(cfg: AppConfig, node: int) -> tuple[Path, Path]:
    from core.atomic import write_text

    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    props = run_dir / ("kafka-server.properties" if node == 1 else f"kafka-{node}-server.properties")
    write_text(props, _server_properties(cfg, node), mode=0o600)  # with SASL it holds the pipeline's password
    log4j = run_dir / "kafka-log4j2.properties"
    log4j.write_text(_LOG4J2)
    return props, log4j


def _cluster_id(cfg: AppConfig) -> str:
    """The id every node's storage is formatted with: made once, kept beside the storage."""
    from core.atomic import write_text

    path = Path(cfg.paths.data_dir) / "kafka-cluster-id"
    if path.is_file():
        return path.read_text().strip()
    cluster_id = "-"
    while cluster_id.startswith("-"):  # a leading dash would read as a command-line flag
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, cluster_id)
    return cluster_id


def _format_storage_once(java: str, classpath: str, props: Path, cfg: AppConfig, node: int) -> None:
    """KRaft needs its log dir formatted with a cluster id, exactly once."""
    if (storage_dir(cfg, node) / "meta.properties").is_file():
        return
    storage_dir(cfg, node).mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [java, "-cp", classpath, "kafka.tools.StorageTool", "format",
         "-t", _cluster_id(cfg), "-c", str(props), "--ignore-formatted"],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        raise ServiceError(f"formatting Kafka storage failed:\n{(proc.stdout + proc.stderr)[-2000:]}")


def broker_processes(cfg: AppConfig) -> list[ManagedProcess]:
    """One ManagedProcess per node (jars and storage are prepared on launch). A node is healthy once
    the cluster lists it: with several, a quorum must be up first, so they are launched together."""
    from core import topics  # confluent_kafka import kept out of module import time

    def node_process(node: int, host: str, port: int) -> ManagedProcess:
        return ManagedProcess(
            name=node_name(node),
            argv=[],
            prepare=lambda: _prepare(cfg, node),
            run_dir=Path(cfg.paths.run_dir),
            logs_dir=Path(cfg.paths.logs_dir),
            ports=[(host, port), (host, cfg.kafka.local_broker.controller_port + node - 1)],
            health_check=lambda: node in topics.broker_ids(cfg.kafka, timeout=2.0),
            startup_timeout=cfg.kafka.local_broker.startup_timeout_seconds,
            address=f"{host}:{port}",
        )

    addresses = node_addresses(cfg.kafka)
    return [node_process(n, *addresses[n - 1]) for n in range(1, cfg.kafka.local_broker.nodes + 1)]


def _prepare(cfg: AppConfig, node: int) -> list[str]:
    """Resolve the classpath, write configs, format storage; return the command line."""
    java = jars.require_java()
    classpath = str(jars.resolve("kafka-broker", Path(cfg.paths.cache_dir)) / "*")
    props, log4j = _write_configs(cfg, node)
    _format_storage_once(java, classpath, props, cfg, node)
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
