"""Identity from the transport (issue 21): the ServerApp's loop with a stand-in grid whose replies a
test writes itself. A reply claiming another device, answering with an old round, sent twice for one
message, or counting more readings than the stream can bring its device is refused or capped, with
its reason in the tick; honest replies still aggregate."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import RecordDict

from core.atomic import write_json
from core.config import load_config
from core.messages import RunSettings, ServerSettings
from server import rounds
from server.admission import ReadingLimit, key_der
from server.aggregation import AGGREGATED, GlobalState
from server.server_app import TimedServer
from tests.unit.server.test_aggregation import LATEST, MongoStand, update, weights

DEVICES = [1, 2, 3, 4, 57]


@pytest.fixture(autouse=True)
def running_serverapp(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a running ServerApp has (Message() needs a task identity); the stand-in model's fresh state."""
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)
    monkeypatch.setattr(rounds, "initial_state", lambda spec: GlobalState(0, weights(0.0), float("inf")))


class Grid:
    """Flower's Grid as the ServerApp sees it: online nodes (with their public keys), pushed messages,
    and replies the test writes (:meth:`answer`), from any node, to any message."""

    def __init__(self, keys: dict[int, bytes]) -> None:
        self.keys = keys  # node id -> its public key (PEM, as NodeInfo carries it)
        self.sent: dict[int, tuple[str, int]] = {}  # node -> (message id, round) of the newest message
        self.replies: list[Any] = []

    def get_node_ids(self) -> list[int]:
        return sorted(self.keys)

    def get_nodes(self) -> list[Any]:
        return [SimpleNamespace(node_id=n, public_key=k) for n, k in sorted(self.keys.items())]

    def push_messages(self, messages: list[Any]) -> list[str]:
        ids = []
        for m in messages:
            ids.append(f"m-{m.metadata.dst_node_id}-{time.monotonic_ns()}")
            self.sent[m.metadata.dst_node_id] = (ids[-1], m.content.config_records["config"]["server-round"])
        return ids

    def answer(self, node: int, content: RecordDict, to: int | None = None) -> None:
        """A reply from ``node`` to the newest message sent to ``to`` (default: to ``node``)."""
        message_id = self.sent[node if to is None else to][0]
        self.replies.append(SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=message_id,
                                                                     src_node_id=node),
                                            content=content, has_error=lambda: False))

    def pull_messages(self, ids: list[str]) -> list[Any]:
        out = [r for r in self.replies if r.metadata.reply_to_message_id in ids]
        self.replies = [r for r in self.replies if r not in out]
        return out


def key_pair() -> tuple[bytes, str]:
    """A SuperNode key as Flower's NodeInfo shows it (PEM) and as ``device-<id>.pub`` holds it (OpenSSH)."""
    public = ec.generate_private_key(ec.SECP384R1()).public_key()
    return (public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
            public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode())


def make_server(store: MongoStand, grid: Grid, device_keys: dict[str, str] | None = None,
                per_second: float = 0.0, keys_file: str = "") -> TimedServer:
    settings = RunSettings(
        kafka_bootstrap="", windows_topic="windows", devices=DEVICES, windows_per_device=False, model={},
        local_epochs=1,
        train_every=10.0, aggregate_every=60.0, min_devices=3, max_staleness_rounds=2, aggregator="fedavg",
        # The robust aggregation's own bounds (server.robust) wide open: these tests see the admission alone.
        trim_fraction=0.2, max_distance_factor=1e6, max_weight_factor=1e12,
        duration=0, message_ttl=30, warmup_train_every=0, server_settings="")
    settings.model_config = lambda: load_config().fl.model  # type: ignore[method-assign]
    server = ServerSettings("", "", 1, "/tmp", records_per_second=per_second, max_window_readings=2000,
                            device_keys=device_keys or {}, device_keys_file=keys_file)
    return TimedServer(settings, grid, store, server)  # type: ignore[arg-type]


def reply(device: int, examples: int = 10, base: int = 5, value: float = 1.0) -> RecordDict:
    return update(device, value, examples, base).to_record()


def tick(app: TimedServer) -> dict[str, Any]:
    """Pull what the grid holds, aggregate, and return the tick's document."""
    app.collect_replies(time.monotonic())
    app.aggregate()
    return app.store.ticks[-1]  # type: ignore[attr-defined]


