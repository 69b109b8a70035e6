"""Shared helpers of the operations and security tests (each module wraps `gateways` and
`flushed_redis` in its own fixtures).

These tests use Redis db 10: other suites flush db 15 while they run, which would erase the
streams, DLQ and rate-limit keys these tests set up.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from gateway.app import create_app
from gateway.auth import Role, mint_token
from gateway.http.bodies import SERVER_OPTIONS
from schemas.settings import Settings
from tests.conftest import settings_for

__all__ = [
    "OPS_REDIS_DB",
    "Client",
    "MakeClient",
    "bearer",
    "flushed_redis",
    "gateways",
    "ops_settings",
]

OPS_REDIS_DB = 10
Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]


def ops_settings(base: Settings | None = None, **overrides: Any) -> Settings:
    """Test settings on Redis db 10, WebSocket fan-out off (these tests need none of it);
    `overrides` replace fields."""
    values = {"redis_db": OPS_REDIS_DB, "ws_enabled": False, **overrides}
    return dataclasses.replace(base or settings_for(), **values)


def bearer(
    role: Role = "admin", subject: str = "ops", settings: Settings | None = None
) -> dict[str, str]:
    token = mint_token(settings or ops_settings(), subject=subject, role=role, ttl_seconds=600)
    return {"Authorization": f"Bearer {token}"}


@asynccontextmanager
async def flushed_redis() -> AsyncIterator[Redis]:
    """A client of db 10, flushed first."""
    client = Redis.from_url(ops_settings().redis_url)
    try:
        await client.flushdb()
        yield client
    finally:
        await client.aclose()


@asynccontextmanager
async def gateways() -> AsyncIterator[MakeClient]:
    """Factory of gateways on loopback (db 10 unless overridden); all closed at exit."""
    clients: list[Client] = []

    async def make(settings: Settings | None = None, **overrides: Any) -> Client:
        server = TestServer(create_app(ops_settings(settings, **overrides)))
        # Run as the production runner is: aiohttp's own inflating off (gateway/http/bodies.py).
        # TestServer ignores runner options given to its constructor; start_server takes them.
        await server.start_server(**SERVER_OPTIONS)
        client: Client = TestClient(server)
        await client.start_server()
        clients.append(client)
        return client

    try:
        yield make
    finally:
        for client in clients:
            await client.close()
