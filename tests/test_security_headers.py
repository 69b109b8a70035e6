"""Security headers on every response, HSTS only behind TLS, CORS from the allow-list."""

from __future__ import annotations

import pytest

from gateway.http.security import SECURITY_HEADERS
from tests.ops_support import MakeClient

APP = "https://app.example.com"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/health", 200),
        ("GET", "/status", 401),  # an ApiError rendered by the error middleware
        ("GET", "/no-such-route", 404),  # built by aiohttp's router
        ("DELETE", "/health", 405),
        ("POST", "/ingest/event", 401),
    ],
)
async def test_security_headers_on_every_response(
    make_client: MakeClient, method: str, path: str, status: int
) -> None:
    client = await make_client()
    response = await client.request(method, path)
    assert response.status == status
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert "Strict-Transport-Security" not in response.headers  # plain HTTP


@pytest.mark.parametrize(
    ("forwarded", "hsts"), [("https", True), ("https, http", True), ("http", False)]
)
async def test_hsts_only_when_the_client_used_tls(
    make_client: MakeClient, forwarded: str, hsts: bool
) -> None:
    client = await make_client()
    response = await client.get("/health", headers={"X-Forwarded-Proto": forwarded})
    assert ("Strict-Transport-Security" in response.headers) is hsts
    if hsts:
        assert response.headers["Strict-Transport-Security"].startswith("max-age=63072000")


async def test_cors_allows_listed_origins_only(make_client: MakeClient) -> None:
    client = await make_client(cors_origins=(APP,))
    allowed = await client.get("/health", headers={"Origin": APP})
    assert allowed.headers["Access-Control-Allow-Origin"] == APP
    assert "Origin" in allowed.headers.getall("Vary")
    assert "X-Request-ID" in allowed.headers["Access-Control-Expose-Headers"]
    assert "Access-Control-Allow-Credentials" not in allowed.headers

    other = await client.get("/health", headers={"Origin": "https://evil.example"})
    assert other.status == 200  # the browser, not the server, withholds the body
    assert "Access-Control-Allow-Origin" not in other.headers

    plain = await client.get("/health")
    assert "Access-Control-Allow-Origin" not in plain.headers


async def test_cors_is_closed_when_the_list_is_empty(make_client: MakeClient) -> None:
    client = await make_client(cors_origins=())
    response = await client.get("/health", headers={"Origin": APP})
    assert "Access-Control-Allow-Origin" not in response.headers


async def test_preflight_for_a_listed_origin(make_client: MakeClient) -> None:
    client = await make_client(cors_origins=(APP,))
    response = await client.options(
        "/ingest/events",
        headers={
            "Origin": APP,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert response.status == 204
    assert response.headers["Access-Control-Allow-Origin"] == APP
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    allowed_headers = response.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed_headers and "content-type" in allowed_headers
    assert int(response.headers["Access-Control-Max-Age"]) > 0
    assert response.headers["X-Frame-Options"] == "DENY"


async def test_preflight_for_another_origin_is_refused(make_client: MakeClient) -> None:
    client = await make_client(cors_origins=(APP,))
    response = await client.options(
        "/ingest/events",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert response.status == 403
    assert (await response.json())["error"]["code"] == "origin_not_allowed"
    assert "Access-Control-Allow-Origin" not in response.headers
