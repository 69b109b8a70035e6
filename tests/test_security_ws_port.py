"""The WebSocket port's own answers (400, 401, 403, 404, 405 and the 101 itself) carry the
security headers, `X-Request-ID` and a neutral `Server`, as HTTP_PORT's do; and neither port's
`Server` names aiohttp or Python. Over real connections on loopback."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from gateway.http.bodies import SERVER_OPTIONS
from gateway.http.security import SECURITY_HEADERS, SERVER
from gateway.ws.server import create_ws_app
from schemas.settings import Settings
from tests.ops_support import MakeClient, bearer
from tests.ws_support import gateway, new_user, token, ws_connect, ws_settings

UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
    "Sec-WebSocket-Version": "13",
}


@pytest.fixture
async def ws_port(migrated: Settings, redis: Redis) -> AsyncIterator[TestServer]:
    """The WS_PORT app of a running gateway, served as start_ws_site serves it."""
    async with gateway(ws_settings(migrated)) as main:
        server = TestServer(create_ws_app(main.app))
        await server.start_server(**SERVER_OPTIONS)
        try:
            yield server
        finally:
            await server.close()


def assert_hardened(headers: Any, request_id: str | None = None) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert headers[name] == value, name
    assert headers["Server"] == SERVER
    if request_id is None:
        assert headers["X-Request-ID"]
    else:
        assert headers["X-Request-ID"] == request_id


@pytest.mark.parametrize(
    ("method", "path", "headers", "status", "code"),
    [
        ("GET", "/", {}, 400, "websocket_required"),
        ("GET", "/", UPGRADE, 401, "unauthorized"),
        ("GET", "/", {**UPGRADE, "Origin": "https://evil.example"}, 403, "origin_not_allowed"),
        ("GET", "/nope", {}, 404, "not_found"),
        ("POST", "/", {}, 405, "method_not_allowed"),
    ],
)
async def test_ws_port_refusals_carry_the_headers(
    ws_port: TestServer,
    http: ClientSession,
    method: str,
    path: str,
    headers: dict[str, str],
    status: int,
    code: str,
) -> None:
    rid = f"probe-{status}"
    response = await http.request(
        method, ws_port.make_url(path), headers={**headers, "X-Request-ID": rid}
    )
    assert response.status == status
    assert (await response.json())["error"]["code"] == code
    assert_hardened(response.headers, rid)
    # Another client of the same port is served meanwhile.
    async with ws_connect(http, ws_port.make_url("/"), token(new_user())) as other:
        await other.send("ping")
        await other.recv_type("pong")


async def test_the_upgrade_itself_carries_the_headers(ws_port: TestServer) -> None:
    url = ws_port.make_url("/")
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        lines = ["GET / HTTP/1.1", f"Host: {url.host}:{url.port}"]
        lines += [f"{k}: {v}" for k, v in UPGRADE.items()]
        lines += [f"Authorization: Bearer {token(new_user())}", "X-Request-ID: up-1", "", ""]
        writer.write("\r\n".join(lines).encode())
        status = await reader.readline()
        assert b" 101 " in status, status
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip()] = value.strip()
    finally:
        writer.close()
        await writer.wait_closed()
    assert_hardened(headers, "up-1")


@pytest.mark.parametrize("path", ["/health", "/nope", "/status"])
async def test_http_port_server_header_is_neutral(make_client: MakeClient, path: str) -> None:
    client = await make_client()
    response = await client.get(path)
    assert response.headers["Server"] == SERVER
    assert "aiohttp" not in response.headers["Server"]
    assert "Python" not in response.headers["Server"]
    served = await client.get("/status", headers=bearer())
    assert served.headers["Server"] == SERVER
