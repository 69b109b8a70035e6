"""The `alert_configs` table for the rules API (gateway/api/rules.py): a user's alert rules.

Every statement names the owner (`user_id = $n`), so a rule id from another user behaves as one
that does not exist; an admin reaches a user's rules by naming that user (`?userId=`), never by
id alone. `params`, `quiet_hours` and `channels` are jsonb, passed and returned as JSON text
(the pool sets no jsonb codec); migrations/0007_alert_rules.up.sql checks their shape per kind.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Final

import asyncpg

from sinks.db import Conn

__all__ = [
    "COLUMNS",
    "UPDATABLE",
    "count_rules",
    "create_rule",
    "delete_rule",
    "get_rule",
    "goal_exists",
    "list_rules",
    "update_rule",
]

# Every statement returns these columns, in this order.
COLUMNS: Final = (
    "id, user_id, name, kind, params, severity, for_seconds, keep_firing_for_seconds, "
    "cooldown_seconds, quiet_hours, channels, enabled, last_triggered_at, created_at, updated_at"
)
# What `update_rule` may set, and the cast of each parameter: the only column names that reach
# SQL text, so a caller's mapping cannot name anything else.
UPDATABLE: Final[Mapping[str, str]] = {
    "name": "text",
    "kind": "text",
    "params": "jsonb",
    "severity": "text",
    "for_seconds": "integer",
    "keep_firing_for_seconds": "integer",
    "cooldown_seconds": "integer",
    "quiet_hours": "jsonb",
    "channels": "jsonb",
    "enabled": "boolean",
}

# Keyset paging on (created_at, id): a page starts after the cursor's row, whether or not that
# row still exists. $2/$3 NULL: the first page.
_LIST: Final = f"""
SELECT {COLUMNS} FROM alert_configs
WHERE user_id = $1 AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3::uuid))
ORDER BY created_at, id
LIMIT $4
"""  # noqa: S608 - COLUMNS is a constant
_GET: Final = f"SELECT {COLUMNS} FROM alert_configs WHERE id = $1 AND user_id = $2"  # noqa: S608
# $11 is the caller's "now": the rule is created, and last changed, then.
_CREATE: Final = f"""
INSERT INTO alert_configs (user_id, name, kind, params, severity, for_seconds,
                           keep_firing_for_seconds, cooldown_seconds, quiet_hours, channels,
                           enabled, created_at, updated_at)
VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $8, $9::jsonb, $10::jsonb, $12, $11, $11)
RETURNING {COLUMNS}
"""  # noqa: S608 - COLUMNS is a constant


async def count_rules(conn: Conn, user_id: str) -> int:
    return int(
        await conn.fetchval("SELECT count(*) FROM alert_configs WHERE user_id = $1", user_id)
    )


async def list_rules(
    conn: Conn, user_id: str, *, after: tuple[datetime, uuid.UUID] | None, limit: int
) -> list[asyncpg.Record]:
    """At most `limit` of the user's rules, oldest first, after the `(created_at, id)` given."""
    created, rule_id = after if after is not None else (None, None)
    return await conn.fetch(_LIST, user_id, created, rule_id, limit)


async def get_rule(
    conn: Conn, user_id: str, rule_id: uuid.UUID, *, lock: bool = False
) -> asyncpg.Record | None:
    """The rule; `lock` holds it (FOR UPDATE) until the caller's transaction ends."""
    return await conn.fetchrow(_GET + " FOR UPDATE" if lock else _GET, rule_id, user_id)


async def goal_exists(conn: Conn, user_id: str, goal_id: uuid.UUID) -> bool:
    """Whether the user has this goal (a goal rule may only watch its owner's goals)."""
    found = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM user_goals WHERE id = $1 AND user_id = $2)",
        goal_id,
        user_id,
    )
    return found is True


async def create_rule(
    conn: Conn,
    user_id: str,
    *,
    name: str,
    kind: str,
    params: str,
    severity: str,
    for_seconds: int,
    keep_firing_for_seconds: int,
    cooldown_seconds: int,
    quiet_hours: str | None,
    channels: str,
    enabled: bool,
    now: datetime,
) -> asyncpg.Record:
    """A rule created `now`; `params`, `quiet_hours` and `channels` are JSON text."""
    row = await conn.fetchrow(
        _CREATE,
        user_id,
        name,
        kind,
        params,
        severity,
        for_seconds,
        keep_firing_for_seconds,
        cooldown_seconds,
        quiet_hours,
        channels,
        now,
        enabled,
    )
    assert row is not None  # noqa: S101 - INSERT ... RETURNING returns the row
    return row


async def update_rule(
    conn: Conn, user_id: str, rule_id: uuid.UUID, changes: Mapping[str, object], now: datetime
) -> asyncpg.Record | None:
    """Set the columns in `changes` (keys of UPDATABLE; None stores NULL) as of `now`; None if
    the user has no such rule."""
    unknown = changes.keys() - UPDATABLE.keys()
    if unknown:
        raise ValueError(f"not updatable: {sorted(unknown)}")
    columns = sorted(changes)
    sets = [f"{c} = ${i}::{UPDATABLE[c]}" for i, c in enumerate(columns, start=4)]
    sql = (
        f"UPDATE alert_configs SET {', '.join([*sets, 'updated_at = $3'])} "  # noqa: S608 - names from UPDATABLE
        f"WHERE id = $1 AND user_id = $2 RETURNING {COLUMNS}"
    )
    return await conn.fetchrow(sql, rule_id, user_id, now, *(changes[c] for c in columns))


async def delete_rule(conn: Conn, user_id: str, rule_id: uuid.UUID) -> bool:
    status = await conn.execute(
        "DELETE FROM alert_configs WHERE id = $1 AND user_id = $2", rule_id, user_id
    )
    return status.endswith(" 1")
