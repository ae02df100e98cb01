"""Where each device reads its windows next: the server's account, not the device's.

A device commits its Kafka position once its reply is built (clients/windows.py),
but a reply can still be lost after that: its SuperNode killed before sending
it on, refused (a restarted SuperNode's new node while the old one still holds
the device), or pending in a ServerApp that is killed. Its records were then
consumed without a trace. So the server keeps, per device, the position after
the last reply it took in (any reply whose records some document will name: an
update, or a left-out one) and tells each train message where to read from
(``TrainInstruction.read_from``); a device it cannot name yet (a node on first
contact, without a key registry) reads from its Kafka position, and a reply of
such a device that does not start where the server's account ends is turned
away once: the next message names the position, and the device reads those
records again. A device that was told and still starts elsewhere is taken in
(records deleted by retention before it read them; the lineage check shows
the gap), never turned away twice.

On start the account is the end of each device's newest stored source
(``local_models`` and the ticks' ``left_out``): what was pending in a ServerApp
that died is read again, and what was stored is not.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from core.messages import MAX_COUNT, MAX_ID, LocalUpdate, integer
from core.storage import Storage


class Position(NamedTuple):
    topic: str
    partition: int
    next_offset: int  # the first offset not yet accounted for


class Positions:
    def __init__(self, known: dict[int, Position] | None = None) -> None:
        self.known: dict[int, Position] = dict(known or {})

    @classmethod
    def from_store(cls, store: Storage, devices: list[int]) -> Positions:
        """The end of each device's newest stored source (its updates and the ticks' left-out replies)."""
        known: dict[int, Position] = {}
        for device, sources in store.newest_sources(devices).items():
            if ends := [p for p in map(_position, sources) if p is not None]:
                known[device] = max(ends, key=lambda p: p.next_offset)
        return cls(known)

    def read_from(self, device: int | None, source: tuple[str, int]) -> int | None:
        """Where ``device`` reads next in its window ``source`` (topic, partition); None if unknown."""
        position = self.known.get(device) if device is not None else None
        return position.next_offset if position is not None and position[:2] == source else None

    def misplaced(self, update: LocalUpdate, told: int | None) -> str:
        """Why the reply must be read again ("" if not): it does not start where the account ends, and the
        device was not told where to start."""
        source, position = update.source, self.known.get(update.device_id)
        if source is None or position is None or told is not None or position[:2] != (source.topic, source.partition):
            return ""
        if source.first_offset == position.next_offset:
            return ""
        return (f"its records start at offset {source.first_offset}, the device's account ends at "
                f"{position.next_offset}: read again from there")

    def advance(self, update: LocalUpdate) -> None:
        """A reply taken in: its records are accounted for."""
        if update.source is not None:
            self.known[update.device_id] = Position(update.source.topic, update.source.partition,
                                                    update.source.last_offset + 1)


def _position(doc: Any) -> Position | None:
    """A stored source's end, checked as a reply's is (a value no train message could carry: none)."""
    try:
        return Position(str(doc["topic"]), integer(doc["partition"], "partition", 0, MAX_COUNT),
                        integer(doc["last_offset"], "last_offset", 0, MAX_ID - 1) + 1)
    except (KeyError, TypeError, ValueError):
        return None
