"""Schemathesis hooks for tests/integration/test_api.py (loaded through $SCHEMATHESIS_HOOKS): besides what
the schema allows, every date-time and every query or path parameter is sometimes an edge value.

The edge values are what breaks converters and encoders rather than what breaks a schema: times whose
offset carries them past years 1..9999 in UTC, integers at and past 32 and 64 bits, float specials,
huge and empty text. test_api.py sends each of them to each parameter too (explicitly, and counted).
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import strategies as st

# Years 1 and 9999 with the largest offsets ISO 8601 allows in practice (+/-14:00) and the largest
# Python accepts (+/-23:59), with and without fractional seconds, naive and Z.
EDGE_DATETIMES = [
    f"{day}T{clock}{fraction}{offset}"
    for day, clock in (("0001-01-01", "00:00:00"), ("9999-12-31", "23:59:59"))
    for fraction in ("", ".000001", ".999999")
    for offset in ("", "Z", "+14:00", "-14:00", "+23:59", "-23:59")
]
EDGE_NUMBERS = [
    "0", "-0", "1", "-1", str(2**31 - 1), str(2**31), str(-(2**31) - 1), str(2**53 + 1), str(2**62),
    str(2**63 - 1), str(2**63), str(-(2**63)), str(-(2**63) - 1), str(2**64), "9" * 5000,
    "1.5", "1e3", "1e308", "1e309", "-1e309", "5e-324", "NaN", "nan", "-NaN", "inf", "-inf", "Infinity",
]
EDGE_TEXT = ["", " ", "x" * 10_000, "\x00", "%00", "é", "💥", "../..", "null", "true", "[]", "{}", "'", '"']
EDGE_VALUES = EDGE_DATETIMES + EDGE_NUMBERS + EDGE_TEXT

schemathesis.openapi.format("date-time", st.sampled_from(EDGE_DATETIMES) | st.datetimes(
    timezones=st.timezones()).map(lambda t: t.isoformat()))


def _one_edge(values: dict[str, Any] | None) -> st.SearchStrategy[dict[str, Any] | None]:
    """``values`` as generated, or with one of them replaced by an edge value."""
    if not values:
        return st.just(values)
    names = sorted(values)
    return st.just(values) | st.tuples(st.sampled_from(names), st.sampled_from(EDGE_VALUES)).map(
        lambda edge: {**values, edge[0]: edge[1]})


@schemathesis.hook
def flatmap_query(_: Any, query: dict[str, Any] | None) -> st.SearchStrategy[dict[str, Any] | None]:
    return _one_edge(query)


@schemathesis.hook
def flatmap_path_parameters(_: Any, path: dict[str, Any] | None) -> st.SearchStrategy[dict[str, Any] | None]:
    return _one_edge(path)
