"""A device's window reader on the real broker: a window record it cannot use never stops the device.

Before the reader checked records, one that was not JSON (or carried a reading
without its fields) failed every train message of that device: the reply was
an error, the position was never committed, and the same record came back
next time. Lost: nothing but the bad record and bad readings. Duplicated: nothing.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import KafkaException, Producer, TopicPartition

from clients.windows import WindowReader
from core import services
from core.config import AppConfig, load_config
from core.records import window_record
from tests.support.poison import GOOD
from tests.support.stack import tenant_overrides

pytestmark = pytest.mark.integration


def read_once_the_coordinator_is_up(reader: WindowReader, timeout: float = 90) -> list:
    """A broker started for this session creates its offsets topic on the first group's request."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return reader.read_new(max_seconds=20)
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def test_bad_window_records_are_left_out_and_the_position_moves_past_them(stack: AppConfig, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    cfg = load_config(tenant_overrides(stack, tmp_path, tag))
    services.provision(cfg)
    topic, device, partition = cfg.kafka.topics.windows.name, 2, 1
    good = [{**GOOD, "device_id": device, "event_id": f"w-{i}", "seq": i} for i in range(4)]
    records: list[bytes | None] = [
        json.dumps(window_record(device, "a", "b", good[:2])).encode(),
        b"\xff not json",
        None,
        json.dumps({"device_id": device}).encode(),  # no readings
        json.dumps(window_record(7, "a", "b", good[:1])).encode(),  # another device's window here
        json.dumps(window_record(device, "a", "b", [
            {**good[2], "temperature": "hot"}, {**good[2], "source_time": "noon"},
            {k: v for k, v in good[2].items() if k != "voltage"}, "not a reading", good[2]])).encode(),  # type: ignore[list-item]
        b"[" * 5000 + b"]" * 5000,
        json.dumps(window_record(device, "a", "b", good[3:])).encode(),
    ]
    producer = Producer({"bootstrap.servers": cfg.kafka.bootstrap_servers})
    for value in records:
        producer.produce(topic, value=value, key=str(device).encode(), partition=partition)
    assert producer.flush(20) == 0
    group = f"fl-device-test-{tag}"
    reader = WindowReader(cfg.kafka.bootstrap_servers, topic, partition, group, device)
    try:
        windows = read_once_the_coordinator_is_up(reader)
        reader.commit()
    finally:
        reader.close()
    got = [r["event_id"] for w in windows for r in w["readings"]]
    assert got == ["w-0", "w-1", "w-2", "w-3"]  # every good reading once, the bad ones left out
    again = WindowReader(cfg.kafka.bootstrap_servers, topic, partition, group, device)
    try:
        assert again.read_new(max_seconds=5) == []  # committed past the bad records: they never come back
    finally:
        again.close()


def test_consecutive_reads_of_transactional_windows_tile_the_partition(stack: AppConfig, tmp_path: Path) -> None:
    """Flink writes windows in transactions; each commit leaves a marker that takes an offset and is never
    delivered. The reads' positions (an update's lineage, core.messages.Source) must still meet end to
    end, and a read to the end must commit past the marker, so that the next read with nothing new is
    answered without a fetch. Before, each update began at its first record: every marker looked like a
    record consumed without a trace, and the position stopped on the marker, so every idle read fetched."""
    tag = uuid.uuid4().hex[:8]
    cfg = load_config(tenant_overrides(stack, tmp_path, tag))
    services.provision(cfg)
    topic, device, partition = cfg.kafka.topics.windows.name, 3, 2
    producer = Producer({"bootstrap.servers": cfg.kafka.bootstrap_servers, "transactional.id": f"tx-{tag}"})
    producer.init_transactions(30)

    def transaction(first: int, count: int) -> None:
        producer.begin_transaction()
        for i in range(first, first + count):
            reading = {**GOOD, "device_id": device, "event_id": f"t-{i}", "seq": i}
            producer.produce(topic, value=json.dumps(window_record(device, "a", "b", [reading])).encode(),
                             key=str(device).encode(), partition=partition)
        producer.commit_transaction(30)

    group = f"fl-device-tiles-{tag}"
    spans, got = [], []
    for first, count in ((0, 3), (3, 2), (5, 4)):
        transaction(first, count)
        reader = WindowReader(cfg.kafka.bootstrap_servers, topic, partition, group, device)
        try:
            got += [r["event_id"] for w in read_once_the_coordinator_is_up(reader) for r in w["readings"]]
            reader.commit()
            assert reader.first_offset is not None and reader.next_offset is not None
            spans.append((reader.first_offset, reader.next_offset - 1))
            _, high = reader.consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            assert reader.next_offset == high  # past the marker: nothing left to fetch
        finally:
            reader.close()
    assert got == [f"t-{i}" for i in range(9)]  # each reading once, in order
    # 9 records and 3 markers, in three spans that meet end to end.
    assert spans[0][0] == 0 and spans[-1][1] == 9 + 3 - 1
    assert all(spans[i][1] + 1 == spans[i + 1][0] for i in range(len(spans) - 1)), spans
    idle = WindowReader(cfg.kafka.bootstrap_servers, topic, partition, group, device)
    try:
        assert idle.read_new(max_seconds=5) == [] and idle.first_offset is None  # answered from the offsets
    finally:
        idle.close()
