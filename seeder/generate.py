"""Deterministic development data: `seed(conn, users=5, days=30, seed=7)`.

Each user follows a persona (seeder/personas.py) with weekly and daily rhythm, growth, noise,
posts whose impressions decay over three days, one viral post, a daily profile snapshot,
goals and alert rules. The same seed, users, days and `until` give the same rows. Rows are
written by binary COPY straight into the event tables (the pipeline is not involved), then the
rollups are brought level with them and the derived series computed for every day, so every
dashboard and API query has data at once.

Everything the seeder writes is recorded in `seed_runs` and carries `seed:` event ids and
`demo-` user ids, so `clear()` removes it and nothing else.
"""

from __future__ import annotations

import math
import random
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

from schemas.influence import influence_score
from seeder.personas import PERSONAS, Persona
from sinks.aggregations import compute_aggregations
from sinks.db import Conn
from sinks.rollups import edition, recompute, refresh
from sinks.timescale import write_batch

__all__ = ["SeedReport", "clear", "generate_user", "seed", "seed_status", "user_ids"]

# Rows per COPY transaction: large enough for COPY's speed, small enough to show progress.
_FLUSH_ROWS: Final = 50_000
# Rollups are levelled for this many users and this much history per transaction: one
# transaction over all of it would open and lock every chunk of the span at once.
_LEVEL_USERS: Final = 100
_LEVEL_SPAN: Final = timedelta(days=7)
_TABLES: Final = ("profile_metrics", "engagement_metrics", "real_time_events")


@dataclass
class SeedReport:
    users: list[str]
    days: int
    seed: int
    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def user_ids(users: int, seed: int) -> list[str]:
    return [f"demo-{PERSONAS[i % len(PERSONAS)].key}-{seed}-{i}" for i in range(users)]


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 30:  # normal approximation: exact sampling would cost O(lam) per draw
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def _rhythm(p: Persona) -> list[float]:
    """Share of a day's activity per UTC hour: a bump around the persona's peak hour."""
    raw = [0.15 + math.exp(-(((h - p.peak_hour + 12) % 24 - 12) ** 2) / 18) for h in range(24)]
    total = sum(raw)
    return [r / total for r in raw]


class _UserRows:
    def __init__(self, user: str, seed: int) -> None:
        self.user = user
        self.seed = seed
        self.n = 0
        self.profile: list[tuple[Any, ...]] = []
        self.engagement: list[tuple[Any, ...]] = []
        self.feed: list[tuple[Any, ...]] = []

    def _id(self) -> str:
        self.n += 1
        return f"seed:{self.seed}:{self.user}:{self.n}"

    def event(self, t: datetime, kind: str, value: float, props: dict[str, Any]) -> str:
        event_id = self._id()
        self.feed.append((t, self.user, event_id, kind, value, orjson.dumps(props).decode(), t))
        return event_id

    def profile_row(
        self, t: datetime, kind: str, value: int, score: float, **absolute: Any
    ) -> None:
        columns = {
            "profile_view": 4,
            "search_appearance": 5,
            "connection_added": 6,
            "connection_removed": 7,
            "message_received": 8,
        }
        counts = [0, 0, 0, 0, 0]
        if kind in columns:
            counts[columns[kind] - 4] = value
        event_id = self.event(t, kind, value, {k: v for k, v in absolute.items() if v is not None})
        self.profile.append(
            (
                t,
                self.user,
                event_id,
                kind,
                *counts,
                absolute.get("profile_views"),
                absolute.get("connections"),
                absolute.get("followers"),
                absolute.get("profile_completeness"),
                score,
            )
        )

    def engagement_row(self, t: datetime, kind: str, value: int, post_id: str) -> None:
        columns = {
            "post_published": 0,
            "post_impression": 1,
            "post_like": 2,
            "post_comment": 3,
            "post_share": 4,
        }
        counts = [0, 0, 0, 0, 0]
        counts[columns[kind]] = value
        event_id = self.event(t, kind, value, {"post_id": post_id})
        self.engagement.append((t, self.user, event_id, kind, post_id, *counts))


