"""Keeping the rollups equal to the raw data, in both editions (`level`).

Full edition: the rollups are continuous aggregates with refresh policies, but a policy only
materialises its own window (1 day for 5 min, 3 days hourly, 7 days daily), so a late event
older than that would never reach its buckets: they are read from the materialisation, below
the aggregate's watermark. `refresh` materialises the ended buckets a batch touched; buckets
still filling stay above the watermark, computed from the raw rows at query time.

Apache edition, where TimescaleDB has no continuous aggregates: each affected (user, bucket) is
recomputed from the raw rows and upserted, never incremented: recomputing is idempotent (a
redelivered batch changes nothing), handles late events (they only widen the recomputed range)
and yields exactly what the full edition's continuous aggregates define
(migrations/0004_rollups.up.sql uses the same expressions). Recomputes of one user are
serialised by a transaction-scoped advisory lock, so the later one always reads the other's
rows: an older snapshot can never overwrite a newer result.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Final

from schemas.tables import (
    ENGAGEMENT_COUNTS,
    ENGAGEMENT_ROLLUP,
    EVENTS,
    PROFILE_COUNTS,
    PROFILE_LATEST,
    PROFILE_ROLLUP,
)
from sinks.db import Conn

__all__ = [
    "ROLLUPS",
    "aggregates",
    "edition",
    "level",
    "recompute",
    "refresh",
    "watermark",
]

# relation -> (bucket width, source table)
ROLLUPS: Final[Mapping[str, tuple[timedelta, str]]] = {
    "profile_metrics_5min": (timedelta(minutes=5), "profile_metrics"),
    "profile_metrics_hourly": (timedelta(hours=1), "profile_metrics"),
    "profile_metrics_daily": (timedelta(days=1), "profile_metrics"),
    "engagement_hourly": (timedelta(hours=1), "engagement_metrics"),
}


# Source table -> (its columns a rollup sums, those it keeps the last reported value of), and
# the rollup's columns, in that order and then `events`, the row count.
_AGGREGATED: Final[Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "profile_metrics": (PROFILE_COUNTS, PROFILE_LATEST),
    "engagement_metrics": (ENGAGEMENT_COUNTS, ()),
}
_COLUMNS: Final[Mapping[str, tuple[str, ...]]] = {
    "profile_metrics": PROFILE_ROLLUP,
    "engagement_metrics": ENGAGEMENT_ROLLUP,
}


def aggregates(source: str, alias: str) -> str:
    """The expressions of the rollup columns of `source` (PROFILE_ROLLUP or ENGAGEMENT_ROLLUP
    order, each `AS` its column) over its rows aliased `alias`. The recompute here and the
    series' raw part (sinks/queries/series.py) use them, and migrations/0004_rollups.up.sql
    gives the continuous aggregates the same ones."""
    sums, latest = _AGGREGATED[source]
    a = alias
    return ",\n       ".join(
        [f"sum({a}.{c}) AS {c}" for c in sums]
        + [f"last({a}.{c}, {a}.time) FILTER (WHERE {a}.{c} IS NOT NULL) AS {c}" for c in latest]
        + [f"count(*) AS {EVENTS}"]
    )


# The buckets of every span ($1..$3: users, first, last event time) from the raw rows; $4 is
# the bucket width, $5 and $6 the constant bounds (see _STATEMENT).
_SELECT: Final = """
SELECT time_bucket($4::interval, {a}.time) AS bucket, {a}.user_id,
       {aggregates}
