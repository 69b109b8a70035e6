"""The paths of `GET /openapi.json` that gateway/ops/openapi.py describes itself: the ops
routes (health, readiness, metrics, status, WebSocket, this document), ingest and the
dead-letter admin. Other route groups keep theirs next to their routes (`API_PATHS`,
`SEED_PATHS`); request bodies' `content` is left empty here and written in from the decoders'
types (gateway/ops/openapi_bodies.py).
"""

from __future__ import annotations

from typing import Any, Final

from gateway.api.rules import RULES
from gateway.http.bodies import MAX_RATIO
from gateway.ingest.wait import WAIT_MAX_S, WAIT_MIN_S
from gateway.ops.openapi_bodies import NDJSON, WS_MESSAGES
from gateway.ops.openapi_components import (
    ANY_OBJECT,
    BEARER,
    error_response,
    error_responses,
    json_response,
    ref,
)
from schemas.rules import HEALTH_CHECKS, KINDS, MAX_RULES_PER_USER

__all__ = ["PATHS", "RULE_PATHS"]

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
_INGEST_ERRORS: Final = error_responses(400, 401, 403, 413, 415, 422, 503, 504)
# What every ingest body may be besides its JSON (gateway/http/bodies.py inflates it).
_CODINGS: Final = (
    "The body may be sent with `Content-Encoding: gzip` (or `x-gzip`) or `deflate` (zlib); "
    "INGEST_MAX_BYTES (default 1 MiB) bounds it both as sent and inflated, and it may expand "
    f"at most {MAX_RATIO} times (413); another coding is a 415, a body that does not inflate "
    "a 400."
)

