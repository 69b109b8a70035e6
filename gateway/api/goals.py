"""Goals: `POST/GET /api/v1/goals`, `GET/PATCH/DELETE /api/v1/goals/{id}`.

A goal is a target for one catalogue metric by a deadline. Its baseline is the metric's value
when the goal was created (unless given), and every answer carries its progress against the
current value, with the WebSocket's definitions (sinks/queries/past_values.py `live_values`):
`percent` of the way from baseline to target (0-100), `reached`, and `onTrack` (at least as far
as the share of the time already spent). `status` is what was stored: `active` on creation;
the maintenance task settles goals to `achieved` or `missed` (sinks/goal_status.py); PATCH may
set `achieved`, `missed` or `cancelled`. Reads never write.

Bodies are JSON with camelCase fields; malformed JSON is a 400, a well-formed but invalid body a
422 naming the field (`$.deadline`). A goal id that does not exist, or belongs to another user,
is a 404. Writes invalidate the user's cached answers (the summary shows goals).
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Literal

import asyncpg
import msgspec
from aiohttp import web
from redis.exceptions import RedisError

from gateway.api.common import API, connection, decode_body, json_body, json_response, reader
from gateway.errors import ApiError
from gateway.keys import CLOCK, REDIS
from schemas.metrics import CATALOGUE
from sinks import goals as store
from sinks.cache_generations import invalidate
from sinks.db import Conn
from sinks.goal_status import reached as goal_reached
from sinks.queries.past_values import live_values

__all__ = ["MAX_GOALS_PER_USER", "goal_json", "progress", "routes"]

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

# Goals are a handful per user; the cap keeps a runaway client from growing the table.
MAX_GOALS_PER_USER: Final = 100
Status = Literal["active", "achieved", "missed", "cancelled"]
# Finite and far from float limits: every sum of real metrics stays exact below this.
Target = Annotated[float, msgspec.Meta(ge=-1e12, le=1e12)]
AwareTime = Annotated[datetime, msgspec.Meta(tz=True)]
_DEADLINE_MAX_AHEAD: Final = timedelta(days=36_525)
# What `create` and `_check_deadline` check after decoding, published with the structs in
# /openapi.json (gateway/ops/openapi_bodies.py); the annotations change no decoding.
Metric = Annotated[str, msgspec.Meta(extra_json_schema={"enum": sorted(CATALOGUE)})]
Deadline = Annotated[AwareTime, msgspec.Meta(description="in the future")]


class GoalIn(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    metric: Metric
    target_value: Target
    deadline: Deadline
    baseline_value: Target | None = None


class GoalPatch(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    target_value: Target | msgspec.UnsetType = msgspec.UNSET
    deadline: Deadline | msgspec.UnsetType = msgspec.UNSET
    status: Status | msgspec.UnsetType = msgspec.UNSET


_goal_in: Final = msgspec.json.Decoder(GoalIn)
_goal_patch: Final = msgspec.json.Decoder(GoalPatch)


def progress(goal: asyncpg.Record, current: float | None, now: datetime) -> dict[str, Any]:
    target = float(goal["target_value"])
    baseline = float(goal["baseline_value"] or 0.0)
    reached = goal_reached(target, baseline, current)
    percent = 0.0
    if current is not None:
        if reached:
            percent = 100.0
        elif target != baseline:
            percent = min(100.0, max(0.0, (current - baseline) / (target - baseline) * 100))
    total = (goal["deadline"] - goal["starts_at"]).total_seconds()
    spent = min(1.0, max(0.0, (now - goal["starts_at"]).total_seconds() / total)) * 100
    return {
        "current": current,
        "percent": round(percent, 2),
        "reached": reached,
        "expectedPercent": round(spent, 2),
        "onTrack": reached or percent >= spent,
        "daysLeft": round(max(0.0, (goal["deadline"] - now).total_seconds() / 86_400), 2),
    }


def goal_json(goal: asyncpg.Record, current: float | None, now: datetime) -> dict[str, Any]:
    return {
        "id": str(goal["id"]),
        "userId": goal["user_id"],
        "metric": goal["metric"],
        "targetValue": goal["target_value"],
        "baselineValue": goal["baseline_value"],
        "startsAt": goal["starts_at"],
        "deadline": goal["deadline"],
        "status": goal["status"],
        "achievedAt": goal["achieved_at"],
        "createdAt": goal["created_at"],
        "updatedAt": goal["updated_at"],
        "progress": progress(goal, current, now),
    }


def _check_deadline(deadline: datetime, now: datetime) -> datetime:
    if deadline <= now:
        raise ApiError(422, "invalid_goal", "deadline must be in the future", "$.deadline")
    if deadline > now + _DEADLINE_MAX_AHEAD:
        # Near year 9999 the progress arithmetic (and the driver) leave Python's calendar.
        raise ApiError(422, "invalid_goal", "deadline must be within 100 years", "$.deadline")
    return deadline.astimezone(UTC)


def _goal_id(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["goal_id"])
    except ValueError:
        raise ApiError(404, "not_found", "no such goal") from None


async def _invalidate(request: web.Request, user: str) -> None:
    """The summary embeds goals: its cached answers must go. A failure only leaves them for
    at most API_CACHE_TTL, so it does not fail the write that already committed."""
    try:
        await invalidate(request.app[REDIS], [user])
    except RedisError as e:
        log.warning("cache invalidation failed", extra={"user_id": user, "error": repr(e)})


async def _current(conn: Conn, user: str, now: datetime) -> dict[str, float | None]:
    return await live_values(conn, user, now)


@routes.post(f"{API}/goals")
async def create(request: web.Request) -> web.Response:
    _, user = reader(request)
    goal_in = decode_body(_goal_in, await json_body(request), "invalid_goal")
    if goal_in.metric not in CATALOGUE:
        raise ApiError(422, "invalid_goal", "metric is not in the catalogue", "$.metric")
    now = request.app[CLOCK]()
    deadline = _check_deadline(goal_in.deadline, now)
    async with connection(request) as conn:
        if await store.count_goals(conn, user) >= MAX_GOALS_PER_USER:
            raise ApiError(409, "too_many_goals", f"at most {MAX_GOALS_PER_USER} goals per user")
        values = await _current(conn, user, now)
        current = values.get(goal_in.metric)
        baseline = goal_in.baseline_value if goal_in.baseline_value is not None else current
        goal = await store.create_goal(
            conn,
            user,
            metric=goal_in.metric,
            target_value=goal_in.target_value,
            baseline_value=baseline,
            deadline=deadline,
            now=now,
        )
    await _invalidate(request, user)
    location = f"{API}/goals/{goal['id']}"
    return json_response(goal_json(goal, current, now), 201, headers={"Location": location})


@routes.get(f"{API}/goals")
async def list_goals(request: web.Request) -> web.Response:
    _, user = reader(request)
    status = request.query.get("status")
    if status is not None and status not in ("active", "achieved", "missed", "cancelled"):
        raise ApiError(
            400,
            "invalid_parameter",
            "status must be one of active, achieved, missed, cancelled",
            "status",
        )
    now = request.app[CLOCK]()
    async with connection(request) as conn:
        goals = await store.list_goals(conn, user, status)
        values = await _current(conn, user, now) if goals else {}
    return json_response(
        {"userId": user, "goals": [goal_json(g, values.get(g["metric"]), now) for g in goals]}
    )


@routes.get(f"{API}/goals/{{goal_id}}")
async def get_goal(request: web.Request) -> web.Response:
    _, user = reader(request)
    goal_id = _goal_id(request)
    now = request.app[CLOCK]()
    async with connection(request) as conn:
        goal = await store.get_goal(conn, user, goal_id)
        if goal is None:
            raise ApiError(404, "not_found", "no such goal")
        values = await _current(conn, user, now)
    return json_response(goal_json(goal, values.get(goal["metric"]), now))


@routes.patch(f"{API}/goals/{{goal_id}}")
async def update_goal(request: web.Request) -> web.Response:
    _, user = reader(request)
    goal_id = _goal_id(request)
    patch = decode_body(_goal_patch, await json_body(request), "invalid_goal")
    now = request.app[CLOCK]()
    target = None if isinstance(patch.target_value, msgspec.UnsetType) else patch.target_value
    deadline = None
    if not isinstance(patch.deadline, msgspec.UnsetType):
        deadline = _check_deadline(patch.deadline, now)
    status = None if isinstance(patch.status, msgspec.UnsetType) else patch.status
    if target is None and deadline is None and status is None:
        raise ApiError(422, "invalid_goal", "nothing to change", "$")
    async with connection(request) as conn:
        goal = await store.update_goal(
            conn, user, goal_id, target_value=target, deadline=deadline, status=status, now=now
        )
        if goal is None:
            raise ApiError(404, "not_found", "no such goal")
        values = await _current(conn, user, now)
    await _invalidate(request, user)
    return json_response(goal_json(goal, values.get(goal["metric"]), now))


@routes.delete(f"{API}/goals/{{goal_id}}")
async def delete_goal(request: web.Request) -> web.Response:
    _, user = reader(request)
    goal_id = _goal_id(request)
    async with connection(request) as conn:
        deleted = await store.delete_goal(conn, user, goal_id)
    if not deleted:
        raise ApiError(404, "not_found", "no such goal")
    await _invalidate(request, user)
    return web.Response(status=204)
