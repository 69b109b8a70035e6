"""Alert rules: `GET/POST /api/v1/alerts/rules`, `GET/PATCH/DELETE /api/v1/alerts/rules/{id}`.

A rule watches one user's data (or, kind `health`, the pipeline) and says when an alert fires:
its kind and `params` (gateway/api/rule_types.py, README "Alert rules"), `severity`, how long
the condition must hold (`forSeconds`, 0: at once), how long it keeps firing after it stops
holding (`keepFiringForSeconds`), the least time between two notifications
(`cooldownSeconds`), optional quiet hours in an IANA zone, its channels and `enabled`. This
module stores rules; the alerting stage (issue 12, "Evaluation") will read them.

Access as every API route (common.py `reader`): the token's own rules, or an admin's choice
with `?userId=`. A rule id of another user is a 404. Kind `health` watches the pipeline, not a
user: only an admin may create or change one (403 naming `$.kind`).

Bodies are JSON with camelCase fields; malformed JSON is a 400, a well-formed but invalid body
a 422 naming the field (`$.params.metric`, `$.quietHours.timeZone`, `$.params.expression`
with the line and column of the error in the message). Custom expressions are CEL, checked by
schemas/rules.py:check_expression; nothing here evaluates Python.
"""

from __future__ import annotations

import uuid
import zoneinfo
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import asyncpg
import msgspec
import orjson
from aiohttp import web

from gateway.api.common import (
    API,
    connection,
    decode_body,
    json_body,
    json_response,
    parse_int,
    reader,
)
from gateway.api.rule_types import PARAMS, GoalParams, QuietHours, RuleIn, RulePatch
from gateway.auth import Principal
from gateway.errors import ApiError
from gateway.keys import CLOCK
from schemas.metrics import CATALOGUE
from schemas.rules import MAX_RULES_PER_USER, ExpressionError, check_expression
from sinks import rules as store
from sinks.db import Conn

__all__ = ["RULES", "routes", "rule_json"]

routes = web.RouteTableDef()

RULES: Final = f"{API}/alerts/rules"
_INVALID: Final = "invalid_rule"
# Cursors count microseconds from here, in integers, so a cursor names its row's created_at
# exactly (a page that started a microsecond off would repeat or skip a rule).
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

_rule_in: Final = msgspec.json.Decoder(RuleIn)
_rule_patch: Final = msgspec.json.Decoder(RulePatch)
_encoder: Final = msgspec.json.Encoder()


def rule_json(rule: asyncpg.Record) -> dict[str, Any]:
    quiet = rule["quiet_hours"]
    return {
        "id": str(rule["id"]),
        "userId": rule["user_id"],
        "name": rule["name"],
        "kind": rule["kind"],
        "params": orjson.loads(rule["params"]),
        "severity": rule["severity"],
        "forSeconds": rule["for_seconds"],
        "keepFiringForSeconds": rule["keep_firing_for_seconds"],
        "cooldownSeconds": rule["cooldown_seconds"],
        "quietHours": None if quiet is None else orjson.loads(quiet),
        "channels": orjson.loads(rule["channels"]),
        "enabled": rule["enabled"],
        "lastTriggeredAt": rule["last_triggered_at"],
        "createdAt": rule["created_at"],
        "updatedAt": rule["updated_at"],
    }


def _rule_id(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["rule_id"])
    except ValueError:
        raise ApiError(404, "not_found", "no such rule") from None


def _check_kind(principal: Principal, kind: str) -> None:
    if kind == "health" and principal.role != "admin":
        raise ApiError(403, "forbidden", "health rules watch the pipeline: admin only", "$.kind")


async def _params(conn: Conn, user: str, kind: str, raw: msgspec.Raw) -> str:
    """The params of `kind` in `raw`, checked, as JSON text to store."""
    params = decode_body(PARAMS[kind], bytes(raw), _INVALID, "$.params")
    metric = getattr(params, "metric", None)
    if metric is not None and metric not in CATALOGUE:
        raise ApiError(422, _INVALID, "metric is not in the catalogue", "$.params.metric")
    if isinstance(params, GoalParams) and not await store.goal_exists(conn, user, params.goal_id):
        raise ApiError(422, _INVALID, "the user has no such goal", "$.params.goalId")
    expression = getattr(params, "expression", None)
    if expression is not None:
        try:
            check_expression(expression)
        except ExpressionError as e:
            raise ApiError(422, _INVALID, str(e), "$.params.expression") from None
    return _encoder.encode(params).decode()


