"""The API's answer cache in Redis: hot GET answers for API_CACHE_TTL (5 minutes by default).

An answer is stored under its user and normalized parameters (sinks/cache_generations.py),
prefixed with the user's generation token as it was *before* the answer was computed. A
lookup reads the token and the answer in one MGET and hits only when the two agree, so:

- the worker's `invalidate` after a commit turns every older answer of that user into a miss
  (and the next miss overwrites it: stale answers are not left behind);
- an answer computed while a commit landed carries the older token and can never hit, whatever
  the order in which the query, the commit and the store happened.

A user without a generation gets one before the query, for the same reason. Redis failures
never fail or stall a request: past CACHE_TIMEOUT_S or on an error the answer is computed and
served without the cache (`X-Cache: error`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Final

from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError

from sinks.cache_generations import GENERATION_TTL_S, entry_key, generation_key, new_token

__all__ = ["CACHE_REQUESTS", "ApiCache", "Lookup"]

log = logging.getLogger(__name__)

CACHE_REQUESTS: Final = Counter(
    "ia_api_cache_requests_total",
    "Cacheable API requests, by result: hit, miss, error (Redis failed; served uncached).",
    ["result"],
)
_HIT: Final = CACHE_REQUESTS.labels("hit")
_MISS: Final = CACHE_REQUESTS.labels("miss")
_ERROR: Final = CACHE_REQUESTS.labels("error")
_SEP: Final = b" "  # tokens are hex, so the first space ends the token
# A cache that answers slowly must not make the API slow: past this, serve uncached.
CACHE_TIMEOUT_S: Final = 1.0


@dataclass(frozen=True, slots=True)
class Lookup:
    """`body` on a hit; on a miss, the `generation` to stamp the answer with (None: do not
    store, the cache is unavailable)."""

    body: bytes | None
    generation: bytes | None
    result: str


class ApiCache:
    def __init__(self, redis: Redis, ttl_s: float) -> None:
        self._redis = redis
        self._ttl_ms = int(ttl_s * 1000)

    @property
    def enabled(self) -> bool:
        return self._ttl_ms > 0

    async def lookup(self, user_id: str, what: str) -> Lookup:
        gen_key = generation_key(user_id)
        try:
            async with asyncio.timeout(CACHE_TIMEOUT_S):
                replies: list[Any] = await self._redis.mget(gen_key, entry_key(user_id, what))
                generation, stored = replies
                if generation is None:
                    generation = await self._create_generation(gen_key)
        except (RedisError, TimeoutError) as e:
            _ERROR.inc()
            log.warning("api cache unavailable", extra={"error": repr(e)})
            return Lookup(None, None, "error")
        if stored is not None:
            token, _, body = stored.partition(_SEP)
            if token == generation:
                _HIT.inc()
                return Lookup(body, generation, "hit")
        _MISS.inc()
        return Lookup(None, generation, "miss")

    async def store(self, user_id: str, what: str, generation: bytes, body: bytes) -> None:
        try:
            async with asyncio.timeout(CACHE_TIMEOUT_S):
                await self._redis.set(
                    entry_key(user_id, what), generation + _SEP + body, px=self._ttl_ms
                )
        except (RedisError, TimeoutError) as e:
            log.warning("api cache store failed", extra={"error": repr(e)})

    async def _create_generation(self, gen_key: str) -> bytes:
        """The user's token, created if missing; a concurrent creator or invalidation wins."""
        async with self._redis.pipeline(transaction=False) as pipe:
            _ = pipe.set(gen_key, new_token(), nx=True, ex=GENERATION_TTL_S)
            _ = pipe.get(gen_key)
            replies: list[Any] = await pipe.execute()
        generation = replies[1]
        if not isinstance(generation, bytes):  # expired between the two commands
            raise RedisError("generation key vanished")
        return generation
