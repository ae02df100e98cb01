"""The Flower ServerApp: a clock that trains every local interval and aggregates every global one.

Not Flower's round loop (``strategy.start`` waits for every reply and drops
late ones): this app pushes train messages to the online SuperNodes on the
local clock, pulls replies as they come, keeps them until the next
aggregation tick (late ones too), and lets :class:`server.strategy.TimedFedAvg`
decide what counts. Every tick, aggregation and accepted update is persisted
(``server/rounds.py``); on restart the round numbers continue from MongoDB.
One line per tick and per aggregation goes to ``logs/global_server.log``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from flwr.app import Context, Message, MessageType
from flwr.serverapp import Grid, ServerApp

from fl_app import flower_backoff
from fl_app.federation import LocalUpdate, RunSettings, ServerSettings, TrainInstruction
from fl_app.storage import Storage
from server import rounds
from server.strategy import AGGREGATED, Clock, GlobalState, TimedFedAvg

log = logging.getLogger("server.global")
HOPS = ("delivery", "work", "return")  # of a message's way, measured per reply (Transport)
POLL_SECONDS = 0.3  # between reply pulls: short, so replies are seen soon, long enough to stay cheap
CONTROL_SECONDS = 1.0  # between reads of the operator's requests (fl_server "control")

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings = RunSettings.from_context(context.run_config)
    server = ServerSettings.load(settings.server_settings)
    _log_to(Path(server.logs_dir) / "global_server.log")
    flower_backoff.shorten(flower_backoff.SERVERAPP_FETCH)  # replies' data arrives just after them
    try:
        with Storage(server.mongo_uri, server.mongo_database, server.mongo_timeout_ms) as store:
            TimedServer(settings, grid, store).run()
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


class TimedServer:
    """The loop of one run: push on the local clock, pull continuously, aggregate on the global clock."""

    def __init__(self, settings: RunSettings, grid: Grid, store: Storage) -> None:
        self.settings, self.grid, self.store = settings, grid, store
        self.strategy = TimedFedAvg(settings.min_devices, settings.max_staleness_rounds, settings.max_update_norm,
                                    settings.model_config().threshold_quantile)
        self.state: GlobalState = rounds.resume(store, settings.model_config())
        self.outstanding: dict[str, tuple[int, float]] = {}  # message id -> (node id, sent at)
        self.pending: list[LocalUpdate] = []  # replies since the last aggregation, late ones included
        self.malformed = 0
        self.transport = Transport()
        self.ttl = settings.message_ttl  # a message not answered in time is given up (the node gets a new one)
        self.clock = Clock(settings.train_every, settings.aggregate_every, start=time.monotonic())
        # Requests made before this ServerApp started were for an earlier one (its interval
        # override stays: a restarted ServerApp keeps what the operator set for the run).
        self.control_seen = store.server_control().get("aggregate_now_requested_at")
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
            if now - self.control_checked >= CONTROL_SECONDS:
                self.apply_control(now)
            warm_train = self.warming_up() and now - self.last_train >= self.settings.warmup_train_every
            if clock.train_due(now) or warm_train:
                self.send_train_messages(now)
                self.last_train = now
                self.save_state(now)
            self.collect_replies(now)
            if self.warming_up() and self.first_round_ready():
                clock.aggregate_now(now)  # the first round now; the global interval counts from it
            if clock.aggregate_due(now):
                self.aggregate()
                self.save_state(now)
            time.sleep(POLL_SECONDS)
        log.info("stop: global round %d after %.0fs", self.state.round, time.monotonic() - started)

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
        control = self.store.server_control()
        requested = control.get("aggregate_now_requested_at")
        if requested is not None and requested != self.control_seen:
            self.control_seen = requested
            log.info("aggregation requested by an operator (at %s)", requested.isoformat())
            self.clock.aggregate_now(now)
        every = control.get("aggregate_every_seconds") or self.settings.aggregate_every
        if every != self.clock.aggregate_every:
            log.info("aggregation interval %gs -> %gs%s", self.clock.aggregate_every, every,
                     " (by an operator)" if control.get("aggregate_every_seconds") else " (back to the configured)")
            self.clock.set_aggregate_every(float(every), now)
            self.save_state(now)

    def save_state(self, now: float) -> None:
        """What the API's /api/status shows of the ServerApp: kept in fl_server "state"."""
        wall = datetime.now(UTC)
        self.store.save_server_state({
            "at": wall, "round": self.state.round, "online": self.transport.online, "pending": len(self.pending),
            "pending_devices": sorted({u.device_id for u in self.pending}), "outstanding": len(self.outstanding),
            "aggregate_every_seconds": self.clock.aggregate_every,
            "next_aggregation_at": wall + timedelta(seconds=max(0.0, self.clock.next_aggregate - now))})

    def send_train_messages(self, now: float) -> None:
        online = sorted(self.grid.get_node_ids())
        busy = {node for node, _ in self.outstanding.values()}
        targets = [n for n in online if n not in busy]  # one message at a time per device
        record = TrainInstruction(self.state.weights, self.state.round, self.state.threshold,
                                  self.settings.local_epochs).to_record()
        messages = [Message(record, dst_node_id=node, message_type=MessageType.TRAIN, ttl=self.ttl)
                    for node in targets]
        pushed = time.monotonic()
        ids = list(self.grid.push_messages(messages)) if messages else []
        pushed = time.monotonic() - pushed
        for node, message_id in zip(targets, ids, strict=True):
            self.outstanding[message_id] = (node, now)
        self.transport.online, self.transport.sent = len(online), self.transport.sent + len(ids)
        log.info("tick: round %d, %d devices online, %d train messages sent in %.1fs, %d still out, "
                 "%d updates pending", self.state.round, len(online), len(ids), pushed,
                 len(self.outstanding) - len(ids), len(self.pending))

    def collect_replies(self, now: float) -> None:
        if not self.outstanding:
            return
        for reply in self.grid.pull_messages(list(self.outstanding)):
            sent = self.outstanding.pop(reply.metadata.reply_to_message_id, None)
            update = self.parse(reply)
            if sent is not None:
                self.transport.add(time.monotonic() - sent[1], *((update.delivery_seconds, update.work_seconds)
                                                                 if update is not None else (math.nan, math.nan)))
            if update is not None:
                self.pending.append(update)
        expired = [mid for mid, (_, sent) in self.outstanding.items() if now - sent > self.ttl]
        for mid in expired:
            del self.outstanding[mid]
        self.transport.expired += len(expired)

    def parse(self, reply: Message) -> LocalUpdate | None:
        if reply.has_error():
            log.warning("node %d replied with an error: %s", reply.metadata.src_node_id, reply.error.reason)
            return None
        try:
            return LocalUpdate.from_record(reply.content)
        except ValueError as exc:
            self.malformed += 1
            log.warning("node %d sent a malformed reply (%s); ignored", reply.metadata.src_node_id, exc)
            return None

    def aggregate(self) -> None:
        outcome = self.strategy.aggregate_round(self.pending, self.state)
        transport = self.transport.summary(len(self.outstanding))
        rounds.record(self.store, outcome, transport)
        self.transport = Transport(online=self.transport.online)
        self.pending = outcome.carried_over
        log.info("messages since the last tick: %d devices online, %d sent, %d replies (reply after p50 %.1fs, "
                 "p99 %.1fs; p50 of delivery %.1fs, work %.1fs, return %.1fs), %d expired, %d still out",
                 transport["online"], transport["sent"], transport["replies"], transport["latency_p50"],
                 transport["latency_p99"], transport["delivery_p50"], transport["work_p50"], transport["return_p50"],
                 transport["expired"], transport["outstanding"])
        rejected = "; ".join(f"device {u.device_id}: {why}" for u, why in outcome.rejected)
        if outcome.status == AGGREGATED and outcome.state is not None:
            self.state = outcome.state
            log.info("aggregated round %d: %d devices %s, %d readings, mean loss %.4f, threshold %.4f; "
                     "%d stale, %d rejected%s", outcome.round, len(outcome.accepted), outcome.device_ids,
                     outcome.num_examples, outcome.metrics.get("loss", float("nan")), self.state.threshold,
                     len(outcome.stale), len(outcome.rejected), f" ({rejected})" if rejected else "")
        else:
            log.info("skipped (round stays %d): %s%s", outcome.round, outcome.reason,
                     f"; rejected: {rejected}" if rejected else "")
