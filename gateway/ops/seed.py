"""Development data over HTTP (admin role: 401 without a token, 403 for any other role).

- `POST /admin/seed` `{"users": 5, "days": 30, "seed": 7}` (every member optional; bounded
  to 1,000 users x 365 days; the CLI has no cap) starts a seed run in the background and
  answers at once:
  - 202 `{"run": "<id>", "status": "running", "statusUrl": "/admin/seed/status?run=<id>"}`,
    with `Location: <statusUrl>`: the run is recorded and going; poll the status URL.
  - 409 `seed_in_progress`: a run (named by `run` and `statusUrl` beside `error`) or a
    `DELETE /admin/seed` holds this database; one at a time across every replica.
  - 422 `invalid_parameter` with `field` (`$.days`) for a value out of range or an unknown
    member, 400 `malformed_json` for a body that is not JSON, 403 `forbidden_in_production`
    when APP_ENV=production, 503 `shutting_down` from a gateway on its way out.
- `GET /admin/seed/status?run=<id>` answers from Redis, so on any replica, for a day after the
  run's last change: 200 with `status` `running`; `succeeded` with `report` (users, days, seed,
  rows per table, seconds: what the synchronous endpoint answered); or `failed` with `error`
  `{"code", "message"}`: `cancelled` (its gateway shut down), `abandoned` (its gateway died),
  `lock_lost` or `seed_failed` (the seeder raised). What a failed run wrote stays until
  `DELETE /admin/seed`. 404 `not_found` (field `run`) for an unknown or expired id, 400
  `invalid_parameter` (field `run`) for one that is not 32 lowercase hex digits.
- `GET /admin/seed/status` without `run`: `{"runs": [...]}`, the runs recorded in the
  database's `seed_runs` (`finished_at` null while one is loading or if it was cut short).
- `DELETE /admin/seed`: remove everything the seeder wrote, and nothing else: 200
  `{"removed": {table: rows}}`; 409 `seed_in_progress` while a run loads; 403 in production.

How runs are locked and recorded: gateway/ops/seed_lock.py; tracked and cancelled:
gateway/ops/seed_jobs.py.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

import msgspec
from aiohttp import web

from gateway.auth import require_role
from gateway.errors import ApiError
from gateway.keys import DB_POOL, SETTINGS
from gateway.ops.seed_jobs import SEED_JOBS, SeedJobs, ShuttingDown, is_run_id, status_url
from gateway.ops.seed_lock import SeedBusy, SeedParams, read_run, with_seed_lock
from schemas.events import split_error
from seeder.generate import clear, seed_status

__all__ = ["SEED_PATHS", "routes"]

routes = web.RouteTableDef()


class SeedRequest(msgspec.Struct, forbid_unknown_fields=True):
    users: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 5
    days: Annotated[int, msgspec.Meta(ge=1, le=365)] = 30
    seed: Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)] = 7


_decoder = msgspec.json.Decoder(SeedRequest)


def _guard(request: web.Request) -> None:
    require_role(request, "admin")
    if request.app[SETTINGS].app_env == "production":
        raise ApiError(403, "forbidden_in_production", "seeding is refused when APP_ENV=production")


def _jobs(app: web.Application) -> SeedJobs:
    jobs = app.get(SEED_JOBS)
    if jobs is None:
        raise RuntimeError("seed runs are not tracked: create_app must call seed_jobs.setup(app)")
    return jobs


def _busy(e: SeedBusy) -> ApiError:
    extra = {"run": e.run, "statusUrl": status_url(e.run)} if e.run else {}
    return ApiError(409, "seed_in_progress", str(e), extra=extra)


@routes.post("/admin/seed")
async def post_seed(request: web.Request) -> web.Response:
    _guard(request)
    body = await request.read()
    try:
        params = _decoder.decode(body or b"{}")
    except msgspec.ValidationError as e:
        message, field = split_error(e)
        raise ApiError(422, "invalid_parameter", message, field) from None
    except msgspec.DecodeError as e:
        raise ApiError(400, "malformed_json", split_error(e)[0], "$") from None
    jobs = _jobs(request.app)
    try:
        run = await jobs.start(request.app, SeedParams(params.users, params.days, params.seed))
    except SeedBusy as e:
        raise _busy(e) from None
    except ShuttingDown as e:
        raise ApiError(503, "shutting_down", str(e)) from None
    url = status_url(run.run)
    body_out = {"run": run.run, "status": run.status, "statusUrl": url}
    return web.json_response(body_out, status=202, headers={"Location": url})


@routes.get("/admin/seed/status")
async def get_seed_status(request: web.Request) -> web.Response:
    require_role(request, "admin")
    runs = request.query.getall("run", [])
    if not runs:
        pool = await request.app[DB_POOL]()
        async with pool.acquire() as conn:
            return web.json_response({"runs": await seed_status(conn)})
    if len(runs) > 1 or not is_run_id(runs[0]):
        message = "run must be one id as POST /admin/seed answered it (32 lowercase hex digits)"
        raise ApiError(400, "invalid_parameter", message, "run")
    run = await read_run(request.app, runs[0])
    if run is None:
        raise ApiError(404, "not_found", "no such seed run (or it ended over a day ago)", "run")
    return web.json_response(msgspec.to_builtins(run))


@routes.delete("/admin/seed")
async def delete_seed(request: web.Request) -> web.Response:
    _guard(request)
    pool = await request.app[DB_POOL]()

    async def remove() -> dict[str, int]:
        async with pool.acquire() as conn:
            return await clear(conn)

    try:
        removed = await with_seed_lock(request.app, remove)
    except SeedBusy as e:
        raise _busy(e) from None
    return web.json_response({"removed": removed})


_BEARER: Final[list[dict[str, list[str]]]] = [{"bearer": []}]
_ERROR_REF: Final = {"$ref": "#/components/schemas/Error"}
_ERROR: Final = {"description": "error", "content": {"application/json": {"schema": _ERROR_REF}}}
_OBJECT: Final = {"type": "object"}
_RUN_ID: Final = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
_INT: Final = {"type": "integer"}


def _json(description: str, schema: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}},
        **extra,
    }


_BUSY: Final = _json(
    "a seed run (named by `run`) or a clear holds this database",
    {
        "allOf": [
            _ERROR_REF,
            {"type": "object", "properties": {"run": _RUN_ID, "statusUrl": {"type": "string"}}},
        ]
    },
)
_RUN: Final = {
    "type": "object",
    "required": ["run", "status", "params", "startedAt"],
    "properties": {
        "run": _RUN_ID,
        "status": {"enum": ["running", "succeeded", "failed"]},
        "params": {
            "type": "object",
            "required": ["users", "days", "seed"],
            "properties": {"users": _INT, "days": _INT, "seed": _INT},
        },
        "startedAt": {"type": "string", "format": "date-time"},
        "finishedAt": {"type": "string", "format": "date-time"},
        "report": {
            "type": "object",
            "required": ["users", "days", "seed", "rows", "seconds"],
            "properties": {
                "users": {"type": "array", "items": {"type": "string"}},
                "days": _INT,
                "seed": _INT,
                "rows": {"type": "object", "additionalProperties": _INT},
                "seconds": {"type": "number"},
            },
        },
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"enum": ["cancelled", "abandoned", "lock_lost", "seed_failed"]},
                "message": {"type": "string"},
            },
        },
    },
}
_RUNS: Final = {
    "type": "object",
    "required": ["runs"],
    "properties": {"runs": {"type": "array", "items": _OBJECT}},
}

# The OpenAPI description of these routes, merged by gateway/ops/openapi.py.
SEED_PATHS: Final[dict[str, dict[str, Any]]] = {
    "/admin/seed": {
        "post": {
            "summary": "Start loading deterministic development data (admin; not in production)",
            "security": _BEARER,
            "requestBody": {
                "required": False,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "users": {"type": "integer", "minimum": 1, "maximum": 1000},
                                "days": {"type": "integer", "minimum": 1, "maximum": 365},
                                "seed": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
                            },
                        }
                    }
                },
            },
            "responses": {
                "202": _json(
                    "started: poll `statusUrl`",
                    {
                        "type": "object",
                        "required": ["run", "status", "statusUrl"],
                        "properties": {
                            "run": _RUN_ID,
                            "status": {"const": "running"},
                            "statusUrl": {"type": "string"},
                        },
                    },
                    headers={"Location": {"schema": {"type": "string"}, "required": True}},
                ),
                "409": _BUSY,
                **{s: _ERROR for s in ("400", "401", "403", "422", "429", "503")},
            },
        },
        "delete": {
            "summary": "Remove everything the seeder wrote (admin; not in production)",
            "security": _BEARER,
            "responses": {
                "200": _json("removed", _OBJECT),
                "409": _BUSY,
                **{s: _ERROR for s in ("401", "403", "429")},
            },
        },
    },
    "/admin/seed/status": {
        "get": {
            "summary": "A seed run's state (`run`; from any replica), else the recorded runs",
            "security": _BEARER,
            "parameters": [
                {
                    "name": "run",
                    "in": "query",
                    "description": "the id POST /admin/seed answered",
                    "schema": _RUN_ID,
                }
            ],
            "responses": {
                "200": _json(
                    "the run, or without `run` the recorded runs", {"oneOf": [_RUN, _RUNS]}
                ),
                **{s: _ERROR for s in ("400", "401", "403", "404", "429")},
            },
        }
    },
}
