"""`/status` names the PID, exact PostgreSQL and TimescaleDB versions and pipeline internals:
producer and admin tokens only, a user token gets 403 (and the contract says so)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.auth import Role
from tests.ops_support import MakeClient, bearer


async def test_user_tokens_get_403_while_operators_are_served(make_client: MakeClient) -> None:
    client = await make_client()
    user, operator = bearer("user", "alice"), bearer("admin", "ops")
    refused, served = await asyncio.gather(
        client.get("/status", headers=user), client.get("/status", headers=operator)
    )
    assert refused.status == 403
    error = (await refused.json())["error"]
    assert error["code"] == "forbidden"
    assert "producer or admin" in error["message"]
    text = await refused.text()
    assert "postgres" not in text and "pid" not in text
    assert served.status == 200


@pytest.mark.parametrize("role", ["producer", "admin"])
async def test_producer_and_admin_tokens_read_status(make_client: MakeClient, role: Role) -> None:
    client = await make_client()
    response = await client.get("/status", headers=bearer(role, "svc"))
    assert response.status == 200
    assert "redis" in await response.json()


async def test_openapi_documents_the_roles(make_client: MakeClient) -> None:
    client = await make_client()
    status = (await (await client.get("/openapi.json")).json())["paths"]["/status"]["get"]
    assert "403" in status["responses"]
    assert "Producer and admin" in status["description"]
