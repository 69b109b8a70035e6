"""The `alerting` group: evaluate, on each `ia:metrics` entry, the rules whose metrics it changed.

Per batch: the entries' updates, merged per user (the newest value of each metric, and the
newest `committedAt` as `now`: the evaluation instant comes from the entry, never the wall
clock, so a redelivery evaluates at the same instant); the users' enabled threshold, change,
goal and custom rules (one query, sinks/alert_states.py) whose metrics intersect what changed;
their inputs (the entry's values; a change rule's two windows, sinks/queries/window_sums.py; a
custom rule's earlier values, sinks/queries/past_values.py, once per user and window); then
`schemas/alert_eval.py:step`. The transitions and the new states are committed in one
transaction, each state compare-and-set on its stored `seq` (sinks/alert_states.py), and only
then are the notified transitions appended to `ia:alerts`, in one pipelined round trip, before
the runner acknowledges the entries.

Out of scope here: `nodata` and `health` rules, which no entry triggers (a timer will evaluate
them, and the `due_at` of pending and keep-firing states); quiet hours, grouping and silences:
a notified transition goes straight to `ia:alerts`. If the append fails after the commit the
batch is retried, finds the state already moved on, and announces nothing: such an alert is
recorded in alert_history but not announced (an outbox would close that gap).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final, cast

import asyncpg
import redis.asyncio as redis
from redis.typing import EncodableT, FieldT

from pipeline.prom import ALERT_TRANSITIONS, ALERTS_EVALUATED, ALERTS_NOTIFIED
from pipeline.runner import DeadLetter, Delivery
from schemas.alert_conditions import (
    GoalSnapshot,
    Outcome,
    change,
    compile_expression,
    custom,
    goal,
    threshold,
)
from schemas.alert_eval import Timing, Transition, step
from schemas.alerts import Alert, alert_entry
from schemas.entries import UnreadableEntry, read_updates
from schemas.rules import ExpressionError
from schemas.streams import ALERTS_STREAM
from schemas.timefmt import iso_ms
from sinks.alert_states import Change, RuleRow, commit, load_rules
from sinks.db import Conn
from sinks.queries.past_values import values_at
from sinks.queries.window_sums import window_pair

__all__ = ["AlertingStage"]

STAGE: Final = "alerting"
_PREVIOUS: Final = {"_prev1d": timedelta(days=1), "_prev7d": timedelta(days=7),
                    "_prev30d": timedelta(days=30)}  # fmt: skip


@dataclass
class _UserInput:
    """What the batch's entries say about one user: the newest value per metric, and when."""

    values: dict[str, float | None]
    now: datetime
    as_of: str
    # Catalogue values at `now` minus a shift, read once per batch for the custom rules.
    past: dict[timedelta, dict[str, float | None]] = field(default_factory=dict)


def _collect(batch: list[Delivery], dead: list[DeadLetter]) -> dict[str, _UserInput]:
    users: dict[str, _UserInput] = {}
    for d in batch:
        try:
            updates = [
                (u, datetime.fromisoformat(u.committed_at))
                for u in read_updates(dict(d.fields)) or ()
            ]
        except (UnreadableEntry, ValueError) as e:
            dead.append(DeadLetter(d, f"unreadable updates: {e}", STAGE))
            continue
        for u, at in updates:
            seen = users.get(u.user_id)
            if seen is None:
                users[u.user_id] = seen = _UserInput({}, at, u.as_of)
            seen.values[u.metric] = u.value
            if at >= seen.now:
                seen.now, seen.as_of = at, u.as_of
    return users


def _metrics(rule: RuleRow) -> frozenset[str]:
    """The catalogue metrics whose change may change this rule's verdict."""
    kind, p = rule.record["kind"], rule.params
    if kind == "goal":
        m = rule.record["goal_metric"]
        return frozenset({m}) if m else frozenset()
    if kind == "custom":
        program = compile_expression(str(p.get("expression", "")))
        if isinstance(program, ExpressionError):
            return frozenset()
        names = program.variables()
        return frozenset(n.split("_prev")[0] for n in names)
    return frozenset({str(p.get("metric"))})


