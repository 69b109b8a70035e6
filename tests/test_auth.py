"""Bearer-token authentication: every malformed, forged or expired token is a 401 over real HTTP,
and a verified token's claims become the `Principal`."""

from __future__ import annotations

import base64
import json
import secrets
import time
import warnings
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app
from gateway.auth import Principal, mint_token, verify_token
from gateway.errors import ApiError
from tests.conftest import settings_for

Client = TestClient[web.Request, web.Application]
SECRET = settings_for().jwt_secret
OTHER_SECRET = secrets.token_urlsafe(32)
EVENT = {"user_id": "alice", "type": "profile_view"}


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {"sub": "alice", "role": "producer", "iat": now, "exp": now + 600}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def signed(secret: str = SECRET, algorithm: str = "HS256", **changes: Any) -> str:
    with warnings.catch_warnings():
        # HS512 with our 43-byte test key is what an attacker would try; PyJWT warns about it.
        warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
        return jwt.encode(claims(**changes), secret, algorithm=algorithm)


def unsigned() -> str:
    """`alg: none`: a token that asks not to be verified at all."""
    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims(role='admin'))}."


def tampered() -> str:
    """A genuine token whose payload was swapped for one naming another subject and role."""
    header, _, signature = signed(role="user").split(".")
    return f"{header}.{b64(claims(sub='mallory', role='admin'))}.{signature}"


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    client: Client = TestClient(TestServer(create_app(settings_for())))
    await client.start_server()
    yield client
    await client.close()


BAD_AUTHORIZATION = [
    pytest.param(None, id="none"),
    pytest.param("Bearer", id="bearer-without-token"),
    pytest.param("Basic YWxpY2U6cHc=", id="other-scheme"),
    pytest.param("Bearer not.a.jwt", id="malformed"),
    pytest.param("Bearer abc", id="malformed-one-segment"),
    pytest.param(f"Bearer {signed(secret=OTHER_SECRET)}", id="wrong-key"),
    pytest.param(f"Bearer {signed(exp=int(time.time()) - 60)}", id="expired"),
    pytest.param(f"Bearer {unsigned()}", id="alg-none"),
    pytest.param(f"Bearer {tampered()}", id="tampered-payload"),
    pytest.param(f"Bearer {signed(exp=None)}", id="missing-exp"),
    pytest.param(f"Bearer {signed(sub=None)}", id="missing-sub"),
    pytest.param(f"Bearer {signed(sub='')}", id="empty-sub"),
    pytest.param(f"Bearer {signed(role='root')}", id="unknown-role"),
    pytest.param(f"Bearer {signed(role=['admin'])}", id="role-not-a-string"),
    pytest.param(f"Bearer {signed(algorithm='HS512')}", id="other-algorithm-same-key"),
    pytest.param(f"Bearer {signed(nbf=int(time.time()) + 600)}", id="not-yet-valid"),
]


@pytest.mark.parametrize("authorization", BAD_AUTHORIZATION)
async def test_bad_tokens_are_401(client: Client, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    for path, body in [("/ingest/event", EVENT), ("/ingest/events", [EVENT])]:
        response = await client.post(path, json=body, headers=headers)
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        error = (await response.json())["error"]
        assert error["code"] == "unauthorized"
        assert error["message"]


def test_minted_token_verifies_to_its_principal() -> None:
    settings = settings_for()
    token = mint_token(settings, subject="bot", role="producer", ttl_seconds=60)
    assert verify_token(settings, token) == Principal("bot", "producer")


def test_missing_role_means_user() -> None:
    principal = verify_token(settings_for(), signed(role=None))
    assert principal == Principal("alice", "user")
    assert principal.may_send_for("alice")
    assert not principal.may_send_for("bob")
    assert Principal("svc", "producer").may_send_for("bob")
    assert Principal("ops", "admin").may_send_for("bob")


def test_expiry_within_leeway_is_accepted() -> None:
    assert verify_token(settings_for(), signed(exp=int(time.time()) - 5)).subject == "alice"


def test_a_cached_token_still_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_for()
    token = signed(exp=int(time.time()) + 30, sub="cached")
    assert verify_token(settings, token).subject == "cached"  # verified once, now cached
    later = time.time() + 60
    monkeypatch.setattr(time, "time", lambda: later)
    with pytest.raises(ApiError) as raised:
        verify_token(settings, token)
    assert (raised.value.status, raised.value.message) == (401, "token expired")


def test_a_token_for_another_secret_is_refused_even_if_cached_for_one() -> None:
    token = signed()
    assert verify_token(settings_for(), token).subject == "alice"
    rotated = settings_for(jwt_secret=OTHER_SECRET)
    with pytest.raises(ApiError) as raised:
        verify_token(rotated, token)
    assert raised.value.status == 401
