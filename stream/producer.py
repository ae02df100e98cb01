"""Replay the data set into Kafka topic ``iot_stream``, forever if asked.

Readings go out in time order, ``batch_size`` at a time, paced by a token
bucket at ``records_per_second``, keyed by device id, with ``acks=all`` and
idempotence on. Each message's ``event_id`` is ``"<loop>-<seq>"``: a retry or
a restart re-sends the same id (stored once downstream), a new loop makes
new ids.

Nothing is lost: a failed delivery is sent again; the saved position (in
``stream.state_file``) only moves past readings the broker acknowledged, so
after a crash the producer resumes where delivery stopped, and after a clean
stop (SIGTERM, Ctrl-C, ``max_records``, ``duration_seconds``) exactly where
it stopped.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from confluent_kafka import KafkaError, Message, Producer

from core.atomic import write_json
from core.config import AppConfig
from core.kafka_auth import client_config
from core.records import SENSOR_FIELDS, Reading, event_id, iso

log = logging.getLogger(__name__)


class TokenBucket:
    """Allow ``rate`` tokens per second on average, at most ``burst`` at once.

    Refill is computed from a monotonic clock, so the long-run rate does not
    drift with sleep inaccuracy.
    """

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate, self.burst, self.clock = rate, float(burst), clock
        self.tokens = float(burst)
        self.updated = clock()

    def wait_time(self, n: int) -> float:
        """Seconds until ``n`` tokens are available (0 if they are now)."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        return 0.0 if self.tokens >= n else (n - self.tokens) / self.rate

    def acquire(self, n: int, stop: threading.Event | None = None) -> bool:
        """Block until ``n`` tokens are taken; False if ``stop`` was set meanwhile."""
        if n > self.burst:
            raise ValueError(f"cannot take {n} tokens at once from a bucket of {self.burst:.0f}")
        while True:
            wait = self.wait_time(n)
            if wait == 0.0:
                self.tokens -= n
                return True
            if stop is not None:
                if stop.wait(wait):
                    return False
            else:
                time.sleep(wait)


