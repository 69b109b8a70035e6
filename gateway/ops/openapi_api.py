"""The analytics API's part of `GET /openapi.json`: paths and schemas to merge into
gateway/ops/openapi.py's `PATHS` and `SCHEMAS` (kept here, next to the routes they describe).
The goals' request schemas are generated from the structs `gateway/api/goals.py` decodes with
(gateway/ops/openapi_bodies.py); their operations here say what is checked after decoding."""

from __future__ import annotations

from typing import Any, Final

from gateway.api.system import BUCKETS, KINDS
from gateway.ops.openapi_paths import RULE_PATHS
from schemas.aggregations import AGGREGATIONS
from schemas.events import EVENT_TYPES
from schemas.metrics import CATALOGUE

__all__ = ["API_PATHS", "API_SCHEMAS"]

_JSON: Final = "application/json"
_BEARER: Final[list[dict[str, list[str]]]] = [{"bearer": []}]
_ANY: Final = {"type": "object", "additionalProperties": True}
_TIME: Final = {"type": "string", "format": "date-time"}


def _ok(schema: dict[str, Any], description: str = "the answer") -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    error = {"$ref": "#/components/schemas/Error"}
    texts = {
        400: "a query parameter is invalid; `field` names it",
        401: "missing or invalid bearer token",
        403: "producer token, or a user token naming another user",
        404: "no such goal for this user",
        409: "the user has too many goals",
        415: "expected application/json",
        422: "the body is well-formed but invalid; `field` names the value",
        503: "TimescaleDB is unavailable",
    }
    # Every operation reads `userId` (an admin's choice of user), so any may answer 400.
    return {str(s): _ok(error, texts[s]) for s in (400, *statuses, 401, 403, 503)}


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "description": description, "schema": schema}


_USER: Final = _query("userId", "admin only: whose data (default: the token's subject)", {
    "type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,64}$"
})  # fmt: skip
_FROM: Final = _query("from", "range start (RFC 3339 with a zone)", _TIME)
_TO: Final = _query("to", "range end, exclusive (default now)", _TIME)
_CACHED: Final = {"X-Cache": {"schema": {"enum": ["hit", "miss", "error"]}}}


def _series(buckets: list[str]) -> dict[str, Any]:
    return {
        "get": {
            "security": _BEARER,
            "parameters": [
                _USER,
                _FROM,
                _TO,
                _query("bucket", "bucket width (default 1h)", {"enum": buckets}),
            ],
            "responses": {
                "200": {**_ok({"$ref": "#/components/schemas/Series"}), "headers": _CACHED},
                **_errors(400),
            },
        }
    }


# The feed's cursor is unpadded base64url (api_events.encode_cursor); `type=post_like,post_share`
# is what api_events._types accepts (it strips each name).
_CURSOR: Final = {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"}
_TYPE_NAME: Final = rf"\s*({'|'.join(sorted(EVENT_TYPES))})\s*"
_TYPES: Final = {"type": "string", "pattern": f"^{_TYPE_NAME}(,{_TYPE_NAME})*$"}
_GOAL_ID: Final = {"name": "goal_id", "in": "path", "required": True, "schema": {"type": "string"}}
_GOAL: Final = {"$ref": "#/components/schemas/Goal"}

API_SCHEMAS: Final[dict[str, Any]] = {
    "Series": {
        "type": "object",
        "required": ["userId", "bucket", "from", "to", "series", "totals"],
        "properties": {
            "userId": {"type": "string"},
            "bucket": {"type": "string"},
            "from": _TIME,
            "to": _TIME,
            "series": {"type": "array", "items": {"type": "object", "required": ["time"]}},
            "totals": _ANY,
            "latest": _ANY,
        },
    },
    "Goal": {
        "type": "object",
        "required": ["id", "userId", "metric", "targetValue", "deadline", "status", "progress"],
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "userId": {"type": "string"},
            "metric": {"enum": sorted(CATALOGUE)},
            "targetValue": {"type": "number"},
            "baselineValue": {"type": ["number", "null"]},
            "deadline": _TIME,
            "status": {"enum": ["active", "achieved", "missed", "cancelled"]},
            "progress": _ANY,
        },
    },
}