PATHS: Final[dict[str, dict[str, Any]]] = {
    "/health": {
        "get": {
            "summary": "Liveness: the process answers",
            "responses": {"200": json_response(ANY_OBJECT, "alive")},
        }
    },
    "/ready": {
        "get": {
            "summary": "Readiness: Redis, TimescaleDB and migrations",
            "responses": {
                "200": json_response(
                    {
                        "type": "object",
                        "required": ["status", "checks"],
                        "properties": {"status": {"const": "ready"}, "checks": ref("Checks")},
                    },
                    "ready",
                ),
                "503": json_response(
                    {
                        "allOf": [
                            ref("Error"),
                            {
                                "type": "object",
                                "required": ["checks"],
                                "properties": {"checks": ref("Checks")},
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
            "security": BEARER,
            "responses": {"200": json_response(ANY_OBJECT, "status"), **error_responses(401, 403)},
        }
    },
    "/ws": {
        "get": {
            "summary": "WebSocket dashboards (also on WS_PORT at `/`); see the README",
            "description": "Upgrade with a bearer token in the Authorization header, the "
            "`token` query parameter or Sec-WebSocket-Protocol.",
            "responses": {
                "101": {"description": "switched to the WebSocket protocol"},
                **error_responses(400, 401, 403),
            },
            "x-websocket-messages": WS_MESSAGES,
        }
    },
    "/openapi.json": {
        "get": {
            "summary": "This document",
            "responses": {"200": json_response(ANY_OBJECT, "OpenAPI 3.1")},
        }
    },
    "/ingest/event": {
        "post": {
            "summary": "Ingest one event",
            "security": BEARER,
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
                "202": json_response(ref("EventResult"), "accepted or a duplicate"),
                "200": json_response(ref("EventResult"), "committed (wait=true)"),
                **_INGEST_ERRORS,
            },
        }
    },
    "/ingest/events": {
        "post": {
            "summary": "Ingest a batch (JSON array or NDJSON)",
            "security": BEARER,
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
                "202": json_response(ref("BatchResult"), "at least one accepted or duplicate"),
                "200": json_response(ref("BatchResult"), "committed (wait=true)"),
                **_INGEST_ERRORS,
                "422": json_response(
                    {"anyOf": [ref("BatchResult"), ref("Error")]}, "nothing accepted"
                ),
            },
        }
    },
    "/admin/migrate": {
        "post": {
            "summary": "Apply pending migrations (admin)",
            "security": BEARER,
            "responses": {
                "200": json_response(
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
                **error_responses(401, 403, 409, 503),
            },
        }
    },
    "/admin/dlq": {
        "get": {
            "summary": "Dead letters, oldest first (admin)",
            "security": BEARER,
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
                "200": json_response(
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
                **error_responses(400, 401, 403, 503),
            },
        }
    },
    "/admin/dlq/replay": {
        "post": {
            "summary": "Replay dead letters into their partition streams, each once (admin)",
            "security": BEARER,
            "requestBody": {
                "required": True,
                "description": "Either `ids` (at most 10,000 dead-letter ids such as `1-0`) or "
                '`"all": true`, not both (422).',
                "content": {},
            },
            "responses": {
                "200": json_response(
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
                **error_responses(401, 403, 422, 503),
            },
        }
    },
}

# --- alert rules: /api/v1/alerts/rules (gateway/api/rules.py, README "Alert rules") --------
_RULE_USER: Final = {
    "name": "userId",
    "in": "query",
    "description": "admin only: whose rules (default: the token's subject)",
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,64}$"},
}
_RULE_ID: Final = {"name": "rule_id", "in": "path", "required": True, "schema": {"type": "string"}}
_TIME_OR_NULL: Final = {"type": ["string", "null"], "format": "date-time"}
_RULE: Final = {
    "type": "object",
    "required": [
        "id", "userId", "name", "kind", "params", "severity", "forSeconds",
        "keepFiringForSeconds", "cooldownSeconds", "quietHours", "channels", "enabled",
        "lastTriggeredAt", "createdAt", "updatedAt",
    ],
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "userId": {"type": "string"},
        "name": {"type": "string"},
        "kind": {"enum": list(KINDS)},
        "params": ANY_OBJECT,
        "severity": {"enum": ["info", "warning", "critical"]},
        "forSeconds": {"type": "integer", "minimum": 0},
        "keepFiringForSeconds": {"type": "integer", "minimum": 0},
        "cooldownSeconds": {"type": "integer", "minimum": 0},
        "quietHours": {"type": ["object", "null"]},
        "channels": {"type": "array", "items": ANY_OBJECT},
        "enabled": {"type": "boolean"},
        "lastTriggeredAt": _TIME_OR_NULL,
        "createdAt": {"type": "string", "format": "date-time"},
        "updatedAt": {"type": "string", "format": "date-time"},
    },
}  # fmt: skip
_NO_RULE: Final = {"404": error_response("no such rule for this user")}
_RULE_ERRORS: Final = {
    **error_responses(400, 401, 403, 503),
    "403": error_response("a producer token, a user token naming another user, or a user's "
                          "health rule (`field` is `$.kind`)"),
}  # fmt: skip
_PARAMS_TEXT: Final = (
    "`params` by `kind`: threshold `{metric, op: above|below, value}`; change `{metric, op: "
    "up|down, percent, windowSeconds}` (an earlier window of zero never fires); goal `{goalId "
    "(the user's), event: reached|offTrack, marginPercent, beforeSeconds}`; nodata `{seconds, "
    f"eventType|null}}`; health (admin only) `{{check: {'|'.join(HEALTH_CHECKS)}, value}}`; "
    "custom `{expression}`, a CEL boolean over catalogue metrics and `<metric>_prev1d|7d|30d` "
    "(a bad one is a 422 naming `$.params.expression`, with the line and column). Metrics are "
    "catalogue metrics, `quietHours.timeZone` an IANA zone; every 422 names its field."
)
# /api/v1 operations belong to API_PATHS (gateway/ops/openapi_api.py adds these to it; the
# test of tests/test_api_metrics.py holds API_PATHS to the /api/v1 routes served).
RULE_PATHS: Final[dict[str, dict[str, Any]]] = {
    RULES: {
        "get": {
            "summary": "The user's alert rules, oldest first, paged",
            "security": BEARER,
            "parameters": [
                _RULE_USER,
                {"name": "limit", "in": "query",
                 "schema": {"type": "integer", "minimum": 1, "maximum": 200}},
                {"name": "cursor", "in": "query", "description": "nextCursor of the previous page",
                 "schema": {"type": "string"}},
            ],
            "responses": {
                "200": json_response(
                    {
                        "type": "object",
                        "required": ["userId", "rules", "nextCursor"],
                        "properties": {
                            "userId": {"type": "string"},
                            "rules": {"type": "array", "items": _RULE},
                            "nextCursor": {"type": ["string", "null"]},
                        },
                    },
                    "a page of rules",
                ),
                **_RULE_ERRORS,
            },
        },
        "post": {
            "summary": "Create an alert rule",
            "security": BEARER,
            "parameters": [_RULE_USER],
            "requestBody": {"required": True, "description": _PARAMS_TEXT, "content": {}},
            "responses": {
                "201": json_response(_RULE, "created"),
                **_RULE_ERRORS,
                **error_responses(409, 415, 422),
                "409": error_response(f"the user has {MAX_RULES_PER_USER} rules already"),
            },
        },
    },
    f"{RULES}/{{rule_id}}": {
        "get": {
            "summary": "One alert rule",
            "security": BEARER,
            "parameters": [_RULE_ID, _RULE_USER],
            "responses": {"200": json_response(_RULE, "the rule"), **_RULE_ERRORS, **_NO_RULE},
        },
        "patch": {
            "summary": "Change an alert rule",
            "security": BEARER,
            "parameters": [_RULE_ID, _RULE_USER],
            "requestBody": {
                "required": True,
                "description": "At least one member (422 for `{}`); a new `kind` needs its "
                "`params`, and `params` alone is checked against the stored kind. " + _PARAMS_TEXT,
                "content": {},
            },
            "responses": {
                "200": json_response(_RULE, "the changed rule"),
                **_RULE_ERRORS,
                **_NO_RULE,
                **error_responses(415, 422),
            },
        },
        "delete": {
            "summary": "Delete an alert rule",
            "security": BEARER,
            "parameters": [_RULE_ID, _RULE_USER],
            "responses": {"204": {"description": "deleted"}, **_RULE_ERRORS, **_NO_RULE},
        },
    },
}  # fmt: skip
