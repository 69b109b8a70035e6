"""`GET /openapi.json` is true: it documents every route the app serves (and no other), its
request bodies and WebSocket messages are the schemas of the msgspec types the handlers decode
with, it is valid OpenAPI 3.1, and schemathesis (from PyPI) finds no 5xx and no response that
breaks the spec, with an admin token and with none, in bounded time."""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import json
import operator
import os
import pkgutil
import sys
import time
from pathlib import Path
from typing import Any, get_args

import jsonschema_rs
import msgspec
import pytest
from aiohttp import hdrs, web
from schemathesis.specs.openapi.definitions import OPENAPI_31

import gateway
import schemas.ws
from gateway.api import goals as api_goals
from gateway.api import rules as api_rules
from gateway.app import create_app
from gateway.http.bodies import ENCODED_PATHS
from gateway.http.ratelimit import EXEMPT_PATHS
from gateway.ingest import routes as ingest
from gateway.ops import admin
from gateway.ops import seed as admin_seed
from gateway.ops.openapi import document
from gateway.ops.openapi_bodies import JSON, NDJSON, schema_components
from schemas.events import EventIn
from schemas.settings import Settings
from tests.ops_support import MakeClient, bearer, ops_settings

# Examples per operation and phase (with a token; without one every request stops at the 401,
# so fewer tell as much): with ~25 operations the two runs take about 10-15 s on 2 cores.
MAX_EXAMPLES = 4
ANONYMOUS_MAX_EXAMPLES = 2
RUN_TIMEOUT_S = 55
# No 5xx and every response as documented (status, content type, headers, body), on every
# operation: no operation is exempt from any check.
CHECKS = """
[checks]
enabled = false
not_a_server_error.enabled = true
status_code_conformance.enabled = true
content_type_conformance.enabled = true
response_headers_conformance.enabled = true
response_schema_conformance.enabled = true
"""
# schemathesis has no serializer for NDJSON: one JSON text per line, as gateway/ingest/routes.py
# reads it (a generated value that is not a list goes as one line, for the negative cases).
NDJSON_HOOKS = """
import json
import schemathesis

@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    lines = value if isinstance(value, list) else [value]
    return "".join(json.dumps(line) + "\\n" for line in lines).encode()
"""
# `?wait=true` answers once a worker stored or dead-lettered each event, and no worker runs
# here, so every such request would wait out its timeout: pinned off, covered by
# tests/test_ingest.py.
CONFIG = """
[parameters]
"query.wait" = "false"
%s"""


def served_routes(settings: Settings) -> set[tuple[str, str]]:
    app = create_app(settings)
    out = set()
    for resource in app.router.resources():
        for route in resource:
            if route.method in (hdrs.METH_HEAD, hdrs.METH_ANY):
                continue  # HEAD is added for every GET
            out.add((resource.canonical, route.method.lower()))
    return out


def documented_routes() -> set[tuple[str, str]]:
    return {(path, method) for path, ops in document()["paths"].items() for method in ops}


def test_every_route_is_documented_and_every_documented_route_exists() -> None:
    served = served_routes(ops_settings(ws_enabled=True))
    documented = documented_routes()
    assert served - documented == set(), "add these routes to gateway/ops/openapi.py"
    assert documented - served == set(), "these documented routes no longer exist"


