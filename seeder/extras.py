"""Goals and alert rules for seeded users, so the goals API and alerting have data too."""

from __future__ import annotations

from datetime import datetime, timedelta

from seeder.personas import PERSONAS
from sinks.db import Conn

__all__ = ["add_goals_and_rules"]


async def add_goals_and_rules(conn: Conn, users: list[str], seed: int, now: datetime) -> None:
    goals: list[tuple[object, ...]] = []
    rules: list[tuple[object, ...]] = []
    for i, user in enumerate(users):
        p = PERSONAS[i % len(PERSONAS)]
        deadline = now + timedelta(days=30 + 15 * (i % 3))
        goals.append(
            (
                user,
                "connections",
                float(round(p.connections * 1.15)),
                float(p.connections),
                now - timedelta(days=7),
                deadline,
            )
        )
        goals.append(
            (
                user,
                "profileViews",
                round(p.profile_views * 7 * 1.5),
                None,
                now - timedelta(days=7),
                deadline,
            )
        )
        rules.append(
            (
                user,
                "Profile views spike",
                "profileViews",
                "above",
                round(p.profile_views * 7 * 2),
                3600,
                "info",
            )
        )
        rules.append(
            (
                user,
                "Engagement dropping",
                "engagementRate",
                "below",
                round(p.engagement_rate * 0.5, 4),
                86400,
                "warning",
            )
        )
    await conn.executemany(
        "INSERT INTO user_goals (user_id, metric, target_value, baseline_value, starts_at, "
        "deadline) VALUES ($1, $2, $3, $4, $5, $6)",
        goals,
    )
    await conn.executemany(
        "INSERT INTO alert_configs (user_id, name, metric, condition, threshold, "
        "cooldown_seconds, severity) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        rules,
    )
