"""The chunked ``$in`` queries the analytics jobs ask the MongoDB-wire server."""

from __future__ import annotations

import pytest

from analytics.mongo_reader import IN_CHUNK, in_chunks


@pytest.mark.parametrize("count", [0, 1, IN_CHUNK - 1, IN_CHUNK, IN_CHUNK + 1, 3 * IN_CHUNK + 7])
def test_the_chunks_ask_for_every_value_once_and_none_is_too_long(count: int) -> None:
    values = [f"e{i}" for i in range(count)]
    queries = list(in_chunks("event_id", values))
    asked = [v for q in queries for v in q["event_id"]["$in"]]
    assert asked == values
    assert all(0 < len(q["event_id"]["$in"]) <= IN_CHUNK for q in queries)
    assert len(queries) == -(-count // IN_CHUNK)
