"""The Flower ServerApp: a clock that trains every local interval and aggregates every global one.

Not Flower's round loop (``strategy.start`` waits for every reply and drops
late ones): this app pushes train messages to the online SuperNodes on the
local clock, pulls replies as they come, keeps them until the next
aggregation tick (late ones too), and lets :class:`server.aggregation.TimedAggregation`
(a plain class, not a Flower Strategy) decide what counts. Every tick,
aggregation and accepted update is persisted (``server/rounds.py``); on
restart the round numbers continue from MongoDB.
A reply is parsed totally (``LocalUpdate.from_record``): a malformed one is
refused with its reason, recorded in the next tick. Who sent it, which round
it may answer and how many readings it may count come from the transport and
from what this app sent, not from the reply (``server/admission.py``): a reply
claiming another device, answering with another round than it was sent, or
sent again is refused, an inflated count capped, each with its reason in the
tick. A MongoDB outage is
waited out (:class:`TimedServer`), never a reason to stop.
One line per tick and per aggregation goes to ``logs/global_server.log``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pymongo
from flwr.app import Context, Message, MessageType
from flwr.serverapp import Grid, ServerApp
from pymongo.errors import ConnectionFailure, PyMongoError

from core import fetch_backoff
from core.features import normalised_width
from core.messages import LocalUpdate, MalformedReply, RunSettings, ServerSettings
from core.storage import Storage
from server import rounds
from server.admission import Admission, Bindings, ReadingLimit, Sent
from server.aggregation import AGGREGATED, Clock, GlobalState, RoundOutcome, TimedAggregation
from server.positions import Positions
from server.robust import Robustness

log = logging.getLogger("server.global")
HOPS = ("delivery", "work", "return")  # of a message's way, measured per reply (Transport)
POLL_SECONDS = 0.3  # between reply pulls: short, so replies are seen soon, long enough to stay cheap
CONTROL_SECONDS = 1.0  # between reads of the operator's requests (fl_server "control")
MONGO_TIMEOUT = 3.0  # seconds a read or small write may take before MongoDB counts as unavailable (the loop waits)
ROUND_WRITE_TIMEOUT = 10.0  # seconds for a tick's documents (a loaded local server is slow)
MAX_REFUSED = 1000  # refused replies recorded per tick (the rest counted): a tick document stays small
MAX_REASON = 300  # characters of a refusal's reason
T = TypeVar("T")

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings = RunSettings.from_context(context.run_config)
    server = ServerSettings.load(settings.server_settings)
    _log_to(Path(server.logs_dir) / "global_server.log")
    fetch_backoff.shorten(fetch_backoff.SERVERAPP_FETCH)  # replies' data arrives just after them
    try:
        with Storage(server.mongo_uri, server.mongo_database, server.mongo_timeout_ms) as store:
            TimedServer(settings, grid, store, server).run()
    except BaseException:
        # The SuperLink starts this process with its output discarded: the log is the only witness.
        log.exception("the ServerApp stops on an error")
        raise


def _log_to(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path.resolve() for h in log.handlers):
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)


@dataclass
class Transport:
    """The message layer between two aggregation ticks (persisted with the tick)."""

    online: int = 0
    sent: int = 0
    expired: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds from push to reply, per reply
    # Where each reply's time went (seconds): created -> ClientApp started (SuperLink queue, SuperNode
    # polling, executor, fork), the ClientApp's work, reply built -> pulled here (the way back).
    hops: dict[str, list[float]] = field(default_factory=lambda: {h: [] for h in HOPS})

    def add(self, latency: float, delivery: float, work: float) -> None:
        self.latencies.append(latency)
        for hop, seconds in zip(HOPS, (delivery, work, latency - delivery - work), strict=True):
            if math.isfinite(seconds):
                self.hops[hop].append(seconds)

    def summary(self, outstanding: int) -> dict[str, float | int]:
        lat = np.asarray(self.latencies) if self.latencies else np.asarray([math.nan])
        return {"online": self.online, "sent": self.sent, "replies": len(self.latencies), "expired": self.expired,
                "outstanding": outstanding, "latency_p50": float(np.percentile(lat, 50)),
                "latency_p99": float(np.percentile(lat, 99)), "latency_max": float(lat.max()),
                **{f"{hop}_p50": float(np.median(v)) if v else math.nan for hop, v in self.hops.items()}}


class Backoff:
    """When MongoDB may be tried again: after a failure in 1 s, doubling up to ``most``; a success resets it."""

    def __init__(self, first: float = 1.0, most: float = 8.0) -> None:
        self.first, self.most = first, most
        self.delay, self.retry_at = 0.0, -math.inf
        self.down_since: float | None = None

    def ready(self, now: float) -> bool:
        return now >= self.retry_at

    def failed(self, now: float) -> float:
        """Note a failure at ``now``; returns the seconds until the next try."""
        self.delay = min(self.most, self.delay * 2 or self.first)
        self.retry_at = now + self.delay
        if self.down_since is None:
            self.down_since = now
        return self.delay

    def succeeded(self, now: float) -> float | None:
        """Note a success; returns how long MongoDB was unavailable (None if it was not)."""
        down = None if self.down_since is None else now - self.down_since
        self.delay, self.retry_at, self.down_since = 0.0, -math.inf, None
        return down


def transient(exc: PyMongoError) -> bool:
    """A fault of the connection or the server's availability (worth retrying), not of the request."""
    return (isinstance(exc, ConnectionFailure) or exc.timeout
            or exc.has_error_label("TransientTransactionError") or exc.has_error_label("RetryableWriteError"))


