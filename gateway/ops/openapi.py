"""`GET /openapi.json`: the HTTP contract as OpenAPI 3.1.

Written by hand next to the routes rather than generated, so the contract is reviewed when it
changes; `tests/test_openapi.py` walks `app.router` and fails when a route is missing here (or
documented but gone), and a schemathesis run checks every response against these schemas.
Route groups that keep their description next to their routes contribute it here
(`gateway/ops/openapi_api.py` for `/api/v1`); `document()` merges them.

Request bodies are the exception: a body a msgspec decoder reads is published as that decoder's
type renders (gateway/ops/openapi_bodies.py), and so are the WebSocket's messages. An operation
here says which body it takes, `required` and a `description` of what the handler checks
after decoding; `document()` writes the schemas in.
"""

from __future__ import annotations

from typing import Any, Final

import orjson
from aiohttp import web

from gateway.http.bodies import MAX_RATIO
from gateway.http.ratelimit import EXEMPT_PATHS
from gateway.ingest.wait import WAIT_MAX_S, WAIT_MIN_S
from gateway.ops.openapi_api import API_PATHS, API_SCHEMAS
from gateway.ops.openapi_bodies import NDJSON, WS_MESSAGES, with_bodies
from gateway.ops.openapi_bodies import SCHEMAS as BODY_SCHEMAS
from gateway.ops.seed import SEED_PATHS

__all__ = ["PATHS", "document", "routes"]

routes = web.RouteTableDef()

JSON: Final = "application/json"
_BEARER: Final[list[dict[str, list[str]]]] = [{"bearer": []}]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}, **extra}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


_RETRY_AFTER: Final = {"Retry-After": {"schema": {"type": "string"}}}
_RATE_LIMITED: Final = _json(_ref("Error"), "rate limit spent", headers=_RETRY_AFTER)
_UNAVAILABLE: Final = _json(_ref("Error"), "a dependency is unavailable", headers=_RETRY_AFTER)


def _errors(*statuses: int) -> dict[str, Any]:
    texts = {
        400: "malformed request",
        401: "missing or invalid bearer token",
        403: "the token's role may not do this",
        409: "conflict",
        413: "request body too large",
        415: "unsupported Content-Type or Content-Encoding",
        422: "the request is well-formed but invalid",
        503: "a dependency is unavailable",
        504: "not committed in time",
    }
    out: dict[str, Any] = {str(s): _error(texts[s]) for s in statuses}
    if 503 in statuses:
        out["503"] = _UNAVAILABLE
    out["429"] = _RATE_LIMITED
    return out


_ANY_OBJECT: Final = {"type": "object", "additionalProperties": True}
_WAIT_PARAMS: Final = [
    {
        "name": "wait",
        "in": "query",
        "description": "answer only once every event is committed in TimescaleDB",
        "schema": {"type": "string", "enum": ["true", "false", "1", "0", "yes", "no"]},
    },
    {
        "name": "timeout",
        "in": "query",
        "description": "seconds to wait; only with wait=true (default 10)",
        "schema": {"type": "number", "minimum": WAIT_MIN_S, "maximum": WAIT_MAX_S},
    },
]
_INGEST_ERRORS: Final = _errors(400, 401, 403, 413, 415, 422, 503, 504)
# What every ingest body may be besides its JSON (gateway/http/bodies.py inflates it).
_CODINGS: Final = (
    "The body may be sent with `Content-Encoding: gzip` (or `x-gzip`) or `deflate` (zlib); "
    "INGEST_MAX_BYTES (default 1 MiB) bounds it both as sent and inflated, and it may expand "
    f"at most {MAX_RATIO} times (413); another coding is a 415, a body that does not inflate "
    "a 400."
)

