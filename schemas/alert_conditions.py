"""Alert conditions: whether one rule's condition holds, from values the caller gathered. Pure:
no clock, no I/O; the alerting stage reads the values and `now`, these functions only judge them.
The state machine that turns a run of outcomes into transitions is `schemas/alert_eval.py`.

Why `schemas/` and not `pipeline/stages/`: the vocabulary these functions apply (kinds, params,
the CEL settings in `schemas/rules.py`) lives here, and the goal progress mirrored below should
have one definition that both the alerting stage and the goals API (gateway/api/goals.py) can
import, which only the leaf package allows (stage and gateway code do not import each other).
Nothing here imports a driver; `cel` is a pure library.

Every function returns an `Outcome` and never raises on data: a missing value is `nodata`, a
custom expression that fails at run time is `error` with the message.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import datetime
from typing import Final, Literal

import cel
import msgspec

from schemas.rules import ExpressionError, check_expression

__all__ = [
    "GoalProgress",
    "GoalSnapshot",
    "Outcome",
    "Verdict",
    "change",
    "compile_expression",
    "custom",
    "goal",
    "goal_progress",
    "health",
    "nodata",
    "threshold",
]

# met: the condition holds; clear: it does not; nodata: an input it needs is missing;
# error: it cannot be judged (a custom expression failed).
Verdict = Literal["met", "clear", "nodata", "error"]
# Distinct rule texts kept compiled; a replica sees a few per user, so this covers thousands of
# users while bounding memory if texts churn.
_COMPILED_MAX: Final = 8192


class Outcome(msgspec.Struct, frozen=True):
    """One judgement of a condition. `values` are the inputs it used (and what it derived, such
    as `changePercent`), recorded with any transition they cause; `reason` says why a verdict is
    not plain (`no_baseline`, `no_value`, an error message)."""

    verdict: Verdict
    values: dict[str, float | None] = msgspec.field(default_factory=dict)
    reason: str | None = None


def threshold(op: Literal["above", "below"], value: float, current: float | None) -> Outcome:
    """`threshold` kind: the metric's current value strictly above (below) `value`."""
    values = {"value": current, "threshold": value}
    if current is None:
        return Outcome("nodata", values, "no_value")
    held = current > value if op == "above" else current < value
    return Outcome("met" if held else "clear", values)


def change(
    op: Literal["up", "down"], percent: float, current: float | None, previous: float | None
) -> Outcome:
    """`change` kind: the metric over the last window (`current`) against the window before
    (`previous`), in percent of the earlier window. `up` holds at a rise of at least `percent`,
    `down` at a fall of at least `percent`. An earlier window of zero gives no change (README,
    "Alert rules"): the verdict is `clear` with reason `no_baseline`, so the rule does not fire
    (and an alert that was firing resolves, as for any clear)."""
    values: dict[str, float | None] = {
        "value": current,
        "previous": previous,
        "threshold": percent,
        "changePercent": None,
    }
    if current is None or previous is None:
        return Outcome("nodata", values, "no_value")
    if previous == 0:
        return Outcome("clear", values, "no_baseline")
    pct = (current - previous) / abs(previous) * 100
    values["changePercent"] = pct
    held = pct >= percent if op == "up" else pct <= -percent
    return Outcome("met" if held else "clear", values)


class GoalSnapshot(msgspec.Struct, frozen=True):
    """The `user_goals` columns a goal rule needs."""

    target_value: float
    baseline_value: float | None
    starts_at: datetime
    deadline: datetime
    status: str = "active"


class GoalProgress(msgspec.Struct, frozen=True):
    percent: float
    reached: bool
    expected_percent: float
    on_track: bool


def goal_progress(goal: GoalSnapshot, current: float | None, now: datetime) -> GoalProgress:
    """A goal's progress as the goals API computes it. This mirrors gateway/api/goals.py
    `progress` and sinks/goal_status.py `reached`, which cannot be imported here (their modules
    import aiohttp, asyncpg and Redis): `percent` of the way from baseline to target (0-100,
    rounded to 2 places), `reached` in the direction from baseline to target,
    `expected_percent` the share of the time from start to deadline already spent, and
    `on_track` reached or the unrounded percent at least the unrounded expected one."""
    target = goal.target_value
    baseline = goal.baseline_value or 0.0
    if current is None:
        reached = False
    else:
        reached = current >= target if target >= baseline else current <= target
    percent = 0.0
    if current is not None:
        if reached:
            percent = 100.0
        elif target != baseline:
            percent = min(100.0, max(0.0, (current - baseline) / (target - baseline) * 100))
    total = (goal.deadline - goal.starts_at).total_seconds()
    spent = min(1.0, max(0.0, (now - goal.starts_at).total_seconds() / total)) * 100
    return GoalProgress(round(percent, 2), reached, round(spent, 2), reached or percent >= spent)


