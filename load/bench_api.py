"""Analytics API benchmark: latency under concurrent load, cached and uncached, 30 vs 90 days.

    python -m load.bench_api [--users 1000] [--days 30,90] [--seconds 10] [--concurrency 1,16]

For each history length it uses its own database (`inergize_analytics_bench_api_<days>d`),
seeded once by the development seeder (`seeder.generate.seed`, 1,000 users by default) plus a
daily point of every derived aggregation, and reused on later runs when the seed matches. Then
one `analytics gateway` process answers a dashboard's request mix for `--seconds` per run,
from `--concurrency` closed-loop clients, each request for a random seeded user with that
user's own token:

    profile 1h x 7 days (the default)   profile 5m x 1 day   profile 1d x 90 days
    engagement 1h x 7 days              engagement 1d x 30 days
    summary                             events (first page)   aggregations (7 days)

- uncached: the gateway runs with API_CACHE_TTL=0, requests for all users;
- cached: API_CACHE_TTL=300, requests for `--cached-users` users (100); `X-Cache` of each
  measured answer is counted, so the hit ratio is reported.

Both are measured warm: every (user, request) is fetched once before the measured runs, so the
rows are in the page cache and the pool's connections open, as in a gateway that has run for a
while (a user's first, cold read costs disk reads on top).

Everything is on loopback (Redis db 6), bounded in seconds and requests, and stops by itself.
Seeding 1,000 users x 90 days writes ~12 M rows and takes several minutes the first time.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg

from gateway.auth import mint_token
from load.bench_ingest import pct, prepare_db, process, wait_http
from pipeline.worker import open_redis
from schemas.settings import Settings
from sinks.db import connect

HTTP_PORT = 3914
REDIS_DB = 6
REQUESTS: dict[str, tuple[str, dict[str, str]]] = {
    "profile 1h x 7d": ("/api/v1/metrics/profile", {}),
    "profile 5m x 1d": ("/api/v1/metrics/profile", {"bucket": "5m", "since": "1"}),
    "profile 1d x 90d": ("/api/v1/metrics/profile", {"bucket": "1d", "since": "90"}),
    "engagement 1h x 7d": ("/api/v1/metrics/engagement", {}),
    "engagement 1d x 30d": ("/api/v1/metrics/engagement", {"bucket": "1d", "since": "30"}),
    "summary": ("/api/v1/metrics/summary", {}),
    "events": ("/api/v1/events", {}),
    "aggregations": ("/api/v1/metrics/aggregations", {}),
}
# A run stops at this many requests even if --seconds has not passed.
MAX_REQUESTS_PER_RUN = 200_000


def bench_settings(days: int) -> Settings:
    base = Settings.from_env({**os.environ, "APP_ENV": "test"})
    return dataclasses.replace(
        base,
        timescale_database=f"inergize_analytics_bench_api_{days}d",
        redis_db=REDIS_DB,
        http_port=HTTP_PORT,
        ws_enabled=False,
    )


async def ensure_seeded(s: Settings, users: int, days: int, seed: int) -> list[str]:
    """The seeded user ids; seeds (and backfills aggregations) only if this seed is missing."""
    from seeder.generate import seed as run_seed
    from seeder.generate import user_ids

    await prepare_db(s)
    conn = await connect(s)
    try:
        ids = user_ids(users, seed)
        run = await conn.fetchrow(
            "SELECT id, started_at, finished_at FROM seed_runs WHERE seed = $1 AND days = $2 "
            "AND cardinality(user_ids) = $3 ORDER BY id DESC LIMIT 1",
            seed,
            days,
            users,
        )
        if run is not None and run["finished_at"] is not None:
            return ids
        if run is None:
            print(f"seeding {users} users x {days} days into {s.timescale_database}", flush=True)
            started = time.perf_counter()
            report = await run_seed(conn, users=users, days=days, seed=seed, progress=True)
            print(f"  {report.rows} in {time.perf_counter() - started:.0f} s", flush=True)
        else:  # a seed interrupted after its raw rows: finish what seed() does after them
            await finish_seed(conn, ids, seed, days)
            await backfill_aggregations(conn, days)
        await conn.execute("VACUUM ANALYZE")
        return ids
    finally:
        await conn.close()


# The rollups' definitions (migrations/0004_rollups.up.sql) over one span of every user, with
# constant time bounds so each statement plans only that span's chunks.
_LEVEL_PROFILE = """
INSERT INTO {rollup} AS r (bucket, user_id, profile_views, search_appearances,
    connections_added, connections_removed, messages_received, total_profile_views,
    connections, followers, profile_completeness, influence_score, events)
