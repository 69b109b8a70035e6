"""The append script: one Redis call per partition deduplicates events and appends the rest.

**Dedup in the same call.** `APPEND_LUA` drops ids seen in the dedup window, so checking and
appending cannot race between gateway replicas. Its stream entry's fields alternate event_id
(field name) and the msgpack `StreamEvent` (value); workers read them pairwise.

Dedup structure (`DedupWindow`): the window (DEDUP_WINDOW seconds) is cut into `slices` sets of
window/slices seconds, `ia:dedup:{p}:<floor(now / slice_len)>`. An id is added to the current
slice; a call checks the current slice, the `slices` before it and the one after it (a replica
whose clock runs up to one slice ahead writes there). So an id is remembered for at least the
window and at most one slice longer; each slice expires (slices + 2) slice lengths after its
last write, and memory is bounded by the ids of that span. Members are 16-byte blake2b digests
(`id_digest`), so an id costs the same whatever its length (~66 bytes of Redis memory each,
measured on Redis 7.0).

An event's identity is (user_id, event_id), as in the hypertables' unique index: two users'
events that share an event_id (per-user counters) are both kept, never one dropped in silence.

Every key of one call carries the partition's hash tag `{p}`, so a call stays on one Redis
Cluster slot. The script starts with `#!lua` (Redis 7+): without the `allow-oom` flag Redis refuses
it as a whole when out of memory, instead of failing half-way through.
"""

from __future__ import annotations

import hashlib
import math
from typing import Final

from schemas.streams import backlog_key, dedup_key, events_stream

__all__ = ["APPEND_LUA", "DUPLICATE", "MAX_EVENTS_PER_CALL", "DedupWindow", "id_digest"]

# KEYS[1] stream, KEYS[2] backlog hash, KEYS[3] current dedup slice (checked and written),
# KEYS[4..] the other slices of the window (checked only).
# ARGV[1] slice TTL in ms, then one triple per event: event_id, digest, msgpack payload.
# Returns one character per event: "0" appended, "1" duplicate.
# Order of writes: XADD first, so any failure after it can only make a retry append again
# (at-least-once, the database's unique index absorbs it), never lose an event as "duplicate".
# No MAXLEN on XADD: the trimmer removes only what every group acknowledged
# (docs/architecture.md, "Delivery guarantees").
APPEND_LUA: Final = """#!lua
local n = (#ARGV - 1) / 3
local digests = {}
for i = 1, n do digests[i] = ARGV[3 * i] end
local seen = {}
for k = 3, #KEYS do
  local hits = redis.call('SMISMEMBER', KEYS[k], unpack(digests))
  for i = 1, n do
    if hits[i] == 1 then seen[i] = true end
  end
end
local flags, fields, fresh, in_call = {}, {}, {}, {}
for i = 1, n do
  local d = digests[i]
  if seen[i] or in_call[d] then
    flags[i] = '1'
  else
    in_call[d] = true
    flags[i] = '0'
    fields[#fields + 1] = ARGV[3 * i - 1]
    fields[#fields + 1] = ARGV[3 * i + 1]
    fresh[#fresh + 1] = d
  end
end
if #fresh > 0 then
  redis.call('XADD', KEYS[1], '*', unpack(fields))
  redis.call('HINCRBY', KEYS[2], 'appended', #fresh)
  redis.call('SADD', KEYS[3], unpack(fresh))
  redis.call('PEXPIRE', KEYS[3], ARGV[1])
end
return table.concat(flags)
"""

# Lua's unpack() fails past ~8000 values (LUAI_MAXCSTACK); 1000 events make 2000 XADD fields.
MAX_EVENTS_PER_CALL: Final = 1000
# The script's flag for a duplicate, as a byte of its bytes reply.
DUPLICATE: Final = ord("1")


def id_digest(user_id: str, event_id: str) -> bytes:
    """The dedup member of an event: 128 bits, so a false duplicate needs a blake2b collision
    (odds ~n^2 / 2^129; for 10^9 ids in one window about 10^-21), not just a busy window.
    user_id cannot contain NUL (its schema pattern), so the joined input is unambiguous."""
    return hashlib.blake2b(
        b"%s\0%s" % (user_id.encode(), event_id.encode()), digest_size=16
    ).digest()


class DedupWindow:
    """The dedup window cut into slices (module doc): which keys a call reads and writes."""

    __slots__ = ("slice_s", "slice_ttl_ms", "slices")

    def __init__(self, window_s: float, slices: int) -> None:
        self.slices = slices
        self.slice_s = window_s / slices
        # A slice's TTL after its last write (ARGV[1] of the script): the span a call reads.
        self.slice_ttl_ms = math.ceil((slices + 2) * self.slice_s * 1000)

    def keys(self, partition: int, now: float) -> list[str]:
        """KEYS of the script's call for `partition` at Unix time `now`, in its order."""
        current = int(now // self.slice_s)
        others = [current + 1, *range(current - 1, current - self.slices - 1, -1)]
        return [
            events_stream(partition),
            backlog_key(partition),
            dedup_key(partition, current),
            *(dedup_key(partition, s) for s in others),
        ]
