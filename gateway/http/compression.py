"""gzip (or deflate) for large JSON answers, in one middleware for every route.

A JSON body over `MIN_BYTES` is compressed when the client's `Accept-Encoding` admits gzip or
deflate (gzip preferred at equal weight; `q=0` refuses a coding), and carries
`Vary: Accept-Encoding` either way, so a cache never hands the compressed form to a client that
did not ask for it. Smaller bodies are sent as they are, with no `Vary`: gzip's header and
trailer alone are 18 bytes, and below about a KiB the CPU and latency cost more than the bytes
saved. Brotli would need a new dependency; it is not offered.

Not compressed:
- `/ingest/*`: producers are services next to the gateway, and the hot path cannot afford it:
  gzip of a 100-event batch answer (8.3 KiB -> 2.7 KiB) costs about 110 us of CPU, a third of
  a core at the gateway's ~2,900 such batches/s (1,000 events: 1.7 ms). Measured once with
  zlib level 6 on this 2-core machine; the check itself costs ~1.5 us per request, below
  wrk's noise on single-event POSTs (4.7-6.1k req/s with and without it).
- anything but `application/json`: `/metrics` (Prometheus text) is scraped on a LAN every
  few seconds, and the WebSocket has its own framing.
aiohttp compresses a body up to 4 KiB on the event loop and larger ones in its executor, so a
big answer does not stall other requests.
"""

from __future__ import annotations

from typing import Final

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

__all__ = ["MIN_BYTES", "middleware", "preferred_coding"]

# Bodies up to this size go out uncompressed (see the module docstring).
MIN_BYTES: Final = 1024
_JSON: Final = "application/json"
_INGEST: Final = "/ingest/"
# Preference at equal q: gzip is what every client and proxy handles best.
_OFFERED: Final = (web.ContentCoding.gzip, web.ContentCoding.deflate)


def preferred_coding(accept_encoding: str) -> web.ContentCoding | None:
    """The coding to use for `Accept-Encoding` (RFC 9110 section 12.5.3), or None for none."""
    weights: dict[str, float] = {}
    for item in accept_encoding.lower().split(","):
        name, _, params = item.partition(";")
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0  # a malformed weight: do not guess in the client's favour
        name = name.strip()
        if name:
            weights[name] = q
    best: web.ContentCoding | None = None
    best_q = 0.0
    for coding in _OFFERED:
        aliases = ("gzip", "x-gzip") if coding is web.ContentCoding.gzip else (coding.value,)
        q = next((weights[a] for a in aliases if a in weights), weights.get("*", 0.0))
        if q > best_q:
            best, best_q = coding, q
    return best


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outside the error middleware, so a large rendered error is compressed like an answer."""
    response = await handler(request)
    if (
        not request.path.startswith(_INGEST)
        and isinstance(response, web.Response)
        and not response.prepared
        and response.content_type == _JSON
        and isinstance(response.body, bytes)
        and len(response.body) > MIN_BYTES
    ):
        response.headers.add(hdrs.VARY, hdrs.ACCEPT_ENCODING)
        coding = preferred_coding(request.headers.get(hdrs.ACCEPT_ENCODING, ""))
        if coding is not None:
            response.enable_compression(coding)
    return response
