"""Loading development data into TimescaleDB, and removing it again.

`seed()` writes each user's rows (seeder/users.py) by binary COPY straight into the event
tables (the pipeline is not involved), then brings the rollups level with them and computes
the derived series for every day, so every dashboard and API query has data at once. Each run
is recorded in `seed_runs`; its rows carry `seed:` event ids and its users `demo-` ids, so
`clear()` removes what the runs wrote and nothing else.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

from seeder.extras import add_goals_and_rules
from seeder.users import generate_user, user_ids
from sinks.aggregations import compute_aggregations
from sinks.db import Conn
from sinks.rollups import edition, recompute, refresh
from sinks.timescale import write_batch

__all__ = ["SeedReport", "clear", "seed", "seed_status"]

# Rows per COPY transaction: large enough for COPY's speed, small enough to show progress.
_FLUSH_ROWS: Final = 50_000
# Rollups are levelled for this many users and this much history per transaction: one
# transaction over all of it would open and lock every chunk of the span at once.
_LEVEL_USERS: Final = 100
_LEVEL_SPAN: Final = timedelta(days=7)
_TABLES: Final = ("profile_metrics", "engagement_metrics", "real_time_events")
_ROLLUP_TABLES: Final = (
    "profile_metrics_5min",
    "profile_metrics_hourly",
    "profile_metrics_daily",
    "engagement_hourly",
)

Rows = dict[str, list[tuple[Any, ...]]]


@dataclass
class SeedReport:
    users: list[str]
    days: int
    seed: int
    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


async def seed(
    conn: Conn,
    *,
    users: int = 5,
    days: int = 30,
    seed: int = 7,
    until: datetime | None = None,
    progress: bool = False,
) -> SeedReport:
    """Load `users` x `days` of data ending at `until` (default: this hour), then level the
    rollups and compute the derived aggregations for those users."""
    end = until or datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    ids = user_ids(users, seed)
    report = SeedReport(ids, days, seed, dict.fromkeys(_TABLES, 0))
    started = datetime.now(UTC)
    run_id = await conn.fetchval(
        "INSERT INTO seed_runs (seed, days, user_ids) VALUES ($1, $2, $3) RETURNING id",
        seed,
        days,
        ids,
    )
    await _write_users(conn, report, end, progress)
    await _derive(conn, report, end)
    report.seconds = (datetime.now(UTC) - started).total_seconds()
    await conn.execute(
        "UPDATE seed_runs SET rows = $2, finished_at = now() WHERE id = $1",
        run_id,
        orjson.dumps(report.rows).decode(),
    )
    if progress:
        print(file=sys.stderr)
    return report


async def _write_users(conn: Conn, report: SeedReport, end: datetime, progress: bool) -> None:
    """Generate and COPY every user's rows, about `_FLUSH_ROWS` per transaction."""
    ids = report.users
    pending: Rows = {t: [] for t in _TABLES}
    for i, user in enumerate(ids):
        rows = generate_user(i, user, report.seed, report.days, end)
        pending["profile_metrics"] += rows.profile
        pending["engagement_metrics"] += rows.engagement
        pending["real_time_events"] += rows.feed
        if sum(map(len, pending.values())) >= _FLUSH_ROWS or i == len(ids) - 1:
            await _flush(conn, pending, report)
            pending = {t: [] for t in _TABLES}
        if progress:
            _bar(i + 1, len(ids), sum(report.rows.values()))


async def _flush(conn: Conn, pending: Rows, report: SeedReport) -> None:
    # In time order, each chunk is filled once instead of being revisited per user.
    for records in pending.values():
        records.sort(key=lambda r: r[0])
    result = await write_batch(conn, pending)
    for table, n in result.rows.items():
        report.rows[table] += n


async def _derive(conn: Conn, report: SeedReport, end: datetime) -> None:
    """What the rows imply: level rollups, a derived series point per day, goals and rules."""
    ids, days = report.users, report.days
    await _level_rollups(conn, ids, end - timedelta(days=days), end)
    # A point per day of the history, as the maintenance task would have left them; older
    # points are stored without being announced as current values.
    for back in range(days, -1, -1):
        await compute_aggregations(conn, end - timedelta(days=back))
    await add_goals_and_rules(conn, ids, report.seed, end)


