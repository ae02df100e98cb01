"""Three real KRaft nodes (``kafka=cluster``: each a broker and a controller, started like the single
local broker by ``core/services/kafka.py``), every topic replicated three times with two in sync.

The producer (the pipeline's own, acks=all, idempotent) replays readings while a consumer group reads
them; the leader of the first partition is killed with -9 in the middle. Producing and consuming go
on; afterwards the topic holds every reading once (nothing lost, nothing duplicated) and the live
consumer saw every one. Started again, the node rejoins: every partition has three in-sync replicas.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import ConfigResource

from core import dataset, services, topics
from core.config import PROJECT_ROOT, AppConfig, load_config
from core.services import kafka
from core.services.runner import ManagedProcess, free_port, free_port_block, kill_all
from stream.producer import ReplayProducer
from tests.support.kafka import read_topic

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TOTAL = 3000


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[AppConfig, list[ManagedProcess]]]:
    ports = [free_port() for _ in range(3)]
    cfg = load_config([f"paths.home={tmp_path}", f"paths.cache_dir={PROJECT_ROOT / '.cache'}", "kafka=cluster",
                       "kafka.bootstrap_servers='" + ",".join(f"127.0.0.1:{p}" for p in ports) + "'",
                       f"kafka.local_broker.controller_port={free_port_block(3)}", "stream.dataset_records=3000",
                       f"stream.state_file={tmp_path}/producer_state.json"])
    nodes = kafka.broker_processes(cfg)
    assert [p.name for p in nodes] == ["kafka", "kafka_2", "kafka_3"]
    assert [p.name for p in services.local_processes(cfg)][:3] == ["kafka", "kafka_2", "kafka_3"]
    try:
        for node in nodes:  # a quorum: healthy together
            node.start(wait=False)
        for node in nodes:
            node.wait_started()
        assert topics.broker_ids(cfg.kafka) == {1, 2, 3}
        topics.ensure_topics(cfg)
        yield cfg, nodes
    finally:
        kill_all(nodes)  # a last node alone cannot finish a controlled shutdown (no quorum): no use waiting


def partitions(cfg: AppConfig, topic: str) -> dict[int, tuple[int, list[int], list[int]]]:
    """``{partition: (leader, replicas, in-sync replicas)}``."""
    meta = topics.admin_client(cfg.kafka).list_topics(topic, timeout=10).topics[topic].partitions
    return {p: (m.leader, list(m.replicas), list(m.isrs)) for p, m in meta.items()}


def test_a_node_killed_mid_stream_loses_and_duplicates_nothing(cluster: tuple[AppConfig, list[ManagedProcess]]
                                                               ) -> None:
    cfg, nodes = cluster
    topic = cfg.kafka.topics.readings
    before = partitions(cfg, topic.name)
    assert len(before) == topic.partitions and all(len(r) == 3 and len(i) == 3 for _, r, i in before.values())
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic.name)
    admin = topics.admin_client(cfg.kafka)  # kept: its futures fail once the client is collected
    described = admin.describe_configs([resource])[resource].result()
    assert described["min.insync.replicas"].value == "2"

    seen: Counter = Counter()
    done = threading.Event()

    def consume() -> None:
        consumer = Consumer({"bootstrap.servers": cfg.kafka.bootstrap_servers, "group.id": f"t-{uuid.uuid4()}",
                             "auto.offset.reset": "earliest"})
        consumer.subscribe([topic.name])
        try:
            while not done.is_set():
                for m in consumer.consume(500, timeout=0.5):
                    if m.error() is None:
                        seen[json.loads(m.value() or b"{}")["event_id"]] += 1
        finally:
            consumer.close()

    paced = dataclasses.replace(cfg, stream=dataclasses.replace(
        cfg.stream, records_per_second=150, batch_size=15, max_records=TOTAL))
    producer = ReplayProducer(paced, dataset.load(cfg.stream, cfg.paths.cache_dir), "cluster-test")
    result: dict = {}
    producing = threading.Thread(target=lambda: result.setdefault("sent", producer.run().delivered), daemon=True)
    consuming = threading.Thread(target=consume, daemon=True)
    consuming.start()
    producing.start()
    try:
        time.sleep(7)  # ~1,000 readings in
        leader = before[0][0]
        victim = nodes[leader - 1]
        victim.kill()  # kill -9 the leader of partition 0
        assert victim.pid() is None and 0 < sum(seen.values()) < TOTAL
        producing.join(timeout=120)
        assert result.get("sent") == TOTAL  # producing went on: every reading acknowledged
        deadline = time.monotonic() + 60
        while len(seen) < TOTAL and time.monotonic() < deadline:
            time.sleep(0.5)
        assert len(seen) == TOTAL  # consuming went on: the group saw every reading
        assert all(leader_ != leader for leader_, _, _ in partitions(cfg, topic.name).values())
    finally:
        done.set()
        producer.stop()
    consuming.join(timeout=30)
    stored = Counter(json.loads(m.value())["event_id"]
                     for m in read_topic(cfg.kafka.bootstrap_servers, topic.name, topic.partitions))
    assert set(stored) == {f"0-{i}" for i in range(TOTAL)}  # nothing lost ...
    assert max(stored.values()) == 1  # ... nothing written twice (idempotent producer)

    victim.start()  # back: it catches up and is in sync again
    deadline = time.monotonic() + 90
    while not all(len(i) == 3 for _, _, i in partitions(cfg, topic.name).values()):
        assert time.monotonic() < deadline, partitions(cfg, topic.name)
        time.sleep(1)
