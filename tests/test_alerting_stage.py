"""The alerting group's stage over real Redis and TimescaleDB: `ia:metrics` entries in, rows in
alert_history and alert_states and entries in `ia:alerts` out. Pinned instants: every entry's
`committedAt` is the evaluation instant, and nothing reads the wall clock."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest
import redis.asyncio as redis

from pipeline.runner import Delivery
from pipeline.stages.alerting import AlertingStage
from pipeline.worker import open_redis, run_worker
from schemas.alert_conditions import Outcome
from schemas.alert_eval import Timing, step
from schemas.alerts import alert_decoder
from schemas.entries import metric_update, metrics_entry
from schemas.settings import Settings
from schemas.streams import ALERTS_STREAM, METRICS_STREAM
from schemas.timefmt import iso_ms
from sinks.alert_states import Change, commit, load_rules
from sinks.db import connect, create_pool
from tests.streams_helpers import append, make_event

# A Redis database of its own (the other suites use 0 and 8 to 15).
REDIS_DB = 7
T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)

Env = tuple[AlertingStage, redis.Redis, asyncpg.Connection]


@pytest.fixture
async def env(migrated: Settings) -> AsyncIterator[Env]:
    s = dataclasses.replace(migrated, redis_db=REDIS_DB)
    client = open_redis(s)
    await client.flushdb()
    pool = await create_pool(s)
    conn = await connect(s)
    yield AlertingStage(pool, client), client, conn
    await conn.close()
    await pool.close()
    await client.flushdb()
    await client.aclose()


def _user() -> str:
    return f"alert-{uuid.uuid4().hex[:12]}"


async def _rule(conn: asyncpg.Connection, user: str, kind: str, params: dict[str, Any]) -> str:
    rule_id = await conn.fetchval(
        "INSERT INTO alert_configs (user_id, name, kind, params, severity, cooldown_seconds, "
        "created_at, updated_at) VALUES ($1, $2, $3, $4::jsonb, 'warning', 0, $5, $5) "
        "RETURNING id",
        user,
        f"{kind} rule",
        kind,
        orjson.dumps(params).decode(),
        T0 - timedelta(days=1),
    )
    return str(rule_id)


def _delivery(
    entry_id: str, at: datetime, updates: list[tuple[str, str, float | None]]
) -> Delivery:
    fields = metrics_entry([metric_update(u, m, v, iso_ms(at), iso_ms(at)) for u, m, v in updates])
    pairs = [
        (str(k).encode(), v if isinstance(v, bytes) else str(v).encode()) for k, v in fields.items()
    ]
    return Delivery(METRICS_STREAM, entry_id, pairs)


async def _history(conn: asyncpg.Connection, user: str) -> list[tuple[str, str, str]]:
    rows = await conn.fetch(
        "SELECT alert_id, from_state, to_state FROM alert_history WHERE user_id = $1 "
        "ORDER BY time, seq",
        user,
    )
    return [(r["alert_id"], r["from_state"], r["to_state"]) for r in rows]


async def _entries(client: redis.Redis) -> list[dict[bytes, bytes]]:
    entries: Any = await client.xrange(ALERTS_STREAM)
    return [fields for _, fields in entries]


async def _alerts(client: redis.Redis) -> list[tuple[str, str]]:
    """(alert id, state) of every ia:alerts entry, oldest first."""
    return [
        (alert_decoder.decode(f[b"alert"]).alert_id, f[b"state"].decode())
        for f in await _entries(client)
    ]


async def test_a_threshold_rule_fires_once_and_resolves(env: Env) -> None:
    stage, client, conn = env
    user = _user()
    rule = await _rule(
        conn, user, "threshold", {"metric": "profileViews", "op": "above", "value": 100}
    )
    first = _delivery("1-0", T0, [(user, "profileViews", 120.0)])
    assert await stage([first]) == []
    key = f"{rule}:{user}:1"
    assert await _history(conn, user) == [(key, "inactive", "firing")]
    assert await _alerts(client) == [(key, "firing")]
    entry = (await _entries(client))[0]
    alert = alert_decoder.decode(entry[b"alert"])
    assert (alert.value, alert.threshold, alert.triggered_at) == (120.0, 100.0, iso_ms(T0))

    # The same entry again (a redelivery): nothing written, nothing announced.
    assert await stage([first]) == []
    assert await _history(conn, user) == [(key, "inactive", "firing")]
    assert len(await _alerts(client)) == 1

    later = T0 + timedelta(minutes=5)
    assert await stage([_delivery("2-0", later, [(user, "profileViews", 80.0)])]) == []
    resolved = f"{rule}:{user}:2"
    assert await _history(conn, user) == [
        (key, "inactive", "firing"),
        (resolved, "firing", "resolved"),
    ]
    assert await _alerts(client) == [(key, "firing"), (resolved, "resolved")]
    state = await conn.fetchrow("SELECT state, seq FROM alert_states WHERE user_id = $1", user)
    assert state is not None and (state["state"], state["seq"]) == ("resolved", 2)


async def test_a_lost_race_writes_nothing(env: Env) -> None:
    """A second evaluation from the same stored state (another replica, or a redelivery that
    loaded the state before the first committed) writes and announces nothing."""
    stage, client, conn = env
    user = _user()
    await _rule(conn, user, "threshold", {"metric": "profileViews", "op": "above", "value": 100})
    stale = (await load_rules(conn, [user]))[0]
    assert await stage([_delivery("1-0", T0, [(user, "profileViews", 120.0)])]) == []
    later = T0 + timedelta(seconds=1)
    outcome = Outcome("met", {"value": 130.0, "threshold": 100.0})
    result = step(stale.rule_id, user, Timing(), stale.state, outcome, later)
    change = Change(stale, result.state, result.transitions, "profileViews", "above", later)
    assert await commit(conn, [change]) == []
    assert len(await _history(conn, user)) == 1
    assert len(await _alerts(client)) == 1


async def test_a_change_rule_against_a_zero_window_does_not_fire(env: Env) -> None:
    stage, client, conn = env
    user = _user()
    await _rule(
        conn,
        user,
        "change",
        {"metric": "profileViews", "op": "up", "percent": 10, "windowSeconds": 3600},
    )
    assert await stage([_delivery("1-0", T0, [(user, "profileViews", 500.0)])]) == []
    assert await _history(conn, user) == []
    assert await _alerts(client) == []


async def test_a_custom_rule_fires(env: Env) -> None:
    stage, client, conn = env
    user = _user()
    rule = await _rule(
        conn,
        user,
        "custom",
        {"expression": "profileViews > 2.0 * profileViews_prev1d + 10.0"},
    )
    assert await stage([_delivery("1-0", T0, [(user, "profileViews", 50.0)])]) == []
    key = f"{rule}:{user}:1"
    assert await _history(conn, user) == [(key, "inactive", "firing")]
    values = await conn.fetchval(
        'SELECT "values"::text FROM alert_history WHERE user_id = $1', user
    )
    assert orjson.loads(values) == {"profileViews": 50.0, "profileViews_prev1d": 0.0}
    assert await _alerts(client) == [(key, "firing")]


async def test_another_users_rule_is_untouched(env: Env) -> None:
    stage, client, conn = env
    user, other = _user(), _user()
    params = {"metric": "profileViews", "op": "above", "value": 100}
    await _rule(conn, user, "threshold", params)
    await _rule(conn, other, "threshold", params)
    # A rule on another metric of the same user is not evaluated either.
    await _rule(conn, user, "threshold", {"metric": "likes", "op": "below", "value": 5})
    assert await stage([_delivery("1-0", T0, [(user, "profileViews", 120.0)])]) == []
    assert len(await _history(conn, user)) == 1
    assert await _history(conn, other) == []
    count = await conn.fetchval("SELECT count(*) FROM alert_states WHERE user_id = $1", other)
    assert count == 0
    assert len(await _alerts(client)) == 1


async def test_an_event_through_the_worker_fires_a_threshold_rule(
    env: Env, migrated: Settings
) -> None:
    """End to end in one process: an event appended as the gateway does, the worker's
    processor stores it and announces the new values, its alerting group fires the rule
    (as the seeder's "Profile views spike", above a value) and appends to ia:alerts."""
    _, client, conn = env
    s = dataclasses.replace(migrated, redis_db=REDIS_DB, batch_max_wait_ms=20)
    user = _user()
    rule = await _rule(
        conn, user, "threshold", {"metric": "profileViews", "op": "above", "value": 1}
    )
    await append(client, s, [make_event(user, "profile_view", value=5)])
    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(s, stop))
    try:
        async with asyncio.timeout(30):
            while not await _entries(client):
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task
    assert await _alerts(client) == [(f"{rule}:{user}:1", "firing")]
    assert await _history(conn, user) == [(f"{rule}:{user}:1", "inactive", "firing")]
