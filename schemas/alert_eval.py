"""The alert state machine, one per (rule, user): from the stored `AlertState`, this evaluation's
`Outcome` (schemas/alert_conditions.py) and `now`, the next state, the transitions to record in
`alert_history`, and which of them to notify. Pure: time is an input, nothing is read or
written; the alerting stage loads the state, commits the transitions with the new state, and
only then announces `notify`.

States: `inactive` (never held, or pending that cleared), `pending` (holds, for less than
`for`), `firing`, `resolved` (was firing, cleared for `keepFiringFor`), `nodata` and `error`
(the condition could not be judged). Rules, by the outcome's verdict:

- met: inactive / resolved / nodata / error go to `pending`, or straight to `firing` when `for`
  is 0; pending goes to `firing` once it has held `for` seconds; firing stays (and forgets a
  clearing that keep-firing was counting).
- clear: pending goes back to `inactive`; firing goes to `resolved` once the condition has
  stayed clear `keepFiringFor` seconds (at once when 0); nodata / error go to `inactive`.
- nodata / error: any other state goes to that state (a firing alert ends; the values and the
  reason say why).

Notify: a transition to `firing` unless a firing was notified less than `cooldown` seconds
before (the transition is still recorded: "fired again inside cooldown"), and a transition out
of `firing` whose firing was notified (so a user who saw it fire sees it end). Nothing else.

Idempotence: transition n of a (rule, user) has the key `<rule>:<user>:<n>`, counted from the
stored state. The same state and inputs give the same keys, so a batch run again after a crash,
or by a second replica from the same stored state, produces keys a unique index on
`alert_history` refuses; the loser reloads the state.

`due_at` says when the state can change with no new data (`for` elapses, keep-firing ends):
the stage's timer should evaluate the rule again then.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

import msgspec

from schemas.alert_conditions import Outcome

__all__ = ["AlertState", "State", "Step", "Timing", "Transition", "step", "transition_key"]

State = Literal["inactive", "pending", "firing", "resolved", "nodata", "error"]


class Timing(msgspec.Struct, frozen=True):
    """A rule's `for_seconds`, `keep_firing_for_seconds` and `cooldown_seconds`."""

    for_seconds: int = 0
    keep_firing_for_seconds: int = 0
    cooldown_seconds: int = 0


class AlertState(msgspec.Struct, frozen=True):
    """What the stage stores per (rule, user) between evaluations.

    `since`: when `state` began. `held_since`: when the condition began to hold without a break
    (pending and firing). `cleared_at`: when a firing alert's condition cleared (keep-firing
    counts from it). `seq`: transitions recorded so far. `notified_at`: the last firing
    notified (cooldown counts from it). `firing_notified`: whether the current firing was."""

    state: State = "inactive"
    since: datetime | None = None
    held_since: datetime | None = None
    cleared_at: datetime | None = None
    seq: int = 0
    notified_at: datetime | None = None
    firing_notified: bool = False


class Transition(msgspec.Struct, frozen=True):
    """One row for `alert_history`: `key` is unique per (rule, user, seq)."""

    key: str
    rule_id: str
    user_id: str
    seq: int
    from_state: State
    to_state: State
    at: datetime
    values: dict[str, float | None]
    reason: str | None = None


class Step(msgspec.Struct, frozen=True):
    state: AlertState
    transitions: tuple[Transition, ...] = ()
    notify: tuple[Transition, ...] = ()
    due_at: datetime | None = None


def transition_key(rule_id: str, user_id: str, seq: int) -> str:
    return f"{rule_id}:{user_id}:{seq}"


def _elapsed(start: datetime | None, now: datetime, seconds: int) -> bool:
    return start is None or now - start >= timedelta(seconds=seconds)


def _on_met(prior: AlertState, timing: Timing, now: datetime) -> AlertState:
    s = prior.state
    if s == "firing":
        return msgspec.structs.replace(prior, cleared_at=None)
    held = prior.held_since if s == "pending" and prior.held_since is not None else now
    if _elapsed(held, now, timing.for_seconds):
        return AlertState("firing", now, held, None, prior.seq, prior.notified_at)
    if s == "pending":
        return prior
    return AlertState("pending", now, held, None, prior.seq, prior.notified_at)


def _on_clear(prior: AlertState, timing: Timing, now: datetime) -> AlertState:
    s = prior.state
    if s in ("pending", "nodata", "error"):
        return AlertState("inactive", now, None, None, prior.seq, prior.notified_at)
    if s == "firing":
        cleared = prior.cleared_at or now
        if _elapsed(cleared, now, timing.keep_firing_for_seconds):
            return AlertState("resolved", now, None, None, prior.seq, prior.notified_at)
        return msgspec.structs.replace(prior, cleared_at=cleared)
    return prior


def _next(prior: AlertState, outcome: Outcome, timing: Timing, now: datetime) -> AlertState:
    """The state after this outcome, before notification bookkeeping."""
    if outcome.verdict == "met":
        return _on_met(prior, timing, now)
    if outcome.verdict == "clear":
        return _on_clear(prior, timing, now)
    if prior.state == outcome.verdict:
        return prior
    return AlertState(outcome.verdict, now, None, None, prior.seq, prior.notified_at)


def _due(state: AlertState, timing: Timing) -> datetime | None:
    if state.state == "pending" and state.held_since is not None:
        return state.held_since + timedelta(seconds=timing.for_seconds)
    if state.state == "firing" and state.cleared_at is not None:
        return state.cleared_at + timedelta(seconds=timing.keep_firing_for_seconds)
    return None


def step(
    rule_id: str,
    user_id: str,
    timing: Timing,
    prior: AlertState,
    outcome: Outcome,
    now: datetime,
) -> Step:
    """Advance one (rule, user) by one evaluation at `now` (aware). An evaluation older than
    the stored state (`now` before `prior.since`, a late redelivery) changes nothing."""
    if prior.since is not None and now < prior.since:
        return Step(prior, due_at=_due(prior, timing))
    new = _next(prior, outcome, timing, now)
    if new.state == prior.state:
        return Step(new, due_at=_due(new, timing))
    seq = prior.seq + 1
    t = Transition(
        transition_key(rule_id, user_id, seq),
        rule_id,
        user_id,
        seq,
        prior.state,
        new.state,
        now,
        dict(outcome.values),
        outcome.reason,
    )
    notify = False
    notified_at, firing_notified = prior.notified_at, False
    if new.state == "firing":
        if _elapsed(prior.notified_at, now, timing.cooldown_seconds):
            notify, notified_at, firing_notified = True, now, True
    elif prior.state == "firing":
        notify = prior.firing_notified
    new = msgspec.structs.replace(
        new, seq=seq, notified_at=notified_at, firing_notified=firing_notified
    )
    return Step(new, (t,), (t,) if notify else (), _due(new, timing))