@dataclass
class Position:
    """Where the replay stands: the next reading to send is ``seq`` of ``loop``."""

    loop: int = 0
    seq: int = 0

    def index(self, size: int) -> int:
        return self.loop * size + self.seq

    @classmethod
    def at(cls, index: int, size: int) -> Position:
        return cls(index // size, index % size)


@dataclass
class SavedPosition:
    """The producer's state file: where it resumes, for which data set, saved when."""

    position: Position
    dataset: str
    updated_at: str


class PositionStore:
    """The resume position on disk, written atomically, tied to one data set."""

    def __init__(self, path: str | Path, dataset_id: str) -> None:
        self.path = Path(path)
        self.dataset_id = dataset_id

    @staticmethod
    def read(path: str | Path) -> SavedPosition | None:
        """The saved state as it is (None if there is none yet).

        Raises
        ------
        RuntimeError
            If the file exists but cannot be read.
        """
        try:
            state = json.loads(Path(path).read_text())
            return SavedPosition(Position(int(state["loop"]), int(state["seq"])), str(state.get("dataset")),
                                 str(state.get("updated_at", "")))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RuntimeError(f"producer state {path} is unreadable ({exc}); remove it to start over") from exc

    def load(self) -> Position:
        """Where to resume: the saved position if it is for this data set, else the start."""
        saved = self.read(self.path)
        if saved is None:
            return Position()
        if saved.dataset != self.dataset_id:
            log.warning("producer state %s is for data set %s, not %s: starting from the beginning",
                        self.path, saved.dataset, self.dataset_id)
            return Position()
        return saved.position

    def save(self, pos: Position) -> None:
        write_json(self.path, {"dataset": self.dataset_id, "loop": pos.loop, "seq": pos.seq,
                               "updated_at": iso(datetime.now(UTC))})


@dataclass
class ProduceStats:
    sent: int = 0  # produce() calls for new readings
    delivered: int = 0  # acknowledged by the broker
    resent: int = 0  # readings sent again after a failed delivery
    elapsed: float = 0.0
    start: Position | None = None
    end: Position | None = None

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed if self.elapsed > 0 else 0.0


class _Encoded:
    """The data set as arrays ready to serialise (built once, reused every loop). Arrays, not a Python
    object per value: 152,533 readings held as lists of floats, strings and keys took ~50 MB of the
    producer's memory, as arrays ~11 MB (issue 22); a message's few values become Python objects as it
    is sent."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.size = len(frame)
        self.device = frame["device_id"].to_numpy(dtype=np.int64)
        times = pd.to_datetime(frame["source_time"], utc=True)
        # ASCII bytes of fixed width (iso's 32 characters): the wire has microseconds.
        self.source_time = np.array([iso(t.to_pydatetime()).encode() for t in times.dt.floor("us")], dtype=np.bytes_)
        self.values = frame[list(SENSOR_FIELDS)].to_numpy(dtype=np.float64)

    def key(self, seq: int) -> bytes:
        return str(int(self.device[seq])).encode()

    def message(self, index: int, sent_at: str) -> bytes:
        loop, seq = divmod(index, self.size)
        return Reading(event_id(loop, seq), int(self.device[seq]), sent_at, self.source_time[seq].decode(), loop, seq,
                       *self.values[seq].tolist()).to_json()


class ReplayProducer:
    """Replays a data set into ``kafka.topics.readings`` as configured by ``cfg.stream``.

    Parameters
    ----------
    cfg
        The whole config (``kafka`` for the broker and topic, ``stream`` for pacing).
    frame
        The data set (``core.dataset.load``), in replay order.
    dataset_id
        Names the data set in the saved state, so a different one starts at 0.
    """

    def __init__(self, cfg: AppConfig, frame: pd.DataFrame, dataset_id: str) -> None:
        if len(frame) == 0:
            raise ValueError("the data set is empty")
        self.cfg = cfg
        self.topic = cfg.kafka.topics.readings.name
        self.data = _Encoded(frame)
        self.store = PositionStore(cfg.stream.state_file, dataset_id)
        self.stop_event = threading.Event()
        self._pending: set[int] = set()  # indices sent, not yet acknowledged
        self._failed: list[int] = []  # indices whose delivery failed: send again
        self._lock = threading.Lock()
        self.stats = ProduceStats()
        self.position = Position()
        self._producer = Producer(client_config(
            cfg.kafka, **{
            "acks": "all",
            "enable.idempotence": True,  # broker drops duplicates of retried batches
            "linger.ms": cfg.stream.linger_ms,
            "compression.type": "lz4",
            "message.timeout.ms": cfg.stream.delivery_timeout_ms,
            "queue.buffering.max.messages": 200_000,
            "logger": logging.getLogger("stream.producer.librdkafka"),
        }))

    # ------------------------------------------------------------------ api
    def stop(self) -> None:
        """Ask :meth:`run` to finish: flush, save the position, return."""
        self.stop_event.set()

    def run(self, on_progress: Callable[[ProduceStats, Position], None] | None = None) -> ProduceStats:
        """Send until ``max_records``, ``duration_seconds``, the end of a
        non-looping data set, or :meth:`stop`; returns what happened."""
        s = self.cfg.stream
        size = self.data.size
        start = self.store.load()
        if start.seq >= size:  # the data set shrank since the state was saved
            start = Position(start.loop + 1, 0)
        if start.loop > 0 and not s.loop_dataset:
            log.info("data set already replayed once and loop_dataset is false: nothing to send")
            self.stats.start = self.stats.end = start
            return self.stats
        self.stats.start = start
        next_index = start.index(size)
        # Room for two batches: an oversleep then does not drop tokens (rate stays exact).
        bucket = TokenBucket(s.records_per_second, 2 * s.batch_size) if s.pace else None
        log.info("producing to %s at %s, from loop %d seq %d (event id %s)", self.topic,
                 f"{s.records_per_second:g} rec/s" if s.pace else "full speed",
                 start.loop, start.seq, event_id(start.loop, start.seq))
        began = time.monotonic()
        last_save = last_progress = began
        try:
            while not self.stop_event.is_set():
                self._resend_failed()
                if s.max_records is not None and self.stats.sent >= s.max_records:
                    break
                if s.duration_seconds is not None and time.monotonic() - began >= s.duration_seconds:
                    break
                loop, seq = divmod(next_index, size)
                if loop > start.loop and not s.loop_dataset:
                    log.info("end of the data set (loop_dataset is false)")
                    break
                n = min(s.batch_size, size - seq)
                if s.max_records is not None:
                    n = min(n, s.max_records - self.stats.sent)
                if bucket is not None and not bucket.acquire(n, self.stop_event):
                    break
                sent_at = iso(datetime.now(UTC))
                for index in range(next_index, next_index + n):
                    self._send(index, sent_at)
                next_index += n
                self.stats.sent += n
                self._producer.poll(0)
                now = time.monotonic()
                if now - last_save >= 1.0:
                    self._save(next_index)
                    last_save = now
                if on_progress is not None and now - last_progress >= 0.25:
                    self.stats.elapsed = now - began
                    on_progress(self.stats, Position.at(next_index, size))
                    last_progress = now
        finally:
            self.stats.elapsed = time.monotonic() - began
            self._drain()
            self._save(next_index)
            self.stats.end = self.position
            if on_progress is not None:
                on_progress(self.stats, self.position)
        log.info("stopped after %d readings (%d acknowledged, %d re-sent) in %.1fs (%.1f rec/s); next: loop %d seq %d",
                 self.stats.sent, self.stats.delivered, self.stats.resent, self.stats.elapsed, self.stats.rate,
                 self.position.loop, self.position.seq)
        return self.stats

    # ------------------------------------------------------------- internals
    def _send(self, index: int, sent_at: str) -> None:
        seq = index % self.data.size
        value = self.data.message(index, sent_at)
        with self._lock:
            self._pending.add(index)
        while True:
            try:
                self._producer.produce(self.topic, key=self.data.key(seq), value=value,
                                       on_delivery=functools.partial(self._delivered, index))
                return
            except BufferError:  # local queue full (broker slow or down): wait for room
                if self.stop_event.is_set():
                    return  # stays in _pending, so the saved position keeps it: re-sent on restart
                self._producer.poll(0.1)

    def _delivered(self, index: int, err: KafkaError | None, _msg: Message) -> None:
        with self._lock:
            if err is None:
                self._pending.discard(index)
                self.stats.delivered += 1
            else:
                log.warning("delivery of %s failed (%s); will send it again",
                            event_id(*divmod(index, self.data.size)), err)
                self._failed.append(index)

    def _resend_failed(self) -> None:
        with self._lock:
            failed, self._failed = self._failed, []
        if failed:
            sent_at = iso(datetime.now(UTC))
            for index in failed:
                self._send(index, sent_at)
            self.stats.resent += len(failed)

    def _drain(self) -> None:
        """Flush; keep re-sending failures until all is acknowledged or time is up.

        When asked to stop (SIGTERM), wait at most 10 s: whatever is still
        unacknowledged stays below the saved position and is re-sent on restart.
        """
        budget = 10.0 if self.stop_event.is_set() else self.cfg.stream.delivery_timeout_ms / 1000 + 10
        deadline = time.monotonic() + budget
        while time.monotonic() < deadline:
            self._producer.flush(1.0)
            self._resend_failed()
            with self._lock:
                if not self._pending and not self._failed:
                    return
        log.error("%d readings still unacknowledged at shutdown; they will be re-sent on restart",
                  len(self._pending))

    def _save(self, next_index: int) -> None:
        """Persist the lowest index not yet acknowledged (everything before it is in Kafka)."""
        with self._lock:
            watermark = min(self._pending | set(self._failed), default=next_index)
        self.position = Position.at(watermark, self.data.size)
        self.store.save(self.position)
