"""Alert rules CRUD over real HTTP (gateway/api/rules.py): every kind round-trips, owners are
isolated, every refusal names its field, health rules are admin only, custom expressions are
checked by CEL with the error's position; and migration 0007 keeps the seeded rules both ways.

The gateway's clock is pinned (`NOW`): stored times are checked against it, never the wall."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest

from migrations import runner
from schemas.rules import MAX_EXPRESSION_CHARS
from schemas.settings import Settings
from seeder.extras import add_goals_and_rules
from sinks.db import connect
from tests.api_support import ApiEnv, api_env, fixed_clock, iso, new_user, parse
from tests.conftest import ScratchDb

RULES = "/api/v1/alerts/rules"
NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
ADMIN = "admin-ops"


@pytest.fixture
async def env(migrated: Settings) -> AsyncIterator[ApiEnv]:
    async with api_env(migrated, clock=fixed_clock(NOW)) as e:
        yield e


async def _goal(env: ApiEnv, user: str) -> str:
    body = {"metric": "profileViews", "targetValue": 100, "deadline": iso(NOW + timedelta(30))}
    status, goal, _ = await env.call("POST", "/api/v1/goals", user, json=body)
    assert status == 201, goal
    return str(goal["id"])


def _rule(kind: str, params: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": f"a {kind} rule", "kind": kind, "params": params, **extra}


# Each kind's params as sent, and as stored and answered (defaults filled in).
KINDS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "threshold": (
        {"metric": "profileViews", "op": "above", "value": 500},
        {"metric": "profileViews", "op": "above", "value": 500.0},
    ),
    "change": (
        {"metric": "engagementRate", "op": "down", "percent": 30, "windowSeconds": 604800},
        {"metric": "engagementRate", "op": "down", "percent": 30.0, "windowSeconds": 604800},
    ),
    "goal": (
        {"goalId": "GOAL", "event": "offTrack", "marginPercent": 10, "beforeSeconds": 86400},
        {"goalId": "GOAL", "event": "offTrack", "marginPercent": 10.0, "beforeSeconds": 86400},
    ),
    "nodata": (
        {"seconds": 3600, "eventType": "profile_view"},
        {"seconds": 3600, "eventType": "profile_view"},
    ),
    "health": (
        {"check": "groupLag", "value": 10000},
        {"check": "groupLag", "value": 10000.0},
    ),
    "custom": (
        {"expression": "profileViews > 2.0 * profileViews_prev7d && engagementRate < 0.02"},
        {"expression": "profileViews > 2.0 * profileViews_prev7d && engagementRate < 0.02"},
    ),
}


def _with_goal(params: dict[str, Any], goal_id: str) -> dict[str, Any]:
    return {k: goal_id if v == "GOAL" else v for k, v in params.items()}


@pytest.mark.parametrize("kind", list(KINDS))
async def test_each_kind_round_trips(env: ApiEnv, kind: str) -> None:
    user = new_user("rules")
    role: Any = "admin" if kind == "health" else "user"
    who = ADMIN if kind == "health" else user
    goal_id = await _goal(env, user)
    sent, stored = (_with_goal(p, goal_id) for p in KINDS[kind])
    body = _rule(
        kind,
        sent,
        severity="critical",
        forSeconds=300,
        keepFiringForSeconds=600,
        cooldownSeconds=0,
        quietHours={"from": "22:00", "to": "07:00", "timeZone": "Europe/Paris"},
    )
    status, rule, headers = await env.call(
        "POST", RULES, who, role, params={"userId": user}, json=body
    )
    assert status == 201, rule
    assert headers["Location"] == f"{RULES}/{rule['id']}"
    assert rule["userId"] == user and rule["kind"] == kind and rule["params"] == stored
    assert (rule["severity"], rule["forSeconds"], rule["keepFiringForSeconds"]) == (
        "critical",
        300,
        600,
    )
    assert rule["cooldownSeconds"] == 0 and rule["enabled"] is True
    assert rule["quietHours"] == {"from": "22:00", "to": "07:00", "timeZone": "Europe/Paris"}
    assert rule["channels"] == [{"type": "websocket"}]
    assert parse(rule["createdAt"]) == parse(rule["updatedAt"]) == NOW
    async with env.pool.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM alert_configs WHERE id = $1::uuid", rule["id"])
    assert row is not None and row["user_id"] == user and row["for_seconds"] == 300

    path = f"{RULES}/{rule['id']}"
    status, one, _ = await env.call("GET", path, who, role, params={"userId": user})
    assert status == 200 and one == rule
    status, listed, _ = await env.call("GET", RULES, who, role, params={"userId": user})
    assert status == 200 and listed["rules"] == [rule] and listed["nextCursor"] is None

    patch = {"name": "renamed", "enabled": False, "quietHours": None, "severity": "info"}
    status, changed, _ = await env.call(
        "PATCH", path, who, role, params={"userId": user}, json=patch
    )
    assert status == 200, changed
    assert (changed["name"], changed["enabled"], changed["quietHours"]) == ("renamed", False, None)
    assert changed["severity"] == "info" and changed["params"] == stored

    status, _, _ = await env.call("DELETE", path, who, role, params={"userId": user})
    assert status == 204
    status, gone, _ = await env.call("GET", path, who, role, params={"userId": user})
    assert status == 404 and gone["error"]["code"] == "not_found"
    status, _, _ = await env.call("DELETE", path, who, role, params={"userId": user})
    assert status == 404


async def test_defaults_and_patching_params_and_kind(env: ApiEnv) -> None:
    user = new_user("rules")
    body = _rule("threshold", {"metric": "followers", "op": "below", "value": 10})
    status, rule, _ = await env.call("POST", RULES, user, json=body)
    assert status == 201, rule
    assert (rule["severity"], rule["forSeconds"], rule["keepFiringForSeconds"]) == (
        "warning",
        0,
        0,
    )
    assert rule["cooldownSeconds"] == 3600 and rule["quietHours"] is None
    path = f"{RULES}/{rule['id']}"
    # Params alone are checked against the stored kind.
    patch = {"params": {"metric": "followers", "op": "above", "value": 99}}
    status, changed, _ = await env.call("PATCH", path, user, json=patch)
    assert status == 200 and changed["params"]["op"] == "above"
    status, error, _ = await env.call(
        "PATCH", path, user, json={"params": {"op": "above", "value": 1}}
    )
    assert status == 422 and error["error"]["field"] == "$.params.metric"
    # A new kind needs its params.
    status, error, _ = await env.call("PATCH", path, user, json={"kind": "nodata"})
    assert status == 422 and error["error"]["field"] == "$.params"
    new_kind: dict[str, Any] = {"kind": "nodata", "params": {"seconds": 600}}
    status, changed, _ = await env.call("PATCH", path, user, json=new_kind)
    assert status == 200, changed
    assert changed["kind"] == "nodata" and changed["params"] == {"seconds": 600, "eventType": None}
    status, error, _ = await env.call("PATCH", path, user, json={})
    assert status == 422 and error["error"]["field"] == "$"


async def test_paging_walks_every_rule_once(env: ApiEnv) -> None:
    user = new_user("rules")
    made = []
    for i in range(5):
        body = _rule("threshold", {"metric": "connections", "op": "above", "value": i})
        status, rule, _ = await env.call("POST", RULES, user, json=body)
        assert status == 201
        made.append(rule["id"])
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        status, page, _ = await env.call("GET", RULES, user, params=params)
        assert status == 200 and len(page["rules"]) <= 2
        seen += [r["id"] for r in page["rules"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    # Same created_at (the pinned clock): ordered by id.
    assert seen == sorted(made)
    status, error, _ = await env.call("GET", RULES, user, params={"cursor": "nope"})
    assert status == 400 and error["error"]["field"] == "cursor"
    status, error, _ = await env.call("GET", RULES, user, params={"limit": "0"})
    assert status == 400 and error["error"]["field"] == "limit"


async def test_another_users_rule_is_a_404_and_an_admin_reaches_it(env: ApiEnv) -> None:
    owner, other = new_user("rules"), new_user("rules")
    body = _rule("threshold", {"metric": "profileViews", "op": "above", "value": 1})
    status, rule, _ = await env.call("POST", RULES, owner, json=body)
    assert status == 201
    path = f"{RULES}/{rule['id']}"
    for method, json in (("GET", None), ("PATCH", {"name": "mine"}), ("DELETE", None)):
        status, error, _ = await env.call(method, path, other, json=json)
        assert status == 404 and error["error"]["code"] == "not_found", method
    status, listed, _ = await env.call("GET", RULES, other)
    assert status == 200 and listed["rules"] == []
    status, error, _ = await env.call("GET", path, other, params={"userId": owner})
    assert status == 403 and error["error"]["field"] == "userId"
    # The admin names the owner; without it, its own (none).
    status, found, _ = await env.call("GET", path, ADMIN, "admin", params={"userId": owner})
    assert status == 200 and found["id"] == rule["id"]
    status, _, _ = await env.call("GET", path, ADMIN, "admin")
    assert status == 404
    status, changed, _ = await env.call(
        "PATCH", path, ADMIN, "admin", params={"userId": owner}, json={"name": "by admin"}
    )
    assert status == 200 and changed["name"] == "by admin"
    status, _, _ = await env.call("DELETE", path, ADMIN, "admin", params={"userId": owner})
    assert status == 204
    status, _, _ = await env.call("GET", path, owner)
    assert status == 404
    # Not a uuid: a 404 too.
    status, _, _ = await env.call("GET", f"{RULES}/not-a-uuid", owner)
    assert status == 404


async def test_a_health_rule_is_refused_to_a_user(env: ApiEnv) -> None:
    user = new_user("rules")
    body = _rule("health", {"check": "redisDown", "value": 30})
    status, error, _ = await env.call("POST", RULES, user, json=body)
    assert status == 403 and error["error"]["field"] == "$.kind"
    threshold = _rule("threshold", {"metric": "followers", "op": "above", "value": 1})
    status, rule, _ = await env.call("POST", RULES, user, json=threshold)
    assert status == 201
    path = f"{RULES}/{rule['id']}"
    status, error, _ = await env.call("PATCH", path, user, json=body)
    assert status == 403 and error["error"]["field"] == "$.kind"
    # An admin's health rule on the user's behalf: the user may not change it either.
    status, health, _ = await env.call(
        "POST", RULES, ADMIN, "admin", params={"userId": user}, json=body
    )
    assert status == 201, health
    status, error, _ = await env.call("PATCH", f"{RULES}/{health['id']}", user, json={"name": "x"})
    assert status == 403 and error["error"]["field"] == "$.kind"
    status, _, _ = await env.call("GET", f"{RULES}/{health['id']}", user)
    assert status == 200


def _threshold(**params: Any) -> dict[str, Any]:
    return {"metric": "profileViews", "op": "above", "value": 1, **params}


# (body, status, field) of each refusal.
INVALID: list[tuple[dict[str, Any], int, str]] = [
    ({"kind": "threshold", "params": _threshold()}, 422, "$.name"),
    (_rule("threshold", _threshold(), name=""), 422, "$.name"),
    (_rule("weather", {}), 422, "$.kind"),
    ({"name": "n", "kind": "threshold"}, 422, "$.params"),
    (_rule("threshold", _threshold(), severity="fatal"), 422, "$.severity"),
    (_rule("threshold", _threshold(), forSeconds=-1), 422, "$.forSeconds"),
    (_rule("threshold", _threshold(), forSeconds=8 * 86400), 422, "$.forSeconds"),
    (_rule("threshold", _threshold(), keepFiringForSeconds=-5), 422, "$.keepFiringForSeconds"),
    (_rule("threshold", _threshold(), cooldownSeconds=10**9), 422, "$.cooldownSeconds"),
    (_rule("threshold", _threshold(), enabled="yes"), 422, "$.enabled"),
    (_rule("threshold", _threshold(), extra=1), 422, "$.extra"),
    (_rule("threshold", _threshold(), channels=[]), 422, "$.channels"),
    (_rule("threshold", _threshold(), channels=[{"type": "pager"}]), 422, "$.channels[0].type"),
    (_rule("threshold", _threshold(metric="likesPerDay")), 422, "$.params.metric"),
    (_rule("threshold", {"op": "above", "value": 1}), 422, "$.params.metric"),
    (_rule("threshold", _threshold(op="over")), 422, "$.params.op"),
    (_rule("threshold", _threshold(value="high")), 422, "$.params.value"),
    (_rule("threshold", _threshold(value=1e13)), 422, "$.params.value"),
    (_rule("threshold", _threshold(unit="x")), 422, "$.params.unit"),
    (
        _rule("change", {"metric": "profileViews", "op": "up", "percent": 0, "windowSeconds": 60}),
        422,
        "$.params.percent",
    ),
    (
        _rule("change", {"metric": "profileViews", "op": "up", "percent": 5, "windowSeconds": 1}),
        422,
        "$.params.windowSeconds",
    ),
    (
        _rule(
            "change", {"metric": "profileViews", "op": "above", "percent": 5, "windowSeconds": 600}
        ),
        422,
        "$.params.op",
    ),  # fmt: skip
    (_rule("goal", {"goalId": "nope", "event": "reached"}), 422, "$.params.goalId"),
    (
        _rule("goal", {"goalId": "00000000-0000-0000-0000-000000000000", "event": "reached"}),
        422,
        "$.params.goalId",
    ),
    (_rule("nodata", {"seconds": 0}), 422, "$.params.seconds"),
    (_rule("nodata", {"seconds": 600, "eventType": "tweet"}), 422, "$.params.eventType"),
    (_rule("custom", {"expression": ""}), 422, "$.params.expression"),
    (_rule("custom", {}), 422, "$.params.expression"),
    (
        _rule(
            "threshold",
            _threshold(),
            quietHours={"from": "24:00", "to": "07:00", "timeZone": "UTC"},
        ),
        422,
        "$.quietHours.from",
    ),  # fmt: skip
    (
        _rule(
            "threshold", _threshold(), quietHours={"from": "22:00", "to": "7:00", "timeZone": "UTC"}
        ),
        422,
        "$.quietHours.to",
    ),  # fmt: skip
    (
        _rule(
            "threshold",
            _threshold(),
            quietHours={"from": "22:00", "to": "22:00", "timeZone": "UTC"},
        ),
        422,
        "$.quietHours.to",
    ),  # fmt: skip
    (
        _rule(
            "threshold",
            _threshold(),
            quietHours={"from": "22:00", "to": "07:00", "timeZone": "Mars/Olympus_Mons"},
        ),
        422,
        "$.quietHours.timeZone",
    ),  # fmt: skip
    (
        _rule(
            "threshold",
            _threshold(),
            quietHours={"from": "22:00", "to": "07:00", "timeZone": "../../etc/passwd"},
        ),
        422,
        "$.quietHours.timeZone",
    ),  # fmt: skip
    (
        _rule("threshold", _threshold(), quietHours={"from": "22:00", "to": "07:00"}),
        422,
        "$.quietHours.timeZone",
    ),
]


@pytest.mark.parametrize(("body", "status", "field"), INVALID, ids=[f for _, _, f in INVALID])
async def test_every_refusal_names_its_field(
    env: ApiEnv, body: dict[str, Any], status: int, field: str
) -> None:
    user = new_user("rules")
    got, error, _ = await env.call("POST", RULES, user, json=body)
    assert got == status, error
    assert error["error"]["code"] == "invalid_rule" and error["error"]["field"] == field, error
    assert error["error"]["message"]
    async with env.pool.acquire() as conn:
        assert (
            await conn.fetchval("SELECT count(*) FROM alert_configs WHERE user_id = $1", user) == 0
        )


async def test_malformed_json_and_wrong_media_type(env: ApiEnv) -> None:
    user = new_user("rules")
    headers = {"Content-Type": "application/json"}
    status, error, _ = await env.call("POST", RULES, user, data=b"{", headers=headers)
    assert status == 400 and error["error"]["code"] == "malformed_json"
    status, error, _ = await env.call("POST", RULES, user, data=b"x", headers={
        "Content-Type": "text/plain"
    })  # fmt: skip
    assert status == 415


async def test_another_users_goal_is_refused(env: ApiEnv) -> None:
    owner, other = new_user("rules"), new_user("rules")
    goal_id = await _goal(env, owner)
    body = _rule("goal", {"goalId": goal_id, "event": "reached"})
    status, error, _ = await env.call("POST", RULES, other, json=body)
    assert status == 422 and error["error"]["field"] == "$.params.goalId"
    status, rule, _ = await env.call("POST", RULES, owner, json=body)
    assert status == 201 and rule["params"]["marginPercent"] == 0


GOOD_EXPRESSIONS = [
    "profileViews > 2.0 * profileViews_prev7d && engagementRate < 0.02",
    "profileViews > 10",
    "!(followers >= followers_prev30d) || connections - connections_prev1d < -5.0",
    "searchAppearances / double(7) > 3.5 ? true : influenceScore < 20.0",
    "profileViews\n  > profileViews_prev1d",
]
# (expression, what the message must say: the position, or the problem).
BAD_EXPRESSIONS = [
    ("profileViews > > 2", "at line 1, column 16"),
    ("profileViews > 2.0 &&", "at line 1, column 22"),
    ("profileViews > 1.0 &&\n  likesPerDay < 2.0", "at line 2, column 3: unknown variable"),
    ("profileViews.prev7d > 1.0", "does not evaluate"),
    ("size(profileViews) > 1", "at line 1, column 1: 'size' is not allowed"),
    ("[1.0, 2.0].all(x, x > profileViews)", "at line 1, column 16: unknown variable 'x'"),
    ("profileViews > 2 * profileViews_prev7d", "does not evaluate"),
    ("profileViews + 1.0", "must be a boolean"),
    ("profileViews in [1.0, 2.0]", "'in' is not allowed"),
    ("__import__('os').system('true')", "at line 1, column 1"),
    ("(" * 200 + "profileViews > 1.0" + ")" * 200, "line 1"),
    ("profileViews > 1.0 || " * 60 + "true", f"length <= {MAX_EXPRESSION_CHARS}"),
]


@pytest.mark.parametrize("expression", GOOD_EXPRESSIONS)
async def test_good_custom_expressions_are_stored(env: ApiEnv, expression: str) -> None:
    user = new_user("rules")
    status, rule, _ = await env.call(
        "POST", RULES, user, json=_rule("custom", {"expression": expression})
    )
    assert status == 201, rule
    assert rule["params"] == {"expression": expression}


@pytest.mark.parametrize(
    ("expression", "said"), BAD_EXPRESSIONS, ids=[s for _, s in BAD_EXPRESSIONS]
)
async def test_bad_custom_expressions_are_refused_with_their_position(
    env: ApiEnv, expression: str, said: str
) -> None:
    user = new_user("rules")
    status, error, _ = await env.call(
        "POST", RULES, user, json=_rule("custom", {"expression": expression})
    )
    assert status == 422, error
    assert error["error"]["field"] == "$.params.expression"
    assert said in error["error"]["message"], error["error"]["message"]


# --- migration 0007 both ways, with the rules the seeder wrote before it -------------------

_OLD_SEED = (
    "INSERT INTO alert_configs (user_id, name, metric, condition, threshold, window_seconds, "
    "cooldown_seconds, severity) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
)
_OLD_ROWS = [
    ("demo-1", "Profile views spike", "profileViews", "above", 308.0, 3600, 3600, "info"),
    ("demo-1", "Engagement dropping", "engagementRate", "below", 0.0175, 3600, 86400, "warning"),
    ("demo-2", "Views falling", "profileViews", "change_pct_below", 30.0, 604800, 0, "critical"),
    ("demo-2", "Views rising", "profileViews", "change_pct_above", 50.0, 86400, 60, "info"),
]


async def _old_rows(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await conn.fetch("SELECT * FROM alert_configs ORDER BY name")
    return [dict(r) for r in rows]


async def test_migration_0007_keeps_the_seeded_rules_both_ways(scratch_db: ScratchDb) -> None:
    conn = await connect(await scratch_db())
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        await runner.up(conn, target=6)
        await conn.executemany(_OLD_SEED, _OLD_ROWS)
        before = await _old_rows(conn)

        assert [m.version for m in await runner.up(conn, target=7)] == [7]
        rows = await conn.fetch(
            "SELECT name, kind, params::text, channels::text, for_seconds, quiet_hours "
            "FROM alert_configs ORDER BY name"
        )
        got = {r["name"]: (r["kind"], orjson.loads(r["params"])) for r in rows}
        assert got == {
            "Engagement dropping": (
                "threshold",
                {"metric": "engagementRate", "op": "below", "value": 0.0175},
            ),
            "Profile views spike": (
                "threshold",
                {"metric": "profileViews", "op": "above", "value": 308},
            ),
            "Views falling": (
                "change",
                {"metric": "profileViews", "op": "down", "percent": 30, "windowSeconds": 604800},
            ),
            "Views rising": (
                "change",
                {"metric": "profileViews", "op": "up", "percent": 50, "windowSeconds": 86400},
            ),
        }
        assert {orjson.loads(r["channels"])[0]["type"] for r in rows} == {"websocket"}
        assert {(r["for_seconds"], r["quiet_hours"]) for r in rows} == {(0, None)}
        # The constraints hold: a threshold without a value, a bad op, bad quiet hours.
        for params, quiet in (
            ('{"metric": "x", "op": "above"}', None),
            ('{"metric": "x", "op": "sideways", "value": 1}', None),
            ('{"metric": "x", "op": "above", "value": 1}', '{"from": "25:00", "to": "07:00"}'),
        ):
            with pytest.raises(asyncpg.CheckViolationError):
                await conn.execute(
                    "INSERT INTO alert_configs (user_id, name, kind, params, quiet_hours) "
                    "VALUES ('u', 'n', 'threshold', $1::jsonb, $2::jsonb)",
                    params,
                    quiet,
                )

        # Down restores 0003's rows exactly, the kinds it cannot hold aside.
        await conn.execute(
            "INSERT INTO alert_configs (user_id, name, kind, params) "
            "VALUES ('demo-3', 'Quiet', 'nodata', '{\"seconds\": 600}')"
        )
        assert [m.version for m in await runner.down(conn, to=6)] == [7]
        assert await _old_rows(conn) == before

        # And the seeder of today writes rules the new schema accepts.
        await runner.up(conn)
        now = datetime(2026, 11, 1, tzinfo=UTC)
        await add_goals_and_rules(conn, ["seed-a", "seed-b"], 1, now)
        seeded = await conn.fetch(
            "SELECT kind, params ->> 'metric' AS metric FROM alert_configs "
            "WHERE user_id LIKE 'seed-%' ORDER BY 2"
        )
        assert [(r["kind"], r["metric"]) for r in seeded] == [
            ("threshold", "engagementRate"),
            ("threshold", "engagementRate"),
            ("threshold", "profileViews"),
            ("threshold", "profileViews"),
        ]
        await runner.down(conn, to=6)
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM alert_configs WHERE user_id LIKE 'seed-%' "
                "AND condition IN ('above', 'below')"
            )
            == 4
        )
    finally:
        await conn.close()


async def test_paging_is_exact_to_the_microsecond(env: ApiEnv) -> None:
    """Cursors carry created_at to the microsecond: rules at distinct, odd microseconds are each
    listed once, in order, across pages."""
    user = new_user("rules")
    times = [NOW + timedelta(seconds=i, microseconds=999_999 - i) for i in range(7)]
    async with env.pool.acquire() as conn:
        ids = [
            str(
                await conn.fetchval(
                    "INSERT INTO alert_configs (user_id, name, kind, params, created_at) "
                    "VALUES ($1, 'r', 'nodata', '{\"seconds\": 600}', $2) RETURNING id",
                    user,
                    t,
                )
            )
            for t in times
        ]
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
        status, page, _ = await env.call("GET", RULES, user, params=params)
        assert status == 200
        seen += [r["id"] for r in page["rules"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert seen == ids
