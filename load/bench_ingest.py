"""Ingest benchmark: the pipeline against the physical limits measured in the same run.

    python -m load.bench_ingest [--events 60000] [--users 1000] [--seconds 10]

Measures, on the same generated events:
  (a) raw asyncpg binary COPY of the equivalent rows into the same hypertables, best of
      1 or 2 connections x 5k or 20k-row batches: the bound the pipeline is held against;
  (b) the pipeline end to end: 100-event batch POSTs to a real gateway, one worker process,
      from the first POST to the last row committed;
  (c) single-event POSTs to the gateway (wrk), appended to Redis, no worker;
  (d) a bare aiohttp handler answering 202 (wrk, same body): (c)'s baseline;
  (e) accepted-to-committed latency with POSTs paced at half of (b)'s rate.
Everything runs on loopback in its own database (`inergize_analytics_bench`) and Redis db 12,
bounded in events and seconds, and stops by itself. Needs `wrk` (apt-get install wrk).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson

from gateway.auth import mint_token
from migrations import runner
from pipeline.stages.rows import rows_for
from pipeline.stages.validate import ValidEvent
from pipeline.worker import open_redis
from schemas.events import StreamEvent
from schemas.settings import Settings
from sinks.db import connect
from sinks.timescale import TABLE_COLUMNS

TABLES = tuple(TABLE_COLUMNS)
TYPES = [
    ("profile_view", 30),
    ("search_appearance", 10),
    ("post_impression", 25),
    ("post_like", 15),
    ("post_comment", 5),
    ("post_share", 3),
    ("connection_added", 5),
    ("message_received", 5),
    ("profile_snapshot", 2),
]
HTTP_PORT, BARE_PORT = 3904, 3905


def bench_settings() -> Settings:
    base = Settings.from_env({**os.environ, "APP_ENV": "test"})
    return dataclasses.replace(
        base,
        timescale_database="inergize_analytics_bench",
        redis_db=12,
        http_port=HTTP_PORT,
        ws_enabled=False,
        ingest_max_backlog=1_000_000_000,
    )


def generate(n: int, users: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    kinds, weights = zip(*TYPES, strict=True)
    now = time.time()
    out = []
    for i in range(n):
        kind = rng.choices(kinds, weights)[0]
        event: dict[str, Any] = {
            "event_id": f"bench-{seed}-{i}",
            "user_id": f"bench-user-{rng.randrange(users)}",
            "type": kind,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now - rng.random() * 3600))
            + "Z",
        }
        if kind == "profile_snapshot":
            event["properties"] = {"connections": rng.randrange(50, 5000), "followers": 10}
        elif kind.startswith("post_"):
            event["properties"] = {"post_id": f"p{rng.randrange(50)}"}
            if kind == "post_impression":
                event["value"] = rng.randrange(1, 500)
        out.append(event)
    return out


def as_valid(events: list[dict[str, Any]]) -> list[ValidEvent]:
    now_us = int(time.time() * 1_000_000)
    out = []
    for e in events:
        t = time.mktime(time.strptime(e["time"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
        props = e.get("properties", {})
        se = StreamEvent(
            e["event_id"],
            e["user_id"],
            e["type"],
            int(t * 1_000_000),
            float(e.get("value", 1)),
            orjson.dumps(props),
            now_us,
        )
        out.append(ValidEvent(se, props))
    return out


async def prepare_db(s: Settings) -> None:
    admin = await connect(s, database="postgres")
    try:
        if not await admin.fetchval(
            "SELECT 1 FROM pg_database WHERE datname = $1", s.timescale_database
        ):
            await admin.execute(f'CREATE DATABASE "{s.timescale_database}"')
    finally:
        await admin.close()
    conn = await connect(s)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        await runner.up(conn)
    finally:
        await conn.close()


async def reset(s: Settings) -> None:
    conn = await connect(s)
    try:
        await conn.execute(f"TRUNCATE {', '.join(TABLES)}")
    finally:
        await conn.close()
    client = open_redis(s)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


async def raw_copy(s: Settings, events: list[dict[str, Any]]) -> dict[str, Any]:
    """(a): the same rows the store stage writes, COPYed without any pipeline around them."""
    valid = as_valid(events)
    best: dict[str, Any] = {}
    for conns in (1, 2):
        for batch in (5000, 20000):
            await reset(s)
            chunks = [valid[i : i + batch] for i in range(0, len(valid), batch)]
            pool = [await connect(s) for _ in range(conns)]
            rows = [rows_for(c, {}) for c in chunks]
            queue: asyncio.Queue[dict[str, list[tuple[Any, ...]]]] = asyncio.Queue()
            for r in rows:
                queue.put_nowait(r)

            async def writer(
                conn: asyncpg.Connection, queue: asyncio.Queue[dict[str, list[tuple[Any, ...]]]]
            ) -> None:
                while not queue.empty():
                    r = queue.get_nowait()
                    async with conn.transaction():
                        for table, records in r.items():
                            await conn.copy_records_to_table(
                                table, records=records, columns=TABLE_COLUMNS[table]
                            )

            started = time.perf_counter()
            await asyncio.gather(*(writer(c, queue) for c in pool))
            elapsed = time.perf_counter() - started
            for c in pool:
                await c.close()
            rate = len(valid) / elapsed
            print(f"  (a) COPY {conns} conn x {batch} rows: {rate:,.0f} events/s", flush=True)
            if rate > best.get("events_per_s", 0):
                best = {"events_per_s": rate, "connections": conns, "batch": batch}
    return best


@contextmanager
def process(args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(args, env=env, stdout=log, stderr=log)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def app_env(s: Settings, **extra: str) -> dict[str, str]:
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
        REDIS_DB=str(s.redis_db),
        HTTP_PORT=str(HTTP_PORT),
        WS_ENABLED="false",
        INGEST_MAX_BACKLOG="1000000000",
        JWT_SECRET=s.jwt_secret,
        METRICS_PORT="9904",
    )
    env.update(extra)
    return env


async def wait_http(port: int, path: str = "/health", limit_s: float = 20.0) -> None:
    deadline = time.monotonic() + limit_s
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(f"http://127.0.0.1:{port}{path}") as r:
                    if r.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"nothing answered on port {port}")


def wrk(url: str, body: bytes, token: str, seconds: int) -> dict[str, float]:
    """requests/s and latency percentiles from wrk, 2 threads x 64 connections."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(
            'wrk.method = "POST"\n'
            f"wrk.body = {orjson.dumps(body.decode()).decode()}\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
            f'wrk.headers["Authorization"] = "Bearer {token}"\n'
        )
        script = f.name
    try:
        out = subprocess.run(
            ["wrk", "-t2", "-c64", f"-d{seconds}s", "--latency", "-s", script, url],
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 30,
        ).stdout
    finally:
        Path(script).unlink()
    if "Non-2xx" in out:
        raise RuntimeError("wrk saw non-2xx answers:\n" + out)

    def ms(label: str) -> float:
        m = re.search(rf"{label}\s+([\d.]+)(us|ms|s)\b", out)
        if m is None:
            raise RuntimeError(f"no {label} in wrk output:\n{out}")
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert rps is not None
    return {"per_s": float(rps.group(1)), "p50_ms": ms("50%"), "p99_ms": ms("99%")}


