"""WebSocket fan-out benchmark: the gateway against a bare aiohttp server, in the same run.

    python -m load.bench_ws [--connections 10000] [--gateways 1] [--clients 4]
                            [--isolated 20] [--interval 1] [--rate 2] [--seconds 10]
                            [--no-baseline]

For each server: N connections are opened by several swarm processes (load/ws_swarm.py, lean
raw-asyncio clients), each authenticated and subscribed to one user's metrics; then updates for
that user are appended to `ia:metrics` exactly as the worker writes them:
  (A) `--isolated` single updates, `--interval` s apart: each is one broadcast to N sockets;
  (B) `--rate` updates a second for `--seconds`: sustained fan-out.
Reported: connections held, server RSS per connection (RSS with N sockets minus RSS before,
over N), time until the last subscriber has each update (p50/p99 over updates), latency from
stream append to client receipt over all deliveries (p50/p99), deliveries per second, and per
CPU-second of the server processes during (B).

The baseline is what one writes with aiohttp in twenty lines (load/ws_bare.py): XREAD the same
stream and `await ws.send_str(payload)` to each socket in turn, no auth, no protocol. "Server
fan-out" is append to the last socket write, from the gateway's own Prometheus histogram
(p50/p99 as bucket bounds) and from the bare server's timings.

Loopback only, Redis db 7, database `inergize_analytics_bench_ws`, every child process killed
at the end or after `--limit` seconds. The open-files limit is raised to the hard limit here;
past ~20,000 sockets per process, use `--gateways 2` or more.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import resource
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from aiohttp import ClientSession
from redis.asyncio import Redis

from gateway.auth import mint_token
from migrations import runner
from schemas.settings import Settings
from schemas.streams import METRICS_STREAM
from sinks.db import connect

REDIS_DB = 7
DATABASE = "inergize_analytics_bench_ws"
BASE_PORT = 3920
USER = "bench-ws-user"


def bench_settings() -> Settings:
    base = Settings.from_env({**os.environ, "APP_ENV": "test"})
    return dataclasses.replace(base, timescale_database=DATABASE, redis_db=REDIS_DB)


async def prepare(s: Settings) -> None:
    admin = await connect(s, database="postgres")
    try:
        if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE):
            await admin.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await admin.close()
    conn = await connect(s)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        await runner.up(conn)
    finally:
        await conn.close()
    redis = Redis.from_url(s.redis_url)
    await redis.flushdb()
    await redis.aclose()


def gateway_env(s: Settings, http_port: int, ws_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TIMESCALE_", "REDIS_"))}
    env.update(
        APP_ENV="test",
        LOG_LEVEL="warning",
        TIMESCALE_HOST=s.timescale_host,
        TIMESCALE_PORT=str(s.timescale_port),
        TIMESCALE_USER=s.timescale_user,
        TIMESCALE_PASSWORD=s.timescale_password,
        TIMESCALE_DATABASE=DATABASE,
        REDIS_HOST=s.redis_host,
        REDIS_PORT=str(s.redis_port),
        REDIS_DB=str(REDIS_DB),
        JWT_SECRET=s.jwt_secret,
        HTTP_PORT=str(http_port),
        WS_PORT=str(ws_port),
        WS_HEARTBEAT_INTERVAL="60000",
        RATE_LIMIT_WS_SUBJECT="0",
        RATE_LIMIT_WS_IP="0",
    )
    return env


# --- measuring ---------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def scrape_fanout(http_ports: list[int]) -> dict[str, float]:
    """The gateways' `ia_ws_fanout_latency_seconds` histogram, summed: {le: count, sum, count}."""
    out: dict[str, float] = {}
    async with ClientSession() as http:
        for port in http_ports:
            async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                text = await response.text()
            for line in text.splitlines():
                if line.startswith("ia_ws_fanout_latency_seconds"):
                    name, value = line.rsplit(" ", 1)
                    base = "ia_ws_fanout_latency_seconds"
                    key = name.split('le="')[1].rstrip('"}') if "le=" in name else name[len(base) :]
                    out[key] = out.get(key, 0.0) + float(value)
    return out


