"""Request bodies: read within a bound, and inflated only where a route accepts a coding.

**Why aiohttp's own decompression is off.** With `auto_decompress` on (aiohttp's default), the
HTTP parser inflates a `Content-Encoding: gzip` body as its bytes arrive, before routing and
before any handler has authenticated anyone, and it keeps inflating the rest of a body nobody
reads while it drains the connection. One unauthenticated 1 MB gzip body that expands to
1 GiB cost the gateway 0.8 s of CPU above an idle run and stalled `/health` by 0.4 s; with
the inflating here, next to nothing (measured on this 2-core machine; numbers in the commit).
Every runner of the gateway's apps is therefore built with `SERVER_OPTIONS`, and bodies reach
the application as they were sent.

**Where a coding is accepted.** Only on the ingest routes (`ENCODED_PATHS`): producers may send
`gzip` (or `x-gzip`) and `deflate` (zlib, RFC 9110), which `read_body` inflates after the
handler authenticated the request, incrementally (`decompressobj` with `max_length`), refusing
with 413 once the inflated body passes the route's limit (INGEST_MAX_BYTES) or expands more
than `MAX_RATIO` times; the compressed body is bounded by the same limit. A coding there that
is not one of those is a 415. Any other route refuses a body with a `Content-Encoding` with
415 (`middleware`): no handler there would inflate it.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from gateway.errors import ApiError

__all__ = ["ENCODED_PATHS", "MAX_RATIO", "SERVER_OPTIONS", "middleware", "read_body"]

# Keyword arguments of every AppRunner / TestServer of the gateway (see the docstring).
SERVER_OPTIONS: Final[Mapping[str, Any]] = MappingProxyType({"auto_decompress": False})
# The routes that document `Content-Encoding` on their request body.
ENCODED_PATHS: Final = frozenset({"/ingest/event", "/ingest/events"})
# Real batches compress 5x (distinct ids and times) to ~200x (1,000 identical minimal events);
# a bomb reaches gzip's ~1,000x. Checked only past RATIO_FLOOR, where the inflating costs more
# than reading the same bytes sent plain would.
MAX_RATIO: Final = 256
_RATIO_FLOOR: Final = 64 * 1024
# zlib window bits: 16 + 15 reads a gzip member; 15 a zlib stream (HTTP's `deflate`).
_WBITS: Final = {"gzip": 31, "x-gzip": 31, "deflate": 15}
_IDENTITY: Final = "identity"


def _coding(request: web.Request) -> str:
    """The body's coding, lower-cased; `identity` when none is named."""
    return request.headers.get(hdrs.CONTENT_ENCODING, "").strip().lower() or _IDENTITY


def _unsupported(coding: str, accepted: str) -> ApiError:
    return ApiError(
        415,
        "unsupported_content_encoding",
        f"Content-Encoding {coding[:64]!r} is not accepted here; {accepted}",
        "Content-Encoding",
    )


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """415 for a coded body on a route that does not inflate one; before any body is read."""
    coding = _coding(request)
    if coding != _IDENTITY and request.body_exists and request.path not in ENCODED_PATHS:
        raise _unsupported(coding, "send the body uncompressed")
    return await handler(request)


def _too_large(limit: int, detail: str = "") -> ApiError:
    return ApiError(413, "payload_too_large", f"request body exceeds {limit} bytes{detail}", "$")


async def read_body(request: web.Request, limit: int) -> bytes:
    """The body, inflated if its Content-Encoding asks; 413 past `limit` bytes either way,
    415 for a coding other than gzip or deflate, 400 for a body that does not inflate."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    coding = _coding(request)
    if coding == _IDENTITY:
        body = await request.read()  # a chunked body past client_max_size: aiohttp's 413
        if len(body) > limit:
            raise _too_large(limit)
        return body
    wbits = _WBITS.get(coding)
    if wbits is None:
        raise _unsupported(coding, "use gzip or deflate")
    return await _inflate(request, wbits, limit, coding)


async def _inflate(request: web.Request, wbits: int, limit: int, coding: str) -> bytes:
    """Inflate chunk by chunk as the body arrives. Each step may produce only what the two
    bounds still allow (plus one byte to notice the excess), so a bomb costs at most `limit`
    (or MAX_RATIO times what was read) bytes of inflating before its 413."""
    inflater = zlib.decompressobj(wbits)
    out: list[bytes] = []
    size = read = 0
    try:
        async for chunk in request.content.iter_any():
            read += len(chunk)
            if read > limit:
                raise _too_large(limit)
            data = chunk
            while data and not inflater.eof:
                # Never 0: zlib reads max_length=0 as "no bound". The checks below keep
                # `size` within both bounds, so this is at least 1.
                bound = min(limit, max(_RATIO_FLOOR, MAX_RATIO * read))
                piece = inflater.decompress(data, bound + 1 - size)
                size += len(piece)
                out.append(piece)
                if size > limit:
                    raise _too_large(limit, " once decompressed")
                if size > _RATIO_FLOOR and size > MAX_RATIO * read:
                    raise _too_large(limit, f" or expands more than {MAX_RATIO} times")
                data = inflater.unconsumed_tail
            if inflater.eof and (inflater.unused_data or data):
                raise _malformed(coding, "data follows the end of the compressed stream")
    except zlib.error as e:
        raise _malformed(coding, str(e)) from None
    if not inflater.eof:
        raise _malformed(coding, "the compressed stream is truncated")
    return b"".join(out)


def _malformed(coding: str, reason: str) -> ApiError:
    return ApiError(400, "malformed_body", f"the {coding} body does not inflate: {reason}", "$")
