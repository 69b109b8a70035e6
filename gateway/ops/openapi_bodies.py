"""The request bodies and WebSocket messages of `GET /openapi.json`, generated from the msgspec
types the handlers decode them with, so the published schema and the validation are one thing.

Hand-written, these schemas drifted looser than the decoders, and a schemathesis run had most
of its generated bodies refused. `BODY_TYPES` names, for every operation whose body a msgspec
decoder reads, the type it decodes; `msgspec.json.schema_components` renders them into
`SCHEMAS` (merged into `#/components/schemas/`), and `with_bodies` writes each operation's
schema into the paths. A field added to a struct is therefore published with it, and
`tests/test_openapi.py` holds the document to the decoders the handlers really use.

What a handler checks after decoding (a deadline in the future, a user token's own user id, a
time within retention) has no JSON Schema form: the operation's `requestBody.description` says
it, next to the route's other prose. Two renderings differ from msgspec's own output, and only
in form (see `schema_components`): a struct whose default is `msgspec.Raw`, and Python's `\\Z`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any, Final, get_args, get_origin

import msgspec

from gateway.api.goals import GoalIn, GoalPatch
from gateway.api.rule_types import RuleIn, RulePatch
from gateway.ops.admin import ReplayRequest
from gateway.ops.seed import SeedRequest
from schemas.events import EventIn
from schemas.ws import (
    AlertTriggered,
    ClientMessage,
    ErrorMessage,
    MetricsUpdate,
    Notice,
    Pong,
    Subscribed,
    Unsubscribed,
)

__all__ = [
    "BODY_TYPES",
    "JSON",
    "NDJSON",
    "REF_TEMPLATE",
    "SCHEMAS",
    "WS_MESSAGES",
    "WS_TYPES",
    "ServerMessage",
    "schema_components",
    "with_bodies",
]

JSON: Final = "application/json"
# One event per line (gateway/ingest/routes.py). As OpenAPI 3.2 reads a sequential media type, the
# schema describes the lines as one array; 3.1 has no own reading for it.
NDJSON: Final = "application/x-ndjson"
REF_TEMPLATE: Final = "#/components/schemas/{name}"

# (path, method) -> media type -> the type the handler decodes that body with. An NDJSON body
# is decoded line by line with EventIn's decoder: as a sequence, it is a list of them.
BODY_TYPES: Final[Mapping[tuple[str, str], Mapping[str, Any]]] = {
    ("/ingest/event", "post"): {JSON: EventIn},
    ("/ingest/events", "post"): {JSON: list[EventIn], NDJSON: list[EventIn]},
    ("/api/v1/goals", "post"): {JSON: GoalIn},
    ("/api/v1/goals/{goal_id}", "patch"): {JSON: GoalPatch},
    ("/admin/dlq/replay", "post"): {JSON: ReplayRequest},
    ("/admin/seed", "post"): {JSON: SeedRequest},
    ("/api/v1/alerts/rules", "post"): {JSON: RuleIn},
    ("/api/v1/alerts/rules/{rule_id}", "patch"): {JSON: RulePatch},
}

# Every message the WebSocket writes (gateway/ws/frames.py, gateway/ws/messages.py encode these).
ServerMessage = (
    Subscribed | Unsubscribed | MetricsUpdate | AlertTriggered | Notice | Pong | ErrorMessage
)
# Component name -> the union of one direction's messages (`client_decoder` reads the first).
WS_TYPES: Final[Mapping[str, Any]] = {
    "ClientMessage": ClientMessage,
    "ServerMessage": ServerMessage,
}

# A Python regex's end of input. ECMA-262 (OpenAPI's dialect) has no `\Z`; its `$` without the
# multiline flag means exactly that, which Python's `$` does not (it also matches before a
# final newline). Only an unescaped backslash starts the anchor.
_PYTHON_END: Final = re.compile(r"(?<!\\)(?:\\\\)*\\Z\Z")
_PYTHON_ANCHOR: Final = re.compile(r"(?<!\\)(?:\\\\)*\\[AZ]")


def _ecma_pattern(pattern: str) -> str:
    """`pattern` (Python's dialect, which msgspec validates with) in ECMA-262's: a closing `\\Z`
    is spelled `$`. Any other Python-only anchor is refused rather than published wrong."""
    match = _PYTHON_END.search(pattern)
    translated = pattern[: match.end() - 2] + "$" if match else pattern
    if _PYTHON_ANCHOR.search(translated):
        raise ValueError(f"no ECMA-262 spelling for the anchors of {pattern!r}")
    return translated


def _ecma(schema: Any) -> Any:
    """`schema` with every `pattern` keyword in ECMA-262's dialect."""
    if isinstance(schema, dict):
        return {
            k: _ecma_pattern(v) if k == "pattern" and isinstance(v, str) else _ecma(v)
            for k, v in schema.items()
        }
    if isinstance(schema, list):
        return [_ecma(item) for item in schema]
    return schema


@cache
def _renderable(t: Any) -> Any:
    """`t` in a form msgspec can render. msgspec cannot write a `msgspec.Raw` default into a
    schema (it raises), so a struct with one is rendered through a copy made from its own
    fields: same name, module, docstring, configuration, encoded names and types, and as the
    default the JSON value the Raw holds (EventIn.properties: `{}`). Cached, so a struct and a
    list of it share one component."""
    if get_origin(t) is list:
        (item,) = get_args(t)
        return list[_renderable(item)]  # type: ignore[misc]
    if not (isinstance(t, type) and issubclass(t, msgspec.Struct)):
        return t
    fields = msgspec.structs.fields(t)
    if not any(isinstance(f.default, msgspec.Raw) for f in fields):
        return t
    config = t.__struct_config__
    return msgspec.defstruct(
        t.__name__,
        [(f.name, f.type, _field(f)) for f in fields],
        module=t.__module__,
        namespace={"__doc__": t.__doc__},
        tag_field=config.tag_field,
        tag=config.tag,
        omit_defaults=config.omit_defaults,
        forbid_unknown_fields=config.forbid_unknown_fields,
        frozen=config.frozen,
        array_like=config.array_like,
    )


def _field(f: msgspec.structs.FieldInfo) -> Any:
    name = f.encode_name
    if isinstance(f.default, msgspec.Raw):
        value = msgspec.json.decode(f.default)
        if value == {} or value == []:  # msgspec takes an empty container from a factory
            return msgspec.field(default_factory=type(value), name=name)
        return msgspec.field(default=value, name=name)
    if f.default is not msgspec.NODEFAULT:
        return msgspec.field(default=f.default, name=name)
    if f.default_factory is not msgspec.NODEFAULT:
        return msgspec.field(default_factory=f.default_factory, name=name)
    return msgspec.field(name=name)


def schema_components(types: Iterable[Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """`msgspec.json.schema_components(types)` with refs into `#/components/schemas/`, as
    published: Raw defaults rendered (see `_renderable`) and patterns in ECMA-262's dialect."""
    schemas, components = msgspec.json.schema_components(
        [_renderable(t) for t in types], ref_template=REF_TEMPLATE
    )
    return _ecma(list(schemas)), _ecma(dict(components))


def _generate() -> tuple[dict[tuple[str, str], dict[str, Any]], dict[str, Any]]:
    keys = [(op, media) for op, medias in BODY_TYPES.items() for media in medias]
    types = [BODY_TYPES[op][media] for op, media in keys]
    schemas, components = schema_components([*types, *WS_TYPES.values()])
    bodies: dict[tuple[str, str], dict[str, Any]] = {}
    for (op, media), schema in zip(keys, schemas[: len(keys)], strict=True):
        bodies.setdefault(op, {})[media] = schema
    for name, schema in zip(WS_TYPES, schemas[len(keys) :], strict=True):
        components[name] = schema
    return bodies, components


_BODIES, SCHEMAS = _generate()

# The `/ws` operation's description of its messages (OpenAPI has no WebSocket object).
WS_MESSAGES: Final[dict[str, Any]] = {
    "description": "JSON text messages, each an object whose `type` names it; docs/websocket.md "
    "describes each. Unknown fields of a client message are ignored; an unknown `type` is an "
    "`error` message.",
    "client": {"$ref": REF_TEMPLATE.format(name="ClientMessage")},
    "server": {"$ref": REF_TEMPLATE.format(name="ServerMessage")},
}


def with_bodies(paths: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """`paths` with the generated schema of every media type in `BODY_TYPES` written into the
    operation's `requestBody` (its description and `required` stay the route group's). An
    operation in `BODY_TYPES` that `paths` lacks, or that has no `requestBody`, is a KeyError:
    the table and the routes must not drift apart."""
    out = {path: dict(operations) for path, operations in paths.items()}
    for (path, method), media_schemas in _BODIES.items():
        operation = out[path][method]
        body = operation["requestBody"]
        content = dict(body.get("content", {}))
        for media, schema in media_schemas.items():
            content[media] = {**content.get(media, {}), "schema": schema}
        out[path][method] = {**operation, "requestBody": {**body, "content": content}}
    return out
