"""`GET /openapi.json`: the HTTP contract as OpenAPI 3.1.

Written by hand next to the routes rather than generated, so the contract is reviewed when it
changes; `tests/test_openapi.py` walks `app.router` and fails when a route is missing here (or
documented but gone), and a schemathesis run checks every response against these schemas.
Route groups that keep their description next to their routes contribute it here
(`gateway/ops/openapi_api.py` for `/api/v1`); `document()` merges them. The paths described
here (ops, ingest, dead letters) are `openapi_paths.py`, their building blocks and the
hand-written component schemas `openapi_components.py`; this module assembles and serves.

Request bodies are the exception: a body a msgspec decoder reads is published as that decoder's
type renders (gateway/ops/openapi_bodies.py), and so are the WebSocket's messages. An operation
here says which body it takes, `required` and a `description` of what the handler checks
after decoding; `document()` writes the schemas in.
"""

from __future__ import annotations

from typing import Any, Final

import orjson
from aiohttp import web

from gateway.http.ratelimit import EXEMPT_PATHS
from gateway.ops.openapi_api import API_PATHS, API_SCHEMAS
from gateway.ops.openapi_bodies import SCHEMAS as BODY_SCHEMAS
from gateway.ops.openapi_bodies import with_bodies
from gateway.ops.openapi_components import (
    JSON,
    RATE_LIMITED,
    RETRY_AFTER,
    SCHEMAS,
    error_response,
)
from gateway.ops.openapi_paths import PATHS
from gateway.ops.seed import SEED_PATHS

__all__ = ["PATHS", "document", "routes"]

routes = web.RouteTableDef()

# Refusals that layers in front of every handler answer, whatever the route group wrote down:
# the rate limiter (gateway/http/ratelimit.py) and, for a request body, aiohttp's reader
# (client_max_size: 413; a body it cannot read: 400, see gateway/errors.py) and the coding
# check (a `Content-Encoding` where no handler inflates: 415, gateway/http/bodies.py).
_LAYER_ERRORS: Final = {
    "400": error_response("malformed request"),
    "413": error_response("request body too large"),
    "415": error_response("unsupported Content-Type or Content-Encoding"),
    "429": RATE_LIMITED,
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
                responses["429"] = {**own, "headers": {**RETRY_AFTER, **own.get("headers", {})}}
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
