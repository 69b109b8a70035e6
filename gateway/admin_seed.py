"""Development data over HTTP (admin role; refused with 403 when APP_ENV=production).

- `POST /admin/seed` `{"users": 5, "days": 30, "seed": 7}`: load deterministic data (bounded
  here to 1,000 users x 365 days so a request answers in bounded time; the CLI has no cap).
- `GET /admin/seed/status`: the recorded seed runs.
- `DELETE /admin/seed`: remove everything the seeder wrote, and nothing else.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

import msgspec
from aiohttp import web

from gateway.auth import require_role
from gateway.errors import ApiError
from gateway.keys import DB_POOL, SETTINGS
from schemas.events import split_error
from seeder.generate import clear, seed, seed_status

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
    pool = await request.app[DB_POOL]()
    async with pool.acquire() as conn:
        report = await seed(conn, users=params.users, days=params.days, seed=params.seed)
    body_out: dict[str, Any] = {
        "users": report.users,
        "days": report.days,
        "seed": report.seed,
        "rows": report.rows,
        "seconds": round(report.seconds, 3),
    }
    return web.json_response(body_out, status=201)


@routes.get("/admin/seed/status")
async def get_seed_status(request: web.Request) -> web.Response:
    require_role(request, "admin")
    pool = await request.app[DB_POOL]()
    async with pool.acquire() as conn:
        return web.json_response({"runs": await seed_status(conn)})


@routes.delete("/admin/seed")
async def delete_seed(request: web.Request) -> web.Response:
    _guard(request)
    pool = await request.app[DB_POOL]()
    async with pool.acquire() as conn:
        return web.json_response({"removed": await clear(conn)})


_BEARER: Final[list[dict[str, list[str]]]] = [{"bearer": []}]
_ERROR: Final = {
    "description": "error",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_OBJECT: Final = {"type": "object"}

# The OpenAPI description of these routes, merged by gateway/openapi.py.
SEED_PATHS: Final[dict[str, dict[str, Any]]] = {
    "/admin/seed": {
        "post": {
            "summary": "Load deterministic development data (admin; not in production)",
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
                "201": {
                    "description": "loaded",
                    "content": {"application/json": {"schema": _OBJECT}},
                },
                **{s: _ERROR for s in ("400", "401", "403", "422", "429")},
            },
        },
        "delete": {
            "summary": "Remove everything the seeder wrote (admin; not in production)",
            "security": _BEARER,
            "responses": {
                "200": {
                    "description": "removed",
                    "content": {"application/json": {"schema": _OBJECT}},
                },
                **{s: _ERROR for s in ("401", "403", "429")},
            },
        },
    },
    "/admin/seed/status": {
        "get": {
            "summary": "Recorded seed runs (admin)",
            "security": _BEARER,
            "responses": {
                "200": {
                    "description": "runs",
                    "content": {"application/json": {"schema": _OBJECT}},
                },
                **{s: _ERROR for s in ("401", "403", "429")},
            },
        }
    },
}
