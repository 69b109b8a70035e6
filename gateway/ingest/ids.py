"""Event ids the gateway assigns when a producer sends none: time-ordered UUIDv7 strings."""

from __future__ import annotations

import random
import time
from typing import Final

__all__ = ["uuid7"]

# UUIDv7 (RFC 9562): 48-bit Unix ms | version 7 | 12 random | variant 0b10 | 62 random.
_MS_MASK: Final = (1 << 48) - 1
_VERSION_VARIANT_MASK: Final = (0xF << 76) | (0x3 << 62)
_VERSION_VARIANT: Final = (0x7 << 76) | (0x2 << 62)


def uuid7(unix_ms: int | None = None) -> str:
    """A UUIDv7 string: ids assigned later sort later (to the millisecond) and index well."""
    ms = time.time_ns() // 1_000_000 if unix_ms is None else unix_ms
    # Ids need uniqueness, not secrecy: 74 random bits per millisecond make a collision
    # negligible, and getrandbits costs a tenth of os.urandom's syscall. `random` reseeds
    # itself in forked children, so worker processes do not share a sequence.
    value = (ms & _MS_MASK) << 80 | random.getrandbits(80)
    h = f"{value & ~_VERSION_VARIANT_MASK | _VERSION_VARIANT:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
