"""Values between MongoDB and JSON: a time without an offset is UTC; NaN and infinity are not JSON."""

from __future__ import annotations

import math
from datetime import UTC, datetime


def as_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def finite(value: object) -> float | None:
    """``value`` as a float if it is a finite number, else None (e.g. the loss of a round without one)."""
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None
