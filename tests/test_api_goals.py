"""Goals CRUD over real HTTP: stored rows, progress against current values, isolation, errors.

The gateway's clock is pinned (`now`): deadlines, progress and the 7-day windows of current
values are computed as of it, and the tests about time run at several instants."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway.api.goals import MAX_GOALS_PER_USER
from schemas.settings import Settings
from tests.api_support import ApiEnv, api_env, fixed_clock, iso, new_user, parse, to_us
from tests.streams_helpers import make_event

GOALS = "/api/v1/goals"


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# A minute before midnight ending January and February, midnight starting March, a Monday
# 00:00, noon on 2026-12-02.
INSTANTS = [
    _utc("2026-01-31T23:59"),
    _utc("2026-02-28T23:59"),
    _utc("2026-03-01T00:00"),
    _utc("2026-11-30T00:00"),
    _utc("2026-12-02T12:00"),
]


@pytest.fixture
def now() -> datetime:
    """The gateway's "now"; tests about time parametrize it over INSTANTS."""
    return INSTANTS[-1]


@pytest.fixture
async def env(migrated: Settings, now: datetime) -> AsyncIterator[ApiEnv]:
    async with api_env(migrated, clock=fixed_clock(now)) as e:
        yield e


def in_days(now: datetime, days: float) -> str:
    return iso(now + timedelta(days=days))


@pytest.mark.parametrize("now", INSTANTS, ids=str)
async def test_create_read_update_delete(env: ApiEnv, now: datetime) -> None:
    user = new_user()
    # 7 days and a second before `now`: outside the window, whatever the day or month.
    old = to_us(now - timedelta(days=7)) - 10**6
    await env.store([make_event(user, "profile_view", value=1000, time_us=old)])
    await env.store([make_event(user, "profile_view", value=40, time_us=to_us(now) - 10**6)])
    body = {"metric": "profileViews", "targetValue": 100, "deadline": in_days(now, 30)}
    status, goal, headers = await env.call("POST", GOALS, user, json=body)
    assert status == 201, goal
    assert headers["Location"] == f"{GOALS}/{goal['id']}"
    # The baseline is the value when the goal was set: 40 views in the last 7 days.
    assert (goal["metric"], goal["targetValue"], goal["baselineValue"]) == ("profileViews", 100, 40)
    assert goal["status"] == "active" and goal["progress"]["current"] == 40
    assert goal["progress"]["percent"] == 0 and not goal["progress"]["reached"]
    assert parse(goal["startsAt"]) == parse(goal["createdAt"]) == now  # it starts now
    assert goal["progress"]["daysLeft"] == 30 and goal["progress"]["expectedPercent"] == 0
    async with env.pool.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM user_goals WHERE id = $1::uuid", goal["id"])
    assert row is not None and row["user_id"] == user and row["target_value"] == 100
    assert row["deadline"] == parse(str(body["deadline"]))

    # 30 more views: (70 - 40) / (100 - 40) = 50 %.
    await env.store([make_event(user, "profile_view", value=30, time_us=to_us(now) - 10**6)])
    status, one, _ = await env.get(f"{GOALS}/{goal['id']}", user)
    assert status == 200 and one["progress"]["current"] == 70
    assert one["progress"]["percent"] == 50.0
    assert one["progress"]["expectedPercent"] == 0 and one["progress"]["onTrack"]
    assert one["progress"]["daysLeft"] == 30

    status, patched, _ = await env.call(
        "PATCH", f"{GOALS}/{goal['id']}", user, json={"targetValue": 70, "status": "achieved"}
    )
    assert status == 200, patched
    assert patched["targetValue"] == 70 and patched["status"] == "achieved"
    assert parse(patched["achievedAt"]) == parse(patched["updatedAt"]) == now
    assert patched["progress"]["reached"]
    assert patched["progress"]["percent"] == 100
    _, listed, _ = await env.get(GOALS, user)
    assert [g["id"] for g in listed["goals"]] == [goal["id"]]
    _, active, _ = await env.get(GOALS, user, status="active")
    assert active["goals"] == []

    status, _, _ = await env.call("DELETE", f"{GOALS}/{goal['id']}", user)
    assert status == 204
    status, gone, _ = await env.get(f"{GOALS}/{goal['id']}", user)
    assert status == 404 and gone["error"]["code"] == "not_found"
    async with env.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM user_goals WHERE user_id = $1", user) == 0


@pytest.mark.parametrize("now", INSTANTS, ids=str)
async def test_a_decreasing_goal_and_an_explicit_baseline(env: ApiEnv, now: datetime) -> None:
    user = new_user()
    await env.store([make_event(user, "message_received", value=30, time_us=to_us(now) - 10**6)])
    body = {
        "metric": "messagesReceived",
        "targetValue": 10,
        "baselineValue": 50,
        "deadline": in_days(now, 10),
    }
    _, goal, _ = await env.call("POST", GOALS, user, json=body)
    # From 50 down to 10, now at 30: half way.
    assert goal["baselineValue"] == 50 and goal["progress"]["percent"] == 50.0


