"""Rate limiting in Redis: GCRA (the generic cell rate algorithm) in one atomic Lua call per key.

Why a script of our own and not the `limits` library: one budget check is one EVALSHA on the
gateway's existing Redis client (no second client, no extra dependency in the image), the
decision and the headers' figures (remaining, reset, retry-after) come out of the same atomic
step, and the clock is the Redis server's (`TIME`), so replicas whose clocks drift still share
one exact budget. GCRA stores one number per key (the theoretical arrival time) and needs no
sorted set, so memory stays one small string per active client.

Semantics: a budget is N requests per RATE_LIMIT_WINDOW, refilled smoothly (one every
window/N), with bursts of up to N. Budgets, each per token subject and per client IP:
- `ingest`: `/ingest/*`; a `user` token's subject budget is RATE_LIMIT_INGEST_USER (on by
  default: an end user must not be able to fill the backlog producers share), a producer's or
  admin's RATE_LIMIT_INGEST_SUBJECT (off by default);
- `api`: every other route except the probes (`/health`, `/ready`, `/metrics`), which an
  orchestrator and Prometheus must always reach;
- `ws`: WebSocket connects, checked by the WebSocket handler through `check_websocket`.

A refused request gets 429 with `Retry-After` and the `RateLimit-*` headers of the draft IETF
standard (the tightest budget's limit, remaining and seconds to a full refill); allowed
requests carry the same `RateLimit-*` headers. The subject comes from a valid bearer token
(an invalid one is ignored here and refused by the route). The IP is the TCP peer, unless the
peer is one of TRUSTED_PROXIES: then it is the right-most address of `X-Forwarded-For` that is
not itself a trusted proxy (gateway/http/clientip.py). With TRUSTED_PROXIES empty (the default)
the header is ignored, and behind a reverse proxy every client shares the proxy's budget.

If Redis fails, the check lets the request through (and logs): ingest then fails on its own with
503, and the API must not go down with the limiter.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from typing import Any, Final, Literal

from aiohttp import web
from aiohttp.typedefs import Handler
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from gateway.auth import Principal, Role, verify_token
from gateway.errors import ApiError
from gateway.http.clientip import client_ip
from gateway.http.prom import RATE_LIMITED
from gateway.keys import REDIS, SETTINGS
from schemas.settings import Settings

__all__ = [
    "EXEMPT_PATHS",
    "GCRA_LUA",
    "Budget",
    "Decision",
    "check",
    "check_websocket",
    "middleware",
    "on_response_prepare",
]

log = logging.getLogger(__name__)

Budget = Literal["ingest", "api", "ws"]

# KEYS: the budget keys of one request (its subject's and its IP's). ARGV: per key, the
# emission interval (us) and the limit N. Returns, per key, {allowed 0|1, remaining, reset_us,
# retry_after_us}. A key holds the theoretical arrival time (TAT) in us; a request is allowed
# when, after adding one interval, the TAT is at most one window (N intervals) ahead of now.
# A request is spent only when every key allows it, so a refusal by one budget costs the
# other nothing. One call for all keys: one round trip and one command per request.
GCRA_LUA: Final = """#!lua
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out, updates, allowed = {}, {}, true
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local limit = tonumber(ARGV[2 * i])
  local window = interval * limit
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  local new_tat = tat + interval
  if new_tat - now > window then
    allowed = false
    out[i] = {0, 0, tat - now, new_tat - now - window}
  else
    updates[i] = new_tat
    out[i] = {1, math.floor((window - (new_tat - now)) / interval), new_tat - now, 0}
  end
end
if allowed then
  for i, new_tat in pairs(updates) do
    redis.call('SET', KEYS[i], string.format('%.0f', new_tat), 'PX',
               math.ceil((new_tat - now) / 1000))
  end
end
return out
"""
_SHA: Final = hashlib.sha1(GCRA_LUA.encode(), usedforsecurity=False).hexdigest()
# One hash tag for every limiter key: a request's subject and IP keys are checked in one script
# call, which on a Redis Cluster needs both on one slot.
_PREFIX: Final = "{ia:rl}"
# Probes an orchestrator and Prometheus must always reach; gateway/ops/openapi.py documents 429
# on every other route.
EXEMPT_PATHS: Final = frozenset({"/health", "/ready", "/metrics"})
_HEADERS: Final = web.RequestKey("ratelimit_headers", dict[str, str])


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one budget check for one key."""

    allowed: bool
    limit: int
    remaining: int
    reset_s: float  # until the budget is full again
    retry_after_s: float  # until one more request fits; 0 when allowed

    def headers(self, window_s: float) -> dict[str, str]:
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(math.ceil(self.reset_s)),
            "RateLimit-Policy": f"{self.limit};w={math.ceil(window_s)}",
        }