def fanout_summary(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Mean, and p50/p99 as histogram bucket bounds (ms), of the updates in between."""
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    count = delta.pop("_count", 0.0)
    total = delta.pop("_sum", 0.0)
    bounds = sorted((float(k), v) for k, v in delta.items() if k not in ("+Inf", "_created"))

    def bound(q: float) -> float:
        return next((le * 1000 for le, c in bounds if c >= q * count), float("inf"))

    return {
        "mean_ms": total / count * 1000 if count else 0.0,
        "p50_ms": bound(0.5),
        "p99_ms": bound(0.99),
    }


def pct(hist: dict[int, int], q: float) -> float:
    """The q-quantile in ms of a histogram of 100 us buckets."""
    total = sum(hist.values())
    seen = 0
    for bucket in sorted(hist):
        seen += hist[bucket]
        if seen >= q * total:
            return bucket / 10
    return 0.0


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def send_floor(n: int = 2000) -> float:
    """Microseconds of CPU per small `send()` on a loopback TCP socket, the kernel's share of
    every delivery (on loopback the receiver's TCP work is charged to the sender too)."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=n)
    pairs = []
    try:
        for _ in range(n):
            client = socket.create_connection(listener.getsockname())
            server, _ = listener.accept()
            server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pairs.append((server, client))
        payload = b"x" * 160
        best = float("inf")
        for _ in range(3):
            started = time.process_time()
            for server, _ in pairs:
                server.send(payload)
            best = min(best, (time.process_time() - started) / n * 1e6)
            for _, client in pairs:
                client.recv(4096)
        return best
    finally:
        for server, client in pairs:
            server.close()
            client.close()
        listener.close()


async def inject(redis: Redis, metric: str, count: int, per_second: float) -> None:
    """Append `count` updates of `metric`, each carrying its append time (unix us) as value."""
    start = time.monotonic()
    for i in range(count):
        await asyncio.sleep(max(0.0, start + i / per_second - time.monotonic()))
        now_us = time.time_ns() // 1000
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        update = {"userId": USER, "metric": metric, "value": float(now_us)}
        update |= {"asOf": stamp, "committedAt": stamp}
        await redis.xadd(METRICS_STREAM, {"v": 1, "updates": orjson.dumps([update])})


def summarize(results: list[dict[str, Any]], metric: str, expected: int) -> dict[str, Any]:
    hist: dict[int, int] = {}
    entries: dict[str, list[int]] = {}
    for r in results:
        m = r["metrics"].get(metric, {"hist": {}, "entries": {}})
        for bucket, count in m["hist"].items():
            hist[int(bucket)] = hist.get(int(bucket), 0) + count
        for key, (count, worst) in m["entries"].items():
            e = entries.setdefault(key, [0, 0])
            e[0] += count
            e[1] = max(e[1], worst)
    last = [worst / 1000 for _, worst in entries.values()]
    delivered = sum(hist.values())
    return {
        "updates": len(entries),
        "deliveries": delivered,
        "missing": expected - delivered,
        "last_p50_ms": quantile(last, 0.5),
        "last_p99_ms": quantile(last, 0.99),
        "last_max_ms": max(last, default=0.0),
        "p50_ms": pct(hist, 0.5),
        "p99_ms": pct(hist, 0.99),
    }


# --- a run -------------------------------------------------------------------------------


class Run:
    """Server processes and swarm processes of one measurement; all killed on exit."""

    def __init__(self) -> None:
        self.servers: list[asyncio.subprocess.Process] = []
        self.swarms: list[asyncio.subprocess.Process] = []

    async def spawn_server(self, args: list[str], env: dict[str, str]) -> None:
        self.servers.append(
            await asyncio.create_subprocess_exec(
                sys.executable, *args, env=env, stdout=asyncio.subprocess.PIPE, limit=1 << 26
            )
        )

    async def stop_servers(self) -> list[str]:
        """SIGTERM the servers; what each printed (the bare server prints its timings)."""
        out = []
        for p in self.servers:
            p.send_signal(signal.SIGTERM)
            assert p.stdout is not None
            async with asyncio.timeout(30):
                out.append((await p.stdout.read()).decode())
                await p.wait()
        return out

    async def spawn_swarm(self, port: int, path: str, count: int, token: str) -> None:
        self.swarms.append(
            await asyncio.create_subprocess_exec(
                sys.executable, "-m", "load.ws_swarm", "127.0.0.1", str(port), path,
                str(count), token,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 26,
            )
        )  # fmt: skip

    async def close(self) -> None:
        for p in self.swarms + self.servers:
            if p.returncode is None:
                p.send_signal(signal.SIGTERM)
        for p in self.swarms + self.servers:
            try:
                async with asyncio.timeout(15):
                    await p.wait()
            except TimeoutError:
                p.kill()
                await p.wait()


async def until_listening(port: int, limit_s: float = 30) -> None:
    async with asyncio.timeout(limit_s):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            writer.close()
            await writer.wait_closed()
            return


async def measure(kind: str, args: argparse.Namespace, s: Settings) -> dict[str, Any]:
    token = mint_token(s, subject=USER, role="user", ttl_seconds=3600)
    redis = Redis.from_url(s.redis_url)
    run = Run()
    try:
        ports = []
        for g in range(args.gateways if kind == "gateway" else 1):
            http_port, ws_port = BASE_PORT + 2 * g, BASE_PORT + 2 * g + 1
            if kind == "gateway":
                env = gateway_env(s, http_port, ws_port)
                await run.spawn_server(["-m", "pipeline.cli", "gateway"], env)
            else:
                bare_args = ["-m", "load.ws_bare", str(ws_port), s.redis_url]
                await run.spawn_server(bare_args, dict(os.environ))
            ports.append(ws_port)
        for port in ports:
            await until_listening(port)
        await asyncio.sleep(1.0)
        pids = [p.pid for p in run.servers]
        rss_before = sum(rss_kib(pid) for pid in pids)
        per_swarm = args.connections // args.clients
        started = time.monotonic()
        for i in range(args.clients):
            await run.spawn_swarm(ports[i % len(ports)], "/", per_swarm, token)
        held = 0
        for p in run.swarms:
            assert p.stdout is not None
            line = (await p.stdout.readline()).decode().split()
            held += int(line[1])
        connect_s = time.monotonic() - started
        await asyncio.sleep(2.0)
        rss_after = sum(rss_kib(pid) for pid in pids)
        print(f"  {kind}: {held} connections in {connect_s:.1f} s", flush=True)

        http_ports = [port - 1 for port in ports] if kind == "gateway" else []
        scraped = await scrape_fanout(http_ports)
        await inject(redis, "profileViews", args.isolated, 1.0 / args.interval)
        await asyncio.sleep(2.0)
        fanout = fanout_summary(scraped, await scrape_fanout(http_ports)) if http_ports else {}
        cpu_before = sum(cpu_s(pid) for pid in pids)
        wall = time.monotonic()
        await inject(redis, "likes", int(args.rate * args.seconds), args.rate)
        await asyncio.sleep(3.0)
        cpu = sum(cpu_s(pid) for pid in pids) - cpu_before
        wall = time.monotonic() - wall

        results = []
        for p in run.swarms:
            assert p.stdin is not None and p.stdout is not None
            p.stdin.write(b"stop\n")
            await p.stdin.drain()
            results.append(orjson.loads(await p.stdout.readline()))
        printed = await run.stop_servers()
        if kind == "bare":
            timings = orjson.loads(printed[0].strip().splitlines()[-1])["fanout_ms"]
            isolated_ms = timings[: args.isolated]
            fanout = {
                "mean_ms": sum(isolated_ms) / max(1, len(isolated_ms)),
                "p50_ms": quantile(isolated_ms, 0.5),
                "p99_ms": quantile(isolated_ms, 0.99),
            }
        isolated = summarize(results, "profileViews", args.isolated * held)
        sustained = summarize(results, "likes", int(args.rate * args.seconds) * held)
        return {
            "server": kind,
            "processes": len(pids),
            "connections": held,
            "rss_per_connection_kib": (rss_after - rss_before) / max(1, held),
            "rss_mib": rss_after / 1024,
            "server_fanout": fanout,
            "isolated": isolated,
            "sustained": sustained,
            "deliveries_per_s": sustained["deliveries"] / wall,
            "deliveries_per_cpu_s": sustained["deliveries"] / cpu if cpu else 0.0,
            "server_cpu_s": cpu,
        }
    finally:
        await run.close()
        await redis.aclose()


def report(rows: list[dict[str, Any]]) -> None:
    print()
    print(
        "| server | procs | connections | RSS/conn KiB | server fan-out mean / p50 / p99 ms "
        "| last subscriber p50 / p99 ms | append->receipt p50 / p99 ms | sustained p99 ms "
        "| deliveries/s | per CPU-s | missing |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        i, b, f = r["isolated"], r["sustained"], r["server_fanout"]
        print(
            f"| {r['server']} | {r['processes']} | {r['connections']:,} "
            f"| {r['rss_per_connection_kib']:.1f} "
            f"| {f['mean_ms']:.0f} / {f['p50_ms']:.0f} / {f['p99_ms']:.0f} "
            f"| {i['last_p50_ms']:.0f} / {i['last_p99_ms']:.0f} "
            f"| {i['p50_ms']:.0f} / {i['p99_ms']:.0f} | {b['p99_ms']:.0f} "
            f"| {r['deliveries_per_s']:,.0f} | {r['deliveries_per_cpu_s']:,.0f} "
            f"| {i['missing'] + b['missing']} |"
        )


async def main_async(args: argparse.Namespace) -> None:
    s = bench_settings()
    await prepare(s)
    rows = []
    async with asyncio.timeout(args.limit):
        for kind in ("gateway", "bare") if args.baseline else ("gateway",):
            print(f"{kind}: {args.connections} connections, {args.clients} swarms", flush=True)
            rows.append(await measure(kind, args, s))
            print(orjson.dumps(rows[-1]).decode(), flush=True)
    floor = send_floor()
    report(rows)
    print(f"\nkernel floor: {floor:.1f} us of CPU per loopback send() (x N for one broadcast)")


def main() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by the children
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--gateways", type=int, default=1)
    parser.add_argument("--clients", type=int, default=4, help="swarm processes")
    parser.add_argument("--isolated", type=int, default=20, help="single broadcasts")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between them")
    parser.add_argument("--rate", type=float, default=2.0, help="sustained updates per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--limit", type=float, default=900.0, help="seconds before giving up")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