API_PATHS: Final[dict[str, dict[str, Any]]] = {
    "/api/v1/metrics/profile": _series(["5m", "1h", "1d"]),
    "/api/v1/metrics/engagement": _series(["1h", "1d"]),
    "/api/v1/metrics/summary": {
        "get": {
            "security": _BEARER,
            "parameters": [_USER],
            "responses": {"200": {**_ok(_ANY), "headers": _CACHED}, **_errors()},
        }
    },
    "/api/v1/metrics/catalog": {
        "get": {"security": _BEARER, "responses": {"200": _ok(_ANY), **_errors()}}
    },
    "/api/v1/metrics/aggregations": {
        "get": {
            "security": _BEARER,
            "parameters": [
                _USER,
                _query("name", "one derived series (default all)", {"enum": list(AGGREGATIONS)}),
                _FROM,
                _TO,
            ],
            "responses": {"200": {**_ok(_ANY), "headers": _CACHED}, **_errors(400)},
        }
    },
    "/api/v1/events": {
        "get": {
            "security": _BEARER,
            "parameters": [
                _USER,
                _query("cursor", "nextCursor of the previous page", _CURSOR),
                _query(
                    "limit", "events per page", {"type": "integer", "minimum": 1, "maximum": 200}
                ),
                _query("type", "comma-separated event types", _TYPES),
            ],
            "responses": {"200": {**_ok(_ANY), "headers": _CACHED}, **_errors(400)},
        }
    },
    "/api/v1/goals": {
        "get": {
            "security": _BEARER,
            "parameters": [
                _USER,
                _query(
                    "status",
                    "only goals of this status",
                    {"enum": ["active", "achieved", "missed", "cancelled"]},
                ),
            ],  # fmt: skip
            "responses": {"200": _ok(_ANY), **_errors(400)},
        },
        "post": {
            "security": _BEARER,
            "parameters": [_USER],
            "requestBody": {
                "required": True,
                "description": "A goal for a catalogue metric with a deadline in the future "
                "(422 naming the field otherwise); `baselineValue` defaults to the metric's "
                "current value.",
                "content": {},
            },
            "responses": {"201": _ok(_GOAL, "created"), **_errors(400, 409, 415, 422)},
        },
    },
    "/api/v1/goals/{goal_id}": {
        "get": {
            "security": _BEARER,
            "parameters": [_GOAL_ID, _USER],
            "responses": {"200": _ok(_GOAL), **_errors(404)},
        },
        "patch": {
            "security": _BEARER,
            "parameters": [_GOAL_ID, _USER],
            "requestBody": {
                "required": True,
                "description": "At least one member (422 for `{}`); a `deadline` in the future.",
                "content": {},
            },
            "responses": {"200": _ok(_GOAL), **_errors(400, 404, 415, 422)},
        },
        "delete": {
            "security": _BEARER,
            "parameters": [_GOAL_ID, _USER],
            "responses": {"204": {"description": "deleted"}, **_errors(404)},
        },
    },
}


# `GET /api/v1/system/performance` (gateway/api/system.py): admin only, and not per user, so
# no `userId`.
_NUMBER_OR_NULL: Final = {"type": ["number", "null"]}
API_SCHEMAS["PerformancePoint"] = {
    "type": "object",
    "description": "one process's samples in one bucket: rates, batch size and CPU are means, "
    "the rest the bucket's maximum; null where the figure does not apply to the process",
    "required": [
        "time", "samples", "eventsInPerS", "eventsOutPerS", "batchSizeAvg", "copyLatencyP99MaxS",
        "groupLagMax", "wsConnectionsMax", "rssBytesMax", "cpuPercent",
    ],
    "properties": {
        "time": _TIME,
        "samples": {"type": "integer", "minimum": 1},
        "eventsInPerS": {"type": "number"},
        "eventsOutPerS": {"type": "number"},
        "batchSizeAvg": _NUMBER_OR_NULL,
        "copyLatencyP99MaxS": _NUMBER_OR_NULL,
        "groupLagMax": {"type": ["integer", "null"]},
        "wsConnectionsMax": {"type": ["integer", "null"]},
        "rssBytesMax": {"type": "integer"},
        "cpuPercent": {"type": "number"},
    },
}  # fmt: skip
API_SCHEMAS["Performance"] = {
    "type": "object",
    "required": ["bucket", "from", "to", "truncated", "processes"],
    "properties": {
        "bucket": {"enum": list(BUCKETS)},
        "from": _TIME,
        "to": _TIME,
        "truncated": {"type": "boolean"},
        "processes": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["kind", "name", "points"],
                "properties": {
                    "kind": {"enum": list(KINDS)},
                    "name": {"type": "string"},
                    "points": {
                        "type": "array",
                        "items": {"$ref": "#/components/schemas/PerformancePoint"},
                    },
                },
            },
        },
    },
}
_ERROR: Final = {"$ref": "#/components/schemas/Error"}
API_PATHS["/api/v1/system/performance"] = {
    "get": {
        "summary": "Performance samples of every gateway and worker, per time bucket (admin)",
        "security": _BEARER,
        "parameters": [
            _query("from", "range start (RFC 3339 with a zone; default depends on bucket)", _TIME),
            _TO,
            _query("bucket", "bucket width (default 1m)", {"enum": list(BUCKETS)}),
            _query("kind", "only processes of this kind", {"enum": list(KINDS)}),
        ],
        "responses": {
            "200": _ok({"$ref": "#/components/schemas/Performance"}),
            "400": _ok(_ERROR, "a query parameter is invalid; `field` names it"),
            "401": _ok(_ERROR, "missing or invalid bearer token"),
            "403": _ok(_ERROR, "the token's role is not admin"),
            "503": _ok(_ERROR, "TimescaleDB is unavailable"),
        },
    }
}

# Alert rules (gateway/api/rules.py): described in gateway/ops/openapi_paths.py.
API_PATHS.update(RULE_PATHS)