def _limits(settings: Settings, budget: Budget, role: Role | None) -> tuple[int, int]:
    """(per subject, per IP) for `budget`; `role` is the subject's."""
    if budget == "ingest":
        if role == "user":
            return settings.rate_limit_ingest_user, settings.rate_limit_ingest_ip
        return settings.rate_limit_ingest_subject, settings.rate_limit_ingest_ip
    if budget == "api":
        return settings.rate_limit_api_subject, settings.rate_limit_api_ip
    return settings.rate_limit_ws_subject, settings.rate_limit_ws_ip


def _subject_key(subject: str) -> str:
    # Subjects are free text of any length; a digest keeps keys short and injection-free.
    return hashlib.blake2b(subject.encode(), digest_size=12).hexdigest()


async def _evaluate(redis: Redis, checks: list[tuple[str, int]], interval_s: float) -> list[Any]:
    """Run GCRA for every (key, limit) in one script call; load the script once if missing."""
    keys = [key for key, _ in checks]
    args: list[int] = []
    for _, limit in checks:
        args += [math.ceil(interval_s / limit * 1e6), limit]
    try:
        replies: list[Any] = await redis.evalsha(_SHA, len(keys), *keys, *args)
    except NoScriptError:
        await redis.script_load(GCRA_LUA)
        replies = await redis.evalsha(_SHA, len(keys), *keys, *args)
    return replies


async def check(
    redis: Redis,
    settings: Settings,
    budget: Budget,
    *,
    subject: str | None,
    ip: str | None,
    role: Role | None = None,
) -> Decision | None:
    """Spend one request of `budget` for the subject (of `role`) and the IP; the tightest
    decision, or None when no limit applies. Never raises for Redis: a limiter outage lets
    traffic pass."""
    per_subject, per_ip = _limits(settings, budget, role)
    checks: list[tuple[str, int]] = []
    if subject is not None and per_subject > 0:
        checks.append((f"{_PREFIX}:{budget}:sub:{_subject_key(subject)}", per_subject))
    if ip is not None and per_ip > 0:
        checks.append((f"{_PREFIX}:{budget}:ip:{ip}", per_ip))
    if not checks:
        return None
    try:
        replies = await _evaluate(redis, checks, settings.rate_limit_window)
    except RedisError as e:
        log.warning("rate limiter unavailable, allowing", extra={"error": repr(e)})
        return None
    decisions = [
        Decision(bool(ok), limit, int(left), int(reset) / 1e6, int(retry) / 1e6)
        for (_, limit), (ok, left, reset, retry) in zip(checks, replies, strict=True)
    ]
    refused = [d for d in decisions if not d.allowed]
    if refused:
        return max(refused, key=lambda d: d.retry_after_s)
    return min(decisions, key=lambda d: d.remaining)


def _refuse(decision: Decision, budget: Budget, window_s: float) -> ApiError:
    retry = max(1, math.ceil(decision.retry_after_s))
    return ApiError(
        429,
        "rate_limited",
        f"the {budget} rate limit of {decision.limit} requests per {window_s:g} s is spent; "
        f"retry in {retry} s",
        headers={"Retry-After": str(retry), **decision.headers(window_s)},
    )


def _principal(request: web.Request, settings: Settings) -> Principal | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    try:
        return verify_token(settings, token.strip())
    except ApiError:
        return None  # the route refuses it with 401; only the IP budget applies meanwhile


async def _apply(request: web.Request, budget: Budget, principal: Principal | None) -> None:
    settings = request.app[SETTINGS]
    ip = client_ip(request, settings.trusted_proxies)
    subject, role = (principal.subject, principal.role) if principal else (None, None)
    decision = await check(request.app[REDIS], settings, budget, subject=subject, ip=ip, role=role)
    if decision is None:
        return
    scope = "subject" if subject is not None else "ip"
    if not decision.allowed:
        RATE_LIMITED.labels(budget, scope).inc()
        raise _refuse(decision, budget, settings.rate_limit_window)
    request[_HEADERS] = decision.headers(settings.rate_limit_window)


async def check_websocket(request: web.Request, principal: Principal | None) -> None:
    """For the WebSocket handler, before upgrading: spend one `ws` connect or raise 429."""
    await _apply(request, "ws", principal)


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Inside the error middleware, so a 429 renders like every other error."""
    path = request.path
    if (
        path in EXEMPT_PATHS
        or request.method == "OPTIONS"
        # WebSocket connects have their own budget, spent by the handler once it knows who
        # connects (the token may arrive as a query parameter or subprotocol).
        or request.headers.get("Upgrade", "").lower() == "websocket"
    ):
        return await handler(request)
    budget: Budget = "ingest" if path.startswith("/ingest/") else "api"
    await _apply(request, budget, _principal(request, request.app[SETTINGS]))
    return await handler(request)


async def on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """The allowed request's `RateLimit-*` figures, on its response whatever its status."""
    headers = request.get(_HEADERS)
    if headers is not None:
        for name, value in headers.items():
            response.headers.setdefault(name, value)
