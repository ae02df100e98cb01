"""``GET /api/status``: the pipeline now (mostly from the sampler's last sample)."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter

from fl_app.api.deps import ServicesDep
from fl_app.api.schemas import (
    CollectionStat,
    ComponentHealth,
    MessageLayer,
    PendingUpdates,
    StatusResponse,
    TopicStat,
)

router = APIRouter(prefix="/api", tags=["status"])


@router.get("/status", response_model=StatusResponse)
def status(svc: ServicesDep) -> StatusResponse:
    """Pending updates since the last aggregation, devices online, last and next aggregation, the current
    round, Flower's message layer at the last tick (train messages, replies, pending, reply latency), documents
    per collection and their growth per minute, messages per topic, the consumers' lag,
    dead letters by reason, and the health of every component."""
    store, snap = svc.store, svc.sampler.snapshot
    state = store.server_state() or {}
    latest = store.latest_global_model({"round": 1, "created_at": 1})
    tick = store.fl_rounds.find_one({}, {"at": 1, "status": 1, "transport": 1}, sort=[("at", -1)])
    online = state.get("online") or (tick or {}).get("transport", {}).get("online")
    return StatusResponse(
        at=datetime.now(UTC),
        current_round=int(latest["round"]) if latest else 0,
        last_aggregation_at=latest["created_at"] if latest else None,
        last_tick_at=tick["at"] if tick else None,
        last_tick_status=tick["status"] if tick else None,
        next_aggregation_at=state.get("next_aggregation_at"),
        aggregate_every_seconds=state.get("aggregate_every_seconds"),
        pending=PendingUpdates(count=int(state.get("pending", 0)), devices=list(state.get("pending_devices", []))),
        devices_online=int(online) if online is not None else None,
        message_layer=MessageLayer.of_tick(tick),
        collections={name: CollectionStat(documents=n, per_minute=rate)
                     for name, (n, rate) in snap.collections.items()},
        topics={name: TopicStat(messages=n, per_second=rate) for name, (n, rate) in snap.topics.items()},
        kafka_lag=snap.lag,
        dead_letters=snap.dead_letters,
        components=[ComponentHealth(name=c.name, state=c.state.value, pid=c.pid, address=c.address,
                                    detail=c.detail) for c in snap.components],
        sampled_at=snap.at,
    )
