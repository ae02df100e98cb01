"""The API's response and request models."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, Field

from fl_app.api.values import finite

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """One page of a list, newest first."""

    items: list[T]
    page: int
    page_size: int
    total: int


class ComponentHealth(BaseModel):
    name: str
    state: str  # running, unhealthy, stopped, external
    pid: int | None = None
    address: str = ""
    detail: str = ""


class CollectionStat(BaseModel):
    documents: int
    per_minute: float | None = Field(default=None, description="growth over the last minute (null until measured)")


class TopicStat(BaseModel):
    messages: int = Field(description="end offsets summed over partitions")
    per_second: float | None = None


class PendingUpdates(BaseModel):
    count: int = Field(description="local updates the ServerApp holds for its next aggregation")
    devices: list[int]


class MessageLayer(BaseModel):
    """Flower's message layer between two aggregation ticks, as the ServerApp saw it (``fl_rounds.transport``)."""

    devices_online: int = Field(description="SuperNodes the SuperLink lists as online at the tick")
    train_messages_sent: int = Field(description="train messages pushed since the tick before")
    replies: int = Field(description="replies pulled since the tick before")
    pending: int = Field(description="train messages sent and not answered yet (a task pending on a SuperNode)")
    expired: int = Field(description="train messages given up after the message TTL")
    reply_seconds_p50: float | None = Field(default=None, description="message pushed -> reply pulled, median")
    reply_seconds_p99: float | None = None
    reply_seconds_max: float | None = None
    delivery_seconds_p50: float | None = Field(default=None, description="message created -> ClientApp started")
    work_seconds_p50: float | None = Field(default=None, description="the ClientApp's training")
    return_seconds_p50: float | None = Field(default=None, description="reply built -> pulled by the ServerApp")

    @classmethod
    def of_tick(cls, tick: dict[str, Any] | None) -> MessageLayer | None:
        """From an ``fl_rounds`` document; None for a tick without one (or no tick)."""
        t = (tick or {}).get("transport")
        if not t:
            return None
        return cls(devices_online=t["online"], train_messages_sent=t["sent"], replies=t["replies"],
                   pending=t["outstanding"], expired=t["expired"], reply_seconds_p50=finite(t.get("latency_p50")),
                   reply_seconds_p99=finite(t.get("latency_p99")), reply_seconds_max=finite(t.get("latency_max")),
                   **{f"{hop}_seconds_p50": finite(t.get(f"{hop}_p50")) for hop in ("delivery", "work", "return")})


class StatusResponse(BaseModel):
    at: datetime
    current_round: int
    last_aggregation_at: datetime | None = Field(default=None, description="when the current global round was made")
    last_tick_at: datetime | None = Field(default=None, description="the last aggregation tick, aggregated or skipped")
    last_tick_status: str | None = None
    next_aggregation_at: datetime | None = None
    aggregate_every_seconds: float | None = None
    pending: PendingUpdates
    devices_online: int | None = None
    message_layer: MessageLayer | None = Field(default=None, description="at the last aggregation tick")
    collections: dict[str, CollectionStat]
    topics: dict[str, TopicStat]
    kafka_lag: dict[str, int | None] = Field(description="messages of iot_stream not yet consumed, per consumer")
    dead_letters: dict[str, int]
    components: list[ComponentHealth]
    sampled_at: datetime | None = Field(default=None, description="when rates, lag and health were last sampled")


class RejectedUpdate(BaseModel):
    device_id: int
    reason: str


class HistoryItem(BaseModel):
    round: int
    at: datetime
    status: str  # aggregated or skipped
    reason: str | None = None
    devices: list[int]
    examples: int | None = None
    loss: float | None = None
    rejected: list[RejectedUpdate]
    stale: list[int]
    idle: list[int] = Field(description="devices that had no new data")
    message_layer: MessageLayer | None = None


class Weights(BaseModel):
    dtype: str
    shapes: list[list[int]]
    data_base64: str | None = Field(default=None, description="weights=binary: the arrays' bytes, concatenated")
    arrays: list[Any] | None = Field(default=None, description="weights=json: one nested list per array")


