"""The live page (``/``) and what it polls (``GET /api/live``)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from fl_app.api.deps import ServicesDep
from fl_app.api.schemas import LiveMessage, LiveResponse, LossPoint, MinuteCount, TopicStat
from fl_app.api.values import finite

router = APIRouter(tags=["live"])
PAGE = Path(__file__).resolve().parent.parent / "static" / "index.html"
ROUNDS_SHOWN = 100


@router.get("/", include_in_schema=False)
def page() -> FileResponse:
    return FileResponse(PAGE, media_type="text/html")


@router.get("/api/live", response_model=LiveResponse)
def live(svc: ServicesDep) -> LiveResponse:
    """What the live page shows: topics with messages/s, the consumers' lag, the newest messages of
    iot_stream, devices online, loss per round, anomalies per minute."""
    store, snap = svc.store, svc.sampler.snapshot
    models = list(store.global_model.find({}, {"round": 1, "metrics.loss": 1, "num_devices": 1},
                                          sort=[("round", -1)], limit=ROUNDS_SHOWN))
    state = store.server_state() or {}

    return LiveResponse(
        at=datetime.now(UTC),
        topics={name: TopicStat(messages=n, per_second=rate) for name, (n, rate) in snap.topics.items()},
        kafka_lag=snap.lag,
        newest_messages=[LiveMessage(**m) for m in snap.newest_messages],
        devices_online=state.get("online"),
        current_round=models[0]["round"] if models else 0,
        loss_per_round=[LossPoint(round=m["round"], loss=finite(m.get("metrics", {}).get("loss")),
                                  devices=m["num_devices"]) for m in reversed(models)],
        anomalies_per_minute=[MinuteCount(minute=t, anomalies=n) for t, n in snap.anomalies_per_minute],
    )
