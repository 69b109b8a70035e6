"""Seeding over HTTP: admin only, refused in production; a run starts with a 202, loads in the
background, one at a time per database, its state readable from any replica, and is cancelled
cleanly when its gateway shuts down.

A run is held in progress without timing tricks: the test takes `LOCK TABLE seed_runs` in an
open transaction, so the seeder's first statement waits until the test lets it go.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from gateway.app import create_app
from gateway.http.bodies import SERVER_OPTIONS
from gateway.ops import seed_jobs, seed_lock
from migrations import runner
from schemas.settings import Settings
from sinks.db import connect
from tests.conftest import ScratchDb
from tests.ops_support import Client, MakeClient, bearer, flushed_redis, ops_settings

# The instant the gateways' clock is pinned to: the seeded data ends at it.
UNTIL = datetime(2026, 11, 1, tzinfo=UTC)
_TABLES = ("profile_metrics", "engagement_metrics", "real_time_events")
# Generous: a 2 x 2 run takes well under a second; only a hung run gets near this.
_RUN_TIMEOUT_S = 60


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    async with flushed_redis() as client:
        yield client


@pytest.fixture
async def make_client(redis: Redis) -> AsyncIterator[MakeClient]:
    """Gateways as `analytics gateway` runs them, clock pinned to UNTIL; closed at exit."""
    clients: list[Client] = []

    async def make(settings: Settings | None = None, **overrides: Any) -> Client:
        app = create_app(ops_settings(settings, **overrides), clock=lambda: UNTIL)
        server = TestServer(app)
        await server.start_server(**SERVER_OPTIONS)
        client: Client = TestClient(server)
        await client.start_server()
        clients.append(client)
        return client

    try:
        yield make
    finally:
        for client in clients:
            await client.close()


@pytest.fixture
async def db(scratch_db: ScratchDb) -> AsyncIterator[tuple[Settings, asyncpg.Connection]]:
    """A fresh migrated database and a connection to it."""
    s = await scratch_db()
    conn = await connect(s)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        await runner.up(conn)
        yield s, conn
    finally:
        await conn.close()


@asynccontextmanager
async def held_runs(s: Settings) -> AsyncIterator[None]:
    """Seed runs started meanwhile wait at their first statement until the block ends."""
    conn = await connect(s)
    try:
        async with conn.transaction():
            await conn.execute("LOCK TABLE seed_runs IN ACCESS EXCLUSIVE MODE")
            yield
    finally:
        await conn.close()


async def start(client: Client, **body: int) -> dict[str, Any]:
    response = await client.post("/admin/seed", json=body, headers=bearer())
    assert response.status == 202, await response.text()
    started: dict[str, Any] = await response.json()
    assert response.headers["Location"] == started["statusUrl"]
    return started


async def status(client: Client, run: str) -> dict[str, Any]:
    response = await client.get("/admin/seed/status", params={"run": run}, headers=bearer())
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def outcome(client: Client, run: str) -> dict[str, Any]:
    """The run's state once it is no longer running."""
    async with asyncio.timeout(_RUN_TIMEOUT_S):
        while (body := await status(client, run))["status"] == "running":
            await asyncio.sleep(0.05)
    return body


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/admin/seed"),
        ("GET", "/admin/seed/status"),
        ("GET", "/admin/seed/status?run=" + "0" * 32),
        ("DELETE", "/admin/seed"),
    ],
)
async def test_seed_endpoints_refuse_anonymous_and_non_admin(
    make_client: MakeClient, method: str, path: str
) -> None:
    client = await make_client()
    assert (await client.request(method, path)).status == 401
    for role in ("user", "producer"):
        response = await client.request(method, path, headers=bearer(role))
        assert response.status == 403, role


