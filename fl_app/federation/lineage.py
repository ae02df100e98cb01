"""Lineage: which window records each local update trained on, and which updates each global round counted.

Each stored local update names its source (``core.messages.Source``: the window
topic, partition and first and last offset it consumed, its readings' first and
last event id); each global round names its updates (``local_model_ids``). The
check (``fl-app lineage check``) reads them back for a span of time and says
whether they agree:

- no window record was trained on twice: the offset ranges of one partition's
  updates never overlap;
- none was consumed without a trace: between two consecutive updates of a
  partition there is no gap, unless a tick recorded the update that covered it
  as left out (stale, rejected, or of no readings the model can take, with its
  source). The ranges are the group's positions, so Kafka's transaction
  markers (an offset each, never delivered) lie inside them, not between;
- every stored update belongs to exactly one stored round, and that round names it;
- the readings a round counts equal the sum over its updates.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from core.storage import Storage

MAX_LISTED = 20  # problems listed per kind; the counts are always whole


@dataclass
class Report:
    since: datetime | None
    updates: int = 0
    rounds: int = 0
    readings: int = 0
    records: int = 0  # window records covered by the updates' sources
    without_source: int = 0  # updates that name none (the evaluation's, or before lineage was recorded)
    left_out: int = 0  # updates a tick recorded as stale or rejected, with their source
    problems: dict[str, list[str]] = field(default_factory=dict)

    def add(self, kind: str, text: str) -> None:
        self.problems.setdefault(kind, []).append(text)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "since": self.since.isoformat() if self.since else None, "updates": self.updates,
                "rounds": self.rounds, "readings": self.readings, "records": self.records,
                "without_source": self.without_source, "left_out": self.left_out,
                "problems": {k: {"count": len(v), "first": v[:MAX_LISTED]} for k, v in self.problems.items()}}


def check(store: Storage, since: datetime | None = None) -> Report:
    """Check the lineage of the rounds made since ``since`` (all without) and of their updates."""
    report = Report(since)
    query = {"created_at": {"$gte": since}} if since else {}
    rounds = {g["round"]: g for g in store.global_model.find(query, {"weights": 0})}
    report.rounds = len(rounds)
    if not rounds:
        return report
    first = min(rounds)
    updates = list(store.local_models.find({"aggregated_into": {"$gte": first}}, {"weights": 0}))
    report.updates = len(updates)
    by_id = {u["_id"]: u for u in updates}

    # Every update in one round, and the round names it; a round's readings are its updates'.
    named: dict[Any, list[int]] = defaultdict(list)
    for number, g in rounds.items():
        for uid in g.get("local_model_ids", []):
            named[uid].append(number)
            if uid not in by_id:
                report.add("round names a missing update", f"round {number}: {uid}")
        mine = [by_id[uid] for uid in g.get("local_model_ids", []) if uid in by_id]
        if "local_model_ids" not in g:
            report.add("round without lineage", f"round {number}")
        elif sum(u["num_examples"] for u in mine) != g["num_examples"]:
            report.add("round's readings differ from its updates'",
                       f"round {number}: {g['num_examples']} counted, {sum(u['num_examples'] for u in mine)} in its "
                       f"{len(mine)} updates")
    for u in updates:
        into = named.get(u["_id"], [])
        if u["aggregated_into"] in rounds and into != [u["aggregated_into"]]:
            report.add("update not in exactly its round",
                       f"update {u['_id']} (device {u['device_id']}): aggregated_into {u['aggregated_into']}, "
                       f"named by rounds {into}")
        report.readings += u["num_examples"]

    # The window records: each partition's updates, in offset order, neither overlap nor leave gaps.
    spans: dict[tuple[str, int], list[tuple[int, int, str]]] = defaultdict(list)
    for u in updates:
        source = u.get("source")
        if not source:
            report.without_source += 1
            continue
        spans[(source["topic"], source["partition"])].append(
            (source["first_offset"], source["last_offset"], f"device {u['device_id']}, update {u['_id']}"))
    tick_query = {"at": {"$gte": rounds[first]["created_at"]}} if since else {}
    for tick in store.fl_rounds.find(tick_query, {"left_out": 1}):
        for item in tick.get("left_out", []):
            source = item.get("source") or {}
            if "topic" in source:
                report.left_out += 1
                spans[(source["topic"], source["partition"])].append(
                    (source["first_offset"], source["last_offset"], f"device {item['device_id']}, left out "
                                                                    f"({item.get('reason', '')})"))
    for (topic, partition), ranges in sorted(spans.items()):
        ranges.sort()
        report.records += sum(last - first_ + 1 for first_, last, _ in ranges)
        reach, who = ranges[0][1], ranges[0][2]  # the farthest offset covered so far, and by whom
        for first_, last, by in ranges[1:]:
            if first_ <= reach:
                report.add("window records trained on twice",
                           f"{topic}[{partition}] offsets {first_}-{min(reach, last)}: {who} and {by}")
            elif first_ > reach + 1:
                report.add("window records consumed without a trace",
                           f"{topic}[{partition}] offsets {reach + 1}-{first_ - 1}, between {who} and {by}")
            if last > reach:
                reach, who = last, by
    return report
