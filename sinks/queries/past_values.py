"""One user's catalogue metrics, now (`live_values`) or as they stood at a past moment
(`values_at`), for the API's summary and goals.

The definitions are those of sinks/queries/current_values.py, which the WebSocket publishes: windows
of CURRENT_WINDOW_DAYS ending at the moment, the latest snapshot's connections plus the net
changes after it, the latest reported followers and completeness. `live_values` counts, as
current_values does, every row up to the newest (a producer's clock may run a little ahead);
`values_at` only rows up to `at`. Tests hold both equal to those definitions over raw rows.

Why not current_values itself: its lookups have no lower time bound and join the user list,
so PostgreSQL plans every chunk of profile_metrics several times over: 0.48 s per call after
30 days of history, 2.5 s after 90 (about 1,400 chunks) on our bench machine. Here every query
is for one user (so the hash dimension is excluded at plan time) with constant time bounds
(so are old chunks), 5-10 ms in all on the same machine:

- window sums take whole hours from the hourly rollups, the partial hour at the window's start
  and everything newer than ROLLUP_MARGIN from raw rows (as the series do);
- the latest figures are looked up in the raw rows of the last two days, then of the last
  RECENT_DAYS, and only then in the daily rollup; the net connection changes after an old
  snapshot take whole days from the same rollup.

So the answer equals current_values' except for a late event (older than ROLLUP_MARGIN) in
the moment before the rollup group, or the refresh policy, has folded it into the rollups.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from schemas.influence import influence_score
from schemas.metrics import CURRENT_WINDOW_DAYS
from schemas.tables import ENGAGEMENT_COUNTS
from sinks.db import Conn
from sinks.queries.series import ROLLUP_MARGIN

__all__ = [
    "PROFILE_WINDOW_SUMS",
    "RECENT_DAYS",
    "WINDOW_SUMS",
    "Figures",
    "catalogue_values",
    "live_values",
    "net_before",
    "older_figures",
    "recent_start",
    "values_at",
]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_HOUR: Final = timedelta(hours=1)
_DAY: Final = timedelta(days=1)
_WINDOW: Final = timedelta(days=CURRENT_WINDOW_DAYS)
# Raw rows searched for the latest figures: first this far back (profiles report a snapshot
# about daily), then RECENT_DAYS, then the daily rollup takes over.
_FIRST_LOOK: Final = timedelta(days=2)
RECENT_DAYS: Final = 8
# Later than any stored row: the "no upper bound" of live values.
_END_OF_TIME: Final = datetime(9999, 1, 1, tzinfo=UTC)
_BEFORE_ANY_ROW: Final = datetime(1970, 1, 1, tzinfo=UTC)

# The window sums the catalogue is made of (`catalogue_values`): the profile counts that are
# metrics of their own (connection changes count into `connections` instead), and every
# engagement count. sinks/queries/current_values.py selects the same.
PROFILE_WINDOW_SUMS: Final = ("profile_views", "search_appearances", "messages_received")
WINDOW_SUMS: Final = (*PROFILE_WINDOW_SUMS, *ENGAGEMENT_COUNTS)


def _coalesced_sums(columns: tuple[str, ...]) -> str:
    return ", ".join(f"coalesce(sum({c}), 0) AS {c}" for c in columns)


# Window sums: raw rows in ($2, $3) and [$4, $5], whole rollup hours in [$3, $4).
_SUMS: Final = """
WITH p AS (
    SELECT {p} FROM profile_metrics_hourly
    WHERE user_id = $1 AND bucket >= $3 AND bucket < $4
    UNION ALL
    SELECT {p} FROM profile_metrics
    WHERE user_id = $1 AND time > $2 AND time < $3
    UNION ALL
    SELECT {p} FROM profile_metrics
    WHERE user_id = $1 AND time >= $4 AND time <= $5
), e AS (
    SELECT {e} FROM engagement_hourly
    WHERE user_id = $1 AND bucket >= $3 AND bucket < $4
    UNION ALL
    SELECT {e} FROM engagement_metrics
    WHERE user_id = $1 AND time > $2 AND time < $3
    UNION ALL
    SELECT {e} FROM engagement_metrics
    WHERE user_id = $1 AND time >= $4 AND time <= $5
)
SELECT pp.*, ee.*
FROM (SELECT {p_sums} FROM p) pp,
     (SELECT {e_sums} FROM e) ee
