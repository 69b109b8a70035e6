"""Shared helpers of the WebSocket tests: gateways on loopback, real clients, and stream entries
appended exactly as the worker (`ia:metrics`) and the alerting stage (`ia:alerts`) write them.

These tests use Redis db 11: other suites flush db 15 (and db 10) while they run. Users are
unique per test, so tests (and concurrent runs of these tests) never see each other's data.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import socket
import struct
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import ClientSession, ClientWebSocketResponse, WSMsgType
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from gateway.app import create_app
from gateway.auth import Role, mint_token
from gateway.http.bodies import SERVER_OPTIONS
from schemas.alerts import Alert, alert_entry
from schemas.settings import Settings
from schemas.streams import ALERTS_STREAM, METRICS_STREAM
from tests.conftest import settings_for

__all__ = [
    "WS_REDIS_DB",
    "RawWsClient",
    "WsClient",
    "gateway",
    "iso",
    "make_alert",
    "metrics_fields",
    "new_user",
    "token",
    "ws_connect",
    "ws_redis",
    "ws_settings",
    "xadd_alert",
    "xadd_metrics",
]

WS_REDIS_DB = 11


def ws_settings(base: Settings | None = None, **overrides: Any) -> Settings:
    """Test settings on Redis db 11, without the connect-rate budget (tests open many)."""
    fields = {
        "redis_db": WS_REDIS_DB,
        "rate_limit_ws_subject": 0,
        "rate_limit_ws_ip": 0,
        **overrides,
    }
    return dataclasses.replace(base or settings_for(), **fields)


def token(subject: str, role: Role = "user", ttl: float = 600, key: str | None = None) -> str:
    s = ws_settings() if key is None else ws_settings(jwt_secret=key)
    return mint_token(s, subject=subject, role=role, ttl_seconds=ttl)


def new_user() -> str:
    return f"ws-{uuid.uuid4().hex[:10]}"


def iso(t: datetime | None = None) -> str:
    t = t or datetime.now(UTC)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# Entries older than this belong to no running test; newer ones may belong to another run
# of these tests (every full-suite run includes them), so db 11 is never flushed.
_STALE_MS = 15 * 60 * 1000


@asynccontextmanager
async def ws_redis() -> AsyncIterator[Redis]:
    """A client of db 11, with stale stream entries trimmed (never flushed: see above)."""
    client = Redis.from_url(ws_settings().redis_url)
    try:
        minid = int(time.time() * 1000) - _STALE_MS
        for stream in (METRICS_STREAM, ALERTS_STREAM):
            await client.xtrim(stream, minid=minid, approximate=True)
        yield client
    finally:
        await client.aclose()


@asynccontextmanager
async def gateway(settings: Settings) -> AsyncIterator[TestServer]:
    """A whole gateway app (ingest, /ws, its own fan-out) on a loopback port."""
    server = TestServer(create_app(settings))
    await server.start_server(**SERVER_OPTIONS)  # as in production (gateway/http/bodies.py)
    try:
        yield server
    finally:
        await server.close()


def metrics_fields(
    user: str, values: Mapping[str, float | None], *, as_of: str | None = None
) -> dict[Any, Any]:
    """The fields of one `ia:metrics` entry in the worker's format (pipeline/processor.py)."""
    now = iso()
    updates = [
        {"userId": user, "metric": m, "value": v, "asOf": as_of or now, "committedAt": now}
        for m, v in values.items()
    ]
    return {"v": 1, "updates": orjson.dumps(updates)}


async def xadd_metrics(
    redis: Redis, user: str, values: Mapping[str, float | None], *, as_of: str | None = None
) -> str:
    """Append one `ia:metrics` entry; returns its id."""
    entry_id: Any = await redis.xadd(METRICS_STREAM, metrics_fields(user, values, as_of=as_of))
    return str(entry_id.decode())


def make_alert(user: str, value: float = 120.0, **changes: Any) -> Alert:
    fields: dict[str, Any] = {
        "alert_id": uuid.uuid4().hex,
        "user_id": user,
        "rule_id": "rule-views",
        "metric": "profileViews",
        "value": value,
        "threshold": 100.0,
        "severity": "warning",
        "message": "profile views above 100",
        "triggered_at": iso(),
        **changes,
    }
    return Alert(**fields)


async def xadd_alert(redis: Redis, alert: Alert) -> str:
    fields: Any = alert_entry(alert)
    entry_id: Any = await redis.xadd(ALERTS_STREAM, fields)
    return str(entry_id.decode())


