"""`GET /api/v1/metrics/summary`: a user's dashboard header in one answer.

- `metrics`: every catalogue metric now, as the WebSocket pushes it
  (sinks/queries/current_values.py's definitions, computed per user by sinks/queries/past_values.py,
  which tests hold equal to it), the value it had one window (7 days) earlier, over the rows up to
  then, and the change;
- `influence`: the score now and a window earlier, `trend` (up, down, flat) and the daily
  score of the last 30 days (the last score stored each day);
- `goals`: the active goals with their progress (gateway/api/goals.py).

Cached like the series; the sliding windows may thus be up to API_CACHE_TTL old for a user who
stored nothing since, never older than that user's last stored batch.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Final

from aiohttp import web

from gateway.api.common import API, align_down, align_up, cached, connection, reader
from gateway.api.goals import goal_json
from gateway.keys import CLOCK
from schemas.metrics import CATALOGUE, CURRENT_WINDOW_DAYS
from sinks.goals import list_goals
from sinks.queries.past_values import live_values, values_at
from sinks.queries.series import ROLLUP_MARGIN, profile_series

__all__ = ["routes", "trend"]

routes = web.RouteTableDef()

_WINDOW: Final = timedelta(days=CURRENT_WINDOW_DAYS)
_TREND_DAYS: Final = 30
_DAY: Final = timedelta(days=1)


def _change(now: float | None, before: float | None) -> dict[str, float | None]:
    change = None if now is None or before is None else now - before
    percent = None if change is None or not before else change / abs(before) * 100
    return {"value": now, "previous": before, "change": change, "changePercent": percent}


def trend(change: float | None) -> str:
    """Direction of a change, ignoring differences below a hundredth of a point."""
    if change is None or abs(change) < 0.01:
        return "flat"
    return "up" if change > 0 else "down"


@routes.get(f"{API}/metrics/summary")
async def summary(request: web.Request) -> web.Response:
    _, user = reader(request)

    async def compute() -> dict[str, Any]:
        now = request.app[CLOCK]()
        start = align_down(now - timedelta(days=_TREND_DAYS), _DAY)
        raw_from = align_down(now - ROLLUP_MARGIN, _DAY)
        async with connection(request) as conn:
            current = await live_values(conn, user, now)
            previous = await values_at(conn, user, now - _WINDOW)
            days = await profile_series(conn, user, "1d", start, align_up(now, _DAY), raw_from)
            goals = await list_goals(conn, user, "active")
        metrics = {name: _change(current.get(name), previous.get(name)) for name in CATALOGUE}
        influence = metrics["influenceScore"]
        return {
            "userId": user,
            "at": now,
            "window": f"{CURRENT_WINDOW_DAYS}d",
            "metrics": metrics,
            "influence": {
                "score": influence["value"],
                "previous": influence["previous"],
                "change": influence["change"],
                "trend": trend(influence["change"]),
                "daily": [
                    {"time": d["bucket"], "score": d["influence_score"]}
                    for d in days
                    if d["influence_score"] is not None
                ],
            },
            "goals": [goal_json(g, current.get(g["metric"]), now) for g in goals],
        }

    return await cached(request, user, "summary", compute)
