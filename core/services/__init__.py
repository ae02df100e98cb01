"""Local servers that the pipeline needs, run as plain processes (no Docker).

:func:`up` starts what the config says should run here (a Kafka broker when
``kafka.bootstrap_servers`` is local and ``kafka.local_broker.enabled``; a
MongoDB-wire server likewise for ``mongo.uri``; a Flink session cluster when
``flink.jobmanager`` is this machine's, a Spark standalone cluster when
``spark.master`` is), then creates the topics and
the collections. :func:`down` stops them; :func:`status` reports them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from core import mongo_auth
from core.config import AppConfig
from core.secrets import redact_url
from core.services import flink_cluster, kafka, mongo, spark_cluster
from core.services.runner import ManagedProcess, ServiceError, State, Status

log = logging.getLogger(__name__)

__all__ = ["ServiceError", "Status", "State", "Readiness", "local_processes", "up", "down", "status", "provision"]


def local_processes(cfg: AppConfig) -> list[ManagedProcess]:
    """The processes this machine runs for ``cfg``, in start order."""
    procs = []
    if kafka.runs_locally(cfg):
        procs.extend(kafka.broker_processes(cfg))
    if mongo.runs_locally(cfg):
        procs.append(mongo.server_process(cfg))
    if flink_cluster.runs_locally(cfg):
        procs.extend(flink_cluster.processes(cfg))
    if spark_cluster.runs_locally(cfg):
        procs.extend(spark_cluster.processes(cfg))
    return procs


@dataclass
class Readiness:
    """What `up` found or made: services, topics and collections."""

    services: list[Status] = field(default_factory=list)
    topics: dict[str, int] = field(default_factory=dict)
    collections: dict[str, int] = field(default_factory=dict)


def up(cfg: AppConfig) -> Readiness:
    """Start local servers (idempotent) and provision topics and collections."""
    procs = local_processes(cfg)
    brokers = [p for p in procs if p.name.startswith(kafka.NAME)]
    for proc in brokers:  # a quorum of several nodes becomes healthy together
        proc.start(wait=False)
    for proc in brokers:
        proc.wait_started()
    for proc in procs:
        if proc not in brokers:
            proc.start()
    ready = provision(cfg)
    ready.services = status(cfg)
    return ready


def provision(cfg: AppConfig) -> Readiness:
    """Create the topics and the MongoDB collections with indexes and validators."""
    from core import storage, topics  # imported here: both pull in client libraries

    ready = Readiness()
    try:
        ready.topics = {t.name: t.partitions for t in topics.ensure_topics(cfg)}
        if cfg.kafka.sasl.enabled:
            from core import dataset

            devices = dataset.device_ids(cfg.stream, cfg.paths.cache_dir)
            topics.ensure_device_access(cfg.kafka, devices)
            ready.topics |= {name: 1 for name in topics.window_topics(cfg.kafka, devices)}
    except Exception as exc:  # confluent_kafka raises KafkaException / KafkaError
        raise ServiceError(f"cannot create Kafka topics at {cfg.kafka.bootstrap_servers}: {exc}") from exc
    try:
        with storage.Storage.from_config(cfg.mongo) as store:
            store.ensure_schema()
            ready.collections = store.counts()
    except Exception as exc:  # pymongo errors
        raise ServiceError(f"cannot set up MongoDB at {redact_url(cfg.mongo.uri)}: {exc}") from exc
    return ready


def down(cfg: AppConfig) -> list[str]:
    """Stop local servers in reverse start order; returns the names stopped."""
    stopped = []
    for proc in reversed(local_processes(cfg)):
        if proc.stop():
            stopped.append(proc.name)
    return stopped


def status(cfg: AppConfig) -> list[Status]:
    """One Status per service, including the external ones we only check."""
    from core import storage, topics

    out: list[Status] = []
    local = {p.name: p for p in local_processes(cfg)}
    if kafka.NAME in local:
        out.extend(p.status() for name, p in local.items() if name.startswith(kafka.NAME))
    else:
        ok = topics.broker_ready(cfg.kafka, timeout=2.0)
        out.append(Status(kafka.NAME, State.EXTERNAL, address=cfg.kafka.bootstrap_servers,
                          detail="reachable" if ok else "unreachable"))
    if mongo.NAME in local:
        out.append(local[mongo.NAME].status())
    else:
        ok = storage.ping(mongo_auth.client_uri(cfg.mongo), timeout_ms=2000)
        out.append(Status(mongo.NAME, State.EXTERNAL, address="{}:{}".format(*mongo.uri_host_port(cfg.mongo.uri)),
                          detail="reachable" if ok else "unreachable"))
    out.extend(p.status() for name, p in local.items() if name.startswith(("flink_", "spark_")))
    return out