""".format(  # noqa: S608 - column names from schemas/tables.py and above, no input
    p=", ".join(PROFILE_WINDOW_SUMS),
    e=", ".join(ENGAGEMENT_COUNTS),
    p_sums=_coalesced_sums(PROFILE_WINDOW_SUMS),
    e_sums=_coalesced_sums(ENGAGEMENT_COUNTS),
)

# The newest of each figure among the rows in [$2, $3].
_FIGURES: Final = """
SELECT last(connections, time) FILTER (WHERE connections IS NOT NULL) AS connections,
       max(time) FILTER (WHERE connections IS NOT NULL) AS snapshot_time,
       last(followers, time) FILTER (WHERE followers IS NOT NULL) AS followers,
       last(profile_completeness, time)
           FILTER (WHERE profile_completeness IS NOT NULL) AS completeness
FROM profile_metrics WHERE user_id = $1 AND time >= $2 AND time <= $3
"""

# The newest day before $2 reporting each figure, from the daily rollup.
_ROLLUP_FIGURES: Final = """
SELECT (SELECT bucket FROM profile_metrics_daily WHERE user_id = $1 AND bucket < $2
          AND connections IS NOT NULL ORDER BY bucket DESC LIMIT 1) AS snapshot_day,
       (SELECT followers FROM profile_metrics_daily WHERE user_id = $1 AND bucket < $2
          AND followers IS NOT NULL ORDER BY bucket DESC LIMIT 1) AS followers,
       (SELECT profile_completeness FROM profile_metrics_daily WHERE user_id = $1
          AND bucket < $2 AND profile_completeness IS NOT NULL
          ORDER BY bucket DESC LIMIT 1) AS completeness
"""

_SNAPSHOT_IN_DAY: Final = """
SELECT connections, time FROM profile_metrics
WHERE user_id = $1 AND connections IS NOT NULL AND time >= $2 AND time < $3
ORDER BY time DESC LIMIT 1
"""

# Net connection changes before $4: raw rows in ($2, $3), whole days [$3, $4) from the daily
# rollup.
_NET_BEFORE: Final = """
SELECT coalesce((SELECT sum(connections_added - connections_removed) FROM profile_metrics
                 WHERE user_id = $1 AND time > $2 AND time < $3), 0)
     + coalesce((SELECT sum(connections_added - connections_removed) FROM profile_metrics_daily
                 WHERE user_id = $1 AND bucket >= $3 AND bucket < $4), 0)
"""

# Net connection changes: as _NET_BEFORE, then raw rows in [$4, $5].
_NET: Final = (
    _NET_BEFORE.rstrip()  # noqa: S608 - two constants joined, no input
    + """
     + coalesce((SELECT sum(connections_added - connections_removed) FROM profile_metrics
                 WHERE user_id = $1 AND time >= $4 AND time <= $5), 0)