def goal(
    event: Literal["reached", "offTrack"],
    margin_percent: float,
    before_seconds: int,
    snapshot: GoalSnapshot | None,
    current: float | None,
    now: datetime,
) -> Outcome:
    """`goal` kind. `reached`: the goal's metric reached its target (whatever the stored
    status). `offTrack`: an `active` goal, not reached, before its deadline, whose percent is
    below `expected_percent` by more than `margin_percent`; with `before_seconds` > 0 only in
    the last `before_seconds` before the deadline ("off track 3 days before"), with 0 at any
    time before it (the API's default, which would otherwise never hold). A deleted goal, or a
    missing value, is `nodata`."""
    if snapshot is None:
        return Outcome("nodata", {"value": current}, "no_goal")
    p = goal_progress(snapshot, current, now)
    values: dict[str, float | None] = {
        "value": current,
        "threshold": snapshot.target_value,
        "percent": p.percent,
        "expectedPercent": p.expected_percent,
    }
    if current is None:
        return Outcome("nodata", values, "no_value")
    if event == "reached":
        return Outcome("met" if p.reached else "clear", values)
    left = (snapshot.deadline - now).total_seconds()
    in_window = left > 0 and (before_seconds == 0 or left <= before_seconds)
    off = (
        snapshot.status == "active"
        and in_window
        and not p.reached
        and p.percent < p.expected_percent - margin_percent
    )
    return Outcome("met" if off else "clear", values)


def nodata(seconds: int, last_event_at: datetime | None, now: datetime) -> Outcome:
    """`nodata` kind: no event (of the rule's type) for `seconds`. `last_event_at` None means
    none was ever seen, which holds."""
    silent = None if last_event_at is None else (now - last_event_at).total_seconds()
    values = {"silentSeconds": silent, "threshold": float(seconds)}
    held = silent is None or silent >= seconds
    return Outcome("met" if held else "clear", values)


def health(value: float, observed: float | None) -> Outcome:
    """`health` kind: the observed figure (lag in entries, an age or an outage in seconds)
    strictly above `value`. An observation that could not be made is `nodata`."""
    values = {"value": observed, "threshold": value}
    if observed is None:
        return Outcome("nodata", values, "no_value")
    return Outcome("met" if observed > value else "clear", values)


@functools.lru_cache(maxsize=_COMPILED_MAX)
def compile_expression(source: str) -> cel.Program | ExpressionError:
    """The compiled program of a rule text, once per text (cached), with the library settings
    and checks of `schemas/rules.py:check_expression` (so a row written by hand is held to the
    API's rules); a refused text gives its `ExpressionError` instead of raising."""
    try:
        check_expression(source)
        return cel.compile(source)
    except ExpressionError as e:
        return e
    except ValueError as e:  # pragma: no cover - check_expression compiled it already
        return ExpressionError(str(e))


def custom(source: str, variables: Mapping[str, float | None]) -> Outcome:
    """`custom` kind: the CEL expression over the metric variables (`profileViews`,
    `profileViews_prev7d`, ...). A variable the expression names but the caller has no value
    for is `nodata`; a refused text, a run-time error (`2 * x` reached on a branch the
    creation check did not take) or a non-boolean result is `error` with the message. Only the
    variables the expression names are recorded."""
    program = compile_expression(source)
    if isinstance(program, ExpressionError):
        return Outcome("error", {}, f"refused: {program}")
    names = program.variables()
    values = {name: variables.get(name) for name in names}
    missing = [name for name in names if values[name] is None]
    if missing:
        return Outcome("nodata", values, "no_value: " + ", ".join(missing))
    try:
        result = program.execute({name: float(v) for name, v in values.items() if v is not None})
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:
        return Outcome("error", values, f"does not evaluate: {e}")
    if not isinstance(result, bool):
        return Outcome("error", values, f"must be a boolean, but gives a {type(result).__name__}")
    return Outcome("met" if result else "clear", values)
