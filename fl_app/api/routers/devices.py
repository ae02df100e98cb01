"""``GET /api/devices`` and ``GET /api/devices/{id}``: what each device sent and trained."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query

from fl_app.api.deps import ServicesDep
from fl_app.api.schemas import DeviceDetail, DeviceSummary, LocalUpdateOut, ReadingOut
from fl_app.api.values import DeviceId, finite

router = APIRouter(prefix="/api/devices", tags=["devices"])


def _by_device(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {int(r["_id"]): r for r in rows if r.get("_id") is not None}


@router.get("", response_model=list[DeviceSummary])
def devices(svc: ServicesDep) -> list[DeviceSummary]:
    """Every device of the data set: readings stored, last seen, local updates, the last one."""
    store = svc.store
    readings = _by_device(list(store.device_data.aggregate(
        [{"$group": {"_id": "$device_id", "n": {"$sum": 1}, "last": {"$max": "$event_time"}}}])))
    updates = _by_device(list(store.local_models.aggregate(
        [{"$group": {"_id": "$device_id", "n": {"$sum": 1}, "last": {"$max": "$trained_at"}}}])))
    return [DeviceSummary(device_id=d, readings=readings.get(d, {}).get("n", 0),
                          last_seen=readings.get(d, {}).get("last"), local_updates=updates.get(d, {}).get("n", 0),
                          last_update_at=updates.get(d, {}).get("last")) for d in svc.devices]


@router.get("/{device_id}", response_model=DeviceDetail)
def device(svc: ServicesDep, device_id: DeviceId,
           recent: Annotated[int, Query(ge=1, le=200, description="readings and updates to show")] = 20,
           ) -> DeviceDetail:
    """One device: its newest readings and local updates, and its anomaly rate (streaming predictions)."""
    if device_id not in svc.devices:
        raise HTTPException(404, f"no device {device_id} in the data set (devices: {svc.devices[0]}.."
                                 f"{svc.devices[-1]}, {len(svc.devices)} of them)")
    store, mine = svc.store, {"device_id": device_id}
    newest = list(store.device_data.find(mine, sort=[("event_time", -1)], limit=recent))
    updates = list(store.local_models.find(mine, {"weights": 0}, sort=[("trained_at", -1)], limit=recent))
    predictions = store.predictions.count_documents(mine)
    anomalies = store.predictions.count_documents({**mine, "is_anomaly": True})
    last_update = updates[0]["trained_at"] if updates else None

    return DeviceDetail(
        device_id=device_id, readings=store.device_data.count_documents(mine),
        last_seen=newest[0]["event_time"] if newest else None,
        local_updates=store.local_models.count_documents(mine), last_update_at=last_update,
        recent_readings=[ReadingOut(**{k: r[k] for k in ReadingOut.model_fields}) for r in newest],
        recent_updates=[LocalUpdateOut(round=u["round"], aggregated_into=u.get("aggregated_into"),
                                       trained_at=u["trained_at"], num_examples=u["num_examples"],
                                       loss=finite(u.get("metrics", {}).get("loss")))
                        for u in updates],
        predictions=predictions, anomalies=anomalies,
        anomaly_rate=anomalies / predictions if predictions else None)
