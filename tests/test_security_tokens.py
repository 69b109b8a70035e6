"""Token claims the gateway used to take on trust: a `user` token's `sub` must be a valid user
id (the event schema's rule), and `exp` a JSON number at most JWT_MAX_TTL ahead; otherwise
401 over HTTP and on the WebSocket, while other clients are served."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import jwt
import pytest
from aiohttp import ClientSession, WSServerHandshakeError

from gateway.auth import mint_token
from schemas.settings import Settings
from tests.ops_support import Client, MakeClient, bearer, ops_settings
from tests.ws_support import gateway, ws_settings

BAD_SUBJECTS = ["../../etc", "alice\nadmin", "alice\n", "a" * 200, "{alice}", "a}b", ""]


def signed(settings: Settings | None = None, **claims: Any) -> str:
    now = int(time.time())
    body: dict[str, Any] = {"sub": "alice", "role": "user", "iat": now, "exp": now + 600}
    body.update(claims)
    return jwt.encode(body, (settings or ops_settings()).jwt_secret, algorithm="HS256")


async def refused(client: Client, token: str, path: str = "/api/v1/metrics/catalog") -> str:
    """The 401's message for `token` on `path`; a valid user is served right after."""
    response = await client.get(path, headers={"Authorization": f"Bearer {token}"})
    assert response.status == 401, await response.text()
    error = (await response.json())["error"]
    assert error["code"] == "unauthorized"
    served = await client.get("/api/v1/metrics/catalog", headers=bearer("user", "bob"))
    assert served.status == 200
    message: str = error["message"]
    return message


@pytest.mark.parametrize("subject", BAD_SUBJECTS)
async def test_user_token_subject_must_be_a_user_id(make_client: MakeClient, subject: str) -> None:
    client = await make_client()
    token = signed(sub=subject)
    message = await refused(client, token)
    assert "user id" in message or "non-empty" in message
    # Nothing is written under it either: goals and ingest refuse it before any work.
    goal = {"metric": "profileViews", "targetValue": 10, "deadline": "2100-01-01T00:00:00Z"}
    headers = {"Authorization": f"Bearer {token}"}
    assert (await client.post("/api/v1/goals", json=goal, headers=headers)).status == 401
    event = {"user_id": "alice", "type": "profile_view"}
    assert (await client.post("/ingest/event", json=event, headers=headers)).status == 401


async def test_user_subject_rule_holds_on_the_websocket(
    migrated: Settings, http: ClientSession
) -> None:
    settings = ws_settings(migrated)
    async with gateway(settings) as server:
        headers = {"Authorization": f"Bearer {signed(settings, sub='{alice}')}"}
        with pytest.raises(WSServerHandshakeError) as raised:
            await http.ws_connect(server.make_url("/ws"), headers=headers)
        assert raised.value.status == 401
        good = {"Authorization": f"Bearer {signed(settings, sub='alice')}"}
        async with http.ws_connect(server.make_url("/ws"), headers=good) as ws:
            await ws.send_bytes(b'{"type":"ping"}')
            assert (await ws.receive_json(timeout=5))["type"] == "pong"


async def test_producer_subjects_are_service_names_not_user_ids(make_client: MakeClient) -> None:
    client = await make_client()
    token = signed(sub="auth0|ingest-service", role="producer")
    response = await client.get("/status", headers={"Authorization": f"Bearer {token}"})
    assert response.status == 200


@pytest.mark.parametrize(
    ("exp", "problem"),
    [
        pytest.param(str(int(time.time()) + 600), "must be a number", id="numeric-string"),
        pytest.param("9999999999", "must be a number", id="far-numeric-string"),
        pytest.param(1e30, "JWT_MAX_TTL", id="1e30"),
        pytest.param(int(time.time()) + 30 * 86400, "JWT_MAX_TTL", id="30-days"),
    ],
)
async def test_exp_must_be_a_number_within_the_max_ttl(
    make_client: MakeClient, exp: Any, problem: str
) -> None:
    client = await make_client()
    assert problem in await refused(client, signed(exp=exp))


async def test_exp_within_the_max_ttl_is_accepted(make_client: MakeClient) -> None:
    client = await make_client(jwt_max_ttl=3600.0)
    settings = ops_settings(jwt_max_ttl=3600.0)
    soon = signed(settings, exp=int(time.time()) + 3000)
    response = await client.get(
        "/api/v1/metrics/catalog", headers={"Authorization": f"Bearer {soon}"}
    )
    assert response.status == 200
    later = signed(settings, exp=int(time.time()) + 4000, sub="carol")
    assert "3600" in await refused(client, later)


def test_mint_token_refuses_a_lifetime_past_the_max_ttl() -> None:
    settings = ops_settings(jwt_max_ttl=3600.0)
    assert mint_token(settings, subject="u", role="user", ttl_seconds=3600)
    with pytest.raises(ValueError, match="JWT_MAX_TTL"):
        mint_token(settings, subject="u", role="user", ttl_seconds=3601)


@pytest.mark.parametrize(("ttl", "ok"), [("1h", True), ("7d", True), ("8d", False)])
def test_token_command_respects_jwt_max_ttl(ttl: str, ok: bool) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "token", "--user", "u", "--ttl", ttl],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if ok:
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.count(".") == 2
    else:
        assert proc.returncode != 0
        assert "--ttl" in proc.stderr and "JWT_MAX_TTL" in proc.stderr
        assert proc.stdout == ""
