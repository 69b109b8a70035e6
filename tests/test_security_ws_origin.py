"""WebSocket upgrades check `Origin` against CORS_ORIGINS before anything else: a browser page
from a foreign origin gets a JSON 403 naming `Origin` and no socket; clients that send no
`Origin` (services, CLIs) and the gateway's own origin pass; `*` admits every origin."""

from __future__ import annotations

import base64
import os
from typing import Any

import aiohttp
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from tests.ws_support import gateway, new_user, token, ws_settings

APP = "https://app.example.com"
EVIL = "https://evil.example"


def upgrade_headers(origin: str | None, jwt: str | None) -> dict[str, str]:
    """A browser's upgrade request, as far as the server can tell."""
    headers = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
    }
    if origin is not None:
        headers["Origin"] = origin
    if jwt is not None:
        headers["Authorization"] = f"Bearer {jwt}"
    return headers


async def upgrade(http: ClientSession, server: TestServer, origin: str | None) -> tuple[int, Any]:
    """(status, JSON body or None) of an upgrade attempt with a valid token."""
    headers = upgrade_headers(origin, token(new_user()))
    async with http.get(server.make_url("/ws"), headers=headers) as response:
        body = await response.json() if response.status != 101 else None
        return response.status, body


async def pong_with_origin(http: ClientSession, server: TestServer, origin: str | None) -> None:
    """Open a real socket with `origin` and get a pong through it."""
    headers = {} if origin is None else {"Origin": origin}
    jwt = token(new_user())
    async with http.ws_connect(
        server.make_url("/ws"), headers={**headers, "Authorization": f"Bearer {jwt}"}
    ) as ws:
        await ws.send_str('{"type": "ping"}')
        message = await ws.receive_json(timeout=5)
        assert message["type"] == "pong"


async def test_foreign_origin_is_refused_before_the_upgrade(http: ClientSession) -> None:
    async with gateway(ws_settings(cors_origins=(APP,))) as server:
        status, body = await upgrade(http, server, EVIL)
        assert status == 403
        assert body["error"]["code"] == "origin_not_allowed"
        assert body["error"]["field"] == "Origin"
        assert EVIL in body["error"]["message"]
        # The same refusal seen by a real WebSocket client: no socket is opened.
        jwt = token(new_user())
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            async with http.ws_connect(
                server.make_url("/ws"), headers={"Origin": EVIL}, params={"token": jwt}
            ):
                pass  # pragma: no cover - the handshake fails first
        assert refused.value.status == 403


async def test_foreign_origin_is_refused_even_without_a_token(http: ClientSession) -> None:
    """The origin is judged first: a foreign page cannot probe tokens (403, not 401)."""
    async with gateway(ws_settings(cors_origins=(APP,))) as server:
        headers = upgrade_headers(EVIL, None)
        async with http.get(server.make_url("/ws"), headers=headers) as response:
            assert response.status == 403
            assert (await response.json())["error"]["field"] == "Origin"


async def test_listed_origin_and_no_origin_connect(http: ClientSession) -> None:
    async with gateway(ws_settings(cors_origins=(APP,))) as server:
        await pong_with_origin(http, server, APP)
        await pong_with_origin(http, server, None)  # a service or CLI: not a browser


async def test_empty_allow_list_admits_only_the_gateways_own_origin(
    http: ClientSession,
) -> None:
    async with gateway(ws_settings(cors_origins=())) as server:
        port = server.port
        assert port is not None
        for foreign in (APP, EVIL, "null", f"http://127.0.0.1:{port + 1}"):
            status, body = await upgrade(http, server, foreign)
            assert (status, body["error"]["code"]) == (403, "origin_not_allowed"), foreign
        # A page served from the very host and port the socket goes to is not foreign.
        await pong_with_origin(http, server, f"http://127.0.0.1:{port}")
        await pong_with_origin(http, server, None)


async def test_wildcard_admits_every_origin(http: ClientSession) -> None:
    async with gateway(ws_settings(cors_origins=("*",))) as server:
        await pong_with_origin(http, server, EVIL)
