"""The alert evaluation core, pure: conditions per kind (schemas/alert_conditions.py), the state
machine (schemas/alert_eval.py) and quiet hours (schemas/quiet_hours.py). No services; every
instant is pinned."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from schemas import alert_conditions as cond
from schemas.alert_conditions import GoalSnapshot, Outcome
from schemas.alert_eval import AlertState, Step, Timing, step, transition_key
from schemas.quiet_hours import QuietHours, held_until, in_quiet_hours, quiet_hours_end

T0 = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
RULE, USER = "r-1", "u-1"


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def run(
    timing: Timing, outcomes: Iterable[tuple[float, Outcome]], state: AlertState | None = None
) -> tuple[AlertState, list[Step]]:
    """Feed (minute, outcome) pairs through the state machine; the final state and each step."""
    state = state or AlertState()
    steps = []
    for minute, outcome in outcomes:
        s = step(RULE, USER, timing, state, outcome, at(minute))
        steps.append(s)
        state = s.state
    return state, steps


def moves(steps: list[Step]) -> list[tuple[str, str]]:
    return [(t.from_state, t.to_state) for s in steps for t in s.transitions]


def notified(steps: list[Step]) -> list[tuple[str, str]]:
    return [(t.from_state, t.to_state) for s in steps for t in s.notify]


MET, CLEAR = Outcome("met", {"value": 1.0}), Outcome("clear", {"value": 0.0})


# --- threshold --------------------------------------------------------------------------------


def test_threshold_fires_and_resolves_on_a_sequence() -> None:
    values = [90.0, 120.0, 130.0, 80.0]
    outcomes = [(i, cond.threshold("above", 100.0, v)) for i, v in enumerate(values)]
    state, steps = run(Timing(), outcomes)
    assert moves(steps) == [("inactive", "firing"), ("firing", "resolved")]
    assert notified(steps) == moves(steps)
    fired = steps[1].transitions[0]
    assert fired.values == {"value": 120.0, "threshold": 100.0}
    assert fired.at == at(1) and fired.seq == 1 and fired.key == "r-1:u-1:1"
    assert steps[3].transitions[0].key == transition_key(RULE, USER, 2)
    assert state.state == "resolved"


def test_threshold_below_and_equal_values() -> None:
    assert cond.threshold("below", 5.0, 4.0).verdict == "met"
    assert cond.threshold("below", 5.0, 5.0).verdict == "clear"
    assert cond.threshold("above", 5.0, 5.0).verdict == "clear"
    assert cond.threshold("above", 5.0, None).verdict == "nodata"


def test_threshold_never_above_never_fires() -> None:
    outcomes = [(i, cond.threshold("above", 100.0, v)) for i, v in enumerate([1.0, 99.0, 100.0])]
    state, steps = run(Timing(), outcomes)
    assert moves(steps) == [] and state.state == "inactive"


# --- for ---------------------------------------------------------------------------------------


def test_for_waits_in_pending_then_fires() -> None:
    timing = Timing(for_seconds=300)
    state, steps = run(timing, [(0, MET), (2, MET), (5, MET), (6, MET)])
    assert moves(steps) == [("inactive", "pending"), ("pending", "firing")]
    assert steps[0].due_at == at(5)
    assert steps[2].transitions[0].at == at(5)
    assert notified(steps) == [("pending", "firing")]
    assert state.held_since == at(0)


def test_for_not_held_long_enough_does_not_fire() -> None:
    timing = Timing(for_seconds=300)
    state, steps = run(timing, [(0, MET), (4, MET), (4.5, CLEAR), (5, MET), (9, MET)])
    assert moves(steps) == [
        ("inactive", "pending"),
        ("pending", "inactive"),
        ("inactive", "pending"),
    ]
    assert notified(steps) == [] and state.state == "pending" and state.held_since == at(5)


def test_for_zero_fires_at_once() -> None:
    _, steps = run(Timing(for_seconds=0), [(0, MET)])
    assert moves(steps) == [("inactive", "firing")]


# --- cooldown ----------------------------------------------------------------------------------


def test_cooldown_records_a_second_firing_but_does_not_notify_it() -> None:
    timing = Timing(cooldown_seconds=3600)
    seq = [(0, MET), (10, CLEAR), (20, MET), (30, CLEAR), (61, MET)]
    state, steps = run(timing, seq)
    assert moves(steps) == [
        ("inactive", "firing"),
        ("firing", "resolved"),
        ("resolved", "firing"),
        ("firing", "resolved"),
        ("resolved", "firing"),
    ]
    # The firing at 20 is inside the cooldown: recorded, not notified, and so is its end.
    assert [t.seq for s in steps for t in s.transitions] == [1, 2, 3, 4, 5]
    assert [t.at for s in steps for t in s.notify] == [at(0), at(10), at(61)]
    assert state.notified_at == at(61) and state.firing_notified


def test_cooldown_zero_notifies_every_firing() -> None:
    _, steps = run(Timing(), [(0, MET), (1, CLEAR), (2, MET)])
    assert len(notified(steps)) == 3


# --- keepFiringFor -----------------------------------------------------------------------------


def test_keep_firing_for_holds_the_alert_after_the_condition_clears() -> None:
    timing = Timing(keep_firing_for_seconds=600)
    state, steps = run(timing, [(0, MET), (1, CLEAR), (5, CLEAR), (11, CLEAR)])
    assert moves(steps) == [("inactive", "firing"), ("firing", "resolved")]
    assert steps[1].due_at == at(11) and steps[3].transitions[0].at == at(11)
    assert state.state == "resolved"


def test_keep_firing_for_is_reset_when_the_condition_returns() -> None:
    timing = Timing(keep_firing_for_seconds=600)
    state, steps = run(timing, [(0, MET), (1, CLEAR), (8, MET), (9, CLEAR), (15, CLEAR)])
    assert moves(steps) == [("inactive", "firing")]
    assert state.state == "firing" and state.cleared_at == at(9)


# --- change ------------------------------------------------------------------------------------


def test_change_down_fires_and_resolves() -> None:
    windows = [(100.0, 90.0), (100.0, 60.0), (100.0, 95.0)]  # (previous, current)
    outcomes = [(i, cond.change("down", 30.0, c, p)) for i, (p, c) in enumerate(windows)]
    _, steps = run(Timing(), outcomes)
    assert moves(steps) == [("inactive", "firing"), ("firing", "resolved")]
    assert steps[1].transitions[0].values["changePercent"] == pytest.approx(-40.0)


def test_change_up_at_exactly_the_percent_holds() -> None:
    assert cond.change("up", 50.0, 150.0, 100.0).verdict == "met"
    assert cond.change("up", 50.0, 149.0, 100.0).verdict == "clear"
    assert cond.change("down", 50.0, 150.0, 100.0).verdict == "clear"


def test_change_against_a_zero_window_does_not_fire() -> None:
    outcome = cond.change("up", 10.0, 500.0, 0.0)
    assert outcome.verdict == "clear" and outcome.reason == "no_baseline"
    assert outcome.values["changePercent"] is None
    _, steps = run(Timing(), [(0, outcome), (1, outcome)])
    assert moves(steps) == []
    # and a firing change alert whose earlier window becomes zero resolves
    _, steps = run(Timing(), [(0, cond.change("up", 10.0, 200.0, 100.0)), (1, outcome)])
    assert moves(steps) == [("inactive", "firing"), ("firing", "resolved")]
    assert steps[1].transitions[0].reason == "no_baseline"


# --- goal --------------------------------------------------------------------------------------

GOAL = GoalSnapshot(
    target_value=200.0,
    baseline_value=100.0,
    starts_at=datetime(2026, 6, 1, tzinfo=UTC),
    deadline=datetime(2026, 7, 1, tzinfo=UTC),
)  # T0 (June 15, 12:00) is 48.33% of the way


def test_goal_progress_mirrors_the_goals_api() -> None:
    p = cond.goal_progress(GOAL, 130.0, T0)
    assert (p.percent, p.expected_percent, p.reached, p.on_track) == (30.0, 48.33, False, False)
    p = cond.goal_progress(GOAL, 150.0, T0)
    assert p.on_track and p.percent == 50.0
    down = GoalSnapshot(10.0, 50.0, GOAL.starts_at, GOAL.deadline)
    assert cond.goal_progress(down, 9.0, T0).reached


def test_goal_off_track_fires_and_on_track_does_not() -> None:
    off = cond.goal("offTrack", 10.0, 0, GOAL, 130.0, T0)  # 30% < 48.33% - 10
    on = cond.goal("offTrack", 10.0, 0, GOAL, 140.0, T0)  # 40% >= 38.33%: within the margin
    assert off.verdict == "met" and on.verdict == "clear"
    assert off.values["expectedPercent"] == 48.33
    _, steps = run(Timing(), [(0, off), (1, on)])
    assert moves(steps) == [("inactive", "firing"), ("firing", "resolved")]


def test_goal_off_track_only_in_the_last_before_seconds() -> None:
    week = 7 * 86_400
    assert cond.goal("offTrack", 0.0, week, GOAL, 100.0, T0).verdict == "clear"
    late = datetime(2026, 6, 25, tzinfo=UTC)
    assert cond.goal("offTrack", 0.0, week, GOAL, 100.0, late).verdict == "met"
    after = datetime(2026, 7, 2, tzinfo=UTC)
    assert cond.goal("offTrack", 0.0, 0, GOAL, 100.0, after).verdict == "clear"
    settled = GoalSnapshot(200.0, 100.0, GOAL.starts_at, GOAL.deadline, "cancelled")
    assert cond.goal("offTrack", 0.0, 0, settled, 100.0, T0).verdict == "clear"


def test_goal_reached_fires() -> None:
    values = [150.0, 199.0, 201.0]
    outcomes = [(i, cond.goal("reached", 0.0, 0, GOAL, v, T0)) for i, v in enumerate(values)]
    _, steps = run(Timing(), outcomes)
    assert moves(steps) == [("inactive", "firing")]
    assert cond.goal("reached", 0.0, 0, None, 1.0, T0).verdict == "nodata"


# --- nodata and health -------------------------------------------------------------------------


def test_nodata_and_health_conditions() -> None:
    assert cond.nodata(600, T0, at(9)).verdict == "clear"
    assert cond.nodata(600, T0, at(10)).verdict == "met"
    assert cond.nodata(600, None, T0).verdict == "met"
    assert cond.health(100.0, 101.0).verdict == "met"
    assert cond.health(100.0, 100.0).verdict == "clear"
    assert cond.health(100.0, None).verdict == "nodata"


# --- custom ------------------------------------------------------------------------------------

SPIKE = "profileViews > 2.0 * profileViews_prev7d && engagementRate < 0.02"


def test_custom_good_expression_fires_and_resolves() -> None:
    hot = {"profileViews": 300.0, "profileViews_prev7d": 100.0, "engagementRate": 0.01}
    cool = {**hot, "profileViews": 150.0}
    outcomes = [(0, cond.custom(SPIKE, cool)), (1, cond.custom(SPIKE, hot))]
    _, steps = run(Timing(), [*outcomes, (2, cond.custom(SPIKE, cool))])
    assert moves(steps) == [("inactive", "firing"), ("firing", "resolved")]
    assert steps[1].transitions[0].values == hot
    # unrelated variables are not recorded
    assert cond.custom(SPIKE, {**hot, "postsPublished": 3.0}).values == hot


def test_custom_compiles_once_per_text() -> None:
    assert cond.compile_expression(SPIKE) is cond.compile_expression(SPIKE)


def test_custom_bad_expression_is_an_error_not_an_exception() -> None:
    for bad in ("profileViews >", "nosuchMetric > 1.0", "size([1]) > 0", "profileViews + 1.0"):
        outcome = cond.custom(bad, {"profileViews": 1.0})
        assert outcome.verdict == "error" and outcome.reason is not None
        assert outcome.reason.startswith("refused: ")


def test_custom_runtime_error_gives_the_error_state() -> None:
    # Passes the creation check (at 1.0 the first branch is taken) but mixes int and double
    # when the other branch runs.
    expr = "profileViews >= 1.0 ? true : (2 * profileViews > 1.0)"
    assert cond.custom(expr, {"profileViews": 3.0}).verdict == "met"
    failed = cond.custom(expr, {"profileViews": 0.5})
    assert failed.verdict == "error" and "does not evaluate" in (failed.reason or "")
    non_bool = cond.custom("profileViews >= 1.0 ? true : 1.0", {"profileViews": 0.5})
    assert non_bool.verdict == "error" and non_bool.reason == "must be a boolean, but gives a float"
    _, steps = run(Timing(), [(0, cond.custom(expr, {"profileViews": 3.0})), (1, failed)])
    assert moves(steps) == [("inactive", "firing"), ("firing", "error")]
    assert steps[1].transitions[0].reason == failed.reason
    assert notified(steps) == moves(steps)  # the end of a notified firing is notified


def test_custom_missing_variable_is_nodata() -> None:
    outcome = cond.custom(SPIKE, {"profileViews": 1.0, "engagementRate": 0.0})
    assert outcome.verdict == "nodata" and outcome.reason == "no_value: profileViews_prev7d"


# --- state machine details ---------------------------------------------------------------------


def test_nodata_and_error_states_come_and_go() -> None:
    nodata = Outcome("nodata", {"value": None}, "no_value")
    state, steps = run(Timing(), [(0, nodata), (1, nodata), (2, CLEAR), (3, MET)])
    assert moves(steps) == [("inactive", "nodata"), ("nodata", "inactive"), ("inactive", "firing")]
    assert notified(steps) == [("inactive", "firing")]


def test_the_same_state_and_inputs_give_the_same_keys() -> None:
    first = step(RULE, USER, Timing(), AlertState(), MET, T0)
    again = step(RULE, USER, Timing(), AlertState(), MET, T0)
    assert first == again and first.transitions[0].key == "r-1:u-1:1"


def test_an_evaluation_older_than_the_state_changes_nothing() -> None:
    state, _ = run(Timing(), [(10, MET)])
    late = step(RULE, USER, Timing(), state, CLEAR, at(5))
    assert late.state == state and late.transitions == ()


# --- quiet hours -------------------------------------------------------------------------------


def quiet(start: str, end: str, zone: str) -> QuietHours:
    return QuietHours.parse({"from": start, "to": end, "timeZone": zone})


def utc(year: int, month: int, day: int, hour: int, minute: int) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def test_quiet_hours_in_a_zone_where_it_is_night() -> None:
    tokyo = quiet("21:00", "07:00", "Asia/Tokyo")
    noon = utc(2026, 6, 15, 12, 30)  # 21:30 in Tokyo
    assert in_quiet_hours(tokyo, noon)
    assert quiet_hours_end(tokyo, noon) == utc(2026, 6, 15, 22, 0)  # 07:00 JST on the 16th
    assert held_until("warning", tokyo, noon) == utc(2026, 6, 15, 22, 0)
    assert held_until("critical", tokyo, noon) is None
    assert not in_quiet_hours(quiet("21:00", "07:00", "UTC"), noon)
    assert held_until("info", None, noon) is None


def test_quiet_hours_wrap_midnight() -> None:
    paris = quiet("22:00", "07:00", "Europe/Paris")  # CEST, UTC+2 in June
    assert not in_quiet_hours(paris, utc(2026, 6, 15, 19, 59))
    assert in_quiet_hours(paris, utc(2026, 6, 15, 20, 0))
    assert in_quiet_hours(paris, utc(2026, 6, 15, 23, 30))
    assert quiet_hours_end(paris, utc(2026, 6, 15, 23, 30)) == utc(2026, 6, 16, 5, 0)
    assert in_quiet_hours(paris, utc(2026, 6, 16, 4, 59))
    assert not in_quiet_hours(paris, utc(2026, 6, 16, 5, 0))
    day = quiet("09:00", "17:00", "Europe/Paris")
    assert in_quiet_hours(day, utc(2026, 6, 15, 7, 0)) and not in_quiet_hours(
        day, T0.replace(hour=15)
    )
    assert not in_quiet_hours(quiet("08:00", "08:00", "UTC"), utc(2026, 6, 15, 8, 0))


def test_quiet_hours_berlin_spring_forward() -> None:
    # 2026-03-29: 02:00 CET -> 03:00 CEST at 01:00 UTC; 02:30 never shows on the clock.
    q = quiet("22:00", "02:30", "Europe/Berlin")
    assert in_quiet_hours(q, utc(2026, 3, 29, 0, 45))  # 01:45 CET
    assert quiet_hours_end(q, utc(2026, 3, 29, 0, 45)) == utc(2026, 3, 29, 1, 0)  # the jump
    assert not in_quiet_hours(q, utc(2026, 3, 29, 1, 0))  # 03:00 CEST
    starts_in_gap = quiet("02:30", "06:00", "Europe/Berlin")
    assert not in_quiet_hours(starts_in_gap, utc(2026, 3, 29, 0, 59))
    assert in_quiet_hours(starts_in_gap, utc(2026, 3, 29, 1, 0))
    assert quiet_hours_end(starts_in_gap, utc(2026, 3, 29, 1, 0)) == utc(2026, 3, 29, 4, 0)


def test_quiet_hours_berlin_fall_back() -> None:
    # 2026-10-25: 03:00 CEST -> 02:00 CET at 01:00 UTC; 02:00-03:00 shows twice.
    q = quiet("22:00", "02:30", "Europe/Berlin")
    assert in_quiet_hours(q, utc(2026, 10, 25, 0, 15))  # 02:15 CEST, the first time
    assert quiet_hours_end(q, utc(2026, 10, 25, 0, 15)) == utc(2026, 10, 25, 0, 30)
    assert not in_quiet_hours(q, utc(2026, 10, 25, 1, 15))  # 02:15 CET, the second time
    night = quiet("22:00", "07:00", "Europe/Berlin")  # 10 real hours that night
    assert in_quiet_hours(night, utc(2026, 10, 24, 20, 0))  # 22:00 CEST
    assert quiet_hours_end(night, utc(2026, 10, 24, 20, 0)) == utc(2026, 10, 25, 6, 0)


def test_quiet_hours_new_york_spring_forward() -> None:
    # 2026-03-08: 02:00 EST -> 03:00 EDT at 07:00 UTC.
    q = quiet("22:00", "07:00", "America/New_York")
    assert in_quiet_hours(q, utc(2026, 3, 8, 3, 0))  # 22:00 EST on the 7th
    assert in_quiet_hours(q, utc(2026, 3, 8, 10, 30))  # 06:30 EDT
    assert quiet_hours_end(q, utc(2026, 3, 8, 10, 30)) == utc(2026, 3, 8, 11, 0)  # 07:00 EDT
    assert not in_quiet_hours(q, utc(2026, 3, 8, 11, 0))
    gap = quiet("02:15", "06:00", "America/New_York")
    assert not in_quiet_hours(gap, utc(2026, 3, 8, 6, 59))  # 01:59 EST
    assert in_quiet_hours(gap, utc(2026, 3, 8, 7, 0))  # 03:00 EDT


def test_quiet_hours_refuse_a_bad_zone() -> None:
    with pytest.raises(ValueError, match="timeZone"):
        quiet("22:00", "07:00", "Mars/Olympus")


ROOT = Path(__file__).resolve().parents[1]


def test_the_core_imports_no_driver_and_no_other_package() -> None:
    probe = (
        "import sys, schemas.alert_conditions, schemas.alert_eval, schemas.quiet_hours\n"
        "roots = {m.split('.')[0] for m in sys.modules}\n"
        "print(sorted(roots & {'asyncpg', 'aiohttp', 'redis', 'gateway', 'sinks', 'pipeline'}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert done.stdout.strip() == "[]"
