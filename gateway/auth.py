"""JWT verification and development tokens.

The algorithm is pinned: a token's own `alg` header never chooses how it is checked, which
closes `alg: none` and key-confusion attacks. `exp` and `sub` are required, so a token cannot
live forever by leaving out its expiry.

HS256 with JWT_SECRET by default; RS256 with JWT_PUBLIC_KEY when JWT_ALGORITHM=RS256 (tokens
then come from an identity provider holding the private key; `analytics token` cannot mint
them). With RS256 pinned, an HS256 token "signed" with the public key as its secret (the
classic confusion attack) is refused for its algorithm before any key is used. JWT_AUDIENCE
and JWT_ISSUER, when set, make `aud` / `iss` required and checked; `exp`, `nbf` and `iat` are
honoured with LEEWAY_S of clock skew. `exp` must be a JSON number no further ahead than
JWT_MAX_TTL, and a `user` token's `sub` a valid user id (schemas/events.py), else 401.

Every authenticated endpoint calls `authenticate(request)`; WebSocket and query-parameter
tokens go through `verify_token` directly.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from typing import Any, Final, Literal, cast, get_args

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from gateway.errors import ApiError
from gateway.keys import SETTINGS
from schemas.errors import SettingsError
from schemas.events import is_user_id
from schemas.settings import Settings

__all__ = [
    "ALGORITHM",
    "LEEWAY_S",
    "Principal",
    "Role",
    "authenticate",
    "check_jwt_settings",
    "mint_token",
    "require_role",
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
    """A development token signed with JWT_SECRET, carrying JWT_AUDIENCE / JWT_ISSUER if set.
    ValueError if `ttl_seconds` exceeds JWT_MAX_TTL: the gateway would refuse the token."""
    if settings.jwt_algorithm != "hs256":
        raise SettingsError(
            "JWT_ALGORITHM",
            "RS256 tokens are signed by your identity provider; only HS256 ones can be minted",
        )
    if ttl_seconds > settings.jwt_max_ttl:
        raise ValueError(
            f"a lifetime of {ttl_seconds:g}s exceeds JWT_MAX_TTL ({settings.jwt_max_ttl:g}s)"
        )
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": subject,
        "role": role,
        "iat": now,
        "exp": now + int(ttl_seconds),
    }
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    return jwt.encode(claims, settings.jwt_secret, algorithm=ALGORITHM)


@dataclass(frozen=True, slots=True)
class _Verifier:
    """How tokens are checked; hashable, so it keys the verification cache (a changed key,
    algorithm, audience or issuer never reuses a verdict reached under the old one)."""

    algorithm: str
    key: str  # the HS256 secret or the RS256 public key PEM
    audience: str
    issuer: str
    max_ttl: float


def _verifier(settings: Settings) -> _Verifier:
    if settings.jwt_algorithm == "rs256":
        # One-line environment values often carry the PEM's newlines as `\n`.
        pem = settings.jwt_public_key.replace("\\n", "\n")
        return _Verifier(
            "RS256", pem, settings.jwt_audience, settings.jwt_issuer, settings.jwt_max_ttl
        )
    return _Verifier(
        ALGORITHM,
        settings.jwt_secret,
        settings.jwt_audience,
        settings.jwt_issuer,
        settings.jwt_max_ttl,
    )


@functools.lru_cache(maxsize=8)
def _public_key(pem: str) -> RSAPublicKey:
    key = load_pem_public_key(pem.encode())
    if not isinstance(key, RSAPublicKey):
        raise ValueError(f"expected an RSA public key, got {type(key).__name__}")
    return key


def check_jwt_settings(settings: Settings) -> None:
    """At start: RS256 needs a readable RSA public key; raises SettingsError naming the variable."""
    if settings.jwt_algorithm != "rs256":
        return
    pem = _verifier(settings).key
    if not pem:
        raise SettingsError("JWT_PUBLIC_KEY", "required when JWT_ALGORITHM=RS256")
    try:
        _public_key(pem)
    except ValueError as e:
        raise SettingsError("JWT_PUBLIC_KEY", f"not a PEM RSA public key: {e}") from None


def _unauthorized(reason: str) -> ApiError:
    return ApiError(401, "unauthorized", reason, headers=_CHALLENGE)


def _reason(e: jwt.InvalidTokenError) -> str:
    """What a client may learn about its refused token: the rule broken, never a key detail."""
    if isinstance(e, jwt.ExpiredSignatureError):
        return "token expired"
    if isinstance(e, jwt.MissingRequiredClaimError):
        return f"token lacks the {e.claim} claim"
    if isinstance(e, jwt.InvalidAudienceError):
        return "token audience is not accepted here"
    if isinstance(e, jwt.InvalidIssuerError):
        return "token issuer is not accepted here"
    if isinstance(e, jwt.ImmatureSignatureError):
        return "token not yet valid"
    return "invalid token"


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _verified(verifier: _Verifier, token: str) -> tuple[Principal, float]:
    """(principal, exp) of a token whose signature and claims checked out; raises otherwise.

    lru_cache does not cache exceptions, so a bad token is verified (and refused) every time.
    """
    required = ["exp", "sub"]
    if verifier.audience:
        required.append("aud")
    if verifier.issuer:
        required.append("iss")
    key: Any = verifier.key if verifier.algorithm == ALGORITHM else _public_key(verifier.key)
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[verifier.algorithm],
            audience=verifier.audience or None,
            issuer=verifier.issuer or None,
            # Without a configured audience a token's `aud` is not ours to judge.
            options={"require": required, "verify_aud": bool(verifier.audience)},
            leeway=LEEWAY_S,
        )
    except jwt.InvalidTokenError as e:
        raise _unauthorized(_reason(e)) from None
    subject = claims["sub"]
    role = claims.get("role", "user")
    if not isinstance(subject, str) or not subject:
        raise _unauthorized("token subject must be a non-empty string")
    if not isinstance(role, str) or role not in _ROLES:
        raise _unauthorized("token role must be one of user, producer, admin")
    # A user's subject names its data (goals, cache keys, streams): `../x`, a newline or a
    # brace must never reach them.
    if role == "user" and not is_user_id(subject):
        raise _unauthorized("token subject must be a user id: 1-64 chars of [A-Za-z0-9_.:-]")
    return Principal(subject, cast(Role, role)), _expiry(claims["exp"], verifier.max_ttl)


def _expiry(exp: Any, max_ttl: float) -> float:
    """`exp` as a number within JWT_MAX_TTL of now. PyJWT checks `exp` with int(), which takes
    "9999999999" and 1e30 alike; RFC 7519 makes it a NumericDate, a JSON number."""
    if isinstance(exp, bool) or not isinstance(exp, int | float) or not math.isfinite(exp):
        raise _unauthorized("token exp must be a number of seconds since the epoch")
    if exp > time.time() + max_ttl + LEEWAY_S:
        raise _unauthorized(f"token lives longer than the {max_ttl:g} s JWT_MAX_TTL allows")
    return float(exp)


def verify_token(settings: Settings, token: str) -> Principal:
    """The principal of a bearer token, or ApiError(401)."""
    principal, exp = _verified(_verifier(settings), token)
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


def require_role(request: web.Request, *roles: Role) -> Principal:
    """The authenticated principal if its role is one of `roles`: 401 anonymous, 403 otherwise."""
    principal = authenticate(request)
    if principal.role not in roles:
        raise ApiError(403, "forbidden", f"requires the {' or '.join(roles)} role")
    return principal
