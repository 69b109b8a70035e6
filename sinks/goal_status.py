"""Settle goals: an active goal whose metric has reached its target becomes `achieved` (with
`achieved_at`), one whose deadline passed without that becomes `missed`.

Run by the maintenance task (pipeline/maintenance.py) on its schedule, so `status` in the API
and `GET /api/v1/goals?status=achieved` reflect what happened without anyone PATCHing it.
Current values are those the WebSocket pushes (sinks/queries/current_values.py). A goal is settled
once: the update only touches goals still `active`, so a user's PATCH in the meantime wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from sinks.db import Conn
from sinks.queries.current_values import current_values

__all__ = ["GoalSettlement", "reached", "settle_goals"]

# Users per current_values call: one statement reads each user's recent rows.
_USERS_PER_CALL: Final = 500

_ACTIVE: Final = """
SELECT id, user_id, metric, target_value, baseline_value, deadline FROM user_goals
WHERE status = 'active' AND starts_at <= $1
"""

_SETTLE: Final = """
UPDATE user_goals g
SET status = s.status, updated_at = $3,
    achieved_at = CASE WHEN s.status = 'achieved' THEN $3 ELSE g.achieved_at END
FROM unnest($1::uuid[], $2::text[]) AS s(id, status)
WHERE g.id = s.id AND g.status = 'active'
RETURNING g.user_id, s.status
"""


def reached(target: float, baseline: float | None, current: float | None) -> bool:
    """Whether `current` has passed `target` in the direction from the baseline to it (a goal
    may aim down, e.g. fewer connections removed)."""
    if current is None:
        return False
    return current >= target if target >= (baseline or 0.0) else current <= target


@dataclass
class GoalSettlement:
    achieved: int = 0
    missed: int = 0
    users: set[str] = field(default_factory=set)


async def settle_goals(conn: Conn, now: datetime) -> GoalSettlement:
    """Mark the active goals reached by now `achieved`, the expired ones `missed`."""
    goals = await conn.fetch(_ACTIVE, now)
    users = sorted({g["user_id"] for g in goals})
    values: dict[str, dict[str, float | None]] = {}
    for i in range(0, len(users), _USERS_PER_CALL):
        values.update(await current_values(conn, users[i : i + _USERS_PER_CALL], now))
    ids, statuses = [], []
    for g in goals:
        current = values.get(g["user_id"], {}).get(g["metric"])
        if reached(g["target_value"], g["baseline_value"], current):
            ids.append(g["id"])
            statuses.append("achieved")
        elif g["deadline"] <= now:
            ids.append(g["id"])
            statuses.append("missed")
    out = GoalSettlement()
    if not ids:
        return out
    for r in await conn.fetch(_SETTLE, ids, statuses, now):
        out.users.add(r["user_id"])
        if r["status"] == "achieved":
            out.achieved += 1
        else:
            out.missed += 1
    return out
