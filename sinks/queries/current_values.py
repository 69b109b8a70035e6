"""Current metric values per user, as `schemas/metrics.py` defines them.

Used by the worker after each commit (for the WebSocket and alerting) and by the WebSocket's
snapshots on subscribe. The definitions, which tests hold this module to over raw rows:
window sums over the rows newer than `at` minus CURRENT_WINDOW_DAYS (every row up to the
newest: a producer's clock may run a little ahead); connections as the latest snapshot's
count plus the net changes after it (all changes for a user without a snapshot); followers
and completeness as last reported.

Why it is built this way: the worker calls it once per batch for every user in the batch,
so its cost must not grow with history. Lookups of "the latest snapshot" without a lower
time bound make PostgreSQL plan every chunk of profile_metrics (0.48 s per call after 30 days,
2.5 s after 90 on our bench machine). Here every read has constant time bounds, so old chunks
are excluded at plan time:

- one statement reads each user's raw rows of the last RECENT_DAYS (whole days) and takes
  the window sums, the latest figures and the net changes after the latest snapshot;
- users who reported no snapshot, followers or completeness in that span get the older figures,
  and the net changes before the span, from the daily rollup, in one more statement for all
  of them; only a user whose latest snapshot is older than the span (rare: profiles report
  about daily) costs queries of its own (sinks/queries/past_values.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Final

from schemas.metrics import CURRENT_WINDOW_DAYS
from schemas.tables import ENGAGEMENT_COUNTS
from sinks.db import Conn
from sinks.queries.past_values import (
    PROFILE_WINDOW_SUMS,
    RECENT_DAYS,
    Figures,
    catalogue_values,
    net_before,
    older_figures,
    recent_start,
)

__all__ = ["CurrentValues", "current_values"]

CurrentValues = dict[str, dict[str, float | None]]

_WINDOW: Final = timedelta(days=CURRENT_WINDOW_DAYS)
assert RECENT_DAYS > CURRENT_WINDOW_DAYS  # noqa: S101 - the recent rows hold the whole window

# $1 users, $2 start of the recent span, $3 start of the window. Each user's recent rows are
# read once (the unique index (user_id, time DESC, event_id) serves every chunk's scan).
_PROFILE: Final = """
WITH r AS MATERIALIZED (
    SELECT user_id, time, {sums}, connections,
           connections_added - connections_removed AS net, followers, profile_completeness
    FROM profile_metrics WHERE user_id = ANY($1::text[]) AND time >= $2
), snap AS (
    SELECT user_id, max(time) FILTER (WHERE connections IS NOT NULL) AS snapshot_time
    FROM r GROUP BY user_id
)
SELECT r.user_id, s.snapshot_time,
       {window_sums},
       last(r.connections, r.time) FILTER (WHERE r.connections IS NOT NULL) AS connections,
       coalesce(sum(r.net) FILTER (WHERE s.snapshot_time IS NULL OR r.time > s.snapshot_time),
                0) AS net,
       last(r.followers, r.time) FILTER (WHERE r.followers IS NOT NULL) AS followers,
       last(r.profile_completeness, r.time)
           FILTER (WHERE r.profile_completeness IS NOT NULL) AS profile_completeness
FROM r JOIN snap s USING (user_id)
GROUP BY r.user_id, s.snapshot_time
""".format(  # noqa: S608 - column names from schemas/tables.py, no input
    sums=", ".join(PROFILE_WINDOW_SUMS),
    window_sums=",\n       ".join(
        f"coalesce(sum(r.{c}) FILTER (WHERE r.time > $3), 0) AS {c}" for c in PROFILE_WINDOW_SUMS
    ),
)

# $1 users, $2 start of the recent span: the newest day before it reporting each figure, and
# the net connection changes of all those days.
_OLDER: Final = """
SELECT u.user_id,
       (SELECT d.bucket FROM profile_metrics_daily d WHERE d.user_id = u.user_id
          AND d.bucket < $2 AND d.connections IS NOT NULL
          ORDER BY d.bucket DESC LIMIT 1) AS snapshot_day,
       (SELECT d.followers FROM profile_metrics_daily d WHERE d.user_id = u.user_id
          AND d.bucket < $2 AND d.followers IS NOT NULL
          ORDER BY d.bucket DESC LIMIT 1) AS followers,
       (SELECT d.profile_completeness FROM profile_metrics_daily d WHERE d.user_id = u.user_id
          AND d.bucket < $2 AND d.profile_completeness IS NOT NULL
          ORDER BY d.bucket DESC LIMIT 1) AS completeness,
       (SELECT sum(d.connections_added - d.connections_removed) FROM profile_metrics_daily d
         WHERE d.user_id = u.user_id AND d.bucket < $2) AS net
FROM unnest($1::text[]) AS u(user_id)
"""

# $1 users, $2 start of the window.
_ENGAGEMENT: Final = """
SELECT user_id, {sums}
FROM engagement_metrics WHERE user_id = ANY($1::text[]) AND time > $2
GROUP BY user_id
""".format(sums=", ".join(f"sum({c}) AS {c}" for c in ENGAGEMENT_COUNTS))


async def current_values(conn: Conn, user_ids: Sequence[str], at: datetime) -> CurrentValues:
    """Every catalogue metric for each user in `user_ids`, with windows ending at `at`."""
    if not user_ids:
        return {}
    users = sorted(set(user_ids))
    recent = recent_start(at)
    window = at - _WINDOW
    profiles = {r["user_id"]: r for r in await conn.fetch(_PROFILE, users, recent, window)}
    engagements = {r["user_id"]: r for r in await conn.fetch(_ENGAGEMENT, users, window)}
    found = {user: Figures() for user in users}
    for user, row in profiles.items():
        found[user].fill(row["connections"], row["snapshot_time"], row["followers"],
                         row["profile_completeness"])  # fmt: skip
    older = [user for user in users if found[user].missing()]
    net_before_span = await _fill_from_rollup(conn, older, recent, found) if older else {}
    out: CurrentValues = {}
    for user in users:
        f, p = found[user], profiles.get(user)
        # The recent rows' net changes count after the latest snapshot (all of them when that
        # snapshot is older than the span, whose changes before the span come from the rollup).
        connections = float(f.connections or 0) + (float(p["net"]) if p is not None else 0.0)
        if f.snapshot_time is None:
            connections += net_before_span.get(user, 0)
        elif f.snapshot_time < recent:
            connections += await net_before(conn, user, f.snapshot_time, recent)
        e = engagements.get(user)
        sums = {**(dict(p) if p is not None else {}), **(dict(e) if e is not None else {})}
        out[user] = catalogue_values(sums, f, connections)
    return out


async def _fill_from_rollup(
    conn: Conn, users: list[str], recent: datetime, found: dict[str, Figures]
) -> dict[str, int]:
    """Fill the users' missing figures from before `recent`, in one statement over the daily
    rollup for all of them; returns each user's net connection changes before `recent` (what
    counts for a user who never reported a snapshot). A user whose latest snapshot is older
    than the span (rare: profiles report about daily) gets it looked up alone."""
    net: dict[str, int] = {}
    for r in await conn.fetch(_OLDER, users, recent):
        user = r["user_id"]
        f = found[user]
        f.fill(None, None, r["followers"], r["completeness"])
        net[user] = int(r["net"] or 0)
        if f.connections is None and r["snapshot_day"] is not None:
            await older_figures(conn, user, recent, f)
    return net
