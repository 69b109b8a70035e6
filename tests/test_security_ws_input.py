"""Hostile WebSocket frames the JSON decoder must never see: nesting past MAX_NESTING (an
error frame naming the limit, not a RecursionError and a 1006) and invalid UTF-8 (a text frame
closes with 1007, RFC 6455; a binary one gets an error). Over real sockets on loopback; after
each, the same socket (where it stays open) and another client are still served."""

from __future__ import annotations

import asyncio
import os
import struct

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from gateway.ws.input import MAX_NESTING
from tests.ws_support import RawWsClient, WsClient, new_user, token, ws_connect

# The probe's frame: ~6 KB of nested arrays under a field the server ignores.
NESTED = b'{"type":"ping","x":' + b"[" * 3000 + b"]" * 3000 + b"}"


async def pong(client: WsClient) -> None:
    await client.send("ping")
    await client.recv_type("pong")


async def send_frame(raw: RawWsClient, payload: bytes, opcode: int = 0x1) -> None:
    """One masked, final frame of `opcode` carrying exactly `payload` (no UTF-8 check)."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    n = len(payload)
    header = (
        bytes((0x80 | opcode, 0x80 | n)) if n < 126 else struct.pack("!BBH", 0x80 | opcode, 0xFE, n)
    )
    raw.writer.write(header + mask + masked)
    await raw.writer.drain()


async def close_code(raw: RawWsClient, wait: float = 5.0) -> tuple[int, bytes]:
    """Read frames until the server's close frame; (code, reason)."""
    async with asyncio.timeout(wait):
        while True:
            first, second = await raw.reader.readexactly(2)
            n = second & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await raw.reader.readexactly(2))
            payload = await raw.reader.readexactly(n)
            if first & 0x0F == 0x8:
                (code,) = struct.unpack("!H", payload[:2])
                return code, payload[2:]


@pytest.mark.parametrize("kind", ["text", "binary"])
async def test_deeply_nested_frame_is_an_error_frame(
    gw: TestServer, http: ClientSession, kind: str
) -> None:
    url = gw.make_url("/ws")
    async with (
        ws_connect(http, url, token(new_user())) as hostile,
        ws_connect(http, url, token(new_user())) as other,
    ):
        if kind == "text":
            await hostile.ws.send_str(NESTED.decode())
        else:
            await hostile.ws.send_bytes(NESTED)
        error = await hostile.recv_type("error")
        assert error["data"]["code"] == "too_deeply_nested"
        assert f"at most {MAX_NESTING} levels" in error["data"]["message"]
        await pong(other)  # another client was served
        await pong(hostile)  # and the socket itself survived


async def test_nesting_at_the_limit_is_decoded(gw: TestServer, http: ClientSession) -> None:
    depth = MAX_NESTING - 1  # the message object itself is one level
    frame = b'{"type":"ping","x":' + b"[" * depth + b"]" * depth + b"}"
    async with ws_connect(http, gw.make_url("/ws"), token(new_user())) as client:
        await client.ws.send_bytes(frame)
        await client.recv_type("pong")


async def test_invalid_utf8_text_frame_closes_1007(gw: TestServer, http: ClientSession) -> None:
    user = new_user()
    raw = await RawWsClient.connect(gw.make_url("/ws"), token(user))
    try:
        async with ws_connect(http, gw.make_url("/ws"), token(new_user())) as other:
            await send_frame(raw, b'{"type":"ping","x":"\xff\xfe"}')
            code, reason = await close_code(raw)
            assert code == 1007
            assert b"UTF-8" in reason
            await pong(other)
    finally:
        await raw.close()


async def test_invalid_utf8_binary_frame_is_an_error(gw: TestServer, http: ClientSession) -> None:
    url = gw.make_url("/ws")
    async with (
        ws_connect(http, url, token(new_user())) as hostile,
        ws_connect(http, url, token(new_user())) as other,
    ):
        # Inside a string: the decoder raised UnicodeDecodeError, which escaped the handler.
        await hostile.ws.send_bytes(b'{"type":"subscribe","data":{"metrics":["\xff"]}}')
        error = await hostile.recv_type("error")
        assert error["data"]["code"] == "invalid_utf8"
        assert "UTF-8" in error["data"]["message"]
        await pong(other)
        await pong(hostile)
        assert not hostile.ws.closed
