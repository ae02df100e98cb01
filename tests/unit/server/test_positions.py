"""The server's account of each device's window stream (server/positions.py), in the ServerApp's loop with
the stand-in grid: a reply lost after the device committed its records (a SuperNode killed, a reply
refused, a ServerApp that died with updates pending) is read again from where the account ends, so no
record is consumed without a trace and none is trained on twice. Lost: nothing. Duplicated: nothing."""

from __future__ import annotations

import time
from typing import Any

from flwr.app import RecordDict

from core.messages import Source, TrainInstruction
from server.positions import Positions
from tests.unit.server.test_admission import Grid, key_pair, make_server, reasons, running_serverapp, tick
from tests.unit.server.test_aggregation import LATEST, MongoStand, update

__all__ = ["running_serverapp"]  # test_admission's autouse fixture: a ServerApp's task identity, round 0
PARTITION = {1: 0, 2: 1, 3: 2, 4: 3}  # test_admission's devices in partition order


def reply(device: int, first: int, last: int, base: int = 5) -> RecordDict:
    u = update(device, 1.0, examples=last - first + 1, base=base)
    u.source = Source("windows", PARTITION[device], first, last, 1, f"{device}-{first}", f"{device}-{last}", 0, 0)
    return u.to_record()


class TellingGrid(Grid):
    """The stand-in grid, keeping each node's newest message whole."""

    def __init__(self, keys: dict[int, bytes]) -> None:
        super().__init__(keys)
        self.messages: dict[int, Any] = {}

    def push_messages(self, messages: list) -> list[str]:
        for m in messages:
            self.messages[m.metadata.dst_node_id] = m
        return super().push_messages(messages)


def told(grid: TellingGrid, node: int) -> int | None:
    """Where the newest message to ``node`` told its device to read from."""
    return TrainInstruction.from_record(grid.messages[node].content).read_from


def test_a_restarted_supernodes_reply_that_skips_records_is_read_again_from_the_account() -> None:
    store = MongoStand(dict(LATEST))
    grid = TellingGrid({1: b"", 2: b"", 3: b""})
    app = make_server(store, grid)
    app.send_train_messages(time.monotonic())
    assert told(grid, 1) is None  # a first contact: its device is not known yet, it reads from its Kafka position
    for node in (1, 2, 3):
        grid.answer(node, reply(node, 0, 9))
    assert tick(app)["accepted"] == [1, 2, 3]
    app.send_train_messages(time.monotonic())
    assert [told(grid, n) for n in (1, 2, 3)] == [10, 10, 10]
    # Node 1 builds its reply for 10-19 and commits, then its SuperNode is killed: the reply never comes.
    # It restarts as node 8; its device reads on from its Kafka position, 20.
    del grid.keys[1]
    grid.keys[8] = b""
    app.send_train_messages(time.monotonic())
    assert told(grid, 8) is None
    grid.answer(8, reply(1, 20, 24, base=6))
    for node in (2, 3):
        grid.answer(node, reply(node, 10, 19, base=6))
    doc = tick(app)
    assert doc["accepted"] == [2, 3]
    assert reasons(doc) == [(1, "its records start at offset 20, the device's account ends at 10: read again "
                                "from there")]
    app.send_train_messages(time.monotonic())
    assert told(grid, 8) == 10  # bound now: told where the account ends
    grid.answer(8, reply(1, 10, 24, base=6))
    for node in (2, 3):
        grid.answer(node, reply(node, 20, 29, base=6))
    doc = tick(app)
    assert doc["accepted"] == [1, 2, 3] and not doc["rejected"]
    spans = sorted((u["device_id"], u["source"]["first_offset"], u["source"]["last_offset"]) for u in store.locals)
    assert [s[1:] for s in spans if s[0] == 1] == [(0, 9), (10, 24)]  # every record of device 1, once


def test_a_device_told_where_to_read_that_starts_elsewhere_is_taken_in_not_turned_away_forever() -> None:
    """Records deleted by retention before the device read them: it starts at the partition's low end.
    Turning it away would ask for records that are gone, at every message."""
    store = MongoStand(dict(LATEST))
    grid = TellingGrid({1: b"", 2: b"", 3: b""})
    app = make_server(store, grid)
    app.send_train_messages(time.monotonic())
    for node in (1, 2, 3):
        grid.answer(node, reply(node, 0, 9))
    tick(app)
    app.send_train_messages(time.monotonic())
    grid.answer(1, reply(1, 50, 59, base=6))
    for node in (2, 3):
        grid.answer(node, reply(node, 10, 19, base=6))
    assert tick(app)["accepted"] == [1, 2, 3]
    assert app.admission.positions.read_from(1, ("windows", 0)) == 60


def test_a_new_serverapp_tells_each_device_where_the_stored_account_ends() -> None:
    """A ServerApp killed with updates pending: those replies' records were committed by their devices but
    stored nowhere. The next ServerApp starts from what is stored (updates and left-out replies), so
    the devices read them again; with a key registry it knows each node's device before any reply."""
    pems, ssh = zip(*(key_pair() for _ in (1, 2, 3)), strict=True)
    store = MongoStand(dict(LATEST))
    store.locals += [{"device_id": 1, "source": {"topic": "windows", "partition": 0, "first_offset": 0,
                                                 "last_offset": 9}},
                     {"device_id": 2, "source": {"topic": "windows", "partition": 1, "first_offset": 0,
                                                 "last_offset": 4}}]
    store.ticks.append({"left_out": [{"device_id": 2, "reason": "stale", "source": {
        "topic": "windows", "partition": 1, "first_offset": 5, "last_offset": 7}}]})
    grid = TellingGrid({11: pems[0], 12: pems[1], 13: pems[2]})
    app = make_server(store, grid, {str(d): k for d, k in zip((1, 2, 3), ssh, strict=True)})
    app.send_train_messages(time.monotonic())
    assert [told(grid, n) for n in (11, 12, 13)] == [10, 8, None]  # device 3: nothing stored yet


def test_the_account_ignores_sources_of_another_topic_and_names_no_device_it_does_not_know() -> None:
    positions = Positions.from_store(MongoStand(dict(LATEST)), [1, 2])  # type: ignore[arg-type]
    assert positions.read_from(1, ("windows", 0)) is None and positions.read_from(None, ("windows", 0)) is None
    positions.advance(update(1, 1.0))  # no source: nothing changes
    assert positions.known == {}
    u = update(1, 1.0)
    u.source = Source("windows", 0, 0, 9, 1, "1-0", "1-9", 0, 0)
    positions.advance(u)
    assert positions.read_from(1, ("windows", 0)) == 10
    assert positions.read_from(1, ("device_windows.1", 0)) is None  # the run's windows moved to another topic


def test_stored_sources_no_train_message_could_carry_are_ignored_not_a_crash_at_start() -> None:
    """Whatever a stored document holds (float infinity, text, int64's end, a negative offset, a bool, no
    fields at all), the ServerApp starts, and no device is told an offset it would refuse."""
    store = MongoStand(dict(LATEST))
    bad = [float("inf"), "9", 2**63 - 1, -2, True, None]
    store.locals += [{"device_id": 1, "source": {"topic": "windows", "partition": 0, "last_offset": v}} for v in bad]
    store.locals += [{"device_id": 2, "source": {"topic": "windows"}},
                     {"device_id": 2, "source": {"topic": "windows", "partition": 1, "last_offset": 4}}]
    positions = Positions.from_store(store, [1, 2])  # type: ignore[arg-type]
    assert positions.read_from(1, ("windows", 0)) is None
    assert positions.read_from(2, ("windows", 1)) == 5