def _profile_hour(
    rows: _UserRows,
    rng: random.Random,
    p: Persona,
    t: datetime,
    visibility: float,
    share: float,
    score: float,
) -> tuple[int, int]:
    """One hour's profile events; returns (views, net connections)."""
    views = _poisson(rng, p.profile_views * visibility)
    if views:
        rows.profile_row(t, "profile_view", views, score)
    found = _poisson(rng, p.search_appearances * visibility)
    if found:
        rows.profile_row(t, "search_appearance", found, score)
    net = _poisson(rng, p.connections_per_day * share)
    if net:
        rows.profile_row(t, "connection_added", net, score)
    if rng.random() < 0.01:
        rows.profile_row(t, "connection_removed", 1, score)
        net -= 1
    if (msgs := _poisson(rng, 1.5 * share)) > 0:
        rows.profile_row(t, "message_received", msgs, score)
    return views, net


def _engagement_hour(
    rows: _UserRows,
    rng: random.Random,
    posts: list[tuple[int, str, float, float]],
    now_hour: int,
    t: datetime,
) -> None:
    for posted_hour, post_id, reach, rate in posts:
        age = now_hour - posted_hour
        if not 0 <= age < 72:
            continue
        # Most impressions arrive in the first hours, then decay (shares sum to about 1).
        shown = _poisson(rng, reach * math.exp(-age / 10) / 7.6)
        if not shown:
            continue
        rows.engagement_row(t, "post_impression", shown, post_id)
        for kind, part in (("post_like", 0.75), ("post_comment", 0.15), ("post_share", 0.10)):
            if (n := _poisson(rng, shown * rate * part)) > 0:
                rows.engagement_row(t, kind, n, post_id)


