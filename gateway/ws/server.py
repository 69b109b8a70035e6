"""The WebSocket endpoint: `/` on WS_PORT and `/ws` on HTTP_PORT. The protocol, message by
message, is in docs/websocket.md; the shapes are in schemas/ws.py.

A browser page from an origin outside CORS_ORIGINS (and not the gateway's own) is refused with
403 before the upgrade; requests without `Origin` are not browsers and pass
(gateway/http/security.py). Authentication happens before the upgrade (a refused client gets an HTTP
401 it can read): `Authorization: Bearer <jwt>`, else `Sec-WebSocket-Protocol: bearer, <jwt>` (the
`bearer` subprotocol is echoed, as browsers require), else a `token` query parameter. A token that
expires during the session closes it with 4401.

Input is never trusted: malformed JSON, unknown types, invalid fields and oversized frames get
an `error` frame each and count as strikes (the third closes with 1008, or 1009 for size);
frames past four times WS_MAX_FRAME_BYTES close with 1009 at once; more than
WS_MAX_CLIENT_RATE messages in a second are ignored, twice as many close with 1008. No input
can raise out of the handler.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from typing import Final

import jwt
from aiohttp import web
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.auth import LEEWAY_S, verify_token
from gateway.errors import ApiError, http_error
from gateway.http import ratelimit, requestid, security
from gateway.http.bodies import SERVER_OPTIONS
from gateway.http.security import check_websocket_origin
from gateway.keys import DB_POOL, FANOUT, REDIS, SETTINGS
from gateway.ws.fanout import CLOSE_TIMEOUT_S, READ_SOCKET_TIMEOUT_S, Fanout
from gateway.ws.messages import receive
from gateway.ws.session import Session
from schemas.settings import Settings

__all__ = ["create_ws_app", "handler", "setup", "start_ws_site"]

log = logging.getLogger(__name__)

_BEARER: Final = "bearer"
_CHALLENGE: Final = {"WWW-Authenticate": 'Bearer realm="inergize-analytics"'}
# Frames up to this multiple of WS_MAX_FRAME_BYTES are read and refused with an error frame;
# larger ones are cut off by aiohttp's reader (close 1009) before they fill memory.
_HARD_FRAME_FACTOR: Final = 4


def setup(app: web.Application) -> None:
    """Serve `/ws` on the gateway app and run the process's fan-out. Call after the Redis and
    database contexts are registered: the fan-out starts after them and stops before them."""
    app.router.add_get("/ws", handler)
    app.cleanup_ctx.append(_fanout_ctx)
    app.on_shutdown.append(_close_sessions)


def create_ws_app(main: web.Application) -> web.Application:
    """The WS_PORT application (`/` only), sharing a started gateway app's fan-out."""
    app = web.Application()
    app[SETTINGS] = main[SETTINGS]
    app[REDIS] = main[REDIS]
    app[FANOUT] = main[FANOUT]
    app.router.add_get("/", handler)
    # Every other request gets the router's 404/405 as JSON from a catch-all route, not from a
    # middleware: any middleware (and the one aiohttp then adds) keeps a coroutine frame alive
    # for the length of every WebSocket session.
    app.router.add_route("*", "/{tail:.*}", _unrouted)
    # Signal hooks, not middlewares (see above): every answer of this port, the refusals
    # before an upgrade and the 101 itself, carries X-Request-ID, the security headers and
    # the neutral Server header, as on HTTP_PORT.
    app.on_response_prepare.append(requestid.on_response_prepare)
    app.on_response_prepare.append(security.on_response_prepare)
    app.on_shutdown.append(_close_sessions)
    return app


async def start_ws_site(main: web.Application, *, shutdown_timeout: float) -> web.AppRunner:
    """Listen on HTTP_HOST:WS_PORT; the caller cleans the runner up before `main`'s."""
    settings = main[SETTINGS]
    # SERVER_OPTIONS: nothing here reads a body, and aiohttp would otherwise inflate a gzip one.
    runner = web.AppRunner(
        create_ws_app(main), shutdown_timeout=shutdown_timeout, access_log=None, **SERVER_OPTIONS
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.http_host, settings.ws_port, reuse_address=True)
    await site.start()
    log.info("websocket listening", extra={"host": settings.http_host, "port": settings.ws_port})
    return runner