@dataclass
class Unwritten:
    """A tick made but not yet in MongoDB (its write is retried until it is)."""

    outcome: RoundOutcome
    docs: rounds.TickDocuments
    attempts: int = 0


class TimedServer:
    """The loop of one run: push on the local clock, pull continuously, aggregate on the global clock.

    MongoDB may be unavailable at any moment: every call to it goes through :meth:`mongo`, which
    bounds it in time and, on a fault of the connection, backs off instead of raising; the loop
    keeps pulling replies meanwhile. A tick whose write failed is kept (:class:`Unwritten`) and
    written again, as the same tick, before any other aggregation; its global model becomes the
    current one only once it is written, so rounds stay consecutive and nothing pending is lost
    while this process lives.
    """

    def __init__(self, settings: RunSettings, grid: Grid, store: Storage, server: ServerSettings | None = None) -> None:
        self.settings, self.grid, self.store = settings, grid, store
        self.devices = set(settings.devices)
        self.aggregation = TimedAggregation(
            settings.min_devices, settings.max_staleness_rounds, settings.model_config().threshold_quantile,
            normalised_width(settings.model_config()), Robustness(settings.aggregator, settings.trim_fraction,
                                                                  settings.max_distance_factor,
                                                                  settings.max_weight_factor))
        self.backoff = Backoff()
        self.outstanding: dict[str, Sent] = {}  # message id -> to whom, when, which round
        self.pending: list[LocalUpdate] = []  # replies since the last aggregation, late ones included
        self.refused: list[tuple[int, str]] = []  # malformed or refused replies of known devices since the last tick
        self.capped: list[dict[str, Any]] = []  # updates whose readings were capped since the last tick
        keys = {int(d): k for d, k in server.device_keys.items()} if server is not None else {}
        limit = (ReadingLimit(server.records_per_second, settings.train_every, server.max_window_readings)
                 if server is not None else None)
        self.admission = Admission(Bindings(keys, server.device_keys_file if server is not None else ""), limit,
                                   started=time.monotonic())
        self.malformed = 0  # malformed replies naming no valid device since the last tick
        self.unwritten: Unwritten | None = None
        self.state_dirty = False  # fl_server "state" is behind (its write failed or is due)
        self.transport = Transport()
        self.ttl = settings.message_ttl  # a message not answered in time is given up (the node gets a new one)
        self.clock = Clock(settings.train_every, settings.aggregate_every, start=time.monotonic())
        self.state: GlobalState
        # Requests made before this ServerApp started were for an earlier one (its interval
        # override stays: a restarted ServerApp keeps what the operator set for the run).
        self.control_seen, latest, self.admission.positions = self.until_available("resume", lambda: (
            store.server_control().get("aggregate_now_requested_at"), store.latest_global_model(),
            Positions.from_store(store, settings.devices)))
        self.state = rounds.resume(latest, settings.model_config())
        self.control_checked = 0.0
        self.last_train = -math.inf
        self.early_devices = 0  # devices with data at the last early attempt (warm-up)

    def run(self) -> None:
        started = time.monotonic()
        end = started + self.settings.duration if self.settings.duration > 0 else math.inf
        clock = self.clock
        log.info("start: global round %d; train every %gs, aggregate every %gs with >= %d devices",
                 self.state.round, self.settings.train_every, self.settings.aggregate_every, self.settings.min_devices)
        if self.warming_up():
            log.info("warm-up: train every %gs until the first global round, made as soon as %d devices sent "
                     "an update", self.settings.warmup_train_every, self.settings.min_devices)
        while time.monotonic() < end:
            now = time.monotonic()
            if self.unwritten is not None:
                self.write_tick()
            if now - self.control_checked >= CONTROL_SECONDS:
                self.apply_control(now)
            warm_train = self.warming_up() and now - self.last_train >= self.settings.warmup_train_every
            if clock.train_due(now) or warm_train:
                self.send_train_messages(now)
                self.last_train = now
                self.state_dirty = True
            self.collect_replies(now)
            if self.warming_up() and self.first_round_ready():
                clock.aggregate_now(now)  # the first round now; the global interval counts from it
            if clock.aggregate_due(now):
                self.aggregate()
                self.state_dirty = True
            if self.state_dirty:
                self.save_state(now)
            time.sleep(POLL_SECONDS)
        if self.unwritten is not None:  # the run ends: a last chance for the tick made last
            self.until_available("the last tick", self.write_tick, deadline=time.monotonic() + 60)
        log.info("stop: global round %d after %.0fs", self.state.round, time.monotonic() - started)

    # ------------------------------------------------------------- MongoDB
    def mongo(self, what: str, call: Callable[[], T], timeout: float = MONGO_TIMEOUT) -> tuple[bool, T | None]:
        """``(True, call())`` with ``call`` bounded by ``timeout`` seconds; ``(False, None)`` while MongoDB is
        unavailable (a fault of the connection: logged, tried again after a backoff). Any other
        database error raises: retrying a refused request would not change it."""
        if not self.backoff.ready(time.monotonic()):
            return False, None
        try:
            with pymongo.timeout(timeout):
                result = call()
        except PyMongoError as exc:
            if not transient(exc):
                raise
            delay = self.backoff.failed(time.monotonic())
            log.warning("MongoDB unavailable (%s: %s: %s); next try in %.1fs, %d updates kept%s", what,
                        type(exc).__name__, str(exc)[:160], delay, len(self.pending),
                        f", tick of round {self.unwritten.outcome.round} not yet written" if self.unwritten else "")
            return False, None
        down = self.backoff.succeeded(time.monotonic())
        if down is not None:
            log.info("MongoDB available again after %.0fs (%s)", down, what)
        return True, result

    def until_available(self, what: str, call: Callable[[], T], deadline: float = math.inf) -> T:
        """:meth:`mongo`, tried until it succeeds (before the loop, or after it); raises after ``deadline``."""
        while True:
            ok, result = self.mongo(what, call)
            if ok:
                return result  # type: ignore[return-value]
            if time.monotonic() > deadline:
                raise RuntimeError(f"MongoDB unavailable: {what} failed until the deadline")
            time.sleep(max(0.05, self.backoff.retry_at - time.monotonic()))

    # ------------------------------------------------------------- the loop's steps
    def warming_up(self) -> bool:
        return self.state.round == 0 and self.settings.warmup_train_every > 0

    def first_round_ready(self) -> bool:
        """Enough devices with data for the first round (tried again only when more have data)."""
        with_data = len({u.device_id for u in self.pending if u.num_examples > 0})
        if with_data >= self.settings.min_devices and with_data > self.early_devices:
            self.early_devices = with_data
            return True
        return False

    def apply_control(self, now: float) -> None:
        """The operator's requests (API admin actions): aggregate now; another aggregation interval."""
        self.control_checked = now
        ok, control = self.mongo("read of the operator's requests", self.store.server_control)
        if not ok or control is None:
            return
        requested = control.get("aggregate_now_requested_at")
        if isinstance(requested, datetime) and requested != self.control_seen:
            self.control_seen = requested
            log.info("aggregation requested by an operator (at %s)", requested.isoformat())
            self.clock.aggregate_now(now)
        override = control.get("aggregate_every_seconds")
        every = (float(override) if isinstance(override, int | float) and not isinstance(override, bool)
                 and 0 < override < math.inf else self.settings.aggregate_every)
        if every != self.clock.aggregate_every:
            log.info("aggregation interval %gs -> %gs%s", self.clock.aggregate_every, every,
                     " (by an operator)" if override else " (back to the configured)")
            self.clock.set_aggregate_every(every, now)
            self.state_dirty = True

    def save_state(self, now: float) -> None:
        """What the API's /api/status shows of the ServerApp: kept in fl_server "state" (rewritten
        whole, so a write that failed is simply made again later)."""
        wall = datetime.now(UTC)
        ok, _ = self.mongo("write of the server state", lambda: self.store.save_server_state({
            "at": wall, "round": self.state.round, "online": self.transport.online, "pending": len(self.pending),
            "pending_devices": sorted({u.device_id for u in self.pending}), "outstanding": len(self.outstanding),
            "aggregate_every_seconds": self.clock.aggregate_every,
            "next_aggregation_at": wall + timedelta(seconds=max(0.0, self.clock.next_aggregate - now))}))
        self.state_dirty = not ok

    def send_train_messages(self, now: float) -> None:
        bindings = self.admission.bindings
        # With a key registry, each node's public key too (NodeInfo; the same call get_node_ids makes).
        bindings.seen(self.grid.get_nodes() if bindings.by_registry else self.grid.get_node_ids())
        online = sorted(bindings.online)
        busy = {sent.node for sent in self.outstanding.values()}
        targets = [n for n in online if n not in busy]  # one message at a time per device
        instruction = self.state.instruction(self.settings.local_epochs)
        told = {node: self.read_from(node) for node in targets}
        records = {at: replace(instruction, read_from=at).to_record() for at in set(told.values())}
        messages = [Message(records[told[node]], dst_node_id=node, message_type=MessageType.TRAIN, ttl=self.ttl)
                    for node in targets]
        pushed = time.monotonic()
        ids = list(self.grid.push_messages(messages)) if messages else []
        pushed = time.monotonic() - pushed
        for node, message_id in zip(targets, ids, strict=True):
            self.outstanding[message_id] = Sent(node, now, self.state.round, told[node])
        self.transport.online, self.transport.sent = len(online), self.transport.sent + len(ids)
        log.info("tick: round %d, %d devices online, %d train messages sent in %.1fs, %d still out, "
                 "%d updates pending", self.state.round, len(online), len(ids), pushed,
                 len(self.outstanding) - len(ids), len(self.pending))

    def read_from(self, node: int) -> int | None:
        """Where the device of ``node`` reads its windows next (None: the node's device is not known yet)."""
        device = self.admission.bindings.device_of(node)
        if device is None or device not in self.devices:
            return None
        return self.admission.positions.read_from(device, self.settings.window_source(device))

    def collect_replies(self, now: float) -> None:
        if not self.outstanding:
            return
        for reply in self.grid.pull_messages(list(self.outstanding)):
            sent = self.outstanding.pop(reply.metadata.reply_to_message_id, None)
            update = self.receive(reply, sent, now)
            if sent is not None:
                self.transport.add(time.monotonic() - sent.at, *((update.delivery_seconds, update.work_seconds)
                                                                 if update is not None else (math.nan, math.nan)))
            if update is not None:
                self.pending.append(update)
        expired = [mid for mid, sent in self.outstanding.items() if now - sent.at > self.ttl]
        for mid in expired:
            del self.outstanding[mid]
        self.transport.expired += len(expired)

    def receive(self, reply: Message, sent: Sent | None, now: float) -> LocalUpdate | None:
        """The reply's update if it may count (:meth:`parse`, then :class:`Admission`), else None: refused
        with its reason, recorded in the next tick against the device it claims; a capped count is
        recorded too."""
        update = self.parse(reply)
        if update is None:
            return None
        node = reply.metadata.src_node_id
        why, cap = self.admission.admit(update, node, sent, now)
        if why:
            self.refuse(update.device_id, why)
            log.warning("node %d: %s; refused", node, why[:MAX_REASON])
            return None
        if cap is not None:
            self.capped.append(cap.doc())
            log.warning("node %d, device %d: %s; counted as %d", node, cap.device_id, cap.reason, cap.counted)
        return update

    def refuse(self, device: int, reason: str) -> None:
        if len(self.refused) < MAX_REFUSED:
            self.refused.append((device, reason[:MAX_REASON]))
        else:
            self.malformed += 1

    def parse(self, reply: Message) -> LocalUpdate | None:
        """The reply's update, or None: an error reply is logged; a malformed one is refused with its
        reason (recorded in the next tick against its device where that is known, else counted)."""
        node = reply.metadata.src_node_id
        if reply.has_error():
            log.warning("node %d replied with an error: %s", node, reply.error.reason)
            return None
        try:
            update = LocalUpdate.from_record(reply.content)
            if update.device_id not in self.devices:
                raise MalformedReply(f"device {update.device_id} is not one of this federation's")
            return update
        except MalformedReply as exc:
            if exc.device_id in self.devices and len(self.refused) < MAX_REFUSED:
                self.refused.append((exc.device_id, exc.reason[:MAX_REASON]))
            else:
                self.malformed += 1
            log.warning("node %d: %s; refused", node, str(exc)[:MAX_REASON])
            return None

    def aggregate(self) -> None:
        """Decide the tick (:class:`TimedAggregation`) and write it; while the tick before is not written
        (MongoDB unavailable), wait: the updates stay pending for the next tick."""
        if self.unwritten is not None:
            log.warning("aggregation waits: the tick of round %d is not written yet (MongoDB unavailable); "
                        "%d updates pending", self.unwritten.outcome.round, len(self.pending))
            return
        outcome = self.aggregation.aggregate_round(self.pending, self.state)
        transport = {**self.transport.summary(len(self.outstanding)), "malformed": self.malformed}
        self.unwritten = Unwritten(outcome, rounds.documents(outcome, transport, self.refused, self.malformed,
                                                             self.capped))
        self.transport, self.refused, self.malformed = Transport(online=self.transport.online), [], 0
        self.capped = []
        self.pending = outcome.carried_over
        log.info("messages since the last tick: %d devices online, %d sent, %d replies (reply after p50 %.1fs, "
                 "p99 %.1fs; p50 of delivery %.1fs, work %.1fs, return %.1fs), %d expired, %d still out, "
                 "%d malformed", transport["online"], transport["sent"], transport["replies"],
                 transport["latency_p50"], transport["latency_p99"], transport["delivery_p50"], transport["work_p50"],
                 transport["return_p50"], transport["expired"], transport["outstanding"], transport["malformed"])
        self.write_tick()

    def write_tick(self) -> None:
        """Write the tick made last; once it is in, its global model is the current one."""
        tick = self.unwritten
        assert tick is not None

        def attempt() -> None:
            tick.attempts += 1
            rounds.write(self.store, tick.docs, again=tick.attempts > 1)

        ok, _ = self.mongo(f"write of the tick of round {tick.outcome.round}", attempt, ROUND_WRITE_TIMEOUT)
        if not ok:
            return
        self.unwritten = None
        outcome = tick.outcome
        rejected = "; ".join(f"device {r['device_id']}: {r['reason']}" for r in tick.docs.tick["rejected"])
        written = f" (written at attempt {tick.attempts})" if tick.attempts > 1 else ""
        if outcome.status == AGGREGATED and outcome.state is not None:
            self.state = outcome.state
            log.info("aggregated round %d: %d devices %s, %d readings, mean loss %.4f, threshold %.4f; "
                     "%d stale, %d rejected%s%s", outcome.round, len(outcome.accepted), outcome.device_ids,
                     outcome.num_examples, outcome.metrics.get("loss", float("nan")), self.state.threshold,
                     len(outcome.stale), len(tick.docs.tick["rejected"]), f" ({rejected})" if rejected else "", written)
        else:
            log.info("skipped (round stays %d): %s%s%s", outcome.round, outcome.reason,
                     f"; rejected: {rejected}" if rejected else "", written)
