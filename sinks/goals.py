"""The `user_goals` table for the goals API: a user's targets for catalogue metrics.

Every statement names the owner (`user_id = $n`), so a goal id from another user behaves as
one that does not exist: no query here can read or change someone else's goal.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Final

import asyncpg

from sinks.db import Conn

__all__ = [
    "count_goals",
    "create_goal",
    "delete_goal",
    "get_goal",
    "list_goals",
    "update_goal",
]

# Every statement returns these columns, in this order.
_LIST: Final = """
SELECT id, user_id, metric, target_value, baseline_value, starts_at, deadline, status,
       achieved_at, created_at, updated_at
FROM user_goals WHERE user_id = $1 AND ($2::text IS NULL OR status = $2)
ORDER BY deadline, id
"""
_GET: Final = """
SELECT id, user_id, metric, target_value, baseline_value, starts_at, deadline, status,
       achieved_at, created_at, updated_at
FROM user_goals WHERE id = $1 AND user_id = $2
"""
# $6 is the caller's "now": the goal starts, and is created, then.
_CREATE: Final = """
INSERT INTO user_goals (user_id, metric, target_value, baseline_value, deadline, starts_at,
                        created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $6, $6)
RETURNING id, user_id, metric, target_value, baseline_value, starts_at, deadline, status,
          achieved_at, created_at, updated_at
"""
# NULL leaves a column as it is. Status `achieved` stamps achieved_at with $6, the caller's
# "now" (kept if it was achieved already); any other status clears it.
_UPDATE: Final = """
UPDATE user_goals SET
    target_value = coalesce($3, target_value),
    deadline = coalesce($4, deadline),
    status = coalesce($5, status),
    achieved_at = CASE WHEN $5::text IS NULL THEN achieved_at
                       WHEN $5 = 'achieved' THEN coalesce(achieved_at, $6) END,
    updated_at = $6
WHERE id = $1 AND user_id = $2
RETURNING id, user_id, metric, target_value, baseline_value, starts_at, deadline, status,
          achieved_at, created_at, updated_at
"""


async def count_goals(conn: Conn, user_id: str) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM user_goals WHERE user_id = $1", user_id))


async def list_goals(conn: Conn, user_id: str, status: str | None = None) -> list[asyncpg.Record]:
    """The user's goals (of one status, if given), soonest deadline first."""
    return await conn.fetch(_LIST, user_id, status)


async def get_goal(conn: Conn, user_id: str, goal_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(_GET, goal_id, user_id)


async def create_goal(
    conn: Conn,
    user_id: str,
    *,
    metric: str,
    target_value: float,
    baseline_value: float | None,
    deadline: datetime,
    now: datetime,
) -> asyncpg.Record:
    """A goal starting `now`."""
    row = await conn.fetchrow(_CREATE, user_id, metric, target_value, baseline_value, deadline, now)
    assert row is not None  # noqa: S101 - INSERT ... RETURNING returns the row
    return row


async def update_goal(
    conn: Conn,
    user_id: str,
    goal_id: uuid.UUID,
    *,
    target_value: float | None = None,
    deadline: datetime | None = None,
    status: str | None = None,
    now: datetime,
) -> asyncpg.Record | None:
    """Change what is given, as of `now`; None if the user has no such goal."""
    return await conn.fetchrow(_UPDATE, goal_id, user_id, target_value, deadline, status, now)


async def delete_goal(conn: Conn, user_id: str, goal_id: uuid.UUID) -> bool:
    status = await conn.execute(
        "DELETE FROM user_goals WHERE id = $1 AND user_id = $2", goal_id, user_id
    )
    return status.endswith(" 1")
