"""Enrich: attach each user's influence score, and keep the per-user score state in Redis.

The score itself is computed after commit from the user's current values (schemas/influence.py),
so it depends only on what TimescaleDB holds and a replayed batch yields the same score. The
state in Redis is written with "newest computation wins": each write carries the time its
values were read, and an older one never overwrites a newer one, so replicas that finish out
of order converge on the latest figure.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import redis.asyncio as redis
from redis.asyncio.client import Pipeline

__all__ = ["INFLUENCE_KEY", "queue_write_scores", "read_scores", "write_scores"]

# One hash for all users: field = user id, value = "score|version_us".
INFLUENCE_KEY: Final = "ia:influence"

_WRITE_NEWEST: Final = """
local written = 0
for i = 1, #ARGV, 3 do
  local current = redis.call('HGET', KEYS[1], ARGV[i])
  local version = tonumber(ARGV[i + 2])
  local keep = false
  if current then
    local sep = string.find(current, '|', 1, true)
    keep = sep and tonumber(string.sub(current, sep + 1)) > version
  end
  if not keep then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1] .. '|' .. ARGV[i + 2])
    written = written + 1
  end
end
return written
"""


async def read_scores(client: redis.Redis, user_ids: Iterable[str]) -> dict[str, float]:
    users = list(dict.fromkeys(user_ids))
    if not users:
        return {}
    raw: list[bytes | None] = await client.hmget(INFLUENCE_KEY, users)  # type: ignore[assignment]
    out: dict[str, float] = {}
    for user, value in zip(users, raw, strict=True):
        if value:
            out[user] = float(value.split(b"|", 1)[0])
    return out


def _script_args(scores: dict[str, float], version_us: int) -> list[str | int | float]:
    args: list[str | int | float] = []
    for user, score in scores.items():
        args += [user, score, version_us]
    return args


async def write_scores(client: redis.Redis, scores: dict[str, float], version_us: int) -> int:
    """Store `scores` unless a newer computation already did; returns how many were written."""
    if not scores:
        return 0
    script = client.register_script(_WRITE_NEWEST)
    return int(await script(keys=[INFLUENCE_KEY], args=_script_args(scores, version_us)))


def queue_write_scores(pipe: Pipeline, scores: dict[str, float], version_us: int) -> bool:
    """`write_scores` as one more command of `pipe` (its reply: how many were written), so the
    caller's other commands share the round trip; False, queueing nothing, without scores.

    EVAL, not the registered script's EVALSHA: redis-py runs a pipeline holding a registered
    script only after a SCRIPT EXISTS round trip of its own, the one the pipeline is there to
    save, and a bare EVALSHA can fail with NOSCRIPT after the pipeline's later commands ran.
    The script's few hundred bytes cost less than either.
    """
    if not scores:
        return False
    _ = pipe.eval(_WRITE_NEWEST, 1, INFLUENCE_KEY, *_script_args(scores, version_us))
    return True