async def count_rows(s: Settings) -> int:
    conn = await connect(s)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM real_time_events"))
    finally:
        await conn.close()


async def post_batches(
    events: list[dict[str, Any]], token: str, concurrency: int, interval_s: float = 0.0
) -> list[float]:
    """POST 100-event batches; with `interval_s`, paced; returns per-request latencies (ms)."""
    batches = [orjson.dumps(events[i : i + 100]) for i in range(0, len(events), 100)]
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for b in batches:
        queue.put_nowait(b)
    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    url = f"http://127.0.0.1:{HTTP_PORT}/ingest/events"
    started = time.perf_counter()

    async def client(http: aiohttp.ClientSession) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            if interval_s:
                index = len(batches) - queue.qsize() - 1
                delay = started + index * interval_s - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            t0 = time.perf_counter()
            async with http.post(url, data=body, headers=headers) as r:
                await r.read()
                if r.status != 202:
                    raise RuntimeError(f"ingest answered {r.status}")
            latencies.append((time.perf_counter() - t0) * 1000)

    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    return latencies


def cpu_seconds() -> dict[str, float]:
    """CPU seconds so far per process kind on this machine, from /proc (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        used = (int(fields[11]) + int(fields[12])) / tick
        kind = next(
            (k for k in ("postgres", "redis", "gateway", "worker", "bench_ingest") if k in cmd),
            None,
        )
        if kind:
            out[kind] = out.get(kind, 0.0) + used
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def pipeline_end_to_end(
    s: Settings, events: list[dict[str, Any]], token: str, limit_s: float
) -> dict[str, float]:
    """(b): first POST to last row committed, one gateway and one worker process."""
    await reset(s)
    cli = [sys.executable, "-m", "pipeline.cli"]
    with process([*cli, "gateway"], app_env(s)), process([*cli, "worker"], app_env(s)):
        await wait_http(HTTP_PORT)
        cpu_before = cpu_seconds()
        started = time.perf_counter()
        latencies = await post_batches(events, token, concurrency=8)
        posted = time.perf_counter()
        deadline = posted + limit_s
        while (n := await count_rows(s)) < len(events) and time.perf_counter() < deadline:
            await asyncio.sleep(0.02)
        finished = time.perf_counter()
        cpu_after = cpu_seconds()
    print(f"  (b) CPU per event over {finished - started:.2f} s:", flush=True)
    for kind, total in sorted(cpu_after.items(), key=lambda kv: -kv[1]):
        used = total - cpu_before.get(kind, 0.0)
        print(f"      {kind:<12} {used:6.2f} s  {used / len(events) * 1e6:5.1f} us", flush=True)
    if n < len(events):
        raise RuntimeError(f"only {n} of {len(events)} rows committed within {limit_s}s")
    return {
        "events_per_s": len(events) / (finished - started),
        "post_phase_events_per_s": len(events) / (posted - started),
        "post_p50_ms": pct(latencies, 0.5),
        "post_p99_ms": pct(latencies, 0.99),
    }


async def commit_latency(
    s: Settings, events: list[dict[str, Any]], token: str, rate: float
) -> dict[str, float]:
    """(e): POSTs paced at `rate` events/s; gateway receipt to commit, from the stored rows."""
    await reset(s)
    cli = [sys.executable, "-m", "pipeline.cli"]
    with process([*cli, "gateway"], app_env(s)), process([*cli, "worker"], app_env(s)):
        await wait_http(HTTP_PORT)
        await post_batches(events, token, concurrency=4, interval_s=100 / rate)
        deadline = time.perf_counter() + 60
        while await count_rows(s) < len(events) and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
    conn = await connect(s)
    try:
        row = await conn.fetchrow(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d) AS p50, "
            "percentile_cont(0.99) WITHIN GROUP (ORDER BY d) AS p99 FROM ("
            "SELECT extract(epoch FROM ingested_at - received_at) * 1000 AS d "
            "FROM real_time_events) x"
        )
    finally:
        await conn.close()
    assert row is not None
    return {"rate": rate, "p50_ms": float(row["p50"]), "p99_ms": float(row["p99"])}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration per run")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: apt-get install wrk")
    s = bench_settings()
    await prepare_db(s)
    events = generate(args.events, args.users, args.seed)
    token = mint_token(s, subject="bench", role="producer", ttl_seconds=3600)
    print(f"{len(events)} events, {args.users} users, {os.cpu_count()} cores", flush=True)

    copy = await raw_copy(s, events)
    print(f"(a) raw COPY best: {copy['events_per_s']:,.0f} events/s", flush=True)

    single = orjson.dumps({"user_id": "bench-user-1", "type": "profile_view"})
    with process([sys.executable, "-m", "load.bare_server", str(BARE_PORT)], dict(os.environ)):
        await wait_http(BARE_PORT, "/")
        bare = wrk(f"http://127.0.0.1:{BARE_PORT}/ingest/event", single, token, args.seconds)
    print(f"(d) bare aiohttp 202: {bare['per_s']:,.0f} req/s", flush=True)

    await reset(s)
    with process([sys.executable, "-m", "pipeline.cli", "gateway"], app_env(s)):
        await wait_http(HTTP_PORT)
        gw = wrk(f"http://127.0.0.1:{HTTP_PORT}/ingest/event", single, token, args.seconds)
    print(f"(c) gateway single-event POST: {gw['per_s']:,.0f} req/s", flush=True)

    e2e = await pipeline_end_to_end(s, events, token, limit_s=120)
    print(f"(b) pipeline end to end: {e2e['events_per_s']:,.0f} events/s", flush=True)

    half = e2e["events_per_s"] / 2
    paced = events[: int(min(len(events), half * 10))]
    lat = await commit_latency(s, paced, token, half)

    print("\nresults")
    print(
        f"  (a) raw COPY (best: {copy['connections']} conn, {copy['batch']} rows) "
        f"{copy['events_per_s']:>10,.0f} events/s"
    )
    print(
        f"  (b) pipeline end to end, 100-event POSTs   {e2e['events_per_s']:>10,.0f} events/s"
        f"   (b)/(a) = {e2e['events_per_s'] / copy['events_per_s']:.2f}"
    )
    print(
        f"      batch POST latency p50 {e2e['post_p50_ms']:.1f} ms, p99 {e2e['post_p99_ms']:.1f} ms"
    )
    print(
        f"  (c) gateway single-event POST               {gw['per_s']:>10,.0f} req/s"
        f"   (c)/(d) = {gw['per_s'] / bare['per_s']:.2f}"
    )
    print(f"      latency p50 {gw['p50_ms']:.2f} ms, p99 {gw['p99_ms']:.2f} ms")
    print(
        f"  (d) bare aiohttp handler                    {bare['per_s']:>10,.0f} req/s"
        f"   latency p50 {bare['p50_ms']:.2f} ms, p99 {bare['p99_ms']:.2f} ms"
    )
    print(
        f"  (e) accepted-to-committed at {half:,.0f} events/s: "
        f"p50 {lat['p50_ms']:.0f} ms, p99 {lat['p99_ms']:.0f} ms"
    )
    await reset(s)


if __name__ == "__main__":
    asyncio.run(main())
