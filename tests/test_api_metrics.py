"""Series, summary, catalogue and aggregations over real HTTP, checked against SQL over the raw
rows that the real processor stored.

The gateway's clock is pinned (`now`, default noon on 2026-12-02): default ranges, the
raw-or-rollup split and the summary's windows are computed as of it, and the tests about time
run at several instants."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from gateway.app import create_app
from gateway.ops.openapi_api import API_PATHS
from schemas.aggregations import AGGREGATIONS
from schemas.metrics import CATALOGUE
from schemas.settings import Settings
from sinks.queries.current_values import current_values
from tests.api_support import (
    DAY_US,
    HOUR_US,
    RAW_ENGAGEMENT,
    RAW_PROFILE,
    ApiEnv,
    api_env,
    assert_series_equal,
    expected_bounds,
    fixed_clock,
    iso,
    new_user,
    parse,
    random_events,
    rollup_storage,
    to_us,
)
from tests.conftest import settings_for
from tests.streams_helpers import make_event

PROFILE = "/api/v1/metrics/profile"
ENGAGEMENT = "/api/v1/metrics/engagement"
WIDTHS = {"5m": timedelta(minutes=5), "1h": timedelta(hours=1), "1d": timedelta(days=1)}


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# A minute before midnight ending February, midnight starting March (both on bucket
# boundaries of every width but a minute apart), a Monday 00:00, noon on 2026-12-02, and an
# instant on no boundary.
INSTANTS = [
    _utc("2026-02-28T23:59"),
    _utc("2026-03-01T00:00"),
    _utc("2026-11-30T00:00"),
    _utc("2026-12-02T12:00"),
    _utc("2026-12-02T12:34:56.789"),
]


@pytest.fixture
def now() -> datetime:
    """The gateway's "now"; tests about time parametrize it over INSTANTS."""
    return INSTANTS[3]


@pytest.fixture
async def env(migrated: Settings, now: datetime) -> AsyncIterator[ApiEnv]:
    async with api_env(migrated, clock=fixed_clock(now)) as e:
        yield e


@pytest.fixture
async def seeded(env: ApiEnv, now: datetime) -> tuple[ApiEnv, str]:
    """A user with 600 events over the 40 hours before `now`, rolled up."""
    user = new_user()
    rng = random.Random(5)
    await env.store(random_events(user, rng, 600, to_us(now) - 40 * HOUR_US, 40 * HOUR_US))
    return env, user


@pytest.mark.parametrize("now", INSTANTS[:3], ids=str)
@pytest.mark.parametrize("bucket", ["5m", "1h", "1d"])
async def test_profile_series_equals_raw_sql(
    seeded: tuple[ApiEnv, str], bucket: str, now: datetime
) -> None:
    env, user = seeded
    to = now + timedelta(minutes=1)
    since = to - timedelta(hours=47, minutes=13)
    status, body, _ = await env.get(
        PROFILE, user, bucket=bucket, to=iso(to), **{"from": iso(since)}
    )
    assert status == 200, body
    start, end = expected_bounds(since, to, WIDTHS[bucket])
    assert (parse(body["from"]), parse(body["to"]), body["bucket"]) == (start, end, bucket)
    async with env.pool.acquire() as conn:
        expected = await conn.fetch(RAW_PROFILE, user, WIDTHS[bucket], start, end)
    assert len(expected) >= (2 if bucket == "1d" else 30)
    assert_series_equal(body["series"], expected)
    totals = body["totals"]
    for name in ("profileViews", "searchAppearances", "connectionsAdded", "events"):
        assert totals[name] == sum(r[name] for r in expected)
    async with env.pool.acquire() as conn:
        newest = await conn.fetchval(
            "SELECT connections FROM profile_metrics WHERE user_id = $1 AND connections IS NOT NULL"
            " AND time >= $2 AND time < $3 ORDER BY time DESC LIMIT 1",
            user,
            start,
            end,
        )
    assert newest is not None and body["latest"]["connections"] == newest


