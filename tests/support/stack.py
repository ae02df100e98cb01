"""Servers of a test's or a benchmark's own, so they never touch a user's running services: a
private stack (a broker and a MongoDB-wire server on free ports), and tenants sharing one."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from core.config import PROJECT_ROOT, AppConfig, load_config
from core.services import down, up
from core.services.runner import free_port, free_port_block


def federation_ports() -> list[str]:
    """Free ports for a SuperLink (its Fleet API, and its control API at the next port) and 64 SuperNodes,
    below the ephemeral range: a port there stays free, where an outgoing connection took the control
    API's port next to a :func:`free_port` once (CI)."""
    return [f"fl.superlink_address=127.0.0.1:{free_port_block(2)}", f"fl.supernode_base_port={free_port_block(64)}"]


def private_overrides(home: Path) -> list[str]:
    """Overrides for a stack of its own: home under ``home``, free ports, the project's jar cache.

    Tests and benchmarks use it so they never touch a user's running services.
    """
    return [
        f"paths.home={home}",
        f"paths.cache_dir={PROJECT_ROOT / '.cache'}",
        f"kafka.bootstrap_servers=127.0.0.1:{free_port()}",
        f"kafka.local_broker.controller_port={free_port()}",
        f"mongo.uri=mongodb://127.0.0.1:{free_port()}",
        *federation_ports(),
        f"api.port={free_port()}",
        f"superset.port={free_port()}",
    ]


def tenant_overrides(stack: AppConfig, home: Path, tag: str) -> list[str]:
    """Overrides for a run of its own on a shared ``stack`` (tests, benchmarks): its own home, and a
    database, topics and Flink consumer group named after ``tag``, on the stack's servers."""
    return [
        f"paths.home={home}", f"paths.cache_dir={PROJECT_ROOT / '.cache'}",
        f"kafka.bootstrap_servers={stack.kafka.bootstrap_servers}", f"mongo.uri={stack.mongo.uri}",
        f"mongo.database=run_{tag}", f"kafka.topics.readings.name=readings_{tag}",
        f"kafka.topics.windows.name=windows_{tag}", f"kafka.topics.dead_letter.name=dlq_{tag}",
        f"flink.group_id=flink-{tag}",
    ]


@contextlib.contextmanager
def private_stack(home: Path, extra: Sequence[str] = ()) -> Iterator[AppConfig]:
    """A running broker and MongoDB-wire server of their own, stopped on exit."""
    cfg = load_config([*private_overrides(home), *extra])
    try:
        up(cfg)
        yield cfg
    finally:
        down(cfg)
