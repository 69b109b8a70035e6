"""The hand-written building blocks of `GET /openapi.json`: response builders, the bearer
requirement, and the component schemas no msgspec type renders (`SCHEMAS`).

Used by the paths gateway/ops/openapi.py describes itself (`openapi_paths.py`) and by its
assembly of the document; data and small pure builders only, no routes.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = [
    "ANY_OBJECT",
    "BEARER",
    "JSON",
    "RATE_LIMITED",
    "RETRY_AFTER",
    "SCHEMAS",
    "error_response",
    "error_responses",
    "json_response",
    "ref",
]

JSON: Final = "application/json"
BEARER: Final[list[dict[str, list[str]]]] = [{"bearer": []}]


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def json_response(schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}, **extra}


def error_response(description: str) -> dict[str, Any]:
    return json_response(ref("Error"), description)


RETRY_AFTER: Final = {"Retry-After": {"schema": {"type": "string"}}}
RATE_LIMITED: Final = json_response(ref("Error"), "rate limit spent", headers=RETRY_AFTER)
_UNAVAILABLE: Final = json_response(
    ref("Error"), "a dependency is unavailable", headers=RETRY_AFTER
)


def error_responses(*statuses: int) -> dict[str, Any]:
    """An Error response per status, 503 with Retry-After, and the rate limiter's 429."""
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
    out: dict[str, Any] = {str(s): error_response(texts[s]) for s in statuses}
    if 503 in statuses:
        out["503"] = _UNAVAILABLE
    out["429"] = RATE_LIMITED
    return out


ANY_OBJECT: Final = {"type": "object", "additionalProperties": True}

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
