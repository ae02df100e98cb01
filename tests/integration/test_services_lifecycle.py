"""`fl-app services up|down|status` with real servers: restarts keep data,
a second `up` is a no-op, and the common failures say what is wrong."""

from __future__ import annotations

import json
import socket
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from core import services, storage
from core.config import AppConfig, load_config
from core.services import ServiceError, State, jars
from tests.support.stack import private_overrides

pytestmark = pytest.mark.integration


@pytest.fixture()
def own_stack(tmp_path: Path):
    """A stack of its own, since these tests stop and restart it."""
    cfg = load_config(private_overrides(tmp_path))
    try:
        yield cfg
    finally:
        services.down(cfg)


def _states(cfg: AppConfig) -> dict[str, State]:
    return {s.name: s.state for s in services.status(cfg)}


def test_data_survives_down_and_up(own_stack: AppConfig) -> None:
    cfg = own_stack
    services.up(cfg)
    event_id = f"0-{uuid.uuid4().hex}"
    with storage.Storage.from_config(cfg.mongo) as store:
        store.device_data.insert_one({
            "event_id": event_id, "device_id": 3, "event_time": datetime.now(UTC),
            "temperature": 20.0, "humidity": 40.0, "light": 10.0, "voltage": 2.6,
        })
    producer = Producer({"bootstrap.servers": cfg.kafka.bootstrap_servers, "acks": "all"})
    producer.produce(cfg.kafka.topics.readings.name, key=b"3", value=json.dumps({"id": event_id}).encode())
    assert producer.flush(20) == 0

    assert sorted(services.down(cfg)) == ["kafka", "mongo"]
    assert set(_states(cfg).values()) == {State.STOPPED}
    services.up(cfg)
    assert set(_states(cfg).values()) == {State.RUNNING}

    with storage.Storage.from_config(cfg.mongo) as store:
        assert store.device_data.count_documents({"event_id": event_id}) == 1
        # indexes and validators came back with the data
        assert store.device_data.index_information()["event_id_unique"]["unique"]
    consumer = Consumer({"bootstrap.servers": cfg.kafka.bootstrap_servers, "group.id": "restart-check"})
    consumer.assign([TopicPartition(cfg.kafka.topics.readings.name, p, 0)
                     for p in range(cfg.kafka.topics.readings.partitions)])
    found = []
    for _ in range(20):
        found += [m for m in consumer.consume(100, timeout=0.5) if m.error() is None]
        if found:
            break
    consumer.close()
    assert [json.loads(m.value() or b"")["id"] for m in found] == [event_id]


def test_second_up_is_a_no_op(own_stack: AppConfig) -> None:
    first = {s.name: s.pid for s in services.up(own_stack).services}
    second = {s.name: s.pid for s in services.up(own_stack).services}
    assert first == second and all(first.values())


def test_a_taken_port_is_a_clear_error(own_stack: AppConfig) -> None:
    host, port = "127.0.0.1", int(own_stack.kafka.bootstrap_servers.rsplit(":", 1)[1])
    with socket.socket() as squatter:
        squatter.bind((host, port))
        squatter.listen()
        with pytest.raises(ServiceError, match=f"port {host}:{port} is already in use"):
            services.up(own_stack)
    assert _states(own_stack)["kafka"] is State.STOPPED


def test_missing_java_is_a_clear_error(own_stack: AppConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ServiceError, match="Java 17"):
        jars.require_java()
    with pytest.raises(ServiceError, match="Java 17"):
        services.up(own_stack)


def test_remote_servers_are_not_started_only_checked(tmp_path: Path) -> None:
    cfg = load_config([*private_overrides(tmp_path), "kafka=remote", "mongo=remote",
                       "kafka.bootstrap_servers=127.0.0.1:1", "mongo.uri=mongodb://127.0.0.1:1"])
    assert services.local_processes(cfg) == []
    statuses = {s.name: s for s in services.status(cfg)}
    assert statuses["kafka"].state is State.EXTERNAL and statuses["kafka"].detail == "unreachable"
    assert statuses["mongo"].state is State.EXTERNAL and statuses["mongo"].detail == "unreachable"
