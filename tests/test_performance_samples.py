"""Performance samples: gateways and workers record one `performance_metrics` row per
PERF_SAMPLE_INTERVAL from what they count, a database outage costs no sample and blocks no
ingest, and `GET /api/v1/system/performance` answers the table's rows per bucket (checked
against plain SQL), to admins only.

Real Redis (db 12: other suites flush theirs), real TimescaleDB, real HTTP on loopback. The
samplers run at 0.2 s here (set on the dataclass, as the other tests set their intervals; the
environment variable's lower bound of 1 s is for operators and stays).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from gateway.app import create_app
from gateway.auth import Role, mint_token
from gateway.ops.perf import PERF_IN_WORKER, PERF_SAMPLER, gateway_totals
from pipeline.worker import run_worker
from schemas.settings import Settings
from schemas.streams import PROCESSOR_GROUP, events_stream
from sinks.db import connect, create_pool
from sinks.perf_sampler import Sampler, Totals, quantile
from sinks.performance import ProcessKind, Sample, insert_samples
from tests.streams_helpers import append, make_event
from tests.tcp_proxy import TcpProxy

PERF_REDIS_DB = 12
INTERVAL_S = 0.2
PATH = "/api/v1/system/performance"
# Bound of every wait for samples; they arrive every INTERVAL_S.
WAIT_S = 15.0

Client = TestClient[web.Request, web.Application]
Env = tuple[Settings, Redis, asyncpg.Connection]


@pytest.fixture
async def env(migrated: Settings) -> AsyncIterator[Env]:
    s = dataclasses.replace(
        migrated,
        redis_db=PERF_REDIS_DB,
        ws_enabled=False,
        perf_sample_interval=INTERVAL_S,
        rate_limit_api_subject=0,
        rate_limit_api_ip=0,
        batch_max_wait_ms=20,
        claim_idle_ms=500,
    )
    redis = Redis(host=s.redis_host, port=s.redis_port, db=PERF_REDIS_DB)
    await redis.flushdb()
    conn = await connect(s)
    try:
        yield s, redis, conn
    finally:
        await conn.close()
        await redis.flushdb()
        await redis.aclose()


@pytest.fixture
async def gateway() -> AsyncIterator[Callable[[Settings], Awaitable[Client]]]:
    clients: list[Client] = []

    async def make(settings: Settings) -> Client:
        client: Client = TestClient(TestServer(create_app(settings)))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


def headers(settings: Settings, role: Role = "admin") -> dict[str, str]:
    token = mint_token(settings, subject=f"perf-{role}", role=role, ttl_seconds=600)
    return {"Authorization": f"Bearer {token}"}


def iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def wait_for_rows(
    conn: asyncpg.Connection,
    query: str,
    *args: Any,
    until: Callable[[list[asyncpg.Record]], bool],
) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = []
    async with asyncio.timeout(WAIT_S):
        while not until(rows := await conn.fetch(query, *args)):
            await asyncio.sleep(0.05)
    return rows


def extra(row: asyncpg.Record) -> dict[str, Any]:
    value: dict[str, Any] = orjson.loads(row["extra"])
    return value


def errors(step: str) -> float:
    return REGISTRY.get_sample_value("ia_perf_sample_errors_total", {"step": step}) or 0.0


_SINCE = "SELECT * FROM performance_metrics WHERE time >= $1 ORDER BY time"
_SAMPLES_OF = """
SELECT * FROM performance_metrics
WHERE process_kind = $1 AND process_name = $2 AND time >= $3 ORDER BY time
"""


async def test_gateway_samples_every_interval_and_ingest_moves_events_in(
    env: Env, gateway: Callable[[Settings], Awaitable[Client]]
) -> None:
    s, redis, conn = env
    # The group a worker would have created, so the gateway has a lag to read.
    for p in range(s.stream_partitions):
        await redis.xgroup_create(events_stream(p), PROCESSOR_GROUP, id="$", mkstream=True)
    started = datetime.now(UTC)
    client = await gateway(s)
    sampler = client.app[PERF_SAMPLER]
    assert sampler.kind == "gateway"
    events = [{"user_id": f"perf-{i % 5}", "type": "profile_view", "value": 1} for i in range(40)]
    await asyncio.sleep(3 * INTERVAL_S)  # a few idle samples first
    response = await client.post("/ingest/events", json=events, headers=headers(s, "producer"))
    assert response.status == 202
    bad = await client.post("/ingest/events", json=[{"type": "nope"}], headers=headers(s))
    assert bad.status == 422  # received and rejected: in, not out

    rows = await wait_for_rows(
        conn,
        _SAMPLES_OF,
        "gateway",
        sampler.name,
        started,
        until=lambda rows: sum(extra(r)["events_in"] for r in rows) >= 41 and len(rows) >= 8,
    )
    assert sum(extra(r)["events_in"] for r in rows) == 41
    assert sum(extra(r)["events_out"] for r in rows) == 40
    assert max(r["events_in_per_s"] for r in rows) > 0
    assert min(r["events_in_per_s"] for r in rows) == 0  # the idle ones
    for r in rows:
        x = extra(r)
        assert r["events_in_per_s"] == pytest.approx(x["events_in"] / x["interval_s"])
        assert r["events_out_per_s"] == pytest.approx(x["events_out"] / x["interval_s"])
        assert 0.5 * INTERVAL_S < x["interval_s"] < 5 * INTERVAL_S
        assert r["batch_size_avg"] is None and r["copy_latency_p99_s"] is None
        assert r["ws_connections"] is None  # WebSocket off in this gateway
        assert r["rss_bytes"] > 10_000_000 and r["cpu_percent"] >= 0
    gaps = [(b["time"] - a["time"]).total_seconds() for a, b in zip(rows, rows[1:], strict=False)]
    assert sorted(gaps)[len(gaps) // 2] == pytest.approx(INTERVAL_S, abs=0.1)
    # Nothing consumes the partition streams: the accepted entries are the group's lag.
    entries = sum([await redis.xlen(events_stream(p)) for p in range(s.stream_partitions)])
    assert entries >= 1
    assert rows[-1]["group_lag"] == entries
    assert rows[0]["group_lag"] == 0

    # The default range (last 6 hours in 1m buckets) holds this gateway's series.
    response = await client.get(PATH, headers=headers(s))
    assert response.status == 200
    body = await response.json()
    assert body["bucket"] == "1m" and body["truncated"] is False
    mine = [p for p in body["processes"] if (p["kind"], p["name"]) == ("gateway", sampler.name)]
    assert len(mine) == 1 and sum(pt["samples"] for pt in mine[0]["points"]) >= len(rows)


async def test_worker_samples_batch_size_copy_latency_and_lag(env: Env) -> None:
    s, redis, conn = env
    # Two events per batch and one event per entry: several batches fall in one sample.
    s = dataclasses.replace(s, batch_max_rows=2)
    started = datetime.now(UTC)
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(s, stop))
    try:
        await asyncio.sleep(2 * INTERVAL_S)
        user = f"perf-{uuid.uuid4().hex[:8]}"
        events = [make_event(user, "profile_view") for _ in range(30)]
        appending = datetime.now(UTC)
        for e in [*events, *events[:5]]:  # the last five as redeliveries: stored once
            await append(redis, s, [e])
        rows = await wait_for_rows(
            conn,
            "SELECT * FROM performance_metrics WHERE process_kind = 'worker' AND time >= $1 "
            "ORDER BY time",
            started,
            # Done: every event stored, and the newest sample saw both groups caught up.
            until=lambda rows: (
                bool(rows)
                and sum(extra(r)["events_in"] for r in rows) >= 35
                and rows[-1]["group_lag"] == 0
            ),
        )
    finally:
        stop.set()
        await worker
    assert len({r["process_name"] for r in rows}) == 1
    assert sum(extra(r)["events_in"] for r in rows) == 35
    assert sum(extra(r)["events_out"] for r in rows) == 30
    busy = [r for r in rows if extra(r)["batches"] > 0]
    assert busy, "no sample saw a batch"
    assert max(extra(r)["batches"] for r in busy) >= 2
    for r in busy:
        assert r["batch_size_avg"] == pytest.approx(extra(r)["events_in"] / extra(r)["batches"])
    # Batch-weighted, the per-sample averages give back every event handed over.
    assert sum(r["batch_size_avg"] * extra(r)["batches"] for r in busy) == pytest.approx(35)
    assert all(r["batch_size_avg"] is None for r in rows if extra(r)["batches"] == 0)
    # A batch's COPY and its acknowledgement (which counts the batch) may fall in two samples.
    latencies = [lat for r in rows if (lat := r["copy_latency_p99_s"]) is not None]
    assert latencies and all(0 < lat <= 10 for lat in latencies)
    idle = [r for r in rows if r["time"] < appending]
    assert idle and all(r["copy_latency_p99_s"] is None for r in idle)
    assert max(r["events_out_per_s"] for r in rows) > 0
    assert all(r["ws_connections"] is None for r in rows)
    assert set(extra(rows[-1])["lag"]) == {"processor", "rollup", "alerting"}


async def test_analytics_up_samples_once_as_kind_all(
    env: Env, gateway: Callable[[Settings], Awaitable[Client]]
) -> None:
    s, _, conn = env
    app = create_app(s)
    app[PERF_IN_WORKER] = True  # as pipeline/serve.py sets it under `analytics up`
    client: Client = TestClient(TestServer(app))
    await client.start_server()
    started = datetime.now(UTC)
    stop = asyncio.Event()
    worker = asyncio.create_task(
        run_worker(s, stop, groups=(PROCESSOR_GROUP,), gateway_totals=lambda: gateway_totals(s))
    )
    try:
        assert PERF_SAMPLER not in app
        # The sampler counts from its start, which follows the worker's connections.
        await wait_for_rows(conn, _SINCE, started, until=bool)
        response = await client.post(
            "/ingest/events",
            json=[{"user_id": "perf-all", "type": "profile_view"}] * 3,
            headers=headers(s, "producer"),
        )
        assert response.status == 202
        rows = await wait_for_rows(
            conn,
            _SINCE,
            started,
            until=lambda rows: (
                sum(extra(r)["events_out"] for r in rows) >= 3
                and sum(extra(r)["batches"] for r in rows) >= 1
            ),
        )
    finally:
        stop.set()
        await worker
        await client.close()
    assert {r["process_kind"] for r in rows} == {"all"}
    assert sum(extra(r)["events_in"] for r in rows) == 3  # at the gateway, counted once
    assert sum(r["batch_size_avg"] * extra(r)["batches"] for r in rows if extra(r)["batches"]) == 3


async def test_a_database_outage_blocks_no_ingest_and_loses_no_sample(
    env: Env, gateway: Callable[[Settings], Awaitable[Client]]
) -> None:
    s, _, conn = env
    started = datetime.now(UTC)
    proxy = TcpProxy(s.timescale_host, s.timescale_port)
    await proxy.start()
    await proxy.cut()
    try:
        client = await gateway(dataclasses.replace(s, timescale_port=proxy.port))
        sampler = client.app[PERF_SAMPLER]
        write_errors = errors("write")
        began = time.monotonic()
        response = await client.post(
            "/ingest/event",
            json={"user_id": "perf-outage", "type": "profile_view"},
            headers=headers(s, "producer"),
        )
        assert response.status == 202
        assert time.monotonic() - began < 1.0
        async with asyncio.timeout(10):
            while sampler.pending < 4 or errors("write") < write_errors + 3:
                await asyncio.sleep(0.05)
        assert sampler.written == 0
        restored = datetime.now(UTC)
        await proxy.restore()
        async with asyncio.timeout(15):
            while sampler.pending > 0:
                await asyncio.sleep(0.05)
    finally:
        await proxy.close()
    rows = await conn.fetch(_SAMPLES_OF, "gateway", sampler.name, started)
    assert sum(1 for r in rows if r["time"] < restored) >= 4  # taken during the outage
    assert sum(extra(r)["events_in"] for r in rows) == 1


async def test_a_failing_round_is_logged_counted_and_the_loop_goes_on(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    s = env[0]
    pool = await create_pool(s)
    calls = 0

    def totals() -> Totals:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("a bug in a figure")
        return Totals(events_in=float(calls))

    async def get_pool() -> asyncpg.Pool:
        return pool

    name = f"perf-supervised-{uuid.uuid4().hex[:6]}"
    sampler = Sampler(kind="worker", interval=0.05, totals=totals, pool=get_pool, name=name)
    before = errors("sample")
    stop = asyncio.Event()
    caplog.set_level(logging.ERROR, logger="sinks.perf_sampler")
    task = asyncio.create_task(sampler.run(stop))
    try:
        async with asyncio.timeout(10):
            while sampler.written < 4:
                await asyncio.sleep(0.02)
    finally:
        stop.set()
        async with asyncio.timeout(2):
            await task  # stops at once: no cancellation needed
        await pool.close()
    assert errors("sample") == before + 1
    assert [r.message for r in caplog.records] == ["performance sample failed"]


def test_p99_is_estimated_from_the_buckets_filled_in_the_interval() -> None:
    before = ((0.01, 10.0), (0.1, 10.0), (1.0, 10.0), (float("inf"), 10.0))
    # 100 new observations: 90 under 10 ms, 10 between 0.1 s and 1 s.
    after = ((0.01, 100.0), (0.1, 100.0), (1.0, 110.0), (float("inf"), 110.0))
    assert quantile(0.99, before, after) == pytest.approx(0.1 + 0.9 * 9 / 10)
    assert quantile(0.5, before, after) == pytest.approx(0.01 * 50 / 90)
    assert quantile(0.99, after, after) is None
    over = ((0.01, 0.0), (0.1, 0.0), (1.0, 0.0), (float("inf"), 5.0))
    assert quantile(0.99, (), over) == 1.0  # past the last bound: the highest finite one


# --- the endpoint, over samples written at known times ------------------------------------

_EXPECTED = """
SELECT process_kind, process_name,
       to_timestamp(floor(extract(epoch FROM time) / $1) * $1) AS bucket,
       count(*) AS samples, avg(events_in_per_s) AS "eventsInPerS",
       avg(events_out_per_s) AS "eventsOutPerS", avg(batch_size_avg) AS "batchSizeAvg",
       max(copy_latency_p99_s) AS "copyLatencyP99MaxS", max(group_lag) AS "groupLagMax",
       max(ws_connections) AS "wsConnectionsMax", max(rss_bytes) AS "rssBytesMax",
       avg(cpu_percent) AS "cpuPercent"
