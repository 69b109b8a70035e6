"""Every error is JSON `{"error": {"code", "message", "field"}}`: the handlers' own, and the
refusals aiohttp raises itself (router 404/405, client_max_size 413, an unreadable body), on
HTTP_PORT and on WS_PORT, and an unhandled exception's 500 (without its traceback)."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from gateway.app import create_app
from gateway.http.security import SECURITY_HEADERS
from gateway.ws.server import create_ws_app
from tests.ops_support import MakeClient, bearer, ops_settings
from tests.ws_support import gateway, ws_settings


async def error_of(response: Any, status: int) -> dict[str, Any]:
    """The `error` object of a JSON error response with `status`."""
    assert response.status == status
    assert response.content_type == "application/json"
    body = await response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert isinstance(error["code"], str) and isinstance(error["message"], str)
    return error


async def test_unknown_route_is_a_json_404(make_client: MakeClient) -> None:
    client = await make_client()
    response = await client.get("/no-such-route", headers={"X-Request-ID": "req-404"})
    error = await error_of(response, 404)
    assert error["code"] == "not_found"
    assert "/no-such-route" in error["message"]
    # The response hooks still run on the rendered answer.
    assert response.headers["X-Request-ID"] == "req-404"
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value


@pytest.mark.parametrize(("method", "path"), [("DELETE", "/health"), ("PUT", "/ingest/event")])
async def test_wrong_method_is_a_json_405_that_keeps_allow(
    make_client: MakeClient, method: str, path: str
) -> None:
    client = await make_client()
    response = await client.request(method, path)
    error = await error_of(response, 405)
    assert error["code"] == "method_not_allowed"
    allowed = {m.strip() for m in response.headers["Allow"].split(",")}
    expected = "GET" if path == "/health" else "POST"
    assert expected in allowed and method not in allowed
    assert method in error["message"] and expected in error["message"]


async def test_body_past_client_max_size_is_a_json_413(make_client: MakeClient) -> None:
    # /admin/dlq/replay reads its body with aiohttp's own limit (client_max_size).
    client = await make_client(ingest_max_bytes=1024)
    response = await client.post(
        "/admin/dlq/replay", data=b'{"ids": [' + b" " * 4096 + b"]}", headers=bearer()
    )
    error = await error_of(response, 413)
    assert error == {**error, "code": "payload_too_large", "field": "$"}
    assert "1024" in error["message"]


async def test_undecodable_body_is_a_json_400(make_client: MakeClient) -> None:
    # Only the ingest routes inflate a body (gateway/http/bodies.py); elsewhere a coding is a 415.
    client = await make_client()
    response = await client.post(
        "/ingest/event",
        data=b"not gzip at all",
        headers={**bearer(), "Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    error = await error_of(response, 400)
    assert error["code"] == "malformed_body"
    assert "gzip" in error["message"]


async def test_unhandled_exception_is_a_json_500_without_the_traceback(
    ops_redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(ops_settings())

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("secret internals")

    app.router.add_get("/broken", broken)
    async with TestClient(TestServer(app)) as client:
        with caplog.at_level(logging.ERROR, logger="gateway.errors"):
            response = await client.get("/broken")
            error = await error_of(response, 500)
    assert error["code"] == "internal_error"
    assert "secret" not in await response.text()
    logged = [r for r in caplog.records if r.getMessage() == "unhandled error"]
    assert logged and logged[0].exc_info is not None
    assert "secret internals" in str(logged[0].exc_info[1])


async def test_ws_port_answers_json_404_and_405() -> None:
    async with gateway(ws_settings()) as main:
        ws_app = create_ws_app(main.app)
        async with TestClient(TestServer(ws_app)) as client:
            missing = await client.get("/nope")
            assert (await error_of(missing, 404))["code"] == "not_found"
            wrong = await client.post("/")
            assert (await error_of(wrong, 405))["code"] == "method_not_allowed"
            assert "GET" in wrong.headers["Allow"]
            plain = await client.get("/")  # the route itself, without an upgrade
            assert (await error_of(plain, 400))["code"] == "websocket_required"


@pytest.mark.parametrize(
    "failure",
    [
        ConnectionRefusedError(111, "Connect call failed"),
        asyncpg.CannotConnectNowError("the database system is shutting down"),
    ],
    ids=["refused", "restarting"],
)
async def test_a_database_failure_outside_a_guarded_route_is_a_json_503(failure: Exception) -> None:
    """Found by a fuzzer: a refused connection was a plain-text 500 (the middleware let every
    ConnectionError through as "the client is gone"), and a restarting server a JSON 500."""
    app = create_app(ops_settings())

    async def reaches_the_database(request: web.Request) -> web.Response:
        raise failure

    app.router.add_get("/reaches-the-database", reaches_the_database)
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/reaches-the-database")
        error = await error_of(response, 503)
    assert error["code"] == "database_unavailable"
    assert response.headers["Retry-After"] == "1"


async def test_seed_routes_answer_503_when_the_database_is_down(make_client: MakeClient) -> None:
    client = await make_client(timescale_port=1)  # nothing listens there
    for method, path in (("GET", "/admin/seed/status"), ("DELETE", "/admin/seed")):
        response = await client.request(method, path, headers=bearer())
        assert (await error_of(response, 503))["code"] == "database_unavailable", path