def _num(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


@dataclass
class AlertingStage:
    pool: asyncpg.Pool
    redis: redis.Redis

    async def __call__(self, batch: list[Delivery]) -> list[DeadLetter]:
        dead: list[DeadLetter] = []
        users = _collect(batch, dead)
        if not users:
            return dead
        async with self.pool.acquire() as conn:
            rules = [
                r
                for r in await load_rules(conn, sorted(users))
                if _metrics(r) & users[r.record["user_id"]].values.keys()
            ]
            changes = [await self._evaluate(conn, r, users[r.record["user_id"]]) for r in rules]
            ALERTS_EVALUATED.inc(len(rules))
            won = await commit(conn, [c for c in changes if c.new != c.rule.state])
        for t in (t for c in won for t in c.transitions):
            ALERT_TRANSITIONS.labels(to=t.to_state).inc()
        await self._announce(won, users)
        return dead

    async def _evaluate(self, conn: Conn, rule: RuleRow, seen: _UserInput) -> Change:
        r = rule.record
        outcome = await self._outcome(conn, rule, seen)
        timing = Timing(r["for_seconds"], r["keep_firing_for_seconds"], r["cooldown_seconds"])
        result = step(rule.rule_id, r["user_id"], timing, rule.state, outcome, seen.now)
        metric = next(iter(sorted(_metrics(rule))), r["kind"])
        condition = str(rule.params.get("op") or rule.params.get("event") or r["kind"])
        return Change(
            rule, result.state, result.transitions, metric, condition, seen.now, result.notify
        )

    async def _outcome(self, conn: Conn, rule: RuleRow, seen: _UserInput) -> Outcome:
        r, p, now = rule.record, rule.params, seen.now
        kind = r["kind"]
        if kind == "threshold":
            current = seen.values.get(str(p.get("metric")))
            if p.get("op") == "above":
                return threshold("above", _num(p.get("value")), current)
            return threshold("below", _num(p.get("value")), current)
        if kind == "change":
            window = timedelta(seconds=_num(p.get("windowSeconds")))
            cur, prev = await window_pair(conn, r["user_id"], str(p.get("metric")), now, window)
            return change("up" if p.get("op") == "up" else "down", _num(p.get("percent")),
                          cur, prev)  # fmt: skip
        if kind == "goal":
            snapshot = None
            if r["goal_metric"] is not None:
                snapshot = GoalSnapshot(r["target_value"], r["baseline_value"], r["starts_at"],
                                        r["deadline"], r["goal_status"])  # fmt: skip
            args = (_num(p.get("marginPercent")), int(_num(p.get("beforeSeconds"))), snapshot,
                    seen.values.get(r["goal_metric"] or ""), now)  # fmt: skip
            if p.get("event") == "reached":
                return goal("reached", *args)
            return goal("offTrack", *args)
        expression = str(p.get("expression", ""))
        return custom(expression, await self._variables(conn, r["user_id"], expression, seen))

    async def _variables(
        self, conn: Conn, user_id: str, expression: str, seen: _UserInput
    ) -> Mapping[str, float | None]:
        """The expression's variables: the entry's values, the others at `now` and the
        earlier windows from the database (one lookup per user and instant in a batch)."""
        program = compile_expression(expression)
        if isinstance(program, ExpressionError):
            return {}
        names = program.variables()
        out: dict[str, float | None] = {}
        cache = seen.past
        for name in names:
            base, sep, window = name.partition("_prev")
            shift = _PREVIOUS[sep + window] if sep else timedelta(0)
            if not sep and base in seen.values:
                out[name] = seen.values[base]
                continue
            if shift not in cache:
                cache[shift] = await values_at(conn, user_id, seen.now - shift)
            out[name] = cache[shift].get(base)
        return out

    async def _announce(self, won: list[Change], users: Mapping[str, _UserInput]) -> None:
        """After the commit: each notified firing or resolved alert, one round trip."""
        alerts = [(t, c) for c in won for t in c.notify if t.to_state in ("firing", "resolved")]
        if not alerts:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for t, c in alerts:
                pipe.xadd(ALERTS_STREAM, _entry(t, c, users[t.user_id].as_of))  # type: ignore[unused-awaitable]
            await pipe.execute()
        for t, _ in alerts:
            ALERTS_NOTIFIED.labels(state=t.to_state).inc()


def _entry(t: Transition, c: Change, as_of: str) -> dict[FieldT, EncodableT]:
    r = c.rule.record
    alert = Alert(
        alert_id=t.key,
        user_id=t.user_id,
        rule_id=t.rule_id,
        metric=c.metric,
        value=t.values.get("value"),
        threshold=t.values.get("threshold") or 0.0,
        severity=r["severity"],
        message=str(r["name"]),
        triggered_at=iso_ms(t.at),
        as_of=as_of,
    )
    fields = alert_entry(alert, "resolved" if t.to_state == "resolved" else "firing")
    return cast("dict[FieldT, EncodableT]", fields)
