"""The ClientApp reads no windows for a train message about to expire (its reply would be refused)."""

from __future__ import annotations

from clients.client_app import REPLY_MARGIN_SECONDS, expires_soon


def test_a_message_with_time_left_is_answered_with_windows() -> None:
    assert not expires_soon(created_at=1000.0, ttl=20.0, now=1005.0)  # 15 s left


def test_a_message_about_to_expire_or_expired_is_not() -> None:
    assert expires_soon(created_at=1000.0, ttl=20.0, now=1020.0 - REPLY_MARGIN_SECONDS + 0.1)
    assert expires_soon(created_at=1000.0, ttl=20.0, now=1030.0)  # already expired


def test_an_update_names_the_records_and_readings_it_trained_on() -> None:
    """Its lineage (core.messages.Source): the consumed offsets, the windows with readings, the first
    and last event id, and how many buffer rows were replayed beside the new readings."""
    from pathlib import Path

    from flwr.app import Context, RecordDict

    from clients.client_app import local_update
    from core import model
    from core.config import load_config
    from core.messages import LocalUpdate, RunSettings, TrainInstruction

    cfg = load_config([f"paths.home={Path('/tmp/unused')}"])
    settings = RunSettings.from_config(cfg, [7], "s.json")
    spec = settings.model_config()
    weights = model.get_weights(model.build(spec))
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})

    def window(first: int, count: int) -> dict:
        readings = [{"event_id": f"0-{n}", "device_id": 7, "source_time": f"2026-11-28T00:00:{n % 60:02d}+00:00",
                     "temperature": 20.0 + n % 3, "humidity": 40.0, "light": 100.0, "voltage": 2.6}
                    for n in range(first, first + count)]
        return {"device_id": 7, "window_start": "2026-11-28T00:00:00+00:00",
                "window_end": "2026-11-28T00:00:30+00:00", "readings": readings}

    instruction = TrainInstruction(weights, 0, float("inf"), 1)
    first = local_update(settings, 7, instruction, [window(1, 6), window(7, 0), window(7, 4)], context,
                         ("windows.7", 0, 30, 33))
    assert first.source is not None and first.num_examples == 10
    assert (first.source.first_offset, first.source.last_offset, first.source.windows) == (30, 33, 2)
    assert (first.source.first_event_id, first.source.last_event_id) == ("0-1", "0-10")
    assert first.source.replayed == 0 and first.source.held_out == 0  # a first batch: nothing to replay
    second = local_update(settings, 7, instruction, [window(11, 5)], context, ("windows.7", 0, 34, 34))
    assert second.source is not None and second.source.replayed == 10  # the first batch, still in the buffer
    assert LocalUpdate.from_record(second.to_record()).source == second.source  # it survives the wire
    # Records with no reading the model can take: no training, but the records are named all the same.
    none = local_update(settings, 7, instruction, [window(16, 0)], context, ("windows.7", 0, 35, 36))
    assert none.num_examples == 0 and none.source is not None
    assert (none.source.first_offset, none.source.last_offset, none.source.windows) == (35, 36, 0)