async def test_goals_of_another_user_are_invisible(env: ApiEnv, now: datetime) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    body = {"metric": "connections", "targetValue": 500, "deadline": in_days(now, 5)}
    _, goal, _ = await env.call("POST", GOALS, bob, json=body)
    path = f"{GOALS}/{goal['id']}"
    for method in ("GET", "PATCH", "DELETE"):
        status, error, _ = await env.call(method, path, alice, json={"targetValue": 1})
        assert status == 404, (method, error)
    status, _, _ = await env.call("POST", GOALS, alice, params={"userId": bob}, json=body)
    assert status == 403
    status, listed, _ = await env.get(GOALS, alice)
    assert listed["goals"] == []
    # An admin acts on Bob's goals through userId.
    status, seen, _ = await env.call("GET", path, "ops-admin", "admin", params={"userId": bob})
    assert status == 200 and seen["userId"] == bob
    async with env.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM user_goals WHERE user_id = $1", bob) == 1


def goal_body(**changes: Any) -> dict[str, Any]:
    """A valid goal with `changes`; a change to None removes the field."""
    base = {"metric": "followers", "targetValue": 1, "deadline": "2099-01-01T00:00:00Z"}
    return {k: v for k, v in {**base, **changes}.items() if v is not None}


INVALID: list[tuple[str, Any, int, str, str]] = [
    ("POST", goal_body(metric="karma"), 422, "invalid_goal", "$.metric"),
    ("POST", goal_body(deadline="2020-01-01T00:00:00Z"), 422, "invalid_goal", "$.deadline"),
    ("POST", goal_body(deadline="2099-01-01T00:00:00"), 422, "invalid_goal", "$.deadline"),
    ("POST", goal_body(targetValue="lots"), 422, "invalid_goal", "$.targetValue"),
    ("POST", goal_body(targetValue=1e13), 422, "invalid_goal", "$.targetValue"),
    ("POST", goal_body(targetValue=None), 422, "invalid_goal", "$.targetValue"),
    ("POST", goal_body(owner="x"), 422, "invalid_goal", "$.owner"),
    ("POST", b"{not json", 400, "malformed_json", "$"),
    ("PATCH", {}, 422, "invalid_goal", "$"),
    ("PATCH", {"status": "paused"}, 422, "invalid_goal", "$.status"),
    ("PATCH", {"deadline": "2001-01-01T00:00:00Z"}, 422, "invalid_goal", "$.deadline"),
    # The end of the calendar: a 500 (naive and aware datetimes) before deadlines were bounded.
    ("POST", goal_body(deadline="9999-12-31T23:59:59.999999Z"), 422, "invalid_goal", "$.deadline"),
    ("PATCH", {"deadline": "9999-12-31T23:00:00-05:00"}, 422, "invalid_goal", "$.deadline"),
    ("PATCH", {"metric": "followers"}, 422, "invalid_goal", "$.metric"),
]


@pytest.mark.parametrize(("method", "payload", "status", "code", "field"), INVALID)
async def test_invalid_bodies_name_their_field(
    env: ApiEnv, now: datetime, method: str, payload: Any, status: int, code: str, field: str
) -> None:
    user = new_user()
    path = GOALS
    if method == "PATCH":
        created = {"metric": "followers", "targetValue": 10, "deadline": in_days(now, 3)}
        _, goal, _ = await env.call("POST", GOALS, user, json=created)
        path = f"{GOALS}/{goal['id']}"
    raw = payload if isinstance(payload, bytes) else None
    json_body = None if raw is not None else payload
    headers = {"Content-Type": "application/json"} if raw is not None else None
    got, error, _ = await env.call(method, path, user, json=json_body, data=raw, headers=headers)
    assert got == status, error
    assert error["error"]["code"] == code and error["error"]["field"] == field


async def test_wrong_content_type_unknown_ids_and_the_goal_cap(env: ApiEnv, now: datetime) -> None:
    user = new_user()
    status, error, _ = await env.call("POST", GOALS, user, data=b"metric=followers")
    assert status == 415 and error["error"]["code"] == "unsupported_media_type"
    for goal_id in ("not-a-uuid", "00000000-0000-0000-0000-000000000000"):
        status, _, _ = await env.get(f"{GOALS}/{goal_id}", user)
        assert status == 404
    async with env.pool.acquire() as conn:
        # starts_at is the pinned instant, not the database's now(): the CHECK deadline >
        # starts_at then holds on whatever day the suite runs.
        await conn.executemany(
            "INSERT INTO user_goals (user_id, metric, target_value, deadline, starts_at) "
            "VALUES ($1, 'followers', $2, $3, $4)",
            [(user, float(i), now + timedelta(days=1), now) for i in range(MAX_GOALS_PER_USER)],
        )
    body = {"metric": "followers", "targetValue": 1, "deadline": in_days(now, 1)}
    status, error, _ = await env.call("POST", GOALS, user, json=body)
    assert status == 409 and error["error"]["code"] == "too_many_goals"