class ModelResponse(BaseModel):
    round: int
    created_at: datetime
    num_devices: int
    device_ids: list[int]
    num_examples: int | None = None
    loss: float | None = None
    threshold: float
    rejected: int = 0
    stale: int = 0
    weights: Weights | None = None


class DeviceSummary(BaseModel):
    device_id: int
    readings: int
    last_seen: datetime | None = None
    local_updates: int
    last_update_at: datetime | None = None


class ReadingOut(BaseModel):
    event_id: str
    event_time: datetime
    temperature: float
    humidity: float
    light: float
    voltage: float


class LocalUpdateOut(BaseModel):
    round: int = Field(description="the global round it trained from")
    aggregated_into: int | None = None
    trained_at: datetime
    num_examples: int
    loss: float | None = None


class DeviceDetail(DeviceSummary):
    recent_readings: list[ReadingOut]
    recent_updates: list[LocalUpdateOut]
    predictions: int
    anomalies: int
    anomaly_rate: float | None = None


class PredictionOut(BaseModel):
    event_id: str
    device_id: int
    event_time: datetime
    score: float
    threshold: float | None = None
    is_anomaly: bool
    model_round: int
    scored_at: datetime


class IntervalRequest(BaseModel):
    # A JSON number (strict: no text, no true), finite, at least the ServerApp's 1 s between reads of it.
    seconds: float | None = Field(description="the new aggregation interval, 1 s to a day; null: back to the "
                                              "configured one", ge=1, le=86_400, allow_inf_nan=False, strict=True)


class ControlResponse(BaseModel):
    aggregate_now_requested_at: datetime | None = None
    aggregate_every_seconds: float | None = None
    note: str = ""


class LiveMessage(BaseModel):
    partition: int
    offset: int
    timestamp: int
    key: str
    value: str


class LossPoint(BaseModel):
    round: int
    loss: float | None = None
    devices: int


class MinuteCount(BaseModel):
    minute: datetime
    anomalies: int


class LiveResponse(BaseModel):
    at: datetime
    topics: dict[str, TopicStat]
    kafka_lag: dict[str, int | None]
    newest_messages: list[LiveMessage]
    devices_online: int | None = None
    current_round: int
    loss_per_round: list[LossPoint]
    anomalies_per_minute: list[MinuteCount]


# ------------------------------------------------------------------ lineage (fl_app/federation/lineage.py)
class SourceOut(BaseModel):
    """The window records a local update consumed (Kafka) and the readings in them (core.messages.Source)."""

    topic: str
    partition: int
    first_offset: int
    last_offset: int
    windows: int
    first_event_id: str
    last_event_id: str
    replayed: int
    held_out: int


class UpdateLineage(BaseModel):
    id: str
    device_id: int
    base_round: int = Field(description="the global round it trained from")
    num_examples: int
    trained_at: datetime
    window_start: datetime | None = None
    window_end: datetime | None = None
    source: SourceOut | None = Field(default=None, description="null: recorded before lineage, or no Kafka source")


class LeftOut(BaseModel):
    device_id: int
    reason: str
    source: SourceOut | None = None


class RoundLineage(BaseModel):
    """Which updates (and so which readings) made one global model, and which were left out and why."""

    round: int
    created_at: datetime
    num_examples: int | None = None
    base_rounds: list[int]
    readings_per_device: dict[str, int]
    updates: Page[UpdateLineage]
    left_out: list[LeftOut] = Field(description="updates of its tick trained into no round (stale, rejected)")
    refused: list[LeftOut] = Field(description="replies of its tick refused, by device")
    idle: list[int] = Field(description="devices that replied with no new readings")


class PredictionLineage(BaseModel):
    prediction: PredictionOut
    lineage: str = Field(description="the path of the lineage of the model that scored it")


class Contribution(BaseModel):
    round: int = Field(description="the global round its readings went into")
    base_round: int
    num_examples: int
    trained_at: datetime
    source: SourceOut | None = None
