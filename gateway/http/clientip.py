"""The client's IP address as far as this gateway can believe it, for the per-IP rate limits.

The TCP peer, unless the peer is one of TRUSTED_PROXIES: then the right-most address of
`X-Forwarded-For` that is not itself a trusted proxy. Right-most, because every proxy appends
the address it received the request from, so only the entries our own proxies added can be
believed; anything left of them is whatever the client chose to send (a client that writes
`X-Forwarded-For: 1.2.3.4` through our proxy gets `1.2.3.4, <its real address>`, and is keyed
on its real address). With TRUSTED_PROXIES empty, the default, the header is never read: a
gateway reached directly must not let clients name their own address.
"""

from __future__ import annotations

import ipaddress
from typing import Final, TypeAlias

from aiohttp import web

from schemas.settings import IPNetwork

__all__ = ["client_ip"]

_IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
_HEADER: Final = "X-Forwarded-For"


def _parse_ip(text: str) -> _IPAddress | None:
    """An address as proxies write it (`1.2.3.4`, `1.2.3.4:567`, `[::1]:80`, `::1`), with
    IPv4-mapped IPv6 (`::ffff:1.2.3.4`, a dual-stack socket's view) folded to IPv4."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _trusted(ip: _IPAddress, proxies: tuple[IPNetwork, ...]) -> bool:
    return any(ip.version == net.version and ip in net for net in proxies)


def client_ip(request: web.Request, proxies: tuple[IPNetwork, ...]) -> str | None:
    """The address to key per-IP budgets on: the TCP peer, or for a peer among `proxies` the
    right-most untrusted `X-Forwarded-For` entry (several headers read as one list). An entry
    that is not an address ends the walk at the hop that wrote it; if every entry is trusted,
    the left-most is the client (an internal service behind our own proxies)."""
    peer_text = request.remote
    if peer_text is None:
        return None
    peer = _parse_ip(peer_text)
    if peer is None or not proxies or not _trusted(peer, proxies):
        return peer_text if peer is None else str(peer)
    hops = [h for v in request.headers.getall(_HEADER, ()) for h in v.split(",")]
    client = peer
    for hop in reversed(hops):
        if not hop.strip():
            continue
        ip = _parse_ip(hop)
        if ip is None:
            break  # garbage: the hop to its right (a trusted one) is as far as we can see
        client = ip
        if not _trusted(ip, proxies):
            break
    return str(client)
