"""Acknowledging a batch: XACK per stream, and the backlog counter in the same step."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import redis.asyncio as redis

from pipeline.deliveries import Delivery

__all__ = ["Acks"]

# Acknowledge and count acknowledged events in one step, so the gateway's backlog figure
# (appended - acked) never counts an entry twice, even when a redelivery is acknowledged again.
_ACK_SCRIPT: Final = """
local acked = 0
for i = 1, #ARGV, 2 do
  if redis.call('XACK', KEYS[1], KEYS[2], ARGV[i]) == 1 then
    acked = acked + tonumber(ARGV[i + 1])
  end
end
if KEYS[3] ~= '' and acked > 0 then
  redis.call('HINCRBY', KEYS[3], 'acked', acked)
end
return acked
"""


class Acks:
    """Acknowledges entries of `group`; `backlog_keys` maps a stream to its backlog hash (a
    stream without one is acknowledged without counting)."""

    def __init__(self, client: redis.Redis, group: str, backlog_keys: Mapping[str, str]) -> None:
        self._redis = client
        self._group = group
        self._backlog_keys = backlog_keys
        self._ack = client.register_script(_ACK_SCRIPT)

    async def acknowledge(self, batch: list[Delivery]) -> None:
        """Call only once the batch's output is durable: an acknowledged entry is never redone."""
        by_stream: dict[str, list[Delivery]] = {}
        for d in batch:
            by_stream.setdefault(d.stream, []).append(d)
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream, items in by_stream.items():
                args: list[Any] = []
                for d in items:
                    args += [d.entry_id, d.weight]
                keys = [stream, self._group, self._backlog_keys.get(stream, "")]
                await self._ack(keys=keys, args=args, client=pipe)
            await pipe.execute()