def _quiet_hours(quiet: QuietHours | None) -> str | None:
    if quiet is None:
        return None
    if quiet.from_ == quiet.to:
        raise ApiError(
            422, _INVALID, "quiet hours must not start and end at once", "$.quietHours.to"
        )
    try:
        zoneinfo.ZoneInfo(quiet.time_zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ApiError(
            422, _INVALID, f"unknown time zone {quiet.time_zone!r}", "$.quietHours.timeZone"
        ) from None
    return _encoder.encode(quiet).decode()


@routes.get(RULES)
async def list_rules(request: web.Request) -> web.Response:
    """The user's rules, oldest first, `limit` (1-200, default 50) per page; `nextCursor`
    (null on the last page) continues."""
    _, user = reader(request)
    limit = parse_int(request, "limit", default=50, lo=1, hi=200)
    after = _cursor(request.query.get("cursor"))
    async with connection(request) as conn:
        rows = await store.list_rules(conn, user, after=after, limit=limit + 1)
    page = rows[:limit]
    more = len(rows) > limit
    cursor = None
    if more:
        last = page[-1]
        micros = (last["created_at"] - _EPOCH) // timedelta(microseconds=1)
        cursor = f"{micros}.{last['id']}"
    return json_response(
        {"userId": user, "rules": [rule_json(r) for r in page], "nextCursor": cursor}
    )


def _cursor(raw: str | None) -> tuple[datetime, uuid.UUID] | None:
    if raw is None:
        return None
    try:
        micros, rule_id = raw.split(".", 1)
        return _EPOCH + timedelta(microseconds=int(micros)), uuid.UUID(rule_id)
    except (ValueError, OverflowError, OSError):
        raise ApiError(400, "invalid_parameter", "cursor is not a nextCursor", "cursor") from None


@routes.post(RULES)
async def create(request: web.Request) -> web.Response:
    principal, user = reader(request)
    rule = decode_body(_rule_in, await json_body(request), _INVALID)
    _check_kind(principal, rule.kind)
    quiet = _quiet_hours(rule.quiet_hours)
    now = request.app[CLOCK]()
    async with connection(request) as conn:
        params = await _params(conn, user, rule.kind, rule.params)
        if await store.count_rules(conn, user) >= MAX_RULES_PER_USER:
            raise ApiError(409, "too_many_rules", f"at most {MAX_RULES_PER_USER} rules per user")
        row = await store.create_rule(
            conn,
            user,
            name=rule.name,
            kind=rule.kind,
            params=params,
            severity=rule.severity,
            for_seconds=rule.for_seconds,
            keep_firing_for_seconds=rule.keep_firing_for_seconds,
            cooldown_seconds=rule.cooldown_seconds,
            quiet_hours=quiet,
            channels=_encoder.encode(rule.channels).decode(),
            enabled=rule.enabled,
            now=now,
        )
    location = f"{RULES}/{row['id']}"
    return json_response(rule_json(row), 201, headers={"Location": location})


@routes.get(f"{RULES}/{{rule_id}}")
async def get_rule(request: web.Request) -> web.Response:
    _, user = reader(request)
    rule_id = _rule_id(request)
    async with connection(request) as conn:
        row = await store.get_rule(conn, user, rule_id)
    if row is None:
        raise ApiError(404, "not_found", "no such rule")
    return json_response(rule_json(row))


@routes.patch(f"{RULES}/{{rule_id}}")
async def update_rule(request: web.Request) -> web.Response:
    principal, user = reader(request)
    rule_id = _rule_id(request)
    patch = decode_body(_rule_patch, await json_body(request), _INVALID)
    changes: dict[str, object] = {}
    for field in ("name", "severity", "for_seconds", "keep_firing_for_seconds",
                  "cooldown_seconds", "enabled"):  # fmt: skip
        value = getattr(patch, field)
        if not isinstance(value, msgspec.UnsetType):
            changes[field] = value
    if not isinstance(patch.quiet_hours, msgspec.UnsetType):
        changes["quiet_hours"] = _quiet_hours(patch.quiet_hours)
    if not isinstance(patch.channels, msgspec.UnsetType):
        changes["channels"] = _encoder.encode(patch.channels).decode()
    kind = None if isinstance(patch.kind, msgspec.UnsetType) else patch.kind
    if kind is not None:
        _check_kind(principal, kind)
        if isinstance(patch.params, msgspec.UnsetType):
            raise ApiError(422, _INVALID, "a new kind needs its params", "$.params")
    if not changes and kind is None and isinstance(patch.params, msgspec.UnsetType):
        raise ApiError(422, _INVALID, "nothing to change", "$")
    now = request.app[CLOCK]()
    async with connection(request) as conn, conn.transaction():
        stored = await store.get_rule(conn, user, rule_id, lock=True)
        if stored is None:
            raise ApiError(404, "not_found", "no such rule")
        _check_kind(principal, stored["kind"])
        if not isinstance(patch.params, msgspec.UnsetType):
            kind = kind or stored["kind"]
            changes["kind"] = kind
            changes["params"] = await _params(conn, user, kind, patch.params)
        row = await store.update_rule(conn, user, rule_id, changes, now)
    assert row is not None  # noqa: S101 - locked above, in this transaction
    return json_response(rule_json(row))


@routes.delete(f"{RULES}/{{rule_id}}")
async def delete_rule(request: web.Request) -> web.Response:
    _, user = reader(request)
    rule_id = _rule_id(request)
    async with connection(request) as conn:
        deleted = await store.delete_rule(conn, user, rule_id)
    if not deleted:
        raise ApiError(404, "not_found", "no such rule")
    return web.Response(status=204)
