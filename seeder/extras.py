"""Goals and alert rules for seeded users, so the goals API and alerting have data too."""

from __future__ import annotations

from datetime import datetime, timedelta

import orjson

from seeder.personas import PERSONAS
from sinks.db import Conn

__all__ = ["add_goals_and_rules"]


async def add_goals_and_rules(conn: Conn, users: list[str], seed: int, now: datetime) -> None:
    goals = [row for i, user in enumerate(users) for row in _goals(i, user, now)]
    rules = [row for i, user in enumerate(users) for row in _rules(i, user)]
    await conn.executemany(
        "INSERT INTO user_goals (user_id, metric, target_value, baseline_value, starts_at, "
        "deadline) VALUES ($1, $2, $3, $4, $5, $6)",
        goals,
    )
    await conn.executemany(
        "INSERT INTO alert_configs (user_id, name, kind, params, cooldown_seconds, severity) "
        "VALUES ($1, $2, 'threshold', $3::jsonb, $4, $5)",
        rules,
    )


def _goals(i: int, user: str, now: datetime) -> list[tuple[object, ...]]:
    """The `i`th user's two goals, a week old, sized by its persona."""
    p = PERSONAS[i % len(PERSONAS)]
    deadline = now + timedelta(days=30 + 15 * (i % 3))
    return [
        (
            user,
            "connections",
            float(round(p.connections * 1.15)),
            float(p.connections),
            now - timedelta(days=7),
            deadline,
        ),
        (
            user,
            "profileViews",
            round(p.profile_views * 7 * 1.5),
            None,
            now - timedelta(days=7),
            deadline,
        ),
    ]


def _threshold(metric: str, op: str, value: float) -> str:
    """A threshold rule's `params` (migrations/0007_alert_rules.up.sql), as JSON text."""
    return orjson.dumps({"metric": metric, "op": op, "value": value}).decode()


def _rules(i: int, user: str) -> list[tuple[object, ...]]:
    """The `i`th user's two threshold rules, sized by its persona."""
    p = PERSONAS[i % len(PERSONAS)]
    return [
        (
            user,
            "Profile views spike",
            _threshold("profileViews", "above", round(p.profile_views * 7 * 2)),
            3600,
            "info",
        ),
        (
            user,
            "Engagement dropping",
            _threshold("engagementRate", "below", round(p.engagement_rate * 0.5, 4)),
            86400,
            "warning",
        ),
    ]