async def _fanout_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    reader = Redis(
        host=settings.redis_host,
        port=settings.redis_port,
        db=settings.redis_db,
        password=settings.redis_password or None,
        socket_timeout=READ_SOCKET_TIMEOUT_S,
        socket_connect_timeout=READ_SOCKET_TIMEOUT_S,
        max_connections=2,
        # No retries inside redis-py: they would hide an outage for seconds; the fan-out's
        # supervisor logs, counts and retries with its own backoff.
        retry=Retry(NoBackoff(), 0),
    )
    fanout = Fanout(settings, app[REDIS], reader, app[DB_POOL])
    app[FANOUT] = fanout
    await fanout.start()
    try:
        yield
    finally:
        try:
            await fanout.stop()
        finally:
            await reader.aclose()


async def _close_sessions(app: web.Application) -> None:
    await app[FANOUT].close_all(1001, "server shutting down")


async def _unrouted(request: web.Request) -> web.Response:
    """404, or 405 for `/` with a method other than GET (the route above took GET and HEAD)."""
    refusal: web.HTTPException = (
        web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"])
        if request.path == "/"
        else web.HTTPNotFound()
    )
    return http_error(request, refusal).response()


# --- the connection ----------------------------------------------------------------------


async def handler(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    fanout = request.app[FANOUT]
    # Refusals are rendered here, not by a middleware: on WS_PORT no middleware's frame then
    # stays alive for the whole session (about half a KiB per socket).
    try:
        ws, session = await _accept(request, settings, fanout)
    except ApiError as e:
        return e.response()
    if session is None:
        return ws
    fanout.add(session)
    try:
        async for msg in ws:
            await receive(session, fanout, settings, msg)
    finally:
        fanout.remove(session)
    return ws


async def _accept(
    request: web.Request, settings: Settings, fanout: Fanout
) -> tuple[web.WebSocketResponse, Session | None]:
    """Check the request, authenticate, upgrade; ApiError before the upgrade."""
    ws = web.WebSocketResponse(
        protocols=(_BEARER,),
        autoping=False,  # pongs reach us: any frame proves the peer alive (see the heartbeat)
        compress=False,  # frames are shared between sockets; see gateway/ws/session.py
        max_msg_size=settings.ws_max_frame_bytes * _HARD_FRAME_FACTOR,
        timeout=CLOSE_TIMEOUT_S,
        decode_text=False,
    )
    if not ws.can_prepare(request).ok:
        raise ApiError(400, "websocket_required", "expected a WebSocket upgrade request")
    if fanout.closing:
        raise ApiError(
            503, "shutting_down", "the server is shutting down", headers={"Retry-After": "1"}
        )
    # Before the token: a foreign page learns nothing, not even whether its token is valid.
    check_websocket_origin(request)
    token = _token(request)
    principal = verify_token(settings, token)
    await ratelimit.check_websocket(request, principal)
    await ws.prepare(request)
    transport = request.transport
    if transport is None:  # the client left during the handshake
        return ws, None
    _bound_kernel_buffer(transport, settings.ws_send_queue_bytes)
    return ws, Session(ws, transport, principal, _expiry(token), fanout.shared)


def _bound_kernel_buffer(transport: asyncio.Transport, size: int) -> None:
    """Cap the kernel's send buffer too: autotuned, it would hold megabytes of stale updates
    for a slow client before our coalescing noticed it. A dashboard's few KiB per second need
    no more than this even across an ocean."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
        except OSError as e:  # not fatal: the process-side bound still holds
            log.debug("SO_SNDBUF not set", extra={"error": repr(e)})


def _token(request: web.Request) -> str:
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("expected Authorization: Bearer <token>")
        return token.strip()
    offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
    if len(offered) >= 2 and offered[0].lower() == _BEARER and offered[1]:
        return offered[1]
    token = request.query.get("token", "").strip()
    if token:
        return token
    raise _unauthorized("missing bearer token (header, `bearer` subprotocol or `token` query)")


def _unauthorized(reason: str) -> ApiError:
    return ApiError(401, "unauthorized", reason, headers=_CHALLENGE)


def _expiry(token: str) -> float:
    """When the (already verified) token stops being accepted, as verify_token judges it."""
    claims = jwt.decode(token, options={"verify_signature": False})
    return float(claims["exp"]) + LEEWAY_S