SELECT time_bucket($3::interval, time), user_id, sum(profile_views), sum(search_appearances),
       sum(connections_added), sum(connections_removed), sum(messages_received),
       last(total_profile_views, time) FILTER (WHERE total_profile_views IS NOT NULL),
       last(connections, time) FILTER (WHERE connections IS NOT NULL),
       last(followers, time) FILTER (WHERE followers IS NOT NULL),
       last(profile_completeness, time) FILTER (WHERE profile_completeness IS NOT NULL),
       last(influence_score, time) FILTER (WHERE influence_score IS NOT NULL), count(*)
FROM profile_metrics WHERE time >= $1 AND time < $2 GROUP BY 1, 2
ON CONFLICT (user_id, bucket) DO UPDATE SET profile_views = EXCLUDED.profile_views,
    search_appearances = EXCLUDED.search_appearances,
    connections_added = EXCLUDED.connections_added,
    connections_removed = EXCLUDED.connections_removed,
    messages_received = EXCLUDED.messages_received,
    total_profile_views = EXCLUDED.total_profile_views, connections = EXCLUDED.connections,
    followers = EXCLUDED.followers, profile_completeness = EXCLUDED.profile_completeness,
    influence_score = EXCLUDED.influence_score, events = EXCLUDED.events
"""
_LEVEL_ENGAGEMENT = """
INSERT INTO engagement_hourly AS r (bucket, user_id, posts_published, impressions, likes,
    comments, shares, events)
SELECT time_bucket('1 hour', time), user_id, sum(posts_published), sum(impressions),
       sum(likes), sum(comments), sum(shares), count(*)
FROM engagement_metrics WHERE time >= $1 AND time < $2 GROUP BY 1, 2
ON CONFLICT (user_id, bucket) DO UPDATE SET posts_published = EXCLUDED.posts_published,
    impressions = EXCLUDED.impressions, likes = EXCLUDED.likes, comments = EXCLUDED.comments,
    shares = EXCLUDED.shares, events = EXCLUDED.events
"""
_PROFILE_ROLLUPS = {
    "profile_metrics_5min": timedelta(minutes=5),
    "profile_metrics_hourly": timedelta(hours=1),
    "profile_metrics_daily": timedelta(days=1),
}


async def finish_seed(conn: asyncpg.Connection, ids: list[str], seed: int, days: int) -> None:
    """What seed() does after writing raw rows: rollups (Apache edition), goals and rules, the
    run's end. The rollups are levelled a day at a time for every user at once."""
    from seeder.extras import add_goals_and_rules

    run = await conn.fetchrow(
        "SELECT id, started_at FROM seed_runs WHERE seed = $1 AND days = $2 "
        "AND finished_at IS NULL ORDER BY id DESC LIMIT 1",
        seed,
        days,
    )
    assert run is not None
    end = run["started_at"].replace(minute=0, second=0, microsecond=0)
    day = end.replace(hour=0) - timedelta(days=days)
    while day <= end:
        nxt = day + timedelta(days=1)
        for rollup, width in _PROFILE_ROLLUPS.items():
            await conn.execute(_LEVEL_PROFILE.format(rollup=rollup), day, nxt, width)
        await conn.execute(_LEVEL_ENGAGEMENT, day, nxt)
        day = nxt
    print(f"  rollups levelled up to {end:%Y-%m-%d %H:%M}", flush=True)
    await add_goals_and_rules(conn, ids, seed, end)
    await conn.execute("UPDATE seed_runs SET finished_at = now() WHERE id = $1", run["id"])


async def backfill_aggregations(conn: asyncpg.Connection, days: int) -> None:
    """One point of every derived series per day of history, as the maintenance task would
    have written them."""
    from pipeline.maintenance import compute_aggregations

    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    for back in range(days):
        await compute_aggregations(conn, today - timedelta(days=back))


