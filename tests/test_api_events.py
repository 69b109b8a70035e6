"""The activity feed over real HTTP: order, keyset pages, type filter, checked against SQL.

The gateway's clock is pinned at NOW, and the events are stored around it: the windows the
feed scans first reach back from it, not from the wall clock."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.api.events import decode_cursor, encode_cursor
from gateway.errors import ApiError
from schemas.settings import Settings
from tests.api_support import (
    DAY_US,
    HOUR_US,
    ApiEnv,
    api_env,
    fixed_clock,
    new_user,
    parse,
    random_events,
    to_us,
)
from tests.streams_helpers import make_event

FEED = "/api/v1/events"
SQL = """
SELECT event_id, event_type, time, value, properties::text AS properties
FROM real_time_events WHERE user_id = $1 AND ($2::text[] IS NULL OR event_type = ANY($2))
ORDER BY time DESC, event_id
"""


NOW = datetime(2026, 12, 2, 12, 34, 56, tzinfo=UTC)


NOW_US = to_us(NOW)


@pytest.fixture
async def env(migrated: Settings) -> AsyncIterator[ApiEnv]:
    async with api_env(migrated, clock=fixed_clock(NOW)) as e:
        yield e


async def _pages(env: ApiEnv, user: str, **params: str) -> list[list[dict[str, Any]]]:
    pages: list[list[dict[str, Any]]] = []
    cursor: str | None = None
    while True:
        query = dict(params) if cursor is None else {**params, "cursor": cursor}
        status, body, _ = await env.get(FEED, user, **query)
        assert status == 200, body
        pages.append(body["events"])
        cursor = body["nextCursor"]
        if cursor is None:
            return pages
        assert len(pages) < 50, "the cursor does not advance"


async def test_pages_walk_the_whole_feed_newest_first(env: ApiEnv) -> None:
    user = new_user()
    events = random_events(user, random.Random(1), 95, NOW_US - 24 * HOUR_US, 24 * HOUR_US)
    # Five events at one instant: ties must neither repeat nor vanish across a page boundary.
    tie = NOW_US - 5 * HOUR_US
    events += [make_event(user, "profile_view", time_us=tie) for _ in range(5)]
    # Older ones, beyond the first windows the feed scans: the pages must still reach them.
    events += [make_event(user, "post_like", time_us=NOW_US - d * DAY_US) for d in (3, 10, 40)]
    await env.store(events)
    pages = await _pages(env, user, limit="30")
    assert [len(p) for p in pages] == [30, 30, 30, 13]
    feed = [e for page in pages for e in page]
    async with env.pool.acquire() as conn:
        expected = await conn.fetch(SQL, user, None)
    assert [e["eventId"] for e in feed] == [r["event_id"] for r in expected]
    for got, row in zip(feed, expected, strict=True):
        assert parse(got["time"]) == row["time"]
        assert (got["type"], got["value"]) == (row["event_type"], row["value"])
        assert got["properties"] == json.loads(row["properties"])


async def test_default_limit_and_a_last_page_without_cursor(env: ApiEnv) -> None:
    user = new_user()
    await env.store(random_events(user, random.Random(2), 60, NOW_US - HOUR_US, HOUR_US))
    _, first, _ = await env.get(FEED, user)
    assert len(first["events"]) == 50 and first["nextCursor"] is not None
    _, second, _ = await env.get(FEED, user, cursor=first["nextCursor"])
    assert len(second["events"]) == 10 and second["nextCursor"] is None
    _, empty, _ = await env.get(FEED, new_user())
    assert empty["events"] == [] and empty["nextCursor"] is None


async def test_new_events_do_not_shift_later_pages(env: ApiEnv) -> None:
    user = new_user()
    await env.store(random_events(user, random.Random(3), 40, NOW_US - HOUR_US, HOUR_US - 10**6))
    _, first, _ = await env.get(FEED, user, limit="20")
    _, second_before, _ = await env.get(FEED, user, limit="20", cursor=first["nextCursor"])
    newer = [make_event(user, "post_like", time_us=NOW_US + i) for i in range(7)]
    await env.store(newer)  # newer than all
    _, second_after, _ = await env.get(FEED, user, limit="20", cursor=first["nextCursor"])
    assert second_after["events"] == second_before["events"]
    _, newest, _ = await env.get(FEED, user, limit="7")
    assert {e["type"] for e in newest["events"]} == {"post_like"}


async def test_type_filter(env: ApiEnv) -> None:
    user = new_user()
    await env.store(random_events(user, random.Random(4), 120, NOW_US - HOUR_US, HOUR_US))
    pages = await _pages(env, user, type="post_like,profile_view", limit="10")
    feed = [e["eventId"] for page in pages for e in page]
    async with env.pool.acquire() as conn:
        expected = await conn.fetch(SQL, user, ["post_like", "profile_view"])
    assert 0 < len(feed) < 120
    assert feed == [r["event_id"] for r in expected]


def test_cursor_round_trip_and_tampering() -> None:
    t = datetime(2025, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
    assert decode_cursor(encode_cursor(t, "ev-1")) == (t, "ev-1")
    # U+0000 in the event id reached PostgreSQL (a 500 found by a fuzzer); so would a newline.
    forged = [
        encode_cursor(t, "ev\u00001"),
        encode_cursor(t, "ev-1\n"),
        encode_cursor(t, "x" * 129),
    ]
    for bad in ["", "!!!", encode_cursor(t, "ev-1")[:-3], "WzEsMl0", "eyJhIjoxfQ", *forged]:
        with pytest.raises(ApiError) as caught:
            decode_cursor(bad)
        assert caught.value.field == "cursor" and caught.value.status == 400