SCHEMAS: Final[dict[str, Any]] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "field": {"type": "string"},
                },
            }
        },
    },
    "EventResult": {
        "type": "object",
        "required": ["event_id", "status"],
        "properties": {
            "event_id": {"type": "string"},
            "status": {"type": "string", "enum": ["accepted", "duplicate"]},
        },
    },
    "BatchResult": {
        "type": "object",
        "required": ["accepted", "duplicates", "rejected", "results"],
        "properties": {
            "accepted": {"type": "integer"},
            "duplicates": {"type": "integer"},
            "rejected": {"type": "integer"},
            "results": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["index", "status"],
                    "properties": {
                        "index": {"type": "integer"},
                        "event_id": {"type": "string"},
                        "status": {"enum": ["accepted", "duplicate", "rejected"]},
                        "error": {"type": "object"},
                    },
                },
            },
        },
    },
    "Checks": {
        "type": "object",
        "additionalProperties": {
            "type": "object",
            "required": ["ok", "ms"],
            "properties": {
                "ok": {"type": "boolean"},
                "ms": {"type": "number"},
                "reason": {"type": "string"},
            },
        },
    },
}

PATHS: Final[dict[str, dict[str, Any]]] = {
    "/health": {
        "get": {
            "summary": "Liveness: the process answers",
            "responses": {"200": _json(_ANY_OBJECT, "alive")},
        }
    },
    "/ready": {
        "get": {
            "summary": "Readiness: Redis, TimescaleDB and migrations",
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["status", "checks"],
                        "properties": {"status": {"const": "ready"}, "checks": _ref("Checks")},
                    },
                    "ready",
                ),
                "503": _json(
                    {
                        "allOf": [
                            _ref("Error"),
                            {
                                "type": "object",
                                "required": ["checks"],
                                "properties": {"checks": _ref("Checks")},
                            },
                        ]
                    },
                    "not ready; one reason per failing check",
                ),
            },
        }
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus text exposition",
            "responses": {
                "200": {
                    "description": "metrics",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
    },
    "/status": {
        "get": {
            "summary": "Streams, groups, DLQ, database and process figures",
            "description": "Producer and admin tokens only; a user token gets 403.",
            "security": _BEARER,
            "responses": {"200": _json(_ANY_OBJECT, "status"), **_errors(401, 403)},
        }
    },
    "/ws": {
        "get": {
            "summary": "WebSocket dashboards (also on WS_PORT at `/`); see the README",
            "description": "Upgrade with a bearer token in the Authorization header, the "
            "`token` query parameter or Sec-WebSocket-Protocol.",
            "responses": {
                "101": {"description": "switched to the WebSocket protocol"},
                **_errors(400, 401, 403),
            },
            "x-websocket-messages": WS_MESSAGES,
        }
    },
    "/openapi.json": {
        "get": {
            "summary": "This document",
            "responses": {"200": _json(_ANY_OBJECT, "OpenAPI 3.1")},
        }
    },
    "/ingest/event": {
        "post": {
            "summary": "Ingest one event",
            "security": _BEARER,
            "parameters": [
                *_WAIT_PARAMS,
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "description": "the event's `event_id`; one given in the body must equal it",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 128},
                },
            ],
            "requestBody": {
                "required": True,
                "description": "One event (UTF-8 JSON). A user token may send only its own "
                "events (403). " + _CODINGS,
                "content": {},
            },
            "responses": {
                "202": _json(_ref("EventResult"), "accepted or a duplicate"),
                "200": _json(_ref("EventResult"), "committed (wait=true)"),
                **_INGEST_ERRORS,
            },
        }
    },
    "/ingest/events": {
        "post": {
            "summary": "Ingest a batch (JSON array or NDJSON)",
            "security": _BEARER,
            "parameters": _WAIT_PARAMS,
            "requestBody": {
                "required": True,
                "description": "1 to INGEST_MAX_BATCH (default 1,000) events (413 past it): "
                f"a JSON array, or `{NDJSON}` with one event per line (blank lines ignored; a "
                "line that is not an event is one rejected item). Items stand alone: each "
                "invalid one is rejected in `results`, the others accepted. " + _CODINGS,
                "content": {},
            },
            "responses": {
                "202": _json(_ref("BatchResult"), "at least one accepted or duplicate"),
                "200": _json(_ref("BatchResult"), "committed (wait=true)"),
                **_INGEST_ERRORS,
                "422": _json({"anyOf": [_ref("BatchResult"), _ref("Error")]}, "nothing accepted"),
            },
        }
    },
    "/admin/migrate": {
        "post": {
            "summary": "Apply pending migrations (admin)",
            "security": _BEARER,
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["applied", "version"],
                        "properties": {
                            "applied": {"type": "array"},
                            "version": {"type": "integer"},
                        },
                    },
                    "what ran",
                ),
                **_errors(401, 403, 409, 503),
            },
        }
    },
    "/admin/dlq": {
        "get": {
            "summary": "Dead letters, oldest first (admin)",
            "security": _BEARER,
            "parameters": [
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 500},
                },
                {
                    "name": "after",
                    "in": "query",
                    "description": "the last id of the previous page; each part below 2^64",
                    "schema": {"type": "string", "pattern": "^[0-9]{1,20}-[0-9]{1,20}$"},
                },
            ],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["total", "letters", "next"],
                        "properties": {
                            "total": {"type": "integer"},
                            "letters": {"type": "array"},
                            "next": {"type": ["string", "null"]},
                        },
                    },
                    "a page of dead letters",
                ),
                **_errors(400, 401, 403, 503),
            },
        }
    },
    "/admin/dlq/replay": {
        "post": {
            "summary": "Replay dead letters into their partition streams, each once (admin)",
            "security": _BEARER,
            "requestBody": {
                "required": True,
                "description": "Either `ids` (at most 10,000 dead-letter ids such as `1-0`) or "
                '`"all": true`, not both (422).',
                "content": {},
            },
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["replayed", "results", "more"],
                        "properties": {
                            "replayed": {"type": "integer"},
                            "results": {"type": "array"},
                            "more": {"type": "boolean"},
                        },
                    },
                    "what was replayed",
                ),
                **_errors(401, 403, 422, 503),
            },
        }
    },
}