@pytest.mark.parametrize("now", INSTANTS[:3], ids=str)
@pytest.mark.parametrize("bucket", ["1h", "1d"])
async def test_engagement_series_equals_raw_sql(
    seeded: tuple[ApiEnv, str], bucket: str, now: datetime
) -> None:
    env, user = seeded
    to = now
    since = to - timedelta(days=3)
    status, body, _ = await env.get(
        ENGAGEMENT, user, bucket=bucket, to=iso(to), **{"from": iso(since)}
    )
    assert status == 200, body
    start, end = expected_bounds(since, to, WIDTHS[bucket])
    async with env.pool.acquire() as conn:
        expected = await conn.fetch(RAW_ENGAGEMENT, user, WIDTHS[bucket], start, end)
    assert len(expected) >= 2
    assert_series_equal(body["series"], expected)
    totals = body["totals"]
    assert totals["impressions"] == sum(r["impressions"] for r in expected)
    interactions = sum(r["likes"] + r["comments"] + r["shares"] for r in expected)
    assert totals["engagementRate"] == pytest.approx(interactions / totals["impressions"])


@pytest.mark.parametrize("now", INSTANTS, ids=str)
async def test_a_fresh_event_counts_before_any_rollup(env: ApiEnv, now: datetime) -> None:
    """Stored by the processor, not yet rolled up: the newest buckets come from raw rows."""
    user = new_user()
    t = to_us(now) - 1_000_000
    await env.store([make_event(user, "profile_view", value=7, time_us=t)], rollup=False)
    await env.store([make_event(user, "post_impression", value=40, time_us=t)], rollup=False)
    async with env.pool.acquire() as conn:
        rollup = await rollup_storage(conn, "profile_metrics_5min")
        rolled = await conn.fetchval(f"SELECT count(*) FROM {rollup} WHERE user_id = $1", user)
    assert rolled == 0  # the premise: no rollup has these rows
    for bucket in ("5m", "1h", "1d"):
        _, body, _ = await env.get(PROFILE, user, bucket=bucket)
        assert body["totals"]["profileViews"] == 7, bucket
        assert [p["events"] for p in body["series"]] == [1]
    for bucket in ("1h", "1d"):
        _, body, _ = await env.get(ENGAGEMENT, user, bucket=bucket)
        assert body["totals"]["impressions"] == 40, bucket


@pytest.mark.parametrize("now", INSTANTS, ids=str)
async def test_older_buckets_are_read_from_the_rollups(env: ApiEnv, now: datetime) -> None:
    """A rollup row altered behind the API's back shows in old buckets, never in new ones:
    proof that old buckets come from the rollup and the newest from raw rows."""
    user = new_user()
    old = to_us(now) - 30 * HOUR_US
    await env.store(
        [
            make_event(user, "profile_view", value=2, time_us=old),
            make_event(user, "profile_view", value=3, time_us=to_us(now) - 1_000_000),
            make_event(user, "post_like", value=4, time_us=old),
        ]
    )
    async with env.pool.acquire() as conn:
        for rollup in ("profile_metrics_hourly", "profile_metrics_daily"):
            stored = await rollup_storage(conn, rollup)
            await conn.execute(
                f"UPDATE {stored} SET profile_views = profile_views + 1000 WHERE user_id = $1",
                user,
            )
        stored = await rollup_storage(conn, "engagement_hourly")
        await conn.execute(f"UPDATE {stored} SET likes = 99 WHERE user_id = $1", user)
    _, hourly, _ = await env.get(PROFILE, user, bucket="1h")
    assert [p["profileViews"] for p in hourly["series"]] == [1002, 3]
    _, daily, _ = await env.get(ENGAGEMENT, user, bucket="1d")
    assert [p["likes"] for p in daily["series"]] == [99]


