"""Security headers on every response and CORS from the `CORS_ORIGINS` allow-list.

Headers (the Helmet.js set that applies to a JSON API):
- `X-Content-Type-Options: nosniff`: a browser never guesses a JSON body into HTML or script;
- `X-Frame-Options: DENY` and CSP `frame-ancestors 'none'` (old and new browsers): no page may
  frame ours; `default-src 'none'` since the API serves no page that loads anything;
- `Referrer-Policy: no-referrer`: URLs (which may carry a `token` query parameter for a
  WebSocket) never leak to another site;
- `Strict-Transport-Security` only when the request came over TLS, directly or as the proxy in
  front reports with `X-Forwarded-Proto: https`: sent over plain HTTP it would be ignored at
  best, and it must not pin a development host on loopback to HTTPS.

CORS: a browser origin listed in `CORS_ORIGINS` (exact `scheme://host[:port]`, or `*`) gets
`Access-Control-Allow-Origin` echoing it, with `Vary: Origin` so caches keep answers apart.
Preflights (`OPTIONS` with `Access-Control-Request-Method`) are answered here with 204 for an
allowed origin and 403 otherwise, before routing, so every route supports them. Credentials
(cookies) are never allowed: the API authenticates with bearer tokens only.

Both are applied from `on_response_prepare`, so they reach responses aiohttp builds itself
(404 from the router, 500 from an unhandled exception) as well as the handlers' own, on both
ports (the WS_PORT app registers the same hook). The hook also replaces aiohttp's `Server`
header, which names the exact aiohttp and Python versions, with a neutral `SERVER`. Not
reached: the plain-text 400 aiohttp's protocol layer sends for bytes that are not HTTP (see
gateway/errors.py), which still carries aiohttp's own `Server`.

WebSocket upgrades get no CORS protection from browsers (any page may open a socket to any
host), so the WebSocket handler asks `check_websocket_origin` before upgrading. Allowed: a
request without `Origin` (not a browser: a service, a CLI, a test client), an origin the CORS
allow-list admits, and the gateway's own origin (`Origin` naming the `Host` the request was sent
to: a dashboard served from the same host and port, which CORS would not restrict either).
Everything else is refused with 403 before the upgrade. An empty `CORS_ORIGINS` therefore
refuses every foreign browser page, as it refuses every foreign preflight; `*` admits all.
"""

from __future__ import annotations

from typing import Final

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from yarl import URL

from gateway.errors import ApiError
from gateway.keys import SETTINGS

__all__ = [
    "SECURITY_HEADERS",
    "SERVER",
    "check_websocket_origin",
    "on_response_prepare",
    "preflight_middleware",
]

SECURITY_HEADERS: Final = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}
# Names the service, not the software and versions a scanner would match against advisories.
SERVER: Final = "inergize-analytics"
# Two years with subdomains: the value the HSTS preload list asks for.
_HSTS: Final = "max-age=63072000; includeSubDomains"
_ALLOWED_METHODS: Final = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
# Headers a browser client of this API sends beyond the CORS-safelisted ones.
_ALLOWED_HEADERS: Final = "Authorization, Content-Type, Idempotency-Key, X-Request-ID"
# What a browser script may read from a response beyond the safelisted headers.
_EXPOSED_HEADERS: Final = (
    "X-Request-ID, Retry-After, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset"
)
# Browsers cap this anyway (Chromium at 2 h); ten minutes saves most preflights.
_MAX_AGE: Final = "600"


def _is_tls(request: web.Request) -> bool:
    if request.secure:
        return True
    forwarded = request.headers.get("X-Forwarded-Proto", "")
    # A chain of proxies lists protocols left to right; the first is the client's.
    return forwarded.split(",", 1)[0].strip().lower() == "https"


def _allowed_origin(request: web.Request) -> str | None:
    origin = request.headers.get(hdrs.ORIGIN)
    if not origin:
        return None
    allowed = request.app[SETTINGS].cors_origins
    if origin in allowed or "*" in allowed:
        return origin
    return None


def _same_origin(origin: str, request: web.Request) -> bool:
    """Does `origin` name the host and port this request was sent to? Compared after
    normalising case and default ports (`https://h` is `https://h:443`, and so is `Host: h`)."""
    try:
        url = URL(origin)
        target = URL.build(scheme=url.scheme, authority=request.host)
    except (ValueError, TypeError):
        return False
    if url.scheme not in ("http", "https") or url.host is None or target.host is None:
        return False  # `null` (a sandboxed frame, a file) or garbage: no origin to match
    return url.host.lower() == target.host.lower() and url.port == target.port


def check_websocket_origin(request: web.Request) -> None:
    """For the WebSocket handler, before upgrading: raise 403 for a browser page whose origin
    is neither allowed by CORS_ORIGINS nor the gateway's own."""
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is None or _allowed_origin(request) is not None or _same_origin(origin, request):
        return
    raise ApiError(
        403,
        "origin_not_allowed",
        f"Origin {origin[:200]!r} is not in CORS_ORIGINS; browser pages from other origins may "
        "not open a WebSocket",
        "Origin",
    )


async def on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
    headers = response.headers
    for name, value in SECURITY_HEADERS.items():
        headers.setdefault(name, value)
    # Assigned, not defaulted: aiohttp sets its own before this hook runs.
    headers[hdrs.SERVER] = SERVER
    if _is_tls(request):
        headers.setdefault("Strict-Transport-Security", _HSTS)
    if request.headers.get(hdrs.ORIGIN):
        headers.add(hdrs.VARY, "Origin")
        origin = _allowed_origin(request)
        if origin is not None:
            headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
            headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = _EXPOSED_HEADERS


@web.middleware
async def preflight_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer CORS preflights before routing; everything else passes through."""
    if request.method != hdrs.METH_OPTIONS or (
        hdrs.ACCESS_CONTROL_REQUEST_METHOD not in request.headers
    ):
        return await handler(request)
    if _allowed_origin(request) is None:
        raise ApiError(403, "origin_not_allowed", "this origin is not in CORS_ORIGINS")
    return web.Response(
        status=204,
        headers={
            hdrs.ACCESS_CONTROL_ALLOW_METHODS: _ALLOWED_METHODS,
            hdrs.ACCESS_CONTROL_ALLOW_HEADERS: _ALLOWED_HEADERS,
            hdrs.ACCESS_CONTROL_MAX_AGE: _MAX_AGE,
        },
    )