FROM {source} {a}
JOIN spans t ON {a}.user_id = t.user_id AND {a}.time >= t.lo AND {a}.time < t.hi
WHERE {a}.time >= $5 AND {a}.time < $6
GROUP BY 1, 2
"""

# One statement: compute the buckets, upsert them, and delete buckets of the span that no
# longer have raw rows (possible only after a manual delete), so a recompute always leaves
# the rollup equal to the raw data. All parts see one snapshot; the delete never touches a
# row the upsert writes, since it only removes buckets absent from `fresh`. $5 and $6 bound
# every span with constants: the joins alone exclude no chunk when the statement is planned,
# so it would open (and lock) every chunk of the table.
_STATEMENT: Final = """
WITH spans AS (
    SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[]) AS t(user_id, lo, hi)
),
fresh AS ({select}),
upserted AS (
    INSERT INTO {rollup} (bucket, user_id, {columns})
    SELECT bucket, user_id, {columns} FROM fresh
    ON CONFLICT (user_id, bucket) DO UPDATE SET {assignments}
    RETURNING 1
),
removed AS (
    DELETE FROM {rollup} r USING spans t
    WHERE r.user_id = t.user_id AND r.bucket >= t.lo AND r.bucket < t.hi
      AND r.bucket >= $5 AND r.bucket < $6
      AND NOT EXISTS (SELECT 1 FROM fresh f WHERE f.user_id = r.user_id AND f.bucket = r.bucket)
    RETURNING 1
)
SELECT (SELECT count(*) FROM upserted) AS upserted, (SELECT count(*) FROM removed) AS removed
"""


def _statement(rollup: str, source: str) -> str:
    a = source[0]  # p(rofile_metrics), e(ngagement_metrics)
    columns = _COLUMNS[source]
    return _STATEMENT.format(
        select=_SELECT.format(a=a, aggregates=aggregates(source, a), source=source),
        rollup=rollup,
        columns=", ".join(columns),
        assignments=", ".join(f"{c} = EXCLUDED.{c}" for c in columns),
    )


_STATEMENTS: Final = {rollup: _statement(rollup, source) for rollup, (_, source) in ROLLUPS.items()}


async def edition(conn: Conn) -> str:
    """'timescale' (full: continuous aggregates) or 'apache' (rollups are ours to maintain)."""
    value = await conn.fetchval("SELECT current_setting('timescaledb.license', true)")
    return str(value or "apache")


def _align(t: datetime, width: timedelta) -> datetime:
    """The start of t's bucket; time_bucket aligns to the Unix epoch for these widths."""
    epoch = datetime(1970, 1, 1, tzinfo=t.tzinfo)
    return epoch + ((t - epoch) // width) * width


async def recompute(conn: Conn, touched: Mapping[str, tuple[datetime, datetime]]) -> int:
    """Recompute every rollup bucket overlapping each user's [first, last] event time.

    Returns the number of rollup rows written. Runs in one transaction.
    """
    if not touched:
        return 0
    users = sorted(touched)
    written = 0
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext('ia-rollup:' || u)) FROM unnest($1::text[]) u",
            users,
        )
        for rollup, (width, _) in ROLLUPS.items():
            lows = [_align(touched[u][0], width) for u in users]
            highs = [_align(touched[u][1], width) + width for u in users]
            row = await conn.fetchrow(
                _STATEMENTS[rollup], users, lows, highs, width, min(lows), max(highs)
            )
            written += int(row["upserted"]) if row is not None else 0
    return written


# The watermark of a continuous aggregate: below it, buckets are read from the materialisation.
# Clamped into asyncpg's datetime range: an aggregate never refreshed answers the minimum
# timestamp TimescaleDB knows (4714 BC).
_WATERMARK: Final = """
SELECT least(greatest(coalesce(_timescaledb_functions.to_timestamp(
           _timescaledb_functions.cagg_watermark(mat_hypertable_id)), '-infinity'),
           '1970-01-01'::timestamptz), '9999-01-01'::timestamptz)
FROM _timescaledb_catalog.continuous_agg
WHERE user_view_schema = current_schema() AND user_view_name = $1
"""


async def watermark(conn: Conn, rollup: str) -> datetime | None:
    """Where a continuous aggregate's materialisation ends (None: not one, Apache edition)."""
    value: datetime | None = await conn.fetchval(_WATERMARK, rollup)
    return value


def _windows(
    spans: Iterable[tuple[datetime, datetime]], width: timedelta
) -> list[tuple[datetime, datetime]]:
    """The spans widened to whole buckets and merged where they meet: one refresh per window,
    instead of one per user or one over everything between the oldest and newest span."""
    merged: list[tuple[datetime, datetime]] = []
    for lo, hi in sorted((_align(lo, width), _align(hi, width) + width) for lo, hi in spans):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


async def refresh(
    conn: Conn, spans: Iterable[tuple[datetime, datetime]], now: datetime | None = None
) -> int:
    """Refresh every continuous aggregate over the spans (full edition), whole buckets only
    and none that has not ended by `now` (default: the server's clock): a bucket still filling
    stays computed from the raw rows at query time, and materialising it would freeze it below
    the watermark. Must run outside a transaction, as TimescaleDB requires; returns the
    refreshes run."""
    spans = list(spans)
    if not spans:
        return 0
    at = now or await conn.fetchval("SELECT now()")
    calls = 0
    for rollup, (width, _) in ROLLUPS.items():
        ended = _align(at, width)
        for lo, hi in _windows(spans, width):
            end = min(hi, ended)
            if lo >= end:
                continue
            await conn.execute(
                "CALL refresh_continuous_aggregate($1::regclass, $2::timestamptz, $3::timestamptz)",
                rollup,
                lo,
                end,
            )
            calls += 1
    return calls


async def level(
    conn: Conn, touched: Mapping[str, tuple[datetime, datetime]], *, full: bool | None = None
) -> int:
    """Bring the rollups level with each user's touched [first, last] event time: a refresh
    of the continuous aggregates (`full` edition; read from the server when not given) or a
    recompute of the rollup tables. Returns refreshes run or rollup rows written."""
    if full is None:
        full = await edition(conn) == "timescale"
    if full:
        return await refresh(conn, touched.values())
    return await recompute(conn, touched)