"""
)

_NET_RAW: Final = """
SELECT coalesce(sum(connections_added - connections_removed), 0) FROM profile_metrics
WHERE user_id = $1 AND time > $2 AND time <= $3
"""


def _floor(t: datetime, width: timedelta) -> datetime:
    return _EPOCH + ((t - _EPOCH) // width) * width


def _day(t: datetime) -> datetime:
    return _floor(t, _DAY)


@dataclass
class Figures:
    connections: int | None = None
    snapshot_time: datetime | None = None
    followers: int | None = None
    completeness: float | None = None

    def missing(self) -> bool:
        return None in (self.connections, self.followers, self.completeness)

    def fill(self, connections: int | None, at: datetime | None, followers: int | None,
             completeness: float | None) -> None:  # fmt: skip
        if self.connections is None and connections is not None:
            self.connections, self.snapshot_time = connections, at
        if self.followers is None:
            self.followers = followers
        if self.completeness is None:
            self.completeness = completeness


def recent_start(at: datetime) -> datetime:
    """Where raw rows stop being searched for the latest figures and the daily rollup takes
    over: midnight RECENT_DAYS before `at`."""
    return _day(at - timedelta(days=RECENT_DAYS))


async def older_figures(conn: Conn, user_id: str, recent: datetime, found: Figures) -> None:
    """Fill what `found` misses with the newest figures reported before `recent` (a day
    boundary), found through the daily rollup."""
    older = await conn.fetchrow(_ROLLUP_FIGURES, user_id, recent)
    assert older is not None  # noqa: S101 - scalar subqueries: one row
    found.fill(None, None, older["followers"], older["completeness"])
    day = older["snapshot_day"]
    if found.connections is None and day is not None:
        snapshot = await conn.fetchrow(_SNAPSHOT_IN_DAY, user_id, day, day + _DAY)
        if snapshot is not None:  # None only if raw rows were deleted under the rollup
            found.fill(snapshot["connections"], snapshot["time"], None, None)


async def net_before(conn: Conn, user_id: str, after: datetime | None, recent: datetime) -> int:
    """Net connection changes after `after` (every one when None) and before `recent` (a day
    boundary not before `after`): raw rows to the end of `after`'s day, then whole days from
    the daily rollup."""
    if after is None:
        net = await conn.fetchval(_NET_BEFORE, user_id, _BEFORE_ANY_ROW, _BEFORE_ANY_ROW, recent)
    else:
        net = await conn.fetchval(_NET_BEFORE, user_id, after, _day(after) + _DAY, recent)
    return int(net)


async def _figures(conn: Conn, user_id: str, at: datetime, upper: datetime) -> Figures:
    """The newest connections snapshot (count, time), followers and completeness up to
    `upper`: raw rows of the last two days, then of RECENT_DAYS, then the daily rollup."""
    found = Figures()
    recent = recent_start(at)
    for lower in (at - _FIRST_LOOK, recent):
        r = await conn.fetchrow(_FIGURES, user_id, lower, upper)
        assert r is not None  # noqa: S101 - an aggregate without GROUP BY returns one row
        found.fill(r["connections"], r["snapshot_time"], r["followers"], r["completeness"])
        if not found.missing():
            return found
    await older_figures(conn, user_id, recent, found)
    return found


async def _connections(
    conn: Conn, user_id: str, found: Figures, at: datetime, upper: datetime
) -> float:
    """The snapshot's count plus the net changes after it (all time without a snapshot)."""
    recent = recent_start(at)
    after = found.snapshot_time
    if after is not None and after >= recent:  # a recent snapshot: every later row is raw
        net = await conn.fetchval(_NET_RAW, user_id, after, upper)
    elif after is not None:  # raw to the end of its day, whole days from the rollup, raw
        net = await conn.fetchval(_NET, user_id, after, _day(after) + _DAY, recent, upper)
    else:
        net = await conn.fetchval(_NET, user_id, _BEFORE_ANY_ROW, _BEFORE_ANY_ROW, recent, upper)
    return float((found.connections or 0) + net)


def catalogue_values(
    sums: Mapping[str, Any], found: Figures, connections: float
) -> dict[str, float | None]:
    """Every catalogue metric from the window sums (a missing or null sum is 0), the latest
    figures and the connection count: the one place the definitions become values."""
    t = {c: float(sums.get(c) or 0) for c in WINDOW_SUMS}
    impressions = t["impressions"]
    interactions = t["likes"] + t["comments"] + t["shares"]
    rate = interactions / impressions if impressions > 0 else None
    completeness = float(found.completeness) if found.completeness is not None else None
    values: dict[str, float | None] = {
        "profileViews": t["profile_views"],
        "searchAppearances": t["search_appearances"],
        "messagesReceived": t["messages_received"],
        "postsPublished": t["posts_published"],
        "impressions": impressions,
        "likes": t["likes"],
        "comments": t["comments"],
        "shares": t["shares"],
        "engagementRate": rate,
        "connections": connections,
        "followers": float(found.followers) if found.followers is not None else None,
        "profileCompleteness": completeness,
    }
    values["influenceScore"] = influence_score(
        connections=connections,
        profile_views_7d=values["profileViews"] or 0.0,
        engagement_rate=rate or 0.0,
        profile_completeness=completeness or 0.0,
    )
    return values


async def _compute(
    conn: Conn, user_id: str, at: datetime, upper: datetime, settled: datetime
) -> dict[str, float | None]:
    """Values at `at` from rows up to `upper`; rollup hours only before `settled`."""
    lower = at - _WINDOW
    first_hour = _floor(lower, _HOUR) + _HOUR  # the hour holding `lower` is partial: raw
    last_hour = max(first_hour, _floor(settled, _HOUR))
    sums = await conn.fetchrow(_SUMS, user_id, lower, first_hour, last_hour, upper)
    assert sums is not None  # noqa: S101 - aggregates without GROUP BY return one row
    found = await _figures(conn, user_id, at, upper)
    return catalogue_values(dict(sums), found, await _connections(conn, user_id, found, at, upper))


async def values_at(conn: Conn, user_id: str, at: datetime) -> dict[str, float | None]:
    """Every catalogue metric of one user as it stood at `at`, from the rows up to `at`."""
    return await _compute(conn, user_id, at, at, at)


async def live_values(conn: Conn, user_id: str, now: datetime) -> dict[str, float | None]:
    """Every catalogue metric of one user now: what current_values(conn, [user], now) gives."""
    return await _compute(conn, user_id, now, _END_OF_TIME, now - ROLLUP_MARGIN)
