"""Who a reply is from and what it may claim: decided from the transport, not from the reply's content.

A reply names its device, its base round and its number of readings, but the
ClientApp that wrote it can write anything (issue 21: one node posing as three
devices with 1e15 readings each, or an old update sent again). Before an
update reaches :class:`server.aggregation.TimedAggregation` the ServerApp
checks it against what it knows itself (:class:`Admission`):

- **the node**: ``Message.metadata.src_node_id``. The SuperLink stores a reply
  only from the node its message was sent to (flwr 1.42
  ``server/superlink/linkstate/in_memory_linkstate.py`` ``store_message_res``)
  and signs every Fleet request with the node's key (``superlink/routers/fleet/
  node_auth.py``, in every profile), so a node cannot pose as another node.
- **its device** (:class:`Bindings`): the node's public key, which the
  ServerApp sees in ``grid.get_nodes()`` (``NodeInfo.public_key``, PEM; Flower
  shows it no node config), looked up among the devices' keys: production, the
  operator's registered ``supernodes/device-<id>.pub``; testing, the keys the
  SuperNode launcher gave the nodes it started for each device
  (``clients/supernodes.py``: Flower refuses a key with ``--insecure``, and a
  node would make its own). A node whose key is not among them is no device
  at all. Without any registry (stock SuperNodes in testing, the simulation
  runtime) a node is bound to the device of its first reply, and that device
  to it, while the node stays online; a node that left frees its device for
  the next one (a restarted SuperNode registers under a new node id).
- **the message it answers** (:class:`Sent`): a reply must answer the one
  message outstanding for its node (Flower stores one reply per message; the
  ServerApp keeps one message per node at a time), and its base round must be
  the round that message carried. So each device sends at most one update per
  train message, and an old update sent again is refused.
- **where its records start** (:class:`server.positions.Positions`): where the
  server's account of the device ends, unless the message said where to read
  (a reply lost after the device committed is then read again); a reply taken
  in moves the account past its records.
- **its readings**: at most what the device's windows can hold since its
  previous answered message (:class:`ReadingLimit`): an inflated count is
  capped, with a reason, and so are its moments (scaled, so the mean and
  spread it reports stay what they were).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from cryptography.hazmat.primitives import serialization

from core.atomic import read_json
from core.messages import LocalUpdate
from server.positions import Positions

log = logging.getLogger("server.global")


class Sent(NamedTuple):
    """A train message the ServerApp sent and awaits the reply to."""

    node: int
    at: float  # monotonic seconds
    round: int  # the global round it carried
    read_from: int | None = None  # where it told the device to read (server/positions.py)


def key_der(key: bytes | str) -> bytes | None:
    """A public key (PEM, as Flower's ``NodeInfo.public_key``, or OpenSSH, as ``device-<id>.pub``) in
    one canonical form (DER SubjectPublicKeyInfo); None if it is neither."""
    raw = key.encode() if isinstance(key, str) else bytes(key)
    try:
        loaded: Any = (serialization.load_ssh_public_key(raw) if raw.startswith(b"ecdsa-")
                       else serialization.load_pem_public_key(raw))
        return bytes(loaded.public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo))
    except (ValueError, TypeError):
        return None


class Bindings:
    """Which device each node is: by registered key where there is a registry, else by first contact.

    The registry: ``keys`` (the operator's, production), and ``keys_file`` (what the SuperNode launcher
    gave its insecure nodes, testing; read again when a node shows a key not yet in it).
    """

    def __init__(self, keys: Mapping[int, bytes | str], keys_file: str = "") -> None:
        self.keys, self.keys_file = dict(keys), keys_file
        self.file_stamp: tuple[float, int] | None = None
        self.by_key: dict[bytes, int] = {}
        self.node_key: dict[int, bytes | None] = {}  # node -> its key (DER), as the SuperLink showed it
        self.device_node: dict[int, int] = {}  # first contact: device -> node
        self.online: set[int] = set()
        self.load()

    def load(self) -> None:
        """(Re)read the registry; the file only when it changed (a missing file: no keys from it)."""
        try:
            stat = Path(self.keys_file).stat() if self.keys_file else None
        except OSError:
            stat = None
        stamp = (stat.st_mtime, stat.st_size) if stat is not None else None
        if self.by_key and stamp == self.file_stamp:
            return
        self.file_stamp = stamp
        listed = read_json(self.keys_file, {}) if stamp is not None else {}
        keys: dict[int, bytes | str] = {**self.keys, **({int(d): k for d, k in listed.items()
                                                          if str(d).isdigit() and isinstance(k, str)}
                                                         if isinstance(listed, dict) else {})}
        by_key = {}
        for device, key in keys.items():
            if (der := key_der(key)) is None:
                log.warning("device %d's registered public key cannot be read: that device cannot be served", device)
            else:
                by_key[der] = device
        self.by_key = by_key

    @property
    def by_registry(self) -> bool:
        return bool(self.by_key)

    def seen(self, nodes: Iterable[Any]) -> None:
        """The SuperLink's online nodes: Flower's ``NodeInfo`` (``node_id``, ``public_key``) or bare ids."""
        online = set()
        for node in nodes:
            if isinstance(node, int):
                online.add(node)
                continue
            online.add(int(node.node_id))
            if node.node_id not in self.node_key:
                self.node_key[int(node.node_id)] = key_der(node.public_key)
        self.online = online
        if any(self.node_key.get(n) not in self.by_key for n in online):
            self.load()  # a node the launcher started since (its key written before it registered)

    def device_of(self, node: int) -> int | None:
        """The device ``node`` is bound to (None: none yet, or it holds no registered key)."""
        if self.by_registry:
            key = self.node_key.get(node)
            return self.by_key.get(key) if key is not None else None
        return next((d for d, n in self.device_node.items() if n == node), None)

    def check(self, node: int, claimed: int) -> str:
        """Why ``node`` may not send an update of device ``claimed`` ("" if it may; a first contact binds)."""
        if self.by_registry:
            device = self.device_of(node)
            if device is None:
                return f"node {node} holds no device's registered key (its reply claims device {claimed})"
            return "" if device == claimed else (f"node {node} holds device {device}'s key, "
                                                 f"its reply claims device {claimed}")
        device = self.device_of(node)
        if device is not None:
            return "" if device == claimed else (f"node {node} is device {device} (its first reply), "
                                                 f"this reply claims device {claimed}")
        holder = self.device_node.get(claimed)
        if holder is not None and holder in self.online:
            return f"device {claimed} is node {holder}'s (its first reply); node {node} claims it too"
        if holder is not None:
            log.info("device %d moves from node %d (gone) to node %d", claimed, holder, node)
        self.device_node[claimed] = node
        return ""


@dataclass(frozen=True)
class ReadingLimit:
    """How many readings a device's windows can hold: one window record per device and local interval
    (the Flink job), of at most ``per_window`` readings, at most the whole stream's rate times the
    interval (all of a window's readings might be one device's: a sound bound, if a loose one).
    ``per_second`` 0: no bound (an unpaced stream)."""

    per_second: float
    interval: float  # seconds of one window (fl.local_training_interval_seconds)
    per_window: int  # readings one window record holds at most (flink.max_window_readings)

    def most(self, seconds: float) -> int | None:
        """Readings in the windows that can have closed within ``seconds`` (plus the one closing at the
        edge); None: no bound."""
        if self.per_second <= 0 or self.interval <= 0:
            return None
        per_window = min(self.per_window, math.ceil(self.per_second * self.interval)) if self.per_window > 0 \
            else math.ceil(self.per_second * self.interval)
        return per_window * (math.floor(max(0.0, seconds) / self.interval) + 1)


@dataclass
class Capped:
    device_id: int
    claimed: int
    counted: int
    reason: str

    def doc(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "claimed": self.claimed, "counted": self.counted, "reason": self.reason}


class Admission:
    """The checks of one ServerApp's life: :meth:`admit` each reply before it may count."""

    def __init__(self, bindings: Bindings, limit: ReadingLimit | None, started: float,
                 positions: Positions | None = None) -> None:
        self.bindings, self.limit, self.started = bindings, limit, started
        self.positions = positions if positions is not None else Positions()  # where each device reads next
        self.answered: dict[int, float] = {}  # device -> when its last admitted message was sent

    def admit(self, update: LocalUpdate, node: int, sent: Sent | None, now: float) -> tuple[str, Capped | None]:
        """``(why not, cap)``: why the reply ``update`` from ``node`` may not count ("" if it may), and
        how its readings were capped (None if they were not; ``update`` is then changed in place)."""
        if sent is None:
            return (f"node {node} replied to no train message outstanding for it (answered already, "
                    f"expired, or never sent)"), None
        if sent.node != node:
            return f"node {node} answered the message sent to node {sent.node}", None
        if why := self.bindings.check(node, update.device_id):
            return why, None
        if update.base_round != sent.round:
            return f"base round {update.base_round}, but node {node} was sent round {sent.round}", None
        if why := self.positions.misplaced(update, sent.read_from):
            return why, None
        self.positions.advance(update)  # taken in: its records are accounted for
        since = self.answered.get(update.device_id, self.started)
        self.answered[update.device_id] = sent.at
        most = self.limit.most(now - since) if self.limit is not None else None
        if most is None or update.num_examples <= most:
            return "", None
        cap = Capped(update.device_id, update.num_examples, most,
                     f"{update.num_examples} readings claimed; its windows of the last {now - since:.0f}s hold "
                     f"at most {most}")
        if update.moments and update.moments[0] > most:  # the same rows, fewer of them: mean and spread kept
            scale = most / update.moments[0]
            update.moments = [float(most), *(v * scale for v in update.moments[1:])]
        update.num_examples = most
        return "", cap
