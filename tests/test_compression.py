"""Large JSON answers are gzip- (or deflate-) compressed when the client accepts it, with
`Vary: Accept-Encoding`; small ones, non-JSON ones (/metrics) and ingest answers are not."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from gateway.app import create_app
from gateway.errors import ApiError
from gateway.http.compression import MIN_BYTES, preferred_coding
from gateway.ops.openapi import document
from tests.ops_support import Client, MakeClient, bearer, ops_settings


@pytest.fixture
async def raw() -> AsyncIterator[ClientSession]:
    """A client that shows the bytes on the wire (no transparent decompression)."""
    async with ClientSession(auto_decompress=False) as session:
        yield session


async def fetch(
    raw: ClientSession,
    client: Client,
    path: str,
    accept: str,
    *,
    method: str = "GET",
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], list[str], bytes]:
    """(status, headers, Vary values, body bytes as sent)."""
    sent = {"Accept-Encoding": accept, **(headers or {})}
    async with raw.request(method, client.make_url(path), headers=sent, data=data) as r:
        return r.status, dict(r.headers), r.headers.getall("Vary", []), await r.read()


@pytest.mark.parametrize(
    ("accept", "coding"),
    [
        ("gzip", "gzip"),
        ("gzip, deflate, br", "gzip"),
        ("deflate", "deflate"),
        ("gzip;q=0, deflate", "deflate"),
        ("deflate;q=1, gzip;q=0.5", "deflate"),
        ("x-gzip", "gzip"),
        ("*", "gzip"),
        ("br", None),
        ("identity", None),
        ("gzip;q=0", None),
        ("", None),
    ],
)
def test_preferred_coding_honours_weights(accept: str, coding: str | None) -> None:
    chosen = preferred_coding(accept)
    assert (chosen.value if chosen is not None else None) == coding


async def test_large_json_is_gzipped_when_accepted(
    make_client: MakeClient, raw: ClientSession
) -> None:
    client = await make_client()
    status, headers, vary, body = await fetch(raw, client, "/openapi.json", "gzip, deflate")
    assert status == 200
    assert headers["Content-Encoding"] == "gzip"
    assert "Accept-Encoding" in vary
    plain = gzip.decompress(body)
    assert orjson.loads(plain) == document()
    assert len(body) < len(plain) / 3  # the point of it
    assert int(headers["Content-Length"]) == len(body)


async def test_deflate_when_only_deflate_is_accepted(
    make_client: MakeClient, raw: ClientSession
) -> None:
    client = await make_client()
    _, headers, _, body = await fetch(raw, client, "/openapi.json", "gzip;q=0, deflate")
    assert headers["Content-Encoding"] == "deflate"
    assert orjson.loads(zlib.decompress(body)) == document()


async def test_large_json_is_plain_without_accept_encoding_but_still_varies(
    make_client: MakeClient, raw: ClientSession
) -> None:
    client = await make_client()
    _, headers, vary, body = await fetch(raw, client, "/openapi.json", "identity")
    assert "Content-Encoding" not in headers
    assert "Accept-Encoding" in vary  # a cache must not serve this to a gzip client, or back
    assert orjson.loads(body) == document()


async def test_small_json_is_never_compressed(make_client: MakeClient, raw: ClientSession) -> None:
    client = await make_client()
    _, headers, vary, body = await fetch(raw, client, "/health", "gzip")
    assert len(body) <= MIN_BYTES
    assert "Content-Encoding" not in headers
    assert "Accept-Encoding" not in vary
    assert orjson.loads(body)  # readable as sent


async def test_metrics_text_is_not_compressed(make_client: MakeClient, raw: ClientSession) -> None:
    client = await make_client()
    _, headers, _, body = await fetch(raw, client, "/metrics", "gzip")
    assert len(body) > MIN_BYTES and headers["Content-Type"].startswith("text/plain")
    assert "Content-Encoding" not in headers
    assert body.startswith(b"#")  # Prometheus text, as sent


async def test_ingest_answers_are_not_compressed(
    make_client: MakeClient, raw: ClientSession
) -> None:
    client = await make_client()
    batch = [{"user_id": f"u{i}", "type": "profile_view"} for i in range(60)]
    status, headers, _, body = await fetch(
        raw,
        client,
        "/ingest/events",
        "gzip",
        method="POST",
        data=orjson.dumps(batch),
        headers={**bearer("producer"), "Content-Type": "application/json"},
    )
    assert status == 202, body
    assert len(body) > MIN_BYTES
    assert "Content-Encoding" not in headers
    assert orjson.loads(body)["accepted"] == 60


async def test_large_error_is_compressed_too(ops_redis: Redis, raw: ClientSession) -> None:
    """Errors rendered by the error middleware go through the same path as answers."""
    app = create_app(ops_settings())

    async def refuse(request: web.Request) -> web.Response:
        raise ApiError(422, "invalid", "x" * 4000, "$")

    app.router.add_get("/refuse", refuse)
    async with TestClient(TestServer(app)) as client:
        status, headers, _, body = await fetch(raw, client, "/refuse", "gzip")
    assert status == 422
    assert headers["Content-Encoding"] == "gzip"
    assert orjson.loads(gzip.decompress(body))["error"]["message"] == "x" * 4000
