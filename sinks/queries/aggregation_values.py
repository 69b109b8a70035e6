"""Current values of the derived series (schemas/aggregations.py), read from
`metric_aggregations`, for the WebSocket's snapshots.

The maintenance task publishes each change on `ia:metrics` as it stores it; this is what a
dashboard gets on subscribe and on resync, so the two must agree: the current value is a
user's newest point of the series within CURRENT_LOOKBACK of `at`, null when there is none.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Final

from schemas.aggregations import AGGREGATIONS, CURRENT_LOOKBACK
from sinks.db import Conn

__all__ = ["aggregation_values"]

# One index probe per (user, series) on (user_id, metric_name, period, time DESC), limited to
# the chunks of the lookback.
_QUERY: Final = """
SELECT u.user_id, s.metric_name, p.value
FROM unnest($1::text[]) AS u(user_id)
CROSS JOIN unnest($2::text[], $3::text[]) AS s(metric_name, period)
JOIN LATERAL (
    SELECT m.value FROM metric_aggregations m
    WHERE m.user_id = u.user_id AND m.metric_name = s.metric_name AND m.period = s.period
      AND m.time > $4::timestamptz - $5::interval AND m.time <= $4::timestamptz
    ORDER BY m.time DESC
    LIMIT 1
) AS p ON true
"""
_NAMES: Final = [a.name for a in AGGREGATIONS.values()]
_PERIODS: Final = [a.period for a in AGGREGATIONS.values()]


async def aggregation_values(
    conn: Conn, user_ids: Sequence[str], at: datetime
) -> dict[str, dict[str, float | None]]:
    """Per user in `user_ids`, every derived series by its WebSocket name (null: no point)."""
    out: dict[str, dict[str, float | None]] = {
        u: {a.metric: None for a in AGGREGATIONS.values()} for u in user_ids
    }
    if not user_ids:
        return out
    rows = await conn.fetch(_QUERY, list(user_ids), _NAMES, _PERIODS, at, CURRENT_LOOKBACK)
    for r in rows:
        out[r["user_id"]][AGGREGATIONS[r["metric_name"]].metric] = r["value"]
    return out
