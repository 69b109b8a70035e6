"""The alerting group's reads and writes (pipeline/stages/alerting.py): the enabled rules of a
batch's users with their stored state (`load_rules`, one query), and one evaluation's result
(`commit`, one transaction): the transitions into alert_history and the new states into
alert_states, each state only if its stored `seq` is still the one the evaluation started from.

Compare-and-set: two replicas, or a redelivery racing the first delivery, may evaluate a
(rule, user) from the same stored state. The first to commit moves `seq` on; the other's
upsert matches no row, and then it writes nothing for that (rule, user), neither the state nor
the transitions, and announces nothing. Transition keys are `<rule>:<user>:<seq>` and the
unique index (user_id, time, alert_id) refuses a transition written twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import asyncpg
import orjson

from schemas.alert_eval import AlertState, Transition
from sinks.db import Conn

__all__ = ["Change", "RuleRow", "commit", "load_rules"]

# Enabled rules of the kinds an ia:metrics entry can change (nodata and health wait for the
# timer), the goal a goal rule watches, and the stored state.
_LOAD: Final = """
SELECT r.id, r.user_id, r.name, r.kind, r.params::text AS params, r.severity, r.for_seconds,
       r.keep_firing_for_seconds, r.cooldown_seconds,
       g.metric AS goal_metric, g.target_value, g.baseline_value, g.starts_at, g.deadline,
       g.status AS goal_status,
       s.state, s.since, s.held_since, s.cleared_at, s.seq, s.notified_at, s.firing_notified
FROM alert_configs r
LEFT JOIN user_goals g
       ON r.kind = 'goal' AND g.user_id = r.user_id AND g.id::text = r.params ->> 'goalId'
LEFT JOIN alert_states s ON s.rule_id = r.id AND s.user_id = r.user_id
WHERE r.user_id = ANY($1::text[]) AND r.enabled
  AND r.kind IN ('threshold', 'change', 'goal', 'custom')
"""
_UPSERT: Final = """
INSERT INTO alert_states (rule_id, user_id, state, since, held_since, cleared_at, seq,
                          notified_at, firing_notified, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (rule_id, user_id) DO UPDATE SET
    state = EXCLUDED.state, since = EXCLUDED.since, held_since = EXCLUDED.held_since,
    cleared_at = EXCLUDED.cleared_at, seq = EXCLUDED.seq, notified_at = EXCLUDED.notified_at,
    firing_notified = EXCLUDED.firing_notified, updated_at = EXCLUDED.updated_at
WHERE alert_states.seq = $11
RETURNING true
"""
_HISTORY: Final = """
INSERT INTO alert_history (time, user_id, alert_id, rule_id, metric, condition, threshold,
                           value, severity, message, status, from_state, to_state, seq,
                           "values", reason)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15::jsonb, $16)
ON CONFLICT DO NOTHING
"""


@dataclass(frozen=True, slots=True)
class RuleRow:
    """A loaded rule: its columns (params decoded) and its stored state."""

    record: asyncpg.Record
    params: dict[str, object]
    state: AlertState

    @property
    def rule_id(self) -> str:
        return str(self.record["id"])


def _state(r: asyncpg.Record) -> AlertState:
    if r["state"] is None:
        return AlertState()
    return AlertState(
        r["state"],
        r["since"],
        r["held_since"],
        r["cleared_at"],
        r["seq"],
        r["notified_at"],
        r["firing_notified"],
    )


async def load_rules(conn: Conn, user_ids: Sequence[str]) -> list[RuleRow]:
    rows = await conn.fetch(_LOAD, list(user_ids))
    return [RuleRow(r, orjson.loads(r["params"]), _state(r)) for r in rows]


@dataclass(frozen=True, slots=True)
class Change:
    """One (rule, user)'s evaluation to commit: the state it started from, where it ended,
    the transitions in between, those to announce, and the columns each history row repeats."""

    rule: RuleRow
    new: AlertState
    transitions: tuple[Transition, ...]
    metric: str
    condition: str
    at: datetime
    notify: tuple[Transition, ...] = ()


def _status(t: Transition) -> str:
    return "triggered" if t.to_state == "firing" else t.to_state


async def commit(conn: Conn, changes: Sequence[Change]) -> list[Change]:
    """Write the changes in one transaction; the ones whose state was still the stored one
    (the others were overtaken and wrote nothing)."""
    won: list[Change] = []
    async with conn.transaction():
        for c in changes:
            s, r = c.new, c.rule.record
            ok = await conn.fetchval(
                _UPSERT, r["id"], r["user_id"], s.state, s.since, s.held_since, s.cleared_at,
                s.seq, s.notified_at, s.firing_notified, c.at, c.rule.state.seq,
            )  # fmt: skip
            if not ok:
                continue
            won.append(c)
            for t in c.transitions:
                threshold = t.values.get("threshold")
                await conn.execute(
                    _HISTORY, t.at, t.user_id, t.key, r["id"], c.metric, c.condition,
                    threshold, t.values.get("value"), r["severity"], r["name"], _status(t),
                    t.from_state, t.to_state, t.seq, orjson.dumps(t.values).decode(), t.reason,
                )  # fmt: skip
    return won
