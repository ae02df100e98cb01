"""Kafka topics of the pipeline: created once, with explicit settings.

``iot_stream`` carries readings keyed by device id, the window topic has one
partition per device (a device's ClientApp reads only its own partition), and
the dead-letter topic keeps rejected records with their reason;
:func:`dead_letter_reasons` counts them by reason (``fl-app status``, the API,
the batch analytics).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic

from core import kafka_auth
from core.config import AppConfig, KafkaConfig, TopicConfig, host_port
from core.kafka_auth import client_config
from core.records import device_group, device_window_topic
from core.services.runner import port_is_open

log = logging.getLogger(__name__)


@dataclass
class TopicState:
    name: str
    partitions: int
    created: bool  # False: it already existed


_quiet = logging.getLogger("core.topics.librdkafka")


def admin_client(kafka: KafkaConfig) -> AdminClient:
    # librdkafka's own log lines go through Python logging, not raw to stderr.
    return AdminClient(client_config(kafka, logger=_quiet))


def broker_ready(kafka: KafkaConfig, timeout: float = 2.0) -> bool:
    """True once a broker of the bootstrap list answers a metadata request and lists a broker."""
    return bool(broker_ids(kafka, timeout))


def broker_ids(kafka: KafkaConfig, timeout: float = 2.0) -> set[int]:
    """The node ids the cluster lists now (empty: no answer)."""
    if not any(port_is_open(host, port) for host, port in _addresses(kafka)):  # no client, no log spam
        return set()
    try:
        return set(admin_client(kafka).list_topics(timeout=timeout).brokers)
    except KafkaException:
        return set()


def _addresses(kafka: KafkaConfig) -> list[tuple[str, int]]:
    return [host_port(part) for part in kafka.bootstrap_servers.split(",") if part.strip()]


def topic_configs(kafka: KafkaConfig) -> list[TopicConfig]:
    """The topics every run has; with SASL the windows go to a topic per device instead
    (:func:`ensure_device_access`)."""
    if kafka.sasl.enabled:
        return [kafka.topics.readings, kafka.topics.dead_letter]
    return [kafka.topics.readings, kafka.topics.windows, kafka.topics.dead_letter]


def window_topics(kafka: KafkaConfig, devices: list[int]) -> list[str]:
    """The topics that hold the devices' windows: one, or with SASL one per device."""
    if kafka.sasl.enabled:
        return [device_window_topic(kafka.topics.windows.name, d) for d in sorted(devices)]
    return [kafka.topics.windows.name]


def ensure_device_access(kafka: KafkaConfig, devices: list[int], timeout: float = 30.0) -> list[str]:
    """With SASL: each device's window topic, its SCRAM login, and ACLs that let it read that topic
    (and commit in its own consumer group, :func:`core.records.device_group`) and nothing else; returns the
    topics created. Nothing to do without SASL (one topic, no logins). Safe to repeat."""
    if not kafka.sasl.enabled:
        return []
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialAlteration,
        UserScramCredentialUpsertion,
    )

    admin = admin_client(kafka)
    spec = kafka.topics.windows
    existing = admin.list_topics(timeout=timeout).topics
    wanted = {device_window_topic(spec.name, d): d for d in devices}
    new = [NewTopic(name, num_partitions=1, replication_factor=spec.replication_factor,
                    config={"retention.ms": str(spec.retention_ms), "cleanup.policy": "delete",
                            "min.insync.replicas": str(spec.min_insync_replicas)})
           for name in wanted if name not in existing]
    for future in (admin.create_topics(new, operation_timeout=timeout).values() if new else []):
        try:
            future.result(timeout)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    mechanism = getattr(ScramMechanism, kafka_auth.DEVICE_MECHANISM.replace("-", "_"))
    logins: list[UserScramCredentialAlteration] = [
        UserScramCredentialUpsertion(c.username, ScramCredentialInfo(mechanism, 8192), c.password.encode())
        for c in (kafka_auth.device_credentials(kafka, d) for d in devices)]
    for future in admin.alter_user_scram_credentials(logins).values():
        future.result(timeout)
    acls = []
    for topic, device in wanted.items():
        principal = f"User:{kafka_auth.device_username(device)}"
        for resource, name in ((ResourceType.TOPIC, topic), (ResourceType.GROUP, device_group(spec.name, device))):
            acls.append(AclBinding(resource, name, ResourcePatternType.LITERAL, principal, "*",
                                   AclOperation.READ, AclPermissionType.ALLOW))
    for future in admin.create_acls(acls).values():  # an ACL that exists already is kept, not doubled
        future.result(timeout)
    _await_metadata(admin, {name: 1 for name in wanted}, timeout)
    log.info("device access: %d window topics (%d new), %d logins, %d ACLs",
             len(wanted), len(new), len(logins), len(acls))
    return [t.topic for t in new]


