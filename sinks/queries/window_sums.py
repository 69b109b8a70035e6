"""A metric over a window and over the window before it, for `change` alert rules
(pipeline/stages/alerting.py): the catalogue definitions of sinks/queries/past_values.py over
windows of any length instead of CURRENT_WINDOW_DAYS.

The counted metrics (`profileViews`, `likes`, ..., and `engagementRate`, a ratio of two counts)
are the window sums of the raw rows, both windows in one query per table. The figures a window
does not sum (`connections`, `followers`, `profileCompleteness`, `influenceScore`) are their
values at the window's end and one window earlier (`values_at`). Raw rows only: a change window
is at most 90 days (schemas/rules.py), inside the raw retention.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Final

from schemas.tables import ENGAGEMENT_COUNTS
from sinks.db import Conn
from sinks.queries.past_values import (
    PROFILE_WINDOW_SUMS,
    Figures,
    catalogue_values,
    values_at,
)

__all__ = ["SUMMED", "window_pair"]

# Rows in ($2, $4], split at $3: `recent` is the last window, the others the one before.
_PAIR: Final = """
SELECT time > $3 AS recent, {sums} FROM {table}
WHERE user_id = $1 AND time > $2 AND time <= $4
GROUP BY 1
"""
_PROFILE: Final = _PAIR.format(
    sums=", ".join(f"sum({c}) AS {c}" for c in PROFILE_WINDOW_SUMS), table="profile_metrics"
)
_ENGAGEMENT: Final = _PAIR.format(
    sums=", ".join(f"sum({c}) AS {c}" for c in ENGAGEMENT_COUNTS), table="engagement_metrics"
)
# The metrics catalogue_values derives from window sums alone.
SUMMED: Final = frozenset(
    {
        "profileViews", "searchAppearances", "messagesReceived", "postsPublished",
        "impressions", "likes", "comments", "shares", "engagementRate",
    }
)  # fmt: skip


async def window_pair(
    conn: Conn, user_id: str, metric: str, now: datetime, window: timedelta
) -> tuple[float | None, float | None]:
    """(the last window's value, the window before's) of one catalogue metric at `now`."""
    if metric not in SUMMED:
        current = (await values_at(conn, user_id, now)).get(metric)
        previous = (await values_at(conn, user_id, now - window)).get(metric)
        return current, previous
    sums: dict[bool, dict[str, object]] = {True: {}, False: {}}
    for sql in (_PROFILE, _ENGAGEMENT):
        for row in await conn.fetch(sql, user_id, now - 2 * window, now - window, now):
            sums[bool(row["recent"])].update({k: v for k, v in row.items() if k != "recent"})
    current = catalogue_values(sums[True], Figures(), 0.0)[metric]
    previous = catalogue_values(sums[False], Figures(), 0.0)[metric]
    return current, previous