@pytest.mark.parametrize("now", INSTANTS, ids=str)
async def test_defaults(seeded: tuple[ApiEnv, str], now: datetime) -> None:
    """Without `from` and `to`: the last 7 days in hours (2 days in 5 minutes) up to now,
    widened to whole buckets."""
    env, user = seeded
    _, body, _ = await env.get(PROFILE, user)
    assert body["bucket"] == "1h"
    hourly = expected_bounds(now - timedelta(days=7), now, WIDTHS["1h"])
    assert (parse(body["from"]), parse(body["to"])) == hourly
    on_the_hour = now.minute == now.second == now.microsecond == 0
    assert hourly[1] - hourly[0] == (timedelta(days=7) if on_the_hour else timedelta(hours=169))
    _, five, _ = await env.get(PROFILE, user, bucket="5m")
    span = expected_bounds(now - timedelta(days=2), now, WIDTHS["5m"])
    assert (parse(five["from"]), parse(five["to"])) == span


def span(since: str, to: str, **more: str) -> dict[str, str]:
    return {"from": f"{since}T00:00:00Z", "to": f"{to}T00:00:00Z", **more}


BAD: list[tuple[str, dict[str, str], str]] = [
    (PROFILE, {"bucket": "2h"}, "bucket"),
    (ENGAGEMENT, {"bucket": "5m"}, "bucket"),
    (PROFILE, {"from": "yesterday"}, "from"),
    (PROFILE, {"to": "2025-13-01T00:00:00Z"}, "to"),
    (PROFILE, {"from": "2025-01-01T00:00:00"}, "from"),  # no zone
    (PROFILE, span("2025-01-02", "2025-01-01"), "from"),
    (PROFILE, span("2025-01-01", "2025-01-01"), "from"),
    (PROFILE, span("2025-01-01", "2025-01-04", bucket="5m"), "from"),
    (PROFILE, span("2025-01-01", "2025-04-02", bucket="1h"), "from"),
    (ENGAGEMENT, span("2020-01-01", "2025-01-01", bucket="1d"), "from"),
    (PROFILE, {"userId": "bad user!"}, "userId"),
    ("/api/v1/metrics/aggregations", {"name": "engagement_rate_1y"}, "name"),
    ("/api/v1/metrics/aggregations", span("2024-01-01", "2024-06-01"), "from"),
    ("/api/v1/events", {"limit": "0"}, "limit"),
    ("/api/v1/events", {"limit": "201"}, "limit"),
    ("/api/v1/events", {"limit": "ten"}, "limit"),
    ("/api/v1/events", {"type": "profile_view,coffee"}, "type"),
    ("/api/v1/events", {"cursor": "not-a-cursor"}, "cursor"),
    ("/api/v1/goals", {"status": "sleeping"}, "status"),
    # The ends of Python's calendar: a default span or a bucket past them overflowed (a 500).
    (PROFILE, {"to": "0001-01-01T00:00:00Z"}, "to"),
    (ENGAGEMENT, {"to": "0001-01-02T00:00:00Z", "bucket": "1d"}, "to"),
    (PROFILE, {"to": "9999-12-31T23:59:59Z", "bucket": "1d"}, "to"),
    ("/api/v1/metrics/aggregations", {"to": "0001-01-01T00:00:00Z"}, "to"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "params", "field"), BAD)
async def test_bad_parameters_name_their_field(
    env: ApiEnv, path: str, params: dict[str, str], field: str
) -> None:
    user = new_user()
    status, body, _ = await env.get(path, user, **params)
    assert status == 400, body
    assert body["error"]["field"] == field
    assert body["error"]["code"] == "invalid_parameter"


async def test_an_offset_decoded_as_a_space_still_parses(
    seeded: tuple[ApiEnv, str], now: datetime
) -> None:
    """`+02:00` in an unencoded query string arrives as ` 02:00`; it means the same time."""
    env, user = seeded
    to = now.replace(microsecond=0)
    local = to.astimezone(timezone(timedelta(hours=2)))
    url = f"{PROFILE}?to={local.isoformat()}"  # `+` left raw on purpose
    status, body, _ = await env.call("GET", url, user)
    assert status == 200, body
    assert parse(body["to"]) == expected_bounds(to - timedelta(hours=1), to, WIDTHS["1h"])[1]


