"""The summary's past values (sinks/queries/past_values.py) read rollups for whole hours and days;
they must equal the plain definitions over raw rows at any moment, on and off bucket boundaries.

Every test runs as of pinned instants (`now`), never the wall clock: the events are stored
around them and the functions take the instant, so the boundaries a moment meets do not depend
on when the suite runs."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas.influence import influence_score
from schemas.settings import Settings
from sinks.db import Conn
from sinks.queries.current_values import current_values
from sinks.queries.past_values import live_values, values_at
from tests.api_support import DAY_US, ApiEnv, api_env, new_user, random_events
from tests.streams_helpers import make_event

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _us(t: datetime) -> int:
    return (t - _EPOCH) // timedelta(microseconds=1)


# "Now" for these tests: midnight starting a month (and a Sunday), a minute before midnight
# ending February, a Monday 00:00, noon on 2026-12-02.
INSTANTS = [
    _utc("2026-03-01T00:00"),
    _utc("2026-02-28T23:59"),
    _utc("2026-11-30T00:00"),
    _utc("2026-12-02T12:00"),
]
# The tests storing thousands of events (about a second per instant) run at three of them.
FEW_INSTANTS = INSTANTS[:3]

# The definitions of schemas/metrics.py at $2 over raw rows up to $3, written the obvious way.
RAW = """
WITH w AS (SELECT * FROM profile_metrics
           WHERE user_id = $1 AND time > $2::timestamptz - interval '7 days' AND time <= $3),
     e AS (SELECT * FROM engagement_metrics
           WHERE user_id = $1 AND time > $2::timestamptz - interval '7 days' AND time <= $3),
     s AS (SELECT connections, time FROM profile_metrics
           WHERE user_id = $1 AND connections IS NOT NULL AND time <= $3
           ORDER BY time DESC LIMIT 1)
SELECT (SELECT coalesce(sum(profile_views), 0) FROM w) AS "profileViews",
       (SELECT coalesce(sum(search_appearances), 0) FROM w) AS "searchAppearances",
       (SELECT coalesce(sum(messages_received), 0) FROM w) AS "messagesReceived",
       (SELECT coalesce(sum(posts_published), 0) FROM e) AS "postsPublished",
       (SELECT coalesce(sum(impressions), 0) FROM e) AS impressions,
       (SELECT coalesce(sum(likes), 0) FROM e) AS likes,
       (SELECT coalesce(sum(comments), 0) FROM e) AS comments,
       (SELECT coalesce(sum(shares), 0) FROM e) AS shares,
       coalesce((SELECT connections FROM s), 0)
         + (SELECT coalesce(sum(connections_added - connections_removed), 0) FROM profile_metrics
            WHERE user_id = $1 AND time <= $3
              AND time > coalesce((SELECT time FROM s), '-infinity')) AS connections,
       (SELECT followers FROM profile_metrics WHERE user_id = $1 AND followers IS NOT NULL
          AND time <= $3 ORDER BY time DESC LIMIT 1) AS followers,
       (SELECT profile_completeness FROM profile_metrics WHERE user_id = $1
          AND profile_completeness IS NOT NULL AND time <= $3
          ORDER BY time DESC LIMIT 1) AS "profileCompleteness"