async def test_a_run_answers_202_then_succeeds_with_the_rows_it_wrote(
    make_client: MakeClient, db: tuple[Settings, asyncpg.Connection]
) -> None:
    s, conn = db
    client = await make_client(s)
    started = await start(client, users=2, days=2, seed=4)
    run = started["run"]
    assert started == {
        "run": run,
        "status": "running",
        "statusUrl": f"/admin/seed/status?run={run}",
    }

    done = await outcome(client, run)
    assert done["status"] == "succeeded", done
    assert done["params"] == {"users": 2, "days": 2, "seed": 4}
    assert done["startedAt"] == done["finishedAt"] == "2026-11-01T00:00:00Z"
    report = done["report"]
    assert report["users"] == ["demo-recruiter-4-0", "demo-job_seeker-4-1"]
    assert (report["days"], report["seed"]) == (2, 4)
    for table in _TABLES:
        counted = await conn.fetchval(f"SELECT count(*) FROM {table}")
        assert report["rows"][table] == counted > 0, table
    # The data ends at the gateway's (pinned) clock, not at the wall clock.
    span = await conn.fetchrow("SELECT min(time) AS lo, max(time) AS hi FROM real_time_events")
    assert span is not None
    assert UNTIL - timedelta(days=2) <= span["lo"] <= span["hi"] < UNTIL

    # Without `run`: the runs recorded in the database, as before.
    listed = await client.get("/admin/seed/status", headers=bearer())
    runs = (await listed.json())["runs"]
    assert [(r["seed"], r["users"], r["days"]) for r in runs] == [(4, 2, 2)]
    assert runs[0]["rows"] == report["rows"]

    cleared = await client.delete("/admin/seed", headers=bearer())
    assert cleared.status == 200
    assert (await cleared.json())["removed"]["real_time_events"] == report["rows"][
        "real_time_events"
    ]
    assert await conn.fetchval("SELECT count(*) FROM real_time_events") == 0


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"days": 366}, 422, "$.days"),
        ({"users": 0}, 422, "$.users"),
        ({"weeks": 2}, 422, "$.weeks"),
        ('{"days": ', 400, "$"),
    ],
)
async def test_a_bad_body_is_refused_naming_the_field_and_starts_nothing(
    make_client: MakeClient, redis: Redis, body: dict[str, int] | str, status: int, field: str
) -> None:
    client = await make_client()
    kwargs: dict[str, Any] = {"data": body} if isinstance(body, str) else {"json": body}
    response = await client.post("/admin/seed", headers=bearer(), **kwargs)
    assert response.status == status
    assert (await response.json())["error"]["field"] == field
    assert await redis.keys("{ia:seed}*") == []


async def test_a_second_run_or_a_clear_is_refused_while_one_runs_on_any_replica(
    make_client: MakeClient, db: tuple[Settings, asyncpg.Connection]
) -> None:
    s, _ = db
    a, b = await make_client(s), await make_client(s)
    async with held_runs(s):
        run = (await start(a, users=1, days=1, seed=1))["run"]
        for client in (a, b):
            for method in ("POST", "DELETE"):
                response = await client.request(method, "/admin/seed", headers=bearer())
                assert response.status == 409, method
                refusal = await response.json()
                assert refusal["error"]["code"] == "seed_in_progress"
                assert refusal["run"] == run
                assert refusal["statusUrl"] == f"/admin/seed/status?run={run}"
                assert run in refusal["error"]["message"]
    assert (await outcome(b, run))["status"] == "succeeded"
    # The lock went with the run: the next one starts.
    again = await start(b, users=1, days=1, seed=2)
    assert (await outcome(a, again["run"]))["status"] == "succeeded"


async def test_status_of_a_run_is_the_same_on_another_replica(
    make_client: MakeClient, db: tuple[Settings, asyncpg.Connection]
) -> None:
    s, _ = db
    a, b = await make_client(s), await make_client(s)
    async with held_runs(s):
        run = (await start(a, users=1, days=1, seed=3))["run"]
        seen = await status(b, run)
        assert (seen["run"], seen["status"]) == (run, "running")
        assert "finishedAt" not in seen and "report" not in seen
    done = await outcome(b, run)
    assert done["status"] == "succeeded"
    assert done == await status(a, run)


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("run=" + "0" * 32, 404),  # well-formed, never started
        ("run=nope", 400),
        ("run=" + "A" * 32, 400),  # ids are lowercase
        ("run=", 400),
        ("run=" + "0" * 32 + "&run=" + "1" * 32, 400),
    ],
)
async def test_an_unknown_or_malformed_run_is_refused_naming_it(
    make_client: MakeClient, query: str, status: int
) -> None:
    client = await make_client()
    response = await client.get(f"/admin/seed/status?{query}", headers=bearer())
    assert response.status == status
    error = (await response.json())["error"]
    assert error["field"] == "run"
    assert error["code"] == ("not_found" if status == 404 else "invalid_parameter")