async def _level_rollups(conn: Conn, ids: list[str], start: datetime, end: datetime) -> None:
    """Make the rollups equal to the rows just written: materialise the span in the continuous
    aggregates (full edition; past a policy's window they would otherwise never hold it) or
    recompute our rollup tables (Apache)."""
    if await edition(conn) == "timescale":
        await refresh(conn, [(start, end)])
    else:
        for i in range(0, len(ids), _LEVEL_USERS):
            lo = start
            while lo < end:
                hi = min(lo + _LEVEL_SPAN, end)
                await recompute(conn, {u: (lo, hi) for u in ids[i : i + _LEVEL_USERS]})
                lo = hi


def _bar(done: int, total: int, rows: int) -> None:
    width = 30
    filled = width * done // total
    sys.stderr.write(
        f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} users, {rows:,} rows"
    )
    sys.stderr.flush()


async def seed_status(conn: Conn) -> list[dict[str, Any]]:
    runs = await conn.fetch(
        "SELECT id, seed, days, cardinality(user_ids) AS users, rows, started_at, finished_at "
        "FROM seed_runs ORDER BY id"
    )
    return [
        {
            **dict(r),
            "rows": orjson.loads(r["rows"]),
            "started_at": r["started_at"].isoformat(),
            "finished_at": r["finished_at"].isoformat() if r["finished_at"] else None,
        }
        for r in runs
    ]


async def clear(conn: Conn) -> dict[str, int]:
    """Delete what every recorded seed run wrote, and only that."""
    users: list[str] = [
        u for r in await conn.fetch("SELECT user_ids FROM seed_runs") for u in r["user_ids"]
    ]
    if not users:
        return {}
    spans = await _seeded_span(conn, users)
    async with conn.transaction():
        removed = await _delete_seeded(conn, users)
        await conn.execute("DELETE FROM seed_runs")
    if await edition(conn) == "timescale" and spans:
        # Outside the transaction: a continuous aggregate refresh cannot run inside one. Only
        # the span the runs wrote: its buckets now hold none of their rows.
        await refresh(conn, [spans])
    return removed


async def _seeded_span(conn: Conn, users: list[str]) -> tuple[datetime, datetime] | None:
    """What the continuous aggregates must forget: the time span of the rows about to go."""
    span = await conn.fetchrow(
        "SELECT least(p.lo, e.lo) AS lo, greatest(p.hi, e.hi) AS hi FROM "
        "(SELECT min(time) AS lo, max(time) AS hi FROM profile_metrics "
        " WHERE user_id = ANY($1) AND event_id LIKE 'seed:%') p, "
        "(SELECT min(time) AS lo, max(time) AS hi FROM engagement_metrics "
        " WHERE user_id = ANY($1) AND event_id LIKE 'seed:%') e",
        users,
    )
    return (span["lo"], span["hi"]) if span is not None and span["lo"] is not None else None


async def _delete_seeded(conn: Conn, users: list[str]) -> dict[str, int]:
    """Delete the runs' rows (by their `seed:` ids) and their users' derived rows; rows
    deleted per table."""
    removed: dict[str, int] = {}
    for table in _TABLES:
        status = await conn.execute(
            f"DELETE FROM {table} WHERE user_id = ANY($1) AND event_id LIKE 'seed:%'",  # noqa: S608
            users,
        )
        removed[table] = int(status.rsplit(" ", 1)[1])
    for table in ("user_goals", "alert_configs", "metric_aggregations", "alert_history"):
        status = await conn.execute(f"DELETE FROM {table} WHERE user_id = ANY($1)", users)  # noqa: S608
        removed[table] = int(status.rsplit(" ", 1)[1])
    if await edition(conn) != "timescale":
        for rollup in _ROLLUP_TABLES:
            await conn.execute(f"DELETE FROM {rollup} WHERE user_id = ANY($1)", users)  # noqa: S608
    return removed