"""


@pytest.fixture
async def env(migrated: Settings) -> AsyncIterator[ApiEnv]:
    async with api_env(migrated) as e:
        yield e


async def expected(
    conn: Conn, user: str, at: datetime, upper: datetime | None = None
) -> dict[str, Any]:
    """The definitions at `at` over the rows up to `upper` (default `at`)."""
    row = await conn.fetchrow(RAW, user, at, upper or at)
    assert row is not None
    out: dict[str, Any] = {k: (float(v) if v is not None else None) for k, v in row.items()}
    interactions = out["likes"] + out["comments"] + out["shares"]
    out["engagementRate"] = interactions / out["impressions"] if out["impressions"] else None
    out["influenceScore"] = influence_score(
        connections=out["connections"],
        profile_views_7d=out["profileViews"],
        engagement_rate=out["engagementRate"] or 0.0,
        profile_completeness=out["profileCompleteness"] or 0.0,
    )
    return out


@pytest.mark.parametrize("now", FEW_INSTANTS, ids=str)
async def test_past_values_equal_the_definitions_over_raw_rows(env: ApiEnv, now: datetime) -> None:
    rng = random.Random(21)
    start = _us(now) - 16 * DAY_US
    busy, quiet, no_snapshots = new_user("busy"), new_user("quiet"), new_user("nosnap")
    events = random_events(busy, rng, 1500, start, 16 * DAY_US - 10**6)
    # Snapshots only in the first days: later moments must find them days back, via the
    # daily rollup, and add every connection change since.
    events += [
        e
        for e in random_events(quiet, rng, 500, start, 16 * DAY_US - 10**6)
        if e.type != "profile_snapshot" or e.time_us < start + 3 * DAY_US
    ]
    events += [
        e
        for e in random_events(no_snapshots, rng, 300, start, 16 * DAY_US - 10**6)
        if e.type not in ("profile_snapshot", "profile_update")
    ]
    await env.store(events)
    hour = now.replace(minute=0, second=0, microsecond=0)
    moments = [
        now - timedelta(days=7),
        hour - timedelta(days=7),  # on an hour boundary
        hour.replace(hour=0) - timedelta(days=5),  # on a day boundary
        now - timedelta(days=3, hours=7, minutes=13),
        now - timedelta(hours=2),
    ]
    async with env.pool.acquire() as conn:
        for user in (busy, quiet, no_snapshots):
            for at in moments:
                got = await values_at(conn, user, at)
                want = await expected(conn, user, at)
                assert got == pytest.approx(want), (user, at)
        assert (await values_at(conn, no_snapshots, now))["followers"] is None


@pytest.mark.parametrize("now", INSTANTS, ids=str)
async def test_a_snapshot_exactly_at_the_moment_counts(env: ApiEnv, now: datetime) -> None:
    user = new_user()
    t = _us(now) - 3 * DAY_US
    await env.store(
        [
            make_event(user, "connection_added", value=5, time_us=t - 10**6),
            make_event(user, "profile_snapshot", time_us=t, properties={"connections": 100}),
            make_event(user, "connection_added", value=2, time_us=t + 1),
        ]
    )
    at = datetime.fromtimestamp(t / 1e6, UTC)
    async with env.pool.acquire() as conn:
        assert (await values_at(conn, user, at))["connections"] == 100
        later = await values_at(conn, user, at + timedelta(days=1))
        assert later["connections"] == 102


@pytest.mark.parametrize("now", FEW_INSTANTS, ids=str)
async def test_live_values_equal_current_values(env: ApiEnv, now: datetime) -> None:
    """live_values (the API's) and current_values (the WebSocket's) agree for every kind of
    history: two implementations of one set of definitions that must not drift apart."""
    rng = random.Random(8)
    start = _us(now) - 20 * DAY_US
    span = 20 * DAY_US - 10**6
    busy, old, none, ahead = (new_user(p) for p in ("busy", "old", "none", "ahead"))
    events = random_events(busy, rng, 800, start, span)
    # Snapshots only in the first days: found through the daily rollup, net changes since.
    events += [
        e
        for e in random_events(old, rng, 400, start, span)
        if e.type != "profile_snapshot" or e.time_us < start + 4 * DAY_US
    ]
    events += [
        e
        for e in random_events(none, rng, 300, start, span)
        if e.type not in ("profile_snapshot", "profile_update")
    ]
    events += random_events(ahead, rng, 200, start, span)
    # Stamped two minutes ahead (a producer's clock may run fast): live figures count it.
    t = _us(now) + 120 * 10**6
    events += [
        make_event(ahead, "profile_snapshot", time_us=t, properties={"connections": 7777}),
        make_event(ahead, "profile_view", value=9, time_us=t + 1),
    ]
    await env.store(events)
    async with env.pool.acquire() as conn:
        live = await current_values(conn, [busy, old, none, ahead], now)
        for user in (busy, old, none, ahead):
            assert await live_values(conn, user, now) == pytest.approx(live[user]), user
    assert live[ahead]["connections"] == 7777
    assert live[none]["followers"] is None and live[none]["connections"] != 0


@pytest.mark.parametrize("now", FEW_INSTANTS, ids=str)
async def test_current_values_equal_the_definitions_over_raw_rows(
    env: ApiEnv, now: datetime
) -> None:
    """current_values reads raw rows of the last RECENT_DAYS and the daily rollup before
    them; for every kind of history it must give the definitions over all raw rows."""
    rng = random.Random(5)
    start = _us(now) - 40 * DAY_US
    span = 40 * DAY_US - 10**6
    busy, old, none, partial, quiet = (
        new_user(p) for p in ("busy", "old", "none", "partial", "quiet")
    )
    events = random_events(busy, rng, 1200, start, span)
    # Snapshots only in the first weeks: found through the daily rollup, net changes since.
    events += [
        e
        for e in random_events(old, rng, 600, start, span)
        if e.type != "profile_snapshot" or e.time_us < start + 15 * DAY_US
    ]
    events += [
        e
        for e in random_events(none, rng, 300, start, span)
        if e.type not in ("profile_snapshot", "profile_update")
    ]
    # A recent snapshot that reports only connections: followers and completeness are older.
    events += [
        make_event(partial, "profile_snapshot", time_us=start + DAY_US,
                   properties={"connections": 40, "followers": 12, "profile_completeness": 70}),
        make_event(partial, "connection_added", value=3, time_us=start + 2 * DAY_US),
        make_event(partial, "profile_snapshot", time_us=_us(now) - DAY_US,
                   properties={"connections": 55}),
        make_event(partial, "connection_added", value=2, time_us=_us(now) - DAY_US + 10**6),
    ]  # fmt: skip
    # Nothing at all in the last RECENT_DAYS.
    events += random_events(quiet, rng, 300, start, 20 * DAY_US)
    await env.store(events)
    users = [busy, old, none, partial, quiet, new_user("never")]
    async with env.pool.acquire() as conn:
        got = await current_values(conn, users, now)
        for user in users:
            want = await expected(conn, user, now, datetime.max.replace(tzinfo=UTC))
            assert got[user] == pytest.approx(want), user
    assert got[partial]["connections"] == 57 and got[partial]["followers"] == 12
    assert got[quiet]["profileViews"] == 0 and got[quiet]["followers"] is not None
