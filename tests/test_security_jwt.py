"""JWT options beyond the HS256 default: RS256 with a configured public key, algorithm
confusion, audience and issuer, and the leeway on `nbf` / `iat`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.app import create_app
from gateway.auth import LEEWAY_S, Principal, mint_token, verify_token
from gateway.errors import ApiError
from schemas.errors import SettingsError
from schemas.settings import Settings
from tests.conftest import settings_for
from tests.ops_support import MakeClient

PRIVATE = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PUBLIC_PEM = (
    PRIVATE.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)
OTHER_PRIVATE = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def rs256_settings(**overrides: Any) -> Settings:
    return settings_for(jwt_algorithm="rs256", jwt_public_key=PUBLIC_PEM, **overrides)


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {"sub": "alice", "role": "admin", "iat": now, "exp": now + 600}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def rs256(key: Any = PRIVATE, **changes: Any) -> str:
    return jwt.encode(claims(**changes), key, algorithm="RS256")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_with_public_key() -> str:
    """The confusion attack: HS256 "signed" with the server's public key as the HMAC secret
    (PyJWT refuses to build it, so it is assembled by hand as an attacker would)."""
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims()).encode())
    mac = hmac.new(PUBLIC_PEM.encode(), f"{header}.{payload}".encode(), hashlib.sha256)
    return f"{header}.{payload}.{b64(mac.digest())}"


def refused(settings: Settings, token: str) -> str:
    with pytest.raises(ApiError) as raised:
        verify_token(settings, token)
    assert raised.value.status == 401
    return raised.value.message


def test_rs256_token_signed_by_the_provider_is_accepted() -> None:
    assert verify_token(rs256_settings(), rs256()) == Principal("alice", "admin")


def test_public_key_with_escaped_newlines_works() -> None:
    one_line = PUBLIC_PEM.replace("\n", "\\n")
    settings = settings_for(jwt_algorithm="rs256", jwt_public_key=one_line)
    assert verify_token(settings, rs256(sub="escaped")).subject == "escaped"


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(hs256_with_public_key(), id="hs256-signed-with-public-key"),
        pytest.param(rs256(OTHER_PRIVATE), id="other-private-key"),
        pytest.param(
            jwt.encode(claims(), settings_for().jwt_secret, algorithm="HS256"),
            id="hs256-with-the-shared-secret",
        ),
        pytest.param(rs256(exp=int(time.time()) - 3600), id="expired"),
        pytest.param(rs256(exp=None), id="no-exp"),
        pytest.param(f"{hs256_with_public_key().rsplit('.', 1)[0]}.", id="alg-hs256-unsigned"),
    ],
)
async def test_rs256_attacks_are_401_over_http(make_client: MakeClient, token: str) -> None:
    client = await make_client(rs256_settings())
    response = await client.get("/status", headers={"Authorization": f"Bearer {token}"})
    assert response.status == 401
    assert (await response.json())["error"]["code"] == "unauthorized"


async def test_rs256_token_opens_status_over_http(make_client: MakeClient) -> None:
    client = await make_client(rs256_settings())
    response = await client.get("/status", headers={"Authorization": f"Bearer {rs256()}"})
    assert response.status == 200


def test_hs256_deployment_refuses_rs256_tokens() -> None:
    assert refused(settings_for(), rs256()) == "invalid token"


def test_audience_and_issuer_are_checked_when_configured() -> None:
    settings = rs256_settings(jwt_audience="analytics", jwt_issuer="https://id.example")
    good = rs256(aud="analytics", iss="https://id.example")
    assert verify_token(settings, good).subject == "alice"
    assert "audience" in refused(settings, rs256(aud="billing", iss="https://id.example"))
    assert "issuer" in refused(settings, rs256(aud="analytics", iss="https://evil.example"))
    assert "aud" in refused(settings, rs256(iss="https://id.example"))
    assert "iss" in refused(settings, rs256(aud="analytics"))


def test_audience_is_ignored_when_not_configured() -> None:
    assert verify_token(rs256_settings(), rs256(aud="anything")).subject == "alice"


def test_minted_tokens_carry_configured_audience_and_issuer() -> None:
    settings = settings_for(jwt_audience="analytics", jwt_issuer="ia")
    token = mint_token(settings, subject="bot", role="producer", ttl_seconds=60)
    assert verify_token(settings, token) == Principal("bot", "producer")
    assert "audience" in refused(settings_for(jwt_audience="other", jwt_issuer="ia"), token)


def test_nbf_and_iat_within_the_leeway_are_accepted_beyond_it_refused() -> None:
    settings = rs256_settings()
    soon = int(time.time()) + LEEWAY_S // 2
    assert verify_token(settings, rs256(nbf=soon, iat=soon)).subject == "alice"
    later = int(time.time()) + LEEWAY_S + 60
    assert refused(settings, rs256(nbf=later, sub="later")) == "token not yet valid"
    assert refused(settings, rs256(iat=later, sub="later-iat")) == "token not yet valid"


def test_rs256_cannot_mint_development_tokens() -> None:
    with pytest.raises(SettingsError) as raised:
        mint_token(rs256_settings(), subject="x", role="user", ttl_seconds=60)
    assert "JWT_ALGORITHM" in str(raised.value)


@pytest.mark.parametrize(
    "public_key",
    [
        "",
        "not a pem",
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode(),
    ],
    ids=["missing", "garbage", "ec-key"],
)
def test_a_bad_public_key_stops_the_gateway_at_start(public_key: str) -> None:
    with pytest.raises(SettingsError) as raised:
        create_app(settings_for(jwt_algorithm="rs256", jwt_public_key=public_key))
    assert "JWT_PUBLIC_KEY" in str(raised.value)


def test_settings_read_jwt_variables() -> None:
    s = Settings.from_env(
        {"JWT_ALGORITHM": "RS256", "JWT_PUBLIC_KEY": "pem", "JWT_AUDIENCE": "a", "JWT_ISSUER": "i"}
    )
    assert (s.jwt_algorithm, s.jwt_public_key, s.jwt_audience, s.jwt_issuer) == (
        "rs256",
        "pem",
        "a",
        "i",
    )
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({"JWT_ALGORITHM": "none"})
    assert "JWT_ALGORITHM" in str(raised.value)
