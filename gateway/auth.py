"""JWT verification and development tokens.

The algorithm is pinned: a token's own `alg` header never chooses how it is checked, which
closes `alg: none` and key-confusion attacks.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import jwt

from schemas.settings import Settings

__all__ = ["ALGORITHM", "Role", "mint_token"]

ALGORITHM = "HS256"
Role = Literal["user", "producer", "admin"]


def mint_token(settings: Settings, *, subject: str, role: Role, ttl_seconds: float) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": subject,
        "role": role,
        "iat": now,
        "exp": now + int(ttl_seconds),
    }
    return jwt.encode(claims, settings.jwt_secret, algorithm=ALGORITHM)