def test_layer_refusals_are_documented_on_every_operation_that_can_get_them() -> None:
    """The rate limiter and aiohttp's body reader answer before any handler, so their statuses
    belong to every operation they guard, whichever route group describes it."""
    for path, operations in document()["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            where = f"{method.upper()} {path}"
            if path in EXEMPT_PATHS:
                assert "429" not in responses, where
            else:
                assert "Retry-After" in responses["429"]["headers"], where
            if "requestBody" in operation:
                for status in ("400", "413"):
                    schema = responses[status]["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, where


# Every operation whose body a msgspec decoder reads: media type -> the type of the decoder the
# handler really calls (an NDJSON body is decoded line by line with the single-event decoder).
DECODED: dict[tuple[str, str], dict[str, Any]] = {
    ("/ingest/event", "post"): {JSON: ingest._event_decoder.type},
    ("/ingest/events", "post"): {
        JSON: ingest._batch_fast_decoder.type,
        NDJSON: list[ingest._event_decoder.type],  # type: ignore[name-defined]
    },
    ("/api/v1/goals", "post"): {JSON: api_goals._goal_in.type},
    ("/api/v1/goals/{goal_id}", "patch"): {JSON: api_goals._goal_patch.type},
    ("/admin/dlq/replay", "post"): {JSON: admin._replay_decoder.type},
    ("/admin/seed", "post"): {JSON: admin_seed._decoder.type},
    ("/api/v1/alerts/rules", "post"): {JSON: api_rules._rule_in.type},
    ("/api/v1/alerts/rules/{rule_id}", "patch"): {JSON: api_rules._rule_patch.type},
}
# Decoders of route modules that read no body on their own: the batch fallback splits a JSON
# array into raw items, each then read by `_event_decoder`.
NOT_A_BODY = {list[msgspec.Raw]}


def _components() -> dict[str, Any]:
    schemas: dict[str, Any] = document()["components"]["schemas"]
    return schemas


def test_request_schemas_are_the_schemas_of_the_types_the_handlers_decode() -> None:
    """A field added to (or a bound changed in) a request struct changes the document, and a
    schema written here by hand instead of generated fails."""
    doc = document()
    keys = [(op, media) for op, medias in DECODED.items() for media in medias]
    expected, components = schema_components(DECODED[op][media] for op, media in keys)
    for ((path, method), media), schema in zip(keys, expected, strict=True):
        content = doc["paths"][path][method]["requestBody"]["content"]
        assert set(content) == set(DECODED[path, method]), f"{method.upper()} {path}"
        assert content[media]["schema"] == schema, f"{method.upper()} {path} {media}"
    for name, schema in components.items():
        assert doc["components"]["schemas"][name] == schema, name
    with_body = {
        (path, method)
        for path, operations in doc["paths"].items()
        for method, operation in operations.items()
        if "requestBody" in operation
    }
    assert with_body == set(DECODED), "a documented body no msgspec type decodes, or the reverse"


def test_every_body_decoder_of_a_route_module_is_in_the_document() -> None:
    """A route that starts decoding a new msgspec type must add its operation to DECODED (and
    gateway/ops/openapi_bodies.py's BODY_TYPES), or this fails."""
    documented = {t for medias in DECODED.values() for t in medias.values()}
    route_modules = 0
    for info in pkgutil.walk_packages(gateway.__path__, "gateway."):
        module = importlib.import_module(info.name)
        if not isinstance(getattr(module, "routes", None), web.RouteTableDef):
            continue
        route_modules += 1
        for name, value in vars(module).items():
            if isinstance(value, msgspec.json.Decoder) and value.type not in NOT_A_BODY:
                assert value.type in documented, f"{info.name}.{name}"
    # The walk reaches the route groups in every subpackage (ingest, api, ops, ...); after a
    # move that hid them it would check nothing.
    assert route_modules >= 8, route_modules


def _tagged_structs() -> set[type[msgspec.Struct]]:
    return {
        cls
        for _, cls in inspect.getmembers(schemas.ws, inspect.isclass)
        if issubclass(cls, msgspec.Struct) and cls.__struct_config__.tag is not None
    }


def test_websocket_messages_are_the_schemas_of_the_message_structs() -> None:
    """Client messages as `client_decoder` reads them; server messages: every other tagged
    struct of schemas/ws.py, so a new message type is published or this fails."""
    client = schemas.ws.client_decoder.type
    server = _tagged_structs() - set(get_args(client))
    union = functools.reduce(operator.or_, sorted(server, key=lambda cls: cls.__name__))
    (client_schema, server_schema), components = schema_components([client, union])
    doc = document()
    messages = doc["paths"]["/ws"]["get"]["x-websocket-messages"]
    assert messages["client"] == {"$ref": "#/components/schemas/ClientMessage"}
    assert messages["server"] == {"$ref": "#/components/schemas/ServerMessage"}
    assert doc["components"]["schemas"]["ClientMessage"] == client_schema
    published = doc["components"]["schemas"]["ServerMessage"]
    assert sorted(published["anyOf"], key=str) == sorted(server_schema["anyOf"], key=str)
    assert published["discriminator"] == server_schema["discriminator"]
    for name, schema in components.items():
        assert doc["components"]["schemas"][name] == schema, name


def test_the_document_is_valid_openapi_31_and_its_patterns_ecma_262() -> None:
    """OpenAPI's meta-schema, and every component compiled by an ECMA-262 regex engine (msgspec
    validates Python patterns; a Python-only `\\Z` published as is would not compile)."""
    doc = json.loads(json.dumps(document()))
    jsonschema_rs.Draft202012Validator(OPENAPI_31).validate(doc)
    components = doc["components"]["schemas"]
    for name in components:
        ref = {"$ref": f"#/components/schemas/{name}", "components": {"schemas": components}}
        jsonschema_rs.Draft202012Validator(ref, validate_formats=True)


@pytest.mark.parametrize("user_id", ["alice", "alice\n", "", "a" * 65, "al ice"])
def test_the_published_event_schema_and_the_decoder_agree_on_a_user_id(user_id: str) -> None:
    """The one rewritten pattern: Python's `\\Z` is published as ECMA-262's `$`; both refuse a
    trailing newline, which Python's `$` would let through."""
    published = jsonschema_rs.Draft202012Validator(
        {"$ref": "#/components/schemas/EventIn", "components": {"schemas": _components()}}
    )
    event = {"user_id": user_id, "type": "post_like"}
    try:
        msgspec.json.decode(json.dumps(event), type=EventIn)
    except msgspec.ValidationError:
        decodes = False
    else:
        decodes = True
    assert published.is_valid(event) is decodes


def test_the_ingest_bodies_describe_their_codings_and_ndjson() -> None:
    doc = document()
    for path in ENCODED_PATHS:
        body = doc["paths"][path]["post"]["requestBody"]
        assert "Content-Encoding: gzip" in body["description"], path
        assert "deflate" in body["description"], path
    batch = doc["paths"]["/ingest/events"]["post"]["requestBody"]
    assert NDJSON in batch["content"]
    assert NDJSON in batch["description"]


async def test_openapi_json_is_served_as_openapi_31(make_client: MakeClient) -> None:
    client = await make_client()
    response = await client.get("/openapi.json")
    assert response.status == 200
    body = await response.json()
    assert body["openapi"] == "3.1.0"
    assert body == document()
    assert body["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


async def _schemathesis(
    url: str, tmp: Path, headers: dict[str, str], phases: str, examples: int
) -> tuple[int, str]:
    config = tmp / "schemathesis.toml"
    config.write_text(CONFIG % CHECKS)
    hooks = tmp / "ndjson_hooks.py"
    hooks.write_text(NDJSON_HOOKS)
    args = [
        "--config-file",
        str(config),
        "run",
        url,
        "--max-examples",
        str(examples),
        "--phases",
        phases,
        "--seed",
        "20261128",
        # One worker: on 2 cores a second one only competed with the gateway (10-12 s instead of
        # 20-33 s), and threaded workers hit CPython 3.11.7's spurious "AST constructor
        # recursion depth mismatch" SystemError (python/cpython#106905) inside hypothesis.
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--exclude-path",
        "/ws",  # an upgrade, not a request/response operation
        # Writes up to 1,000 users x 365 days per call: tests/test_admin_seed.py covers it.
        "--exclude-path",
        "/admin/seed",
        "--generation-database",
        "none",
        "--no-color",
        "--suppress-health-check",
        "all",
    ]
    for name, value in headers.items():
        args += ["--header", f"{name}: {value}"]
    exe = Path(sys.executable).with_name("schemathesis")
    proc = await asyncio.create_subprocess_exec(
        str(exe),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp,
        env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": str(hooks)},
    )
    try:
        async with asyncio.timeout(RUN_TIMEOUT_S):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def test_schemathesis_finds_no_server_error_and_no_spec_violation(
    make_client: MakeClient, migrated: Settings, tmp_path: Path
) -> None:
    """With an admin token and without; together well under a minute."""
    # Budgets off: a 429 is documented, but it would stop the run from reaching the handlers.
    client = await make_client(
        migrated,
        rate_limit_api_subject=0,
        rate_limit_api_ip=0,
        rate_limit_ingest_subject=0,
        rate_limit_ingest_ip=0,
    )
    url = str(client.make_url("/openapi.json"))
    # Anonymous requests stop at the 401 before any parameter is looked at, so the boundary
    # values of the coverage phase would only repeat it; with a token every phase runs.
    runs = {
        "admin-token": (bearer("admin", "schemathesis"), "examples,coverage,fuzzing", MAX_EXAMPLES),
        "anonymous": ({}, "fuzzing", ANONYMOUS_MAX_EXAMPLES),
    }
    started = time.monotonic()
    for name, (headers, phases, examples) in runs.items():
        (tmp_path / name).mkdir()
        code, output = await _schemathesis(url, tmp_path / name, headers, phases, examples)
        assert code == 0, f"{name}:\n{output[-6000:]}"
        assert "generated" in output, output[-3000:]
    assert time.monotonic() - started < 60