ENDPOINTS = [
    PROFILE,
    ENGAGEMENT,
    "/api/v1/metrics/summary",
    "/api/v1/metrics/aggregations",
    "/api/v1/events",
    "/api/v1/goals",
]


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_users_see_only_their_own_data(env: ApiEnv, path: str, now: datetime) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    await env.store([make_event(bob, "profile_view", value=5, time_us=to_us(now) - 10**6)])
    status, body, _ = await env.get(path, alice, userId=bob)
    assert status == 403
    assert body["error"] == {
        "code": "forbidden",
        "message": "a user token may only read its own data",
        "field": "userId",
    }
    status, own, _ = await env.get(path, alice, userId=alice)
    assert status == 200 and own["userId"] == alice
    status, as_admin, _ = await env.get(path, "ops-admin", "admin", userId=bob)
    assert status == 200 and as_admin["userId"] == bob
    status, _, _ = await env.get(path, "ingest-bot", "producer")
    assert status == 403
    async with env.client.get(path) as anonymous:
        assert anonymous.status == 401


async def test_admin_sees_the_users_figures(env: ApiEnv, now: datetime) -> None:
    bob = new_user("bob")
    await env.store([make_event(bob, "profile_view", value=5, time_us=to_us(now) - 10**6)])
    _, body, _ = await env.get(PROFILE, "ops-admin", "admin", userId=bob)
    assert body["totals"]["profileViews"] == 5
    _, mine, _ = await env.get(PROFILE, "ops-admin", "admin")
    assert mine["userId"] == "ops-admin" and mine["totals"]["profileViews"] == 0