# Refusals that layers in front of every handler answer, whatever the route group wrote down:
# the rate limiter (gateway/http/ratelimit.py) and, for a request body, aiohttp's reader
# (client_max_size: 413; a body it cannot read: 400, see gateway/errors.py) and the coding
# check (a `Content-Encoding` where no handler inflates: 415, gateway/http/bodies.py).
_LAYER_ERRORS: Final = {
    "400": _error("malformed request"),
    "413": _error("request body too large"),
    "415": _error("unsupported Content-Type or Content-Encoding"),
    "429": _RATE_LIMITED,
}


def _with_layer_errors(paths: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """`paths` with the layers' refusals added where an operation can get them and does not
    list them yet (a route's own, more specific description wins). Every 429 carries
    `Retry-After`, which the limiter (and the ingest backlog refusal) always sends."""
    out: dict[str, dict[str, Any]] = {}
    for path, operations in paths.items():
        out[path] = {}
        for method, operation in operations.items():
            statuses: list[str] = []
            if path not in EXEMPT_PATHS:
                statuses.append("429")
            if "requestBody" in operation:
                statuses += ["400", "413", "415"]
            responses = dict(operation["responses"])
            for status in statuses:
                responses.setdefault(status, _LAYER_ERRORS[status])
            if "429" in responses:
                own = responses["429"]
                responses["429"] = {**own, "headers": {**_RETRY_AFTER, **own.get("headers", {})}}
            out[path][method] = {**operation, "responses": responses}
    return out


def document() -> dict[str, Any]:
    clash = (SCHEMAS.keys() | API_SCHEMAS.keys()) & BODY_SCHEMAS.keys()
    if clash:
        raise ValueError(f"hand-written schemas take generated names: {sorted(clash)}")
    return {
        "openapi": "3.1.0",
        "info": {"title": "inergize-analytics gateway", "version": "0.1.0"},
        "paths": _with_layer_errors(with_bodies({**PATHS, **API_PATHS, **SEED_PATHS})),
        "components": {
            "schemas": {**SCHEMAS, **API_SCHEMAS, **BODY_SCHEMAS},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }


_BODY: Final = orjson.dumps(document())


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=_BODY, content_type=JSON)
