"""Kafka with SASL and ACLs (the production profile's setting) on a real broker of its own.

A device's credentials read its own window topic and commit in its own group, and nothing else:
not device 4's windows, not its group, not the raw readings; they cannot write. A client without
a login, or with a wrong password, is refused. The pipeline's login (the one super user) runs the
real Flink job, which writes each device's windows into that device's topic; device 3 reads its
own through the ClientApp's WindowReader. Nothing is lost: every reading of device 3 that was
produced is in device 3's windows, once.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from clients.windows import WindowReader
from core import dataset, kafka_auth, services
from core.config import AppConfig, load_config
from core.records import device_group, device_window_topic
from core.services.runner import ManagedProcess
from tests.integration.test_flink_job import produce, wait_for
from tests.support.stack import private_overrides

pytestmark = [pytest.mark.integration, pytest.mark.slow]
FL_APP = Path(sys.executable).parent / "fl-app"
MINE, OTHER = 3, 4
HIDDEN = (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError._UNKNOWN_PARTITION, KafkaError.UNKNOWN_TOPIC_OR_PART)


@pytest.fixture(scope="module")
def sasl_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AppConfig, list[str]]]:
    home = tmp_path_factory.mktemp("sasl")
    overrides = [*private_overrides(home), "kafka.sasl.enabled=true", "stream.dataset_records=3000",
                 "fl.local_training_interval_seconds=3", "flink.checkpoint_interval_ms=1000",
                 f"stream.state_file={home}/producer_state.json"]
    cfg = load_config(overrides)
    try:
        services.up(cfg)
        yield cfg, overrides
    finally:
        services.down(cfg)


@pytest.fixture
def sasl_stack(sasl_run: tuple[AppConfig, list[str]]) -> AppConfig:
    return sasl_run[0]


def device_conf(cfg: AppConfig, device: int, **extra: object) -> dict:
    return {"bootstrap.servers": cfg.kafka.bootstrap_servers,
            **kafka_auth.device_credentials(cfg.kafka, device).librdkafka(), **extra}


def records_read(consumer: Consumer, seconds: float = 8.0) -> list[bytes | None]:
    """The records a consumer gets in ``seconds`` (errors are not records)."""
    got, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and message.error() is None:
            got.append(message.value())
    return got


def test_logins_are_files_of_their_owner_only_and_not_on_the_broker_command_line(sasl_stack: AppConfig) -> None:
    cfg = sasl_stack
    files = sorted(Path(cfg.kafka.sasl.logins_dir).glob("*.json"))
    assert len(files) == len(dataset.device_ids(cfg.stream, cfg.paths.cache_dir)) + 1  # every device + pipeline
    assert all(f.stat().st_mode & 0o077 == 0 for f in files)
    props = Path(cfg.paths.run_dir) / "kafka-server.properties"
    assert props.stat().st_mode & 0o077 == 0
    secret = kafka_auth.pipeline_credentials(cfg.kafka, local_broker=True)
    assert secret is not None and secret.password in props.read_text()
    broker_pid = int((Path(cfg.paths.run_dir) / "kafka.pid").read_text().split()[0])
    assert secret.password.encode() not in Path(f"/proc/{broker_pid}/cmdline").read_bytes()


def test_no_login_or_a_wrong_password_is_refused(sasl_stack: AppConfig) -> None:
    cfg = sasl_stack
    with pytest.raises(KafkaException):
        AdminClient({"bootstrap.servers": cfg.kafka.bootstrap_servers}).list_topics(timeout=5)
    wrong = kafka_auth.device_credentials(cfg.kafka, MINE).librdkafka() | {"sasl.password": "not-the-password"}
    with pytest.raises(KafkaException):
        AdminClient({"bootstrap.servers": cfg.kafka.bootstrap_servers, **wrong}).list_topics(timeout=5)


def test_a_device_reads_only_its_own_windows_and_group(sasl_stack: AppConfig) -> None:
    cfg = sasl_stack
    windows = cfg.kafka.topics.windows.name
    pipeline = Producer(kafka_auth.client_config(cfg.kafka, acks="all"))
    for device in (MINE, OTHER):
        pipeline.produce(device_window_topic(windows, device), key=str(device),
                         value=json.dumps({"device_id": device, "window_start": "", "window_end": "",
                                           "count": 0, "readings": []}))
    assert pipeline.flush(15) == 0

    meta = AdminClient(device_conf(cfg, MINE)).list_topics(timeout=10)
    assert device_window_topic(windows, MINE) in meta.topics  # a device sees its own topic only
    assert device_window_topic(windows, OTHER) not in meta.topics and cfg.kafka.topics.readings.name not in meta.topics

    mine = Consumer(device_conf(cfg, MINE, **{"group.id": device_group(windows, MINE), "enable.auto.commit": False}))
    try:
        mine.assign([TopicPartition(device_window_topic(windows, MINE), 0, 0)])
        message = mine.poll(15)
        assert message is not None and message.error() is None
        assert json.loads(message.value() or b"")["device_id"] == MINE
        mine.commit(message=message, asynchronous=False)  # its own group: allowed

        for topic in (device_window_topic(windows, OTHER), cfg.kafka.topics.readings.name):
            # The broker does not even show the topic to device 3 (librdkafka: "unknown partition")
            with pytest.raises(KafkaException) as denied:  # what the WindowReader asks first
                mine.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
            assert denied.value.args[0].code() in HIDDEN, (topic, denied.value)
            mine.assign([TopicPartition(topic, 0, 0)])
            assert records_read(mine) == [], topic  # device 4's window record is there: not for device 3
    finally:
        mine.close()

    # Device 3 cannot move a position in device 4's group (the broker refuses to find its
    # coordinator: librdkafka retries until its timeout); the pipeline sees nothing committed there.
    foreign_group = Consumer(device_conf(cfg, MINE, **{"group.id": device_group(windows, OTHER)}))
    try:
        with pytest.raises(KafkaException):  # "waiting for coordinator", or timed out
            foreign_group.commit(offsets=[TopicPartition(device_window_topic(windows, MINE), 0, 1)],
                                 asynchronous=False)
    finally:
        foreign_group.close()
    watcher = Consumer(kafka_auth.client_config(cfg.kafka, **{"group.id": device_group(windows, OTHER)}))
    try:
        assert watcher.committed([TopicPartition(device_window_topic(windows, MINE), 0)], timeout=10)[0].offset < 0
    finally:
        watcher.close()

    errors: list[KafkaError | None] = []
    writer = Producer(device_conf(cfg, MINE))
    writer.produce(device_window_topic(windows, MINE), value=b"{}", on_delivery=lambda err, _: errors.append(err))
    writer.flush(15)
    assert errors and errors[0] is not None and errors[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_the_flink_job_writes_each_devices_windows_to_its_own_topic(sasl_run: tuple[AppConfig, list[str]]) -> None:
    """Produced, stored and windowed with the pipeline's login; read back with device 3's: every
    reading of device 3 once, none of another device; device 4's topic stays closed to it."""
    cfg, overrides = sasl_run
    job = ManagedProcess(name="flink_job", argv=[str(FL_APP), "flink", *overrides], run_dir=Path(cfg.paths.run_dir),
                         logs_dir=Path(cfg.paths.logs_dir), startup_timeout=10, stop_timeout=20)
    job.start()
    try:
        sent = produce(cfg, pace=False, max_records=1500)
        ids = dataset.load(cfg.stream, cfg.paths.cache_dir)["device_id"].iloc[:sent].tolist()
        expected = {f"0-{seq}" for seq, device in enumerate(ids) if device == MINE}
        assert expected
        windows = cfg.kafka.topics.windows.name
        reader = WindowReader(cfg.kafka.bootstrap_servers, device_window_topic(windows, MINE), 0,
                              device_group(windows, MINE), MINE,
                              login=kafka_auth.device_credentials(cfg.kafka, MINE).librdkafka())
        seen: list[str] = []

        def all_windowed() -> bool:
            try:
                windows = reader.read_new()
            except KafkaException as exc:  # a fresh broker's group coordinator still loading: ask again
                if not exc.args[0].retriable():
                    raise
                return False
            seen.extend(r["event_id"] for w in windows for r in w["readings"])
            reader.commit()
            return set(seen) >= expected

        try:
            wait_for("device 3's readings in its window topic", all_windowed, timeout=240, job=job)
        finally:
            reader.close()
        assert len(seen) == len(set(seen)) and set(seen) == expected  # none lost, none twice, no stranger's
    finally:
        job.stop()