@pytest.mark.parametrize("now", [INSTANTS[1], INSTANTS[2]], ids=str)
async def test_summary_agrees_with_current_values_and_the_previous_week(
    env: ApiEnv, now: datetime
) -> None:
    user = new_user()
    rng = random.Random(9)
    start = to_us(now) - 20 * DAY_US
    events = sorted(
        random_events(user, rng, 900, start, 20 * DAY_US - 60_000_000), key=lambda e: e.time_us
    )
    for days in range(10):  # a batch per 2 days, as a worker would: rows carry the last score
        await env.store([e for e in events if (e.time_us - start) // (2 * DAY_US) == days])
    _, body, _ = await env.get("/api/v1/metrics/summary", user)
    at = parse(body["at"])
    assert at == now
    async with env.pool.acquire() as conn:
        now_values = (await current_values(conn, [user], at))[user]
        before = at - timedelta(days=7)
        views = await conn.fetchval(
            "SELECT sum(profile_views) FROM profile_metrics WHERE user_id = $1 "
            "AND time > $2::timestamptz - interval '7 days' AND time <= $2",
            user,
            before,
        )
        followers = await conn.fetchval(
            "SELECT followers FROM profile_metrics WHERE user_id = $1 AND followers IS NOT NULL "
            "AND time <= $2 ORDER BY time DESC LIMIT 1",
            user,
            before,
        )
    metrics = body["metrics"]
    assert set(metrics) == set(CATALOGUE)
    for name, value in now_values.items():
        assert metrics[name]["value"] == pytest.approx(value), name
    views_now = now_values["profileViews"]
    assert views_now is not None and views_now > 0 and views > 0
    assert metrics["profileViews"]["previous"] == views
    assert metrics["profileViews"]["change"] == views_now - views
    assert metrics["profileViews"]["changePercent"] == pytest.approx(
        (views_now - views) / views * 100
    )
    assert metrics["followers"]["previous"] == followers
    influence = body["influence"]
    assert influence["score"] == pytest.approx(now_values["influenceScore"])
    expected_trend = (
        "up" if influence["change"] > 0.01 else "down" if influence["change"] < -0.01 else "flat"
    )
    assert influence["trend"] == expected_trend
    async with env.pool.acquire() as conn:
        daily = await conn.fetch(
            "SELECT time_bucket('1 day', time) AS day, last(influence_score, time) AS score "
            "FROM profile_metrics WHERE user_id = $1 AND influence_score IS NOT NULL "
            "GROUP BY 1 ORDER BY 1",
            user,
        )
    assert len(daily) >= 15
    assert [(parse(d["time"]), d["score"]) for d in influence["daily"]] == [
        (r["day"], pytest.approx(r["score"])) for r in daily
    ]
    assert body["goals"] == []


async def test_catalog_lists_every_metric(env: ApiEnv) -> None:
    status, body, _ = await env.get("/api/v1/metrics/catalog", new_user())
    assert status == 200
    assert body["metrics"] == [
        {"name": m.name, "unit": m.unit, "description": m.description, "window": m.window}
        for m in CATALOGUE.values()
    ]
    # The derived series, with both their names, from the one definition the maintenance task
    # and the WebSocket use.
    assert body["aggregations"] == [
        {
            "name": a.name,
            "metric": a.metric,
            "period": a.period,
            "unit": a.unit,
            "description": a.description,
        }
        for a in AGGREGATIONS.values()
    ]
    assert len(body["aggregations"]) == 5
    assert not {a["metric"] for a in body["aggregations"]} & set(CATALOGUE)


@pytest.mark.parametrize("now", INSTANTS, ids=str)
async def test_aggregations_return_the_stored_rows(env: ApiEnv, now: datetime) -> None:
    user = new_user()
    hour = now.replace(minute=0, second=0, microsecond=0)
    rows: list[tuple[Any, ...]] = [
        (hour - timedelta(hours=h), user, name, period, h * 0.01, h)
        for h in range(0, 240, 6)
        for name, period in ((a.name, a.period) for a in AGGREGATIONS.values())
    ]
    async with env.pool.acquire() as conn:
        await conn.executemany(
            "INSERT INTO metric_aggregations (time, user_id, metric_name, period, value, "
            "sample_count) VALUES ($1, $2, $3, $4, $5, $6)",
            rows,
        )
    _, body, _ = await env.get("/api/v1/metrics/aggregations", user, name="engagement_rate_7d")
    # The last 7 days in whole hours, [from, to): exactly on the hour `to` is now itself, and
    # the point stamped now belongs to the next range.
    on_the_hour = now == hour
    since, until = parse(body["from"]), parse(body["to"])
    assert (since, until) == (
        hour - timedelta(days=7),
        hour + timedelta(hours=0 if on_the_hour else 1),
    )
    expected = [r for r in rows if r[2] == "engagement_rate_7d" and since <= r[0] < until]
    expected.sort(key=lambda r: r[0])
    assert len(expected) == (28 if on_the_hour else 29)  # every 6 hours
    assert [(parse(a["time"]), a["value"], a["sampleCount"]) for a in body["aggregations"]] == [
        (r[0], r[4], r[5]) for r in expected
    ]
    assert {a["name"] for a in body["aggregations"]} == {"engagement_rate_7d"}
    _, everything, _ = await env.get(
        "/api/v1/metrics/aggregations", user, **{"from": iso(hour - timedelta(days=1))}
    )
    # 24, 18, 12, 6 and (but exactly on the hour) 0 hours back.
    assert len(everything["aggregations"]) == 5 * (4 if on_the_hour else 5)


def test_every_api_route_is_documented() -> None:
    """gateway/ops/openapi_api.py describes exactly the /api/v1 routes the app serves."""
    app = create_app(settings_for())
    served = {
        (r.resource.canonical, r.method.lower())
        for r in app.router.routes()
        if r.resource is not None
        and r.resource.canonical.startswith("/api/v1/")
        and r.method != "HEAD"
    }
    documented = {(path, method) for path, ops in API_PATHS.items() for method in ops}
    assert served == documented