def ensure_topics(cfg: AppConfig, timeout: float = 30.0) -> list[TopicState]:
    """Create missing topics; grow partitions that are fewer than configured.

    Kafka cannot shrink a topic, so more partitions than configured are left
    as they are (with a warning): data in them is never dropped.
    """
    admin = admin_client(cfg.kafka)
    existing = admin.list_topics(timeout=timeout).topics
    wanted = topic_configs(cfg.kafka)
    new = [
        NewTopic(
            t.name,
            num_partitions=t.partitions,
            replication_factor=t.replication_factor,
            config={
                "retention.ms": str(t.retention_ms),
                "cleanup.policy": "delete",
                "min.insync.replicas": str(t.min_insync_replicas),
            },
        )
        for t in wanted
        if t.name not in existing
    ]
    if new:
        for name, future in admin.create_topics(new, operation_timeout=timeout).items():
            try:
                future.result(timeout)
            except KafkaException as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc):  # a concurrent creator won the race
                    raise
            log.info("created topic %s", name)
    grow = [
        NewPartitions(t.name, t.partitions)
        for t in wanted
        if t.name in existing and len(existing[t.name].partitions) < t.partitions
    ]
    if grow:
        for name, future in admin.create_partitions(grow, operation_timeout=timeout).items():
            future.result(timeout)
            log.info("grew topic %s", name)
    for t in wanted:
        if t.name in existing and len(existing[t.name].partitions) > t.partitions:
            log.warning(
                "topic %s has %d partitions, more than the configured %d; left as is",
                t.name, len(existing[t.name].partitions), t.partitions,
            )
    final = _await_metadata(admin, {t.name: t.partitions for t in wanted}, timeout)
    created = {t.topic for t in new}
    return [TopicState(t.name, len(final[t.name].partitions), t.name in created) for t in wanted]


def _await_metadata(admin: AdminClient, minimum: dict[str, int], timeout: float) -> dict:
    """Metadata lags creation by a moment: wait until every topic shows its partitions."""
    deadline = time.monotonic() + timeout
    while True:
        topics = admin.list_topics(timeout=timeout).topics
        if all(name in topics and len(topics[name].partitions) >= n for name, n in minimum.items()):
            return topics
        if time.monotonic() > deadline:
            missing = [name for name in minimum if name not in topics]
            raise KafkaException(f"topics not visible after {timeout:.0f}s: {missing}")
        time.sleep(0.2)


def describe_topics(cfg: AppConfig, timeout: float = 5.0) -> dict[str, int]:
    """``{topic: partitions}`` for the pipeline's topics that exist."""
    topics = admin_client(cfg.kafka).list_topics(timeout=timeout).topics
    return {t.name: len(topics[t.name].partitions) for t in topic_configs(cfg.kafka) if t.name in topics}


def dead_letter_reasons(cfg: AppConfig, max_seconds: float = 10.0) -> Counter:
    """How many dead letters there are for each reason (committed ones, read from the topic)."""
    topic = cfg.kafka.topics.dead_letter
    consumer = Consumer(client_config(cfg.kafka, **{"group.id": "fl-app-status", "enable.auto.commit": False,
                                                    "isolation.level": "read_committed"}))
    reasons: Counter = Counter()
    try:
        # OFFSET_BEGINNING, not 0: after retention deleted old segments, 0 is out of range.
        consumer.assign([TopicPartition(topic.name, p, OFFSET_BEGINNING) for p in range(topic.partitions)])
        deadline, idle_since = time.monotonic() + max_seconds, time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - idle_since < 1.0:
            batch = [m for m in consumer.consume(1000, timeout=0.3) if m.error() is None]
            if batch:
                idle_since = time.monotonic()
            for message in batch:
                try:
                    reasons[json.loads(message.value() or b"")["reason"]] += 1
                except (ValueError, KeyError, TypeError):
                    reasons["(unreadable dead letter)"] += 1
    finally:
        consumer.close()
    return reasons