FROM performance_metrics
WHERE time >= $2 AND time < $3 AND ($4::text IS NULL OR process_kind = $4)
GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
"""


async def _seed(conn: asyncpg.Connection, t0: datetime) -> None:
    rng = random.Random(20260611)
    samples = []
    processes: list[tuple[ProcessKind, str]] = [
        ("gateway", "gw-a"),
        ("worker", "wk-a"),
        ("worker", "wk-b"),
    ]
    for kind, name in processes:
        for i in range(120):  # every 7 s for 14 minutes
            worker = kind == "worker"
            samples.append(
                Sample(
                    time=t0 + timedelta(seconds=7 * i, microseconds=rng.randrange(1000)),
                    process_kind=kind,
                    process_name=name,
                    events_in_per_s=rng.uniform(0, 5000),
                    events_out_per_s=rng.uniform(0, 5000),
                    batch_size_avg=rng.uniform(1, 5000) if worker and i % 3 else None,
                    copy_latency_p99_s=rng.uniform(0.001, 2) if worker and i % 3 else None,
                    group_lag=rng.randrange(0, 10_000) if i % 5 else None,
                    ws_connections=None if worker else rng.randrange(0, 5000),
                    rss_bytes=rng.randrange(50_000_000, 500_000_000),
                    cpu_percent=rng.uniform(0, 200),
                )
            )
    await insert_samples(conn, samples)


# Where the endpoint test's samples start, pinned (no process samples there): a Monday
# 00:00, and the last hour of a month.
_SAMPLE_HOURS = [datetime(2026, 11, 30, tzinfo=UTC), datetime(2026, 11, 30, 23, tzinfo=UTC)]


@pytest.mark.parametrize("hour", _SAMPLE_HOURS, ids=str)
@pytest.mark.parametrize(
    ("bucket", "seconds", "kind"),
    [("1m", 60, None), ("10s", 10, "worker"), ("5m", 300, None), ("1h", 3600, "gateway")],
)
async def test_endpoint_answers_the_tables_buckets(
    env: Env,
    gateway: Callable[[Settings], Awaitable[Client]],
    bucket: str,
    seconds: int,
    kind: str | None,
    hour: datetime,
) -> None:
    s, _, conn = env
    await conn.execute("DELETE FROM performance_metrics WHERE process_name LIKE '__-_'")
    await _seed(conn, hour)
    client = await gateway(dataclasses.replace(s, perf_sample_interval=3600))
    since, to = hour + timedelta(minutes=3, seconds=25), hour + timedelta(minutes=11, seconds=1)
    params = {"from": iso(since), "to": iso(to), "bucket": bucket}
    if kind is not None:
        params["kind"] = kind
    response = await client.get(PATH, params=params, headers=headers(s))
    assert response.status == 200, await response.text()
    body = await response.json()
    width = timedelta(seconds=seconds)
    start = hour + (since - hour) // width * width
    end = start + -(-(to - start) // width) * width
    assert (body["bucket"], body["from"], body["to"]) == (bucket, iso(start), iso(end))
    expected = await conn.fetch(_EXPECTED, float(seconds), start, end, kind)
    got = [(p["kind"], p["name"], pt) for p in body["processes"] for pt in p["points"]]
    assert len(got) == len(expected) > 0
    assert {k for k, _, _ in got} == ({"gateway", "worker"} if kind is None else {kind})
    for (k, name, point), row in zip(got, expected, strict=True):
        assert (k, name) == (row["process_kind"], row["process_name"])
        assert datetime.fromisoformat(point["time"]) == row["bucket"]
        for column, value in dict(row).items():
            if column in ("process_kind", "process_name", "bucket"):
                continue
            if value is None or isinstance(value, int):
                assert point[column] == value, column
            else:
                assert point[column] == pytest.approx(value), column


async def test_endpoint_is_admin_only(
    env: Env, gateway: Callable[[Settings], Awaitable[Client]]
) -> None:
    s = env[0]
    client = await gateway(s)
    anonymous = await client.get(PATH)
    assert anonymous.status == 401
    for role in ("user", "producer"):
        response = await client.get(PATH, headers=headers(s, role))
        assert response.status == 403
        assert (await response.json())["error"]["code"] == "forbidden"
    assert (await client.get(PATH, headers=headers(s))).status == 200


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"bucket": "7m"}, "bucket"),
        ({"kind": "pod"}, "kind"),
        ({"from": "yesterday"}, "from"),
        ({"to": "2026-01-01T00:00:00"}, "to"),  # no zone
        ({"from": "2026-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "from"),
        ({"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "from"),
        ({"bucket": "10s", "from": "2026-01-01T00:00:00Z", "to": "2026-01-01T06:00:01Z"}, "from"),
        ({"bucket": "1h", "from": "2025-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "from"),
        ({"to": "0001-01-01T00:00:00Z"}, "to"),  # the default range starts before year 1
        ({"to": "9999-12-31T23:59:59Z", "from": "9999-12-31T23:00:00Z"}, "to"),
    ],
)
async def test_bad_parameters_are_400s_naming_the_field(
    env: Env, gateway: Callable[[Settings], Awaitable[Client]], params: dict[str, str], field: str
) -> None:
    s = env[0]
    client = await gateway(s)
    response = await client.get(PATH, params=params, headers=headers(s))
    assert response.status == 400
    error = (await response.json())["error"]
    assert (error["code"], error["field"]) == ("invalid_parameter", field), error