class WsClient:
    """A real aiohttp client socket with the reads a test needs."""

    def __init__(self, ws: ClientWebSocketResponse) -> None:
        self.ws = ws

    async def send(self, type_: str, data: Mapping[str, Any] | None = None) -> None:
        message: dict[str, Any] = {"type": type_}
        if data is not None:
            message["data"] = dict(data)
        await self.ws.send_bytes(orjson.dumps(message))

    async def recv(self, wait: float = 5.0) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=wait)
        if msg.type is not WSMsgType.TEXT:
            raise AssertionError(f"expected a text frame, got {msg.type!r} {msg.data!r}")
        out: dict[str, Any] = orjson.loads(msg.data)
        return out

    async def recv_type(self, type_: str, wait: float = 5.0) -> dict[str, Any]:
        """The next message of `type_`; fails on any other message in between."""
        message = await self.recv(wait)
        assert message["type"] == type_, message
        return message

    async def subscribe(
        self,
        metrics: list[str] | None = None,
        *,
        frequency: float | None = None,
        user: str | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Subscribe; (the `subscribed` ack, the snapshot `metrics_update`)."""
        data: dict[str, Any] = {}
        if metrics is not None:
            data["metrics"] = metrics
        if frequency is not None:
            data["updateFrequency"] = frequency
        if user is not None:
            data["userId"] = user
        await self.send("subscribe", data)
        ack = await self.recv_type("subscribed")
        snapshot = await self.recv_type("metrics_update")
        assert snapshot["data"].get("snapshot") is True, snapshot
        return ack, snapshot

    async def until_pong(self, wait: float = 5.0) -> list[dict[str, Any]]:
        """Every message before the answer to a ping: what the server sent up to now."""
        await self.send("ping")
        seen = []
        while (message := await self.recv(wait))["type"] != "pong":
            seen.append(message)
        return seen

    async def close_code(self, wait: float = 5.0) -> tuple[int, str]:
        """Read until the server's close frame; (code, reason). Other frames are skipped."""
        deadline = time.monotonic() + wait
        while True:
            msg = await self.ws.receive(timeout=max(0.01, deadline - time.monotonic()))
            if msg.type is WSMsgType.CLOSE:
                return int(msg.data), str(msg.extra or "")
            if msg.type in (WSMsgType.CLOSED, WSMsgType.ERROR):
                raise AssertionError(f"connection ended without a close frame: {msg!r}")


@asynccontextmanager
async def ws_connect(
    http: ClientSession,
    url: Any,
    jwt: str | None,
    *,
    via: str = "header",
    autoping: bool = True,
) -> AsyncIterator[WsClient]:
    """A socket authenticated by `jwt` through the header, the `bearer` subprotocol or the
    `token` query parameter."""
    headers: dict[str, str] = {}
    protocols: tuple[str, ...] = ()
    params: dict[str, str] = {}
    if jwt is not None:
        if via == "header":
            headers["Authorization"] = f"Bearer {jwt}"
        elif via == "protocol":
            protocols = ("bearer", jwt)
        else:
            params["token"] = jwt
    async with http.ws_connect(
        url,
        headers=headers,
        protocols=protocols,
        params=params,
        autoping=autoping,
    ) as ws:
        yield WsClient(ws)


class RawWsClient:
    """A bare RFC 6455 client on a socket with a small receive buffer: a client that stops
    reading fills it at once, where aiohttp's client and the kernel's default buffers would
    absorb megabytes first."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, url: Any, jwt: str, *, rcvbuf: int = 4096) -> RawWsClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: the window
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (url.host, url.port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=rcvbuf)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET {url.path_qs} HTTP/1.1\r\nHost: {url.host}:{url.port}\r\n"
                f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {jwt}\r\n\r\n"
            ).encode()
        )
        status = await reader.readline()
        assert b" 101 " in status, status
        while await reader.readline() not in (b"\r\n", b""):
            pass
        return cls(reader, writer)

    async def send_json(self, message: Mapping[str, Any]) -> None:
        payload = orjson.dumps(message)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        n = len(payload)
        header = bytes((0x81, 0x80 | n)) if n < 126 else struct.pack("!BBH", 0x81, 0xFE, n)
        self.writer.write(header + mask + masked)
        await self.writer.drain()

    async def recv_json(self, wait: float = 5.0) -> dict[str, Any]:
        """The next text message (control frames are skipped)."""
        async with asyncio.timeout(wait):
            while True:
                first, second = await self.reader.readexactly(2)
                n = second & 0x7F
                if n == 126:
                    (n,) = struct.unpack("!H", await self.reader.readexactly(2))
                elif n == 127:
                    (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
                payload = await self.reader.readexactly(n)
                if first & 0x0F == 0x1:
                    out: dict[str, Any] = orjson.loads(payload)
                    return out

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()