def reasons(tick_doc: dict[str, Any]) -> list[tuple[int, str]]:
    return [(r["device_id"], r["reason"]) for r in tick_doc["rejected"]]


def first_contact(grid: Grid, app: TimedServer, nodes: tuple[int, ...] = (1, 2, 3)) -> None:
    """Each node's first reply, as the device of the same number: they bind, and aggregate."""
    app.send_train_messages(time.monotonic())
    for node in nodes:
        grid.answer(node, reply(node))
    assert tick(app)["accepted"] == list(nodes)


def test_a_reply_claiming_a_device_bound_to_another_node_is_refused_and_the_honest_ones_aggregate() -> None:
    store = MongoStand(dict(LATEST))
    grid = Grid({1: b"", 2: b"", 3: b"", 9: b""})
    app = make_server(store, grid)
    first_contact(grid, app)
    app.send_train_messages(time.monotonic())
    for node in (1, 2, 3):
        grid.answer(node, reply(node, base=6))
    grid.answer(9, reply(1, examples=2**31 - 1, base=6))  # node 9 poses as device 1, with a huge count
    doc = tick(app)
    assert doc["status"] == AGGREGATED and doc["accepted"] == [1, 2, 3]
    assert reasons(doc) == [(1, "device 1 is node 1's (its first reply); node 9 claims it too")]
    assert store.globals[-1]["num_examples"] == 30  # the impostor's readings count nowhere


def test_with_registered_keys_only_the_key_decides_which_device_a_node_is() -> None:
    pems, ssh = zip(*(key_pair() for _ in DEVICES), strict=True)
    rogue_pem, _ = key_pair()
    store = MongoStand(dict(LATEST))
    # Nodes 11..14 hold devices 1..4's keys; node 99 registered a key of its own.
    grid = Grid({10 + d: pem for d, pem in zip(DEVICES, pems, strict=True)} | {99: rogue_pem})
    app = make_server(store, grid, {str(d): k for d, k in zip(DEVICES, ssh, strict=True)})
    assert key_der(ssh[0]) == key_der(pems[0])  # the two forms of one key are one key
    app.send_train_messages(time.monotonic())
    grid.answer(11, reply(1))
    grid.answer(12, reply(2))
    grid.answer(13, reply(4))  # holds device 3's key
    grid.answer(14, reply(4))
    grid.answer(99, reply(3))  # a first contact, but no registered key: no device at all
    doc = tick(app)
    assert doc["accepted"] == [1, 2, 4]
    assert reasons(doc) == [(4, "node 13 holds device 3's key, its reply claims device 4"),
                            (3, "node 99 holds no device's registered key (its reply claims device 3)")]


def test_keys_the_launcher_writes_after_the_start_are_read_when_their_node_shows_up(tmp_path: Any) -> None:
    """Testing profile: the SuperNode launcher writes its nodes' keys (clients/supernodes.py); a node
    registered later (a restarted launcher) is looked up in the file again. Nodes with other keys are
    no device."""
    keys_file = tmp_path / "fl_device_keys.json"
    pems = {d: key_pair()[0] for d in DEVICES}
    write_json(keys_file, {str(d): pems[d].decode() for d in (1, 2)})
    store = MongoStand(dict(LATEST))
    grid = Grid({21: pems[1], 22: pems[2], 77: key_pair()[0]})
    app = make_server(store, grid, keys_file=str(keys_file))
    app.send_train_messages(time.monotonic())
    write_json(keys_file, {str(d): pems[d].decode() for d in (1, 2, 3)})  # node 23 comes, with device 3's key
    grid.keys[23] = pems[3]
    app.send_train_messages(time.monotonic())
    for node in (21, 22, 23, 77):
        grid.answer(node, reply(node - 20))
    doc = tick(app)
    assert doc["accepted"] == [1, 2, 3]
    assert reasons(doc) == [(57, "node 77 holds no device's registered key (its reply claims device 57)")]


