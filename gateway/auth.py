"""JWT verification and development tokens.

The algorithm is pinned: a token's own `alg` header never chooses how it is checked, which
closes `alg: none` and key-confusion attacks. `exp` and `sub` are required, so a token cannot
live forever by leaving out its expiry.

Every authenticated endpoint calls `authenticate(request)`; WebSocket and query-parameter
tokens go through `verify_token` directly.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any, Final, Literal, cast, get_args

import jwt
from aiohttp import web

from gateway.errors import ApiError
from gateway.keys import SETTINGS
from schemas.settings import Settings

__all__ = [
    "ALGORITHM",
    "LEEWAY_S",
    "Principal",
    "Role",
    "authenticate",
    "mint_token",
    "verify_token",
]

ALGORITHM = "HS256"
Role = Literal["user", "producer", "admin"]
_ROLES: Final[frozenset[str]] = frozenset(get_args(Role))
# Clocks of the issuer and of the gateways drift a little; more would stretch every token's life.
LEEWAY_S: Final = 10
# Verifying HS256 with PyJWT costs ~100 us, twice aiohttp's own cost per request, and producers
# send the same token for hours. Only successful verifications are cached, and `exp` is checked
# again on every hit, so the cache never extends a token's life.
_CACHE_SIZE: Final = 4096
# RFC 6750: a 401 names the scheme the client should use.
_CHALLENGE: Final = {"WWW-Authenticate": 'Bearer realm="inergize-analytics"'}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who sent a request: `subject` is the token's `sub` (a user id for role `user`)."""

    subject: str
    role: Role

    def may_send_for(self, user_id: str) -> bool:
        """Producers and admins write for any user; a user only for itself."""
        return self.role != "user" or user_id == self.subject


def mint_token(settings: Settings, *, subject: str, role: Role, ttl_seconds: float) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": subject,
        "role": role,
        "iat": now,
        "exp": now + int(ttl_seconds),
    }
    return jwt.encode(claims, settings.jwt_secret, algorithm=ALGORITHM)


def _unauthorized(reason: str) -> ApiError:
    return ApiError(401, "unauthorized", reason, headers=_CHALLENGE)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _verified(secret: str, token: str) -> tuple[Principal, float]:
    """(principal, exp) of a token whose signature and claims checked out; raises otherwise.

    lru_cache does not cache exceptions, so a bad token is verified (and refused) every time.
    """
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            options={"require": ["exp", "sub"]},
            leeway=LEEWAY_S,
        )
    except jwt.ExpiredSignatureError:
        raise _unauthorized("token expired") from None
    except jwt.MissingRequiredClaimError as e:
        raise _unauthorized(f"token lacks the {e.claim} claim") from None
    except jwt.InvalidTokenError:
        raise _unauthorized("invalid token") from None
    subject = claims["sub"]
    role = claims.get("role", "user")
    if not isinstance(subject, str) or not subject:
        raise _unauthorized("token subject must be a non-empty string")
    if not isinstance(role, str) or role not in _ROLES:
        raise _unauthorized("token role must be one of user, producer, admin")
    exp = claims["exp"]
    return Principal(subject, cast(Role, role)), float(exp)


def verify_token(settings: Settings, token: str) -> Principal:
    """The principal of a bearer token, or ApiError(401)."""
    principal, exp = _verified(settings.jwt_secret, token)
    if time.time() > exp + LEEWAY_S:
        raise _unauthorized("token expired")
    return principal


def authenticate(request: web.Request) -> Principal:
    """The principal of `Authorization: Bearer <jwt>`, or ApiError(401) saying what is wrong."""
    header = request.headers.get("Authorization")
    if not header:
        raise _unauthorized("missing bearer token")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized("expected Authorization: Bearer <token>")
    return verify_token(request.app[SETTINGS], token)