def gateway_env(s: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TIMESCALE_", "REDIS_"))}
    env.update(
        APP_ENV="test",
        LOG_LEVEL="warning",
        TIMESCALE_DATABASE=s.timescale_database,
        TIMESCALE_HOST=s.timescale_host,
        TIMESCALE_PORT=str(s.timescale_port),
        TIMESCALE_USER=s.timescale_user,
        TIMESCALE_PASSWORD=s.timescale_password,
        REDIS_HOST=s.redis_host,
        REDIS_PORT=str(s.redis_port),
        REDIS_DB=str(REDIS_DB),
        HTTP_PORT=str(HTTP_PORT),
        WS_ENABLED="false",
        JWT_SECRET=s.jwt_secret,
        RATE_LIMIT_API_SUBJECT="0",
        RATE_LIMIT_API_IP="0",
    )
    env.update(extra)
    return env


def params_for(kind: str) -> dict[str, str]:
    _, template = REQUESTS[kind]
    out = {k: v for k, v in template.items() if k != "since"}
    if "since" in template:
        since = datetime.now(UTC) - timedelta(days=int(template["since"]))
        out["from"] = since.isoformat().replace("+00:00", "Z")
    return out


async def run_load(
    users: list[str], tokens: dict[str, str], seconds: float, concurrency: int
) -> dict[str, Any]:
    """Closed-loop clients for `seconds`; latency per request kind and cache results."""
    latencies: dict[str, list[float]] = {k: [] for k in REQUESTS}
    cache: dict[str, int] = {}
    errors: dict[int, int] = {}
    deadline = time.monotonic() + seconds
    sent = 0
    rng = random.Random(1)
    url = f"http://127.0.0.1:{HTTP_PORT}"

    async def client(http: aiohttp.ClientSession) -> None:
        nonlocal sent
        while time.monotonic() < deadline and sent < MAX_REQUESTS_PER_RUN:
            sent += 1
            kind = rng.choice(list(REQUESTS))
            user = rng.choice(users)
            path = REQUESTS[kind][0]
            headers = {"Authorization": f"Bearer {tokens[user]}"}
            started = time.perf_counter()
            async with http.get(url + path, params=params_for(kind), headers=headers) as r:
                await r.read()
                elapsed = time.perf_counter() - started
                if r.status != 200:
                    errors[r.status] = errors.get(r.status, 0) + 1
                    continue
                result = r.headers.get("X-Cache", "off")
            latencies[kind].append(elapsed)
            cache[result] = cache.get(result, 0) + 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    wall = time.perf_counter() - started
    every = [x for xs in latencies.values() for x in xs]
    return {
        "requests": len(every),
        "rps": len(every) / wall,
        "errors": errors,
        "cache": cache,
        "all": (pct(every, 0.5) * 1000, pct(every, 0.99) * 1000),
        "kinds": {k: (pct(v, 0.5) * 1000, pct(v, 0.99) * 1000) for k, v in latencies.items() if v},
    }


async def warm(users: list[str], tokens: dict[str, str], concurrency: int) -> None:
    """Every (user, request kind) once, so the measured run reads a filled cache."""
    queue = [(u, k) for u in users for k in REQUESTS]
    url = f"http://127.0.0.1:{HTTP_PORT}"

    async def client(http: aiohttp.ClientSession) -> None:
        while queue:
            user, kind = queue.pop()
            headers = {"Authorization": f"Bearer {tokens[user]}"}
            async with http.get(
                url + REQUESTS[kind][0], params=params_for(kind), headers=headers
            ) as r:
                await r.read()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))


def report(days: int, mode: str, concurrency: int, r: dict[str, Any]) -> None:
    p50, p99 = r["all"]
    print(
        f"\n{days}d {mode} c={concurrency}: {r['requests']} requests, {r['rps']:.0f} req/s, "
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, errors {r['errors']}, X-Cache {r['cache']}"
    )
    for kind, (k50, k99) in r["kinds"].items():
        print(f"  {kind:<22} p50 {k50:7.1f} ms   p99 {k99:7.1f} ms")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--days", default="30,90", help="history lengths, comma-separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="per measured run")
    parser.add_argument("--concurrency", default="1,16", help="client counts, comma-separated")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--cached-users", type=int, default=100, help="users of the cached runs (warmed first)"
    )
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    for days in (int(d) for d in args.days.split(",")):
        s = bench_settings(days)
        users = await ensure_seeded(s, args.users, days, args.seed)
        tokens = {u: mint_token(s, subject=u, role="user", ttl_seconds=3600) for u in users}
        for mode, ttl in (("uncached", "0"), ("cached", "300")):
            client = open_redis(s)
            try:
                await client.flushdb()
            finally:
                await client.aclose()
            args_gw = [sys.executable, "-m", "pipeline.cli", "gateway"]
            with process(args_gw, gateway_env(s, API_CACHE_TTL=ttl)):
                await wait_http(HTTP_PORT)
                # Both modes are measured warm: every (user, request) read once first, so the
                # rows sit in the page cache and the pool's connections are open, as in a
                # gateway that has been running. The cached mode also fills the cache then.
                chosen = users if mode == "uncached" else users[: args.cached_users]
                started = time.perf_counter()
                await warm(chosen, tokens, max(levels))
                print(f"\n{days}d {mode}: warmed in {time.perf_counter() - started:.0f} s")
                for concurrency in levels:
                    result = await run_load(chosen, tokens, args.seconds, concurrency)
                    report(days, mode, concurrency, result)


if __name__ == "__main__":
    asyncio.run(main())
