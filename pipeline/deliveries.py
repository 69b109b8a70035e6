"""What a handler receives from the runner, and what it may hand back or raise.

The stages import these types (through `pipeline.runner`, which re-exports them); the runtime's
modules (claims, acks, dead letters, trimming) import them from here, so none of them needs the
runner and the runner can compose them all.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from schemas.dead_letters import text
from schemas.stream_ids import id_key

# id_key lives in schemas/stream_ids.py (the gateways order ids too); re-exported for the
# runtime's modules (claims, trimming) that import it from here.
__all__ = [
    "BACKOFF_FIRST_S",
    "BACKOFF_MAX_S",
    "READ_COUNT",
    "TRANSIENT_ERRORS",
    "DeadLetter",
    "Delivery",
    "Handler",
    "Transient",
    "id_key",
    "parse_reply",
]

# A failed read or batch is retried after this, doubling up to BACKOFF_MAX_S: quick enough to
# ride out a blip, slow enough not to hammer a server that is restarting.
BACKOFF_FIRST_S: Final = 0.1
BACKOFF_MAX_S: Final = 5.0
# Entries fetched per stream per XREADGROUP or XAUTOCLAIM call; a batch may take several calls.
READ_COUNT: Final = 200


class Transient(Exception):
    """A handler's dependency is temporarily unavailable: retry the same batch later."""

    def __init__(self, message: str, retry_after: float = BACKOFF_FIRST_S) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# Failures that say nothing about the entries: the batch is retried as it is, never dead-lettered.
TRANSIENT_ERRORS: Final[tuple[type[BaseException], ...]] = (
    Transient,
    OSError,
    TimeoutError,
    RedisConnectionError,
    RedisTimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One stream entry as delivered to this consumer; `fields` in entry order."""

    stream: str
    entry_id: str
    fields: list[tuple[bytes, bytes]]
    deliveries: int = 1

    @property
    def weight(self) -> int:
        """Events in the entry: the unit of BATCH_MAX_ROWS and of the backlog counter."""
        return len(self.fields)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Something a stage could not process, kept with the reason and the original payload."""

    delivery: Delivery
    reason: str
    stage: str
    payload: bytes = b""  # the one event's bytes; empty means the whole entry


Handler = Callable[[list[Delivery]], Awaitable[list[DeadLetter]]]


def parse_reply(reply: Any, *, deliveries: int) -> list[Delivery]:
    """The entries of an XREADGROUP (or XAUTOCLAIM, wrapped as one stream) reply."""
    out: list[Delivery] = []
    for stream, entries in reply or []:
        name = text(stream)
        for entry_id, fields in entries:
            if fields is None:  # deleted while pending: nothing left to process or keep
                continue
            items = list(fields.items()) if isinstance(fields, dict) else list(fields)
            out.append(Delivery(name, text(entry_id), items, deliveries))
    return out