def test_a_replayed_update_with_an_old_base_round_is_refused() -> None:
    store = MongoStand(dict(LATEST))
    grid = Grid({1: b"", 2: b"", 3: b"", 4: b""})
    app = make_server(store, grid)
    first_contact(grid, app, (1, 2, 3, 4))
    assert app.state.round == 6
    app.send_train_messages(time.monotonic())  # round 6 goes out
    for node in (1, 2, 3):
        grid.answer(node, reply(node, base=6))
    grid.answer(4, reply(4, base=5))  # device 4 answers round 6 with an update trained from round 5
    doc = tick(app)
    assert doc["accepted"] == [1, 2, 3]
    assert reasons(doc) == [(4, "base round 5, but node 4 was sent round 6")]
    # A base round ahead of what it was sent is refused the same way (not only by the aggregation).
    app.send_train_messages(time.monotonic())
    grid.answer(4, reply(4, base=8))
    assert reasons(tick(app)) == [(4, "base round 8, but node 4 was sent round 7")]


def test_a_second_update_of_a_device_for_one_train_message_is_refused() -> None:
    store = MongoStand(dict(LATEST))
    grid = Grid({1: b"", 2: b"", 3: b""})
    app = make_server(store, grid)
    app.send_train_messages(time.monotonic())
    for node in (1, 2, 3):
        grid.answer(node, reply(node))
    app.collect_replies(time.monotonic())
    grid.answer(3, reply(3, value=2.0))  # a second reply to the same message
    app.collect_replies(time.monotonic())
    # The first reply took the message off the outstanding list: a second is never even pulled ...
    assert len(app.pending) == 3 and len(grid.replies) == 1
    # ... and one handed over anyway (a reply to a message already answered) is refused with a reason.
    late = grid.replies.pop()
    assert app.receive(late, app.outstanding.get(late.metadata.reply_to_message_id), time.monotonic()) is None
    doc = tick(app)
    assert doc["accepted"] == [1, 2, 3] and store.globals[-1]["num_examples"] == 30
    assert reasons(doc) == [(3, "node 3 replied to no train message outstanding for it (answered already, "
                                "expired, or never sent)")]
    assert store.locals[-1]["weights"] is not None and len(store.locals) == 3


def test_an_inflated_example_count_is_capped_to_what_the_windows_hold_with_a_reason() -> None:
    store = MongoStand(dict(LATEST))
    grid = Grid({1: b"", 2: b"", 3: b""})
    app = make_server(store, grid, per_second=2.0)  # 20 readings per 10 s window at most, for the whole stream
    app.send_train_messages(time.monotonic())
    grid.answer(1, reply(1, examples=10))
    grid.answer(2, reply(2, examples=10))
    inflated = update(3, 3.0, 10**9)
    rows = np.arange(5.0 * app.aggregation.normalised_columns).reshape(5, -1) / 10  # a row's normalised columns
    inflated.moments = [1e9, *(rows.sum(axis=0) * 2e8).tolist(), *((rows ** 2).sum(axis=0) * 2e8).tolist()]
    grid.answer(3, inflated.to_record())
    doc = tick(app)
    assert doc["status"] == AGGREGATED and doc["accepted"] == [1, 2, 3] and doc["rejected"] == []
    (capped,) = doc["capped"]
    assert capped["device_id"] == 3 and capped["claimed"] == 10**9 and capped["counted"] == 20
    assert capped["reason"] == "1000000000 readings claimed; its windows of the last 0s hold at most 20"
    # Weighted by 10, 10 and 20 (not 1e9): the average is (1 + 1 + 2 * 3) / 4 = 2.
    np.testing.assert_allclose(app.state.weights[0], 2.0, rtol=1e-6)
    local = next(d for d in store.locals if d["device_id"] == 3)
    assert local["num_examples"] == 20
    assert app.state.moments is not None and app.state.moments.count == 20  # its mean kept
    np.testing.assert_allclose(app.state.moments.sums / app.state.moments.count, rows.mean(axis=0))


def test_the_reading_limit_grows_with_the_windows_since_the_devices_previous_message() -> None:
    limit = ReadingLimit(per_second=10.0, interval=30.0, per_window=2000)
    assert limit.most(0) == 300 and limit.most(29) == 300 and limit.most(30) == 600 and limit.most(61) == 900
    assert ReadingLimit(100.0, 300.0, 2000).most(0) == 2000  # a window record holds 2000 at most
    assert ReadingLimit(0.0, 30.0, 2000).most(1e9) is None  # an unpaced stream: no bound