async def test_shutdown_cancels_a_run_in_progress_and_frees_the_database(
    make_client: MakeClient,
    db: tuple[Settings, asyncpg.Connection],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.ops.seed_jobs")
    s, conn = db
    a, b = await make_client(s), await make_client(s)
    async with held_runs(s):
        run = (await start(a, users=1, days=1, seed=5))["run"]
        jobs = a.app[seed_jobs.SEED_JOBS]
        assert (await status(b, run))["status"] == "running"
        await a.close()
        # Nothing of the run outlives its gateway.
        assert not jobs._tasks
        assert not [t for t in asyncio.all_tasks() if t.get_name() == f"seed-run-{run}"]
    cut = await status(b, run)
    assert cut["status"] == "failed"
    assert cut["error"]["code"] == "cancelled"
    assert cut["finishedAt"] == "2026-11-01T00:00:00Z"
    messages = [r.message for r in caplog.records]
    assert "seed run cancelled" in messages and "seed runs cancelled at shutdown" in messages
    # Cancelled before it wrote anything; the database is free for the next run.
    assert await conn.fetchval("SELECT count(*) FROM seed_runs") == 0
    again = await start(b, users=1, days=1, seed=5)
    assert (await outcome(b, again["run"]))["status"] == "succeeded"


async def test_a_running_run_whose_lock_is_gone_reads_as_abandoned(
    make_client: MakeClient, db: tuple[Settings, asyncpg.Connection], redis: Redis
) -> None:
    """What a replica sees of a run whose gateway died: the record says running, but nobody
    renews the lock any more (removed here as its TTL would remove it)."""
    s, _ = db
    a, b = await make_client(s), await make_client(s)
    async with held_runs(s):
        run = (await start(a, users=1, days=1, seed=6))["run"]
        locks = await redis.keys("{ia:seed}:lock:*")
        assert [await redis.get(k) for k in locks] == [run.encode()]
        await redis.delete(*locks)
        seen = await status(b, run)
        assert seen["status"] == "failed"
        assert seen["error"]["code"] == "abandoned"
        await a.close()  # cancels the run; its release finds no lock of its own to delete


async def test_the_holder_renews_the_lock_and_stops_its_work_when_the_lock_is_gone(
    redis: Redis,
) -> None:
    """The renewal the runs rely on, at a short interval: it keeps the lock and the run's record
    alive while the work goes on, and cancels the work once another could have the database."""
    s = ops_settings()
    lock, record = seed_lock.lock_key(s), seed_lock.run_key("a" * 32)
    await redis.set(lock, "a" * 32, px=1000)
    await redis.set(record, b"{}", ex=10)
    renewals = asyncio.Event()

    async def work() -> str:
        while await redis.pttl(lock) <= 1000 or await redis.ttl(record) <= 10:
            await asyncio.sleep(0.01)
        renewals.set()
        await asyncio.sleep(3600)  # until cancelled
        return "never"

    work_task = asyncio.ensure_future(work())
    holding = asyncio.create_task(
        seed_lock.holding(redis, s, "a" * 32, work_task, record=True, renew_s=0.02)
    )
    async with asyncio.timeout(10):
        await renewals.wait()
    assert await redis.pttl(lock) > 1000  # set to LOCK_TTL_MS
    assert await redis.ttl(record) > 10  # set to RUN_TTL_S
    await redis.set(lock, "b" * 32)  # expired, then taken by another run
    with pytest.raises(seed_lock.LockLost):
        await holding
    assert work_task.cancelled()
    await seed_lock.release(redis, s, "a" * 32)
    assert await redis.get(lock) == b"b" * 32  # not ours: left alone


async def test_seeding_is_refused_in_production(make_client: MakeClient) -> None:
    prod = ops_settings(app_env="production", jwt_secret="p" * 40)
    client = await make_client(prod)
    for method in ("POST", "DELETE"):
        response = await client.request(method, "/admin/seed", headers=bearer(settings=prod))
        assert response.status == 403
        assert (await response.json())["error"]["code"] == "forbidden_in_production"
