"""What the worker's per-batch read of current values costs as history grows.

    python -m load.bench_current_values [--users 300] [--days 30,90] [--batch-users 1,10,100,300]

After every committed batch the processor calls `sinks.current_values.current_values` for the
users of the batch, so its cost must not grow with history. For each history length this seeds
(once, reused later) `inergize_analytics_bench_cv_<days>d` with the development seeder, then
times, for batches of `--batch-users` users (best of `--repeat`, warm):

- baseline: the window sums alone (one `sum ... GROUP BY user_id` over the last 7 days of both
  event tables), the least any definition of "the last 7 days" must read;
- current_values: every catalogue metric, as the worker publishes them.

and prints both and their ratio. Loopback only; bounded by the batch list and `--repeat`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from load.bench_api import bench_settings, ensure_seeded
from sinks.db import Conn, connect
from sinks.queries.current_values import current_values

_BASELINE = """
SELECT p.user_id, p.views, e.impressions
FROM (SELECT user_id, sum(profile_views) AS views FROM profile_metrics
      WHERE user_id = ANY($1::text[]) AND time > $2 GROUP BY user_id) p
FULL JOIN (SELECT user_id, sum(impressions) AS impressions FROM engagement_metrics
           WHERE user_id = ANY($1::text[]) AND time > $2 GROUP BY user_id) e USING (user_id)
"""


async def best_of(repeat: int, call: Callable[..., Awaitable[object]], *args: object) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        await call(*args)
        best = min(best, time.perf_counter() - started)
    return best


async def measure(conn: Conn, users: list[str], sizes: list[int], repeat: int) -> None:
    for n in sizes:
        chosen = users[:n]
        at = datetime.now(UTC)
        window = at - timedelta(days=7)
        base = await best_of(repeat, conn.fetch, _BASELINE, chosen, window)
        full = await best_of(repeat, current_values, conn, chosen, at)
        print(
            f"  {n:>5} users: baseline {base * 1e3:8.1f} ms   current_values {full * 1e3:8.1f} ms"
            f"   ratio {full / base:5.2f}",
            flush=True,
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=300, help="seeded users")
    parser.add_argument("--days", default="30,90", help="history lengths, comma-separated")
    parser.add_argument("--batch-users", default="1,10,100,300", help="users per batch")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    sizes = [int(n) for n in args.batch_users.split(",")]
    for days in (int(d) for d in args.days.split(",")):
        s = dataclasses.replace(
            bench_settings(days), timescale_database=f"inergize_analytics_bench_cv_{days}d"
        )
        users = await ensure_seeded(s, args.users, days, args.seed)
        conn = await connect(s)
        try:
            print(f"{days} days of history, {len(users)} users:", flush=True)
            await measure(conn, users, [n for n in sizes if n <= len(users)], args.repeat)
        finally:
            await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
