"""The API's parameter types (fl_app/api/values.py) and page bounds, without servers: what each accepts
is what MongoDB can take (a UTC time inside years 1..9999, int64), the rest is a validation error."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any, cast

import pytest
from fastapi import HTTPException
from pydantic import TypeAdapter, ValidationError

from core.config import load_config
from fl_app.api.deps import Services, page_bounds
from fl_app.api.schemas import IntervalRequest
from fl_app.api.values import DeviceId, PageNumber, Round, UtcTime, json_safe

TIME = TypeAdapter(UtcTime)


@pytest.mark.parametrize(("text", "utc"), [
    ("0001-01-01T00:00:00", datetime(1, 1, 1, tzinfo=UTC)),  # no offset: UTC
    ("0001-01-01T00:00:00-14:00", datetime(1, 1, 1, 14, tzinfo=UTC)),
    ("9999-12-31T23:59:59.999999Z", datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
    ("9999-12-31T23:59:59+14:00", datetime(9999, 12, 31, 9, 59, 59, tzinfo=UTC)),
    ("2026-11-28T10:00:00+01:00", datetime(2026, 11, 28, 9, tzinfo=UTC)),
])
def test_a_time_is_converted_to_utc(text: str, utc: datetime) -> None:
    got = TIME.validate_python(text)
    assert got == utc and got.utcoffset() == timedelta(0)


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00+14:00", "0001-01-01T00:00:00.999999+00:01",
                                  "9999-12-31T23:59:59-14:00", "9999-12-31T23:59:59.999999-00:01"])
def test_a_time_outside_years_1_to_9999_in_utc_is_a_validation_error(text: str) -> None:
    with pytest.raises(ValidationError) as caught:
        TIME.validate_python(text)
    error = caught.value.errors()[0]
    assert error["type"] == "datetime_utc_range" and "outside years 1..9999 in UTC" in error["msg"]


def test_an_aware_datetime_object_is_checked_too() -> None:
    plus14 = timezone(timedelta(hours=14))
    with pytest.raises(ValidationError):
        TIME.validate_python(datetime(1, 1, 1, tzinfo=plus14))
    assert TIME.validate_python(datetime(2, 1, 1, tzinfo=plus14)).tzinfo is UTC


@pytest.mark.parametrize(("kind", "inside", "outside"), [
    (DeviceId, [0, 2**63 - 1], [-1, 2**63, -(2**63) - 1]),
    (Round, [1, 2**63 - 1], [0, -1, 2**63]),
    (PageNumber, [1, 1_000_000], [0, 1_000_001, 2**63]),
])
def test_integers_stay_inside_int64_and_their_own_bounds(kind: Any, inside: list[int], outside: list[int]) -> None:
    adapter = TypeAdapter(kind)
    assert [adapter.validate_python(v) for v in inside] == inside
    for value in outside:
        with pytest.raises(ValidationError):
            adapter.validate_python(value)


@pytest.mark.parametrize("seconds", [float("nan"), float("inf"), -float("inf"), 0, 0.5, 86_400.5, True, "15",
                                     10**400])
def test_the_aggregation_interval_is_a_finite_number_of_1_s_to_a_day(seconds: Any) -> None:
    with pytest.raises(ValidationError):
        IntervalRequest.model_validate({"seconds": seconds})
    assert IntervalRequest.model_validate({"seconds": 1}).seconds == 1.0
    assert IntervalRequest.model_validate({"seconds": None}).seconds is None


def test_json_safe_turns_non_finite_floats_into_text() -> None:
    errors = [{"loc": ("body", "seconds"), "input": float("nan"), "ctx": {"le": 86_400, "got": [float("-inf")]}}]
    assert json_safe(errors) == [{"loc": ["body", "seconds"], "input": "nan",
                                  "ctx": {"le": 86_400, "got": ["-inf"]}}]


def test_a_page_whose_skip_overflows_int64_is_refused() -> None:
    svc = Services(load_config([f"api.max_page_size={2**62}"]), cast(Any, None), cast(Any, None), [])
    assert page_bounds(svc, 2, 2**62) == (2**62, 2**62)  # still inside int64
    with pytest.raises(HTTPException) as caught:
        page_bounds(svc, 1_000_000, 2**62)
    assert caught.value.status_code == 422 and "past the last page" in str(caught.value.detail)