def generate_user(index: int, user: str, seed: int, days: int, until: datetime) -> _UserRows:
    """Every row of one user, deterministic for (seed, index, days, until)."""
    p = PERSONAS[index % len(PERSONAS)]
    # Reproducibility is the point here, not unpredictability.
    rng = random.Random(f"{seed}:{index}")  # noqa: S311
    rows = _UserRows(user, seed)
    rhythm = _rhythm(p)
    start = until - timedelta(days=days)
    viral_day = int(days * 0.6) if p.key == "founder" else -1
    connections, followers, completeness, total_views = (
        p.connections,
        p.followers,
        p.completeness,
        0,
    )
    # (hour index, post id, impressions still to come over the next 72 h, engagement rate)
    posts: list[tuple[int, str, float, float]] = []
    views_7d: list[int] = []
    for day in range(days):
        day_start = start + timedelta(days=day)
        weekend = day_start.weekday() >= 5
        scale = (1 + p.growth_per_day) ** day * (p.weekend_factor if weekend else 1.0)
        score = influence_score(
            connections=connections,
            profile_views_7d=sum(views_7d[-7:]),
            engagement_rate=p.engagement_rate,
            profile_completeness=completeness,
        )
        rows.profile_row(
            day_start + timedelta(minutes=5),
            "profile_snapshot",
            1,
            score,
            profile_views=total_views,
            connections=connections,
            followers=followers,
            profile_completeness=round(completeness, 1),
        )
        if day == days // 2:
            completeness = min(100.0, completeness + 8)
            rows.profile_row(
                day_start + timedelta(hours=10),
                "profile_update",
                1,
                score,
                profile_completeness=round(completeness, 1),
            )
        day_views = 0
        viral = day == viral_day
        if viral or rng.random() < p.posts_per_week / 7 * (p.weekend_factor if weekend else 1.0):
            post_id = f"post-{user}-{day}"
            reach = p.impressions_per_post * (12 if viral else rng.uniform(0.6, 1.5))
            rate = p.engagement_rate * (1.8 if viral else rng.uniform(0.7, 1.3))
            posts.append((day * 24 + p.peak_hour, post_id, reach, rate))
            rows.engagement_row(
                day_start + timedelta(hours=p.peak_hour), "post_published", 1, post_id
            )
        for hour in range(24):
            t = day_start + timedelta(hours=hour, minutes=rng.randrange(60))
            views, added = _profile_hour(rows, rng, p, t, scale * rhythm[hour], rhythm[hour], score)
            day_views += views
            connections += added
            _engagement_hour(rows, rng, posts, day * 24 + hour, t)
        posts = [x for x in posts if day * 24 + 24 - x[0] < 72]
        views_7d.append(day_views)
        total_views += day_views
        followers += _poisson(rng, followers * 0.002 + 1)
        completeness = min(100.0, completeness + 0.05)
    return rows


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
    from seeder.extras import add_goals_and_rules

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
    pending: dict[str, list[tuple[Any, ...]]] = {t: [] for t in _TABLES}
    for i, user in enumerate(ids):
        rows = generate_user(i, user, seed, days, end)
        pending["profile_metrics"] += rows.profile
        pending["engagement_metrics"] += rows.engagement
        pending["real_time_events"] += rows.feed
        if sum(map(len, pending.values())) >= _FLUSH_ROWS or i == len(ids) - 1:
            # In time order, each chunk is filled once instead of being revisited per user.
            for records in pending.values():
                records.sort(key=lambda r: r[0])
            result = await write_batch(conn, pending)
            for table, n in result.rows.items():
                report.rows[table] += n
            pending = {t: [] for t in _TABLES}
        if progress:
            _bar(i + 1, len(ids), sum(report.rows.values()))
    start = end - timedelta(days=days)
    await _level_rollups(conn, ids, start, end)
    # A point per day of the history, as the maintenance task would have left them; older
    # points are stored without being announced as current values.
    for back in range(days, -1, -1):
        await compute_aggregations(conn, end - timedelta(days=back))
    await add_goals_and_rules(conn, ids, seed, end)
    report.seconds = (datetime.now(UTC) - started).total_seconds()
    await conn.execute(
        "UPDATE seed_runs SET rows = $2, finished_at = now() WHERE id = $1",
        run_id,
        orjson.dumps(report.rows).decode(),
    )
    if progress:
        print(file=sys.stderr)
    return report


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
    removed: dict[str, int] = {}
    users: list[str] = [
        u for r in await conn.fetch("SELECT user_ids FROM seed_runs") for u in r["user_ids"]
    ]
    if not users:
        return removed
    # What the continuous aggregates must forget: the time span of the rows about to go.
    span = await conn.fetchrow(
        "SELECT least(p.lo, e.lo) AS lo, greatest(p.hi, e.hi) AS hi FROM "
        "(SELECT min(time) AS lo, max(time) AS hi FROM profile_metrics "
        " WHERE user_id = ANY($1) AND event_id LIKE 'seed:%') p, "
        "(SELECT min(time) AS lo, max(time) AS hi FROM engagement_metrics "
        " WHERE user_id = ANY($1) AND event_id LIKE 'seed:%') e",
        users,
    )
    spans = (span["lo"], span["hi"]) if span is not None and span["lo"] is not None else None
    async with conn.transaction():
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
            for rollup in (
                "profile_metrics_5min",
                "profile_metrics_hourly",
                "profile_metrics_daily",
                "engagement_hourly",
            ):
                await conn.execute(f"DELETE FROM {rollup} WHERE user_id = ANY($1)", users)  # noqa: S608
        await conn.execute("DELETE FROM seed_runs")
    if await edition(conn) == "timescale" and spans:
        # Outside the transaction: a continuous aggregate refresh cannot run inside one. Only
        # the span the runs wrote: its buckets now hold none of their rows.
        await refresh(conn, [spans])
    return removed
