"""Values between MongoDB, the request and JSON: the parameter types every router uses, with the bounds
of what they are used for; NaN and infinity are not JSON.

A request's values end in MongoDB queries: a time becomes a BSON date (UTC, milliseconds in int64; this
API takes what Python's datetime can hold, years 1..9999 in UTC, well inside), an integer a BSON int64
(a device id, a round, a skip). Anything past that is a 422 naming the parameter, never a 500 from
the converter or the encoder.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any

from annotated_types import Ge, Le
from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

from core.validation import INT64_MAX


def utc_time(value: datetime) -> datetime:
    """``value`` in UTC; a time without an offset is taken as UTC. Raises a validation error if its UTC
    time falls outside years 1..9999 (e.g. 0001-01-01T00:00:00+14:00), which nothing downstream can hold."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise PydanticCustomError("datetime_utc_range", "the time {value} is outside years 1..9999 in UTC",
                                  {"value": value.isoformat()}) from None


# A query parameter of time: ISO 8601 (or Unix seconds, as Pydantic reads them), in UTC once validated.
UtcTime = Annotated[datetime, AfterValidator(utc_time)]
DeviceId = Annotated[int, Ge(0), Le(INT64_MAX)]  # what the readings' validation lets into MongoDB
Round = Annotated[int, Ge(1), Le(INT64_MAX)]  # the first global model is round 1
MAX_PAGE = 1_000_000  # with api.max_page_size, bounds the skip MongoDB must walk
PageNumber = Annotated[int, Ge(1), Le(MAX_PAGE)]
PageSize = Annotated[int, Ge(1), Le(INT64_MAX)]  # and at most api.max_page_size (deps.page_bounds)


def json_safe(value: Any) -> Any:
    """``value`` (JSON-able) with every non-finite float as its text ("nan", "inf"): a validation error
    echoes the input, and an input of NaN (FastAPI's JSON parser takes it) must not make its 422 a 500."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def finite(value: object) -> float | None:
    """``value`` as a float if it is a finite number, else None (e.g. the loss of a round without one)."""
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None
