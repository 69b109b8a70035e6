"""Per-user cache generations: what makes the API's cached answers for a user stale.

The gateway caches hot API answers in Redis (gateway/api/cache.py), each stamped with the user's
current generation token; an answer whose stamp differs from the token now stored is a miss.
The worker invalidates right after committing a batch and before announcing it on
`ia:metrics` (`queue_invalidate`, in the pipeline that then appends the entry), so a dashboard
that refetches on a `metrics_update` can never be served an answer computed before that
commit. The gateway calls `invalidate` after writes of its own (goals).

Tokens are random, never counters: a generation key that expired or was evicted and is
created again can never take a value an old cached answer still carries.

Both keys of a user carry the user id as hash tag, so on a Redis Cluster the generation and the
cached answers of one user sit on one slot and are read with one MGET. User ids cannot contain
braces (schemas/events.py), so the tag is always the whole id.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from typing import Final

import redis.asyncio as redis
from redis.asyncio.client import Pipeline

__all__ = [
    "GENERATION_TTL_S",
    "entry_key",
    "generation_key",
    "invalidate",
    "new_token",
    "queue_invalidate",
]

# Longer than any cached answer lives (API_CACHE_TTL, at most a day), so an expiring generation
# only costs one miss; short enough that users gone quiet leave no key behind for long.
GENERATION_TTL_S: Final = 2 * 86_400


def generation_key(user_id: str) -> str:
    return f"ia:cache:gen:{{{user_id}}}"


def entry_key(user_id: str, what: str) -> str:
    """The key of one cached answer; `what` names the endpoint and its normalized parameters."""
    return f"ia:cache:{{{user_id}}}:{what}"


def new_token() -> bytes:
    return secrets.token_hex(8).encode()


async def invalidate(client: redis.Redis, user_ids: Iterable[str]) -> None:
    """Give each user a fresh generation: every answer cached for them so far becomes a miss.

    One pipelined round trip for any number of users. A Redis error propagates: the worker then
    retries the batch rather than announce data that cached answers would contradict.
    """
    users = list(user_ids)
    if not users:
        return
    async with client.pipeline(transaction=False) as pipe:
        queue_invalidate(pipe, users)
        await pipe.execute()


def queue_invalidate(pipe: Pipeline, user_ids: Iterable[str]) -> None:
    """`invalidate` as commands of `pipe`, for a caller that sends more in the same round trip
    (the worker: scores, then this, then the `ia:metrics` entry); one reply per user."""
    for user in user_ids:
        _ = pipe.set(generation_key(user), new_token(), ex=GENERATION_TTL_S)
