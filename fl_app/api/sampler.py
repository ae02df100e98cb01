"""A background thread that samples what is flowing, so rates are measured and requests stay cheap.

Every ``api.sample_seconds`` it reads documents per collection, the topics' end
offsets, the newest messages of ``iot_stream`` and the components' health;
every :data:`SLOW_SECONDS` the dead letters (a full read of the dead-letter
topic), the consumers' lag and the anomalies per minute. Rates come from two
samples about a minute (per minute) or one sampling interval (per second)
apart. A failed read is logged and the previous value kept.

Documents are counted, and anomalies added up, from what was stamped since the
last sample (``core.storage.DocumentCounts``): a count of a whole collection on
the local MongoDB-wire server holds its lock for as long as the collection is big.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from core.config import AppConfig
from core.storage import PREDICTIONS, DocumentCounts, Storage, written_in

log = logging.getLogger(__name__)

SLOW_SECONDS = 30.0  # between the costlier reads
WINDOW_SECONDS = 60.0  # per-minute growth is measured over this much history
ANOMALY_MINUTES = 30  # the live page's anomalies-per-minute chart
SETTLE_SECONDS = 2.0  # a document stamped this long ago is in MongoDB (writers insert right after stamping)


@dataclass
class Sample:
    at: float  # monotonic
    counts: dict[str, int]
    offsets: dict[str, int]


@dataclass
class Snapshot:
    """The newest sampled values (what the routers read)."""

    at: datetime | None = None
    collections: dict[str, tuple[int, float | None]] = field(default_factory=dict)  # documents, per minute
    topics: dict[str, tuple[int, float | None]] = field(default_factory=dict)  # messages, per second
    newest_messages: list[dict[str, Any]] = field(default_factory=list)
    components: list[Any] = field(default_factory=list)  # core.services.runner.Status
    dead_letters: dict[str, int] = field(default_factory=dict)
    lag: dict[str, int | None] = field(default_factory=lambda: {"flink_job": None, "spark_scorer": None})
    anomalies_per_minute: list[tuple[datetime, int]] = field(default_factory=list)


class Sampler:
    def __init__(self, cfg: AppConfig, store: Storage) -> None:
        self.cfg, self.store = cfg, store
        self.snapshot = Snapshot()
        self.history: deque[Sample] = deque()
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="api-sampler", daemon=True)
        self.slow_at = 0.0
        self.documents = DocumentCounts(SETTLE_SECONDS)
        self.anomalies: dict[datetime, int] = {}  # per minute a prediction was stamped
        self.anomalies_upper: datetime | None = None  # predictions stamped before it are in ``anomalies``

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=10)

    def _loop(self) -> None:
        while not self.stop_event.is_set():
            started = time.monotonic()
            self.sample_once(started)
            self.stop_event.wait(max(0.0, self.cfg.api.sample_seconds - (time.monotonic() - started)))

    def sample_once(self, now: float | None = None) -> None:
        from core import services
        from core.topics import dead_letter_reasons
        from fl_app import flow, pipeline

        now = time.monotonic() if now is None else now
        snap = self.snapshot
        topics = self.cfg.kafka.topics
        counts = self._try("documents per collection", lambda: self.documents.update(self.store), {})
        ends_of: dict[str, dict[int, int]] = {}  # topic -> partition -> end offset
        for topic in (topics.readings, topics.windows, topics.dead_letter):
            ends = self._try(f"offsets of {topic.name}", lambda t=topic: flow.end_offsets(self.cfg, t.name,
                                                                                          t.partitions, 2.0), None)
            if ends is not None:
                ends_of[topic.name] = ends
        offsets = {name: sum(ends.values()) for name, ends in ends_of.items()}
        readings_ends = ends_of.get(topics.readings.name)  # what the consumers' lag is measured against
        self.history.append(Sample(now, counts, offsets))
        while len(self.history) > 2 and now - self.history[1].at >= WINDOW_SECONDS:
            self.history.popleft()
        minute_ago, previous = self.history[0], self.history[-2] if len(self.history) > 1 else None
        span = now - minute_ago.at
        snap.collections = {name: (n, (n - minute_ago.counts.get(name, n)) * 60.0 / span if span > 0 else None)
                            for name, n in counts.items()}
        snap.topics = {name: (n, (n - previous.offsets.get(name, n)) / (now - previous.at)
                              if previous is not None and now > previous.at else None)
                       for name, n in offsets.items()}
        snap.newest_messages = self._try("newest messages", lambda: flow.newest_messages(
            self.cfg, topics.readings.name, topics.readings.partitions, 10), snap.newest_messages)
        snap.components = self._try("health", lambda: [*services.status(self.cfg), *pipeline.status(self.cfg)],
                                    snap.components)
        if now - self.slow_at >= SLOW_SECONDS:
            self.slow_at = now
            snap.dead_letters = dict(self._try("dead letters", lambda: dead_letter_reasons(self.cfg, 5.0),
                                               snap.dead_letters))
            snap.lag = {"flink_job": self._try("Flink lag", lambda: flow.flink_lag(self.cfg, 2.0, readings_ends), None),
                        "spark_scorer": self._try("scorer lag", lambda: flow.scorer_lag(self.cfg, 2.0, readings_ends),
                                                  None)}
            snap.anomalies_per_minute = self._try("anomalies per minute", self.anomalies_per_minute,
                                                  snap.anomalies_per_minute)
        snap.at = datetime.now(UTC)

    def anomalies_per_minute(self) -> list[tuple[datetime, int]]:
        """Anomalous predictions per minute they were stamped (``scored_at``), the last :data:`ANOMALY_MINUTES`:
        the counts so far plus the predictions stamped since the last call."""
        now = datetime.now(UTC)
        since = now.replace(second=0, microsecond=0) - timedelta(minutes=ANOMALY_MINUTES - 1)
        lower = max(since, self.anomalies_upper) if self.anomalies_upper is not None else since
        upper = max(lower, now - timedelta(seconds=SETTLE_SECONDS))
        # The time range alone: with is_anomaly in the query too the local server scans the collection.
        new = self.store.predictions.find(written_in(PREDICTIONS, lower, upper), {"is_anomaly": 1, "scored_at": 1})
        for doc in new:
            if doc.get("is_anomaly") is True:
                minute = doc["scored_at"].replace(second=0, microsecond=0, tzinfo=UTC)
                self.anomalies[minute] = self.anomalies.get(minute, 0) + 1
        self.anomalies_upper = upper
        self.anomalies = {m: n for m, n in self.anomalies.items() if m >= since}
        return [(since + timedelta(minutes=i), self.anomalies.get(since + timedelta(minutes=i), 0))
                for i in range(ANOMALY_MINUTES)]

    @staticmethod
    def _try(what: str, read: Any, fallback: Any) -> Any:
        try:
            return read()
        except Exception as exc:  # a sampler keeps going: the API says what it last knew
            log.warning("sampling %s failed: %s", what, exc)
            return fallback
