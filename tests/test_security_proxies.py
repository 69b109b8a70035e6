"""TRUSTED_PROXIES: the per-IP rate limits key on the right-most untrusted `X-Forwarded-For`
address when the TCP peer is a trusted proxy, and on the peer otherwise (the default), so a
client cannot pick its own budget by sending the header."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from multidict import CIMultiDict
from redis.asyncio import Redis

from schemas.errors import SettingsError
from schemas.settings import Settings
from tests.ops_support import MakeClient


def proxies(*items: str) -> tuple[Any, ...]:
    return tuple(ipaddress.ip_network(i) for i in items)


# Only the per-IP API budget, so every key the limiter writes names the IP it chose.
IP_ONLY: dict[str, Any] = {
    "rate_limit_api_subject": 0,
    "rate_limit_api_ip": 2,
    "rate_limit_ingest_subject": 0,
    "rate_limit_ingest_ip": 0,
}
OUR_PROXIES = proxies("127.0.0.1/32", "10.0.0.0/8")  # the test client connects from 127.0.0.1


async def keyed_ips(redis: Redis) -> set[str]:
    keys = await redis.keys("{ia:rl}:api:ip:*")
    names = (k.decode() if isinstance(k, bytes) else k for k in keys)
    return {name.rsplit(":ip:", 1)[1] for name in names}


@pytest.mark.parametrize(
    ("forwarded", "expected"),
    [
        ([], "127.0.0.1"),  # a trusted proxy that sent no header: its own address
        (["203.0.113.5"], "203.0.113.5"),
        (["1.1.1.1, 203.0.113.5, 10.0.0.3"], "203.0.113.5"),  # 1.1.1.1: client-written
        (["10.0.0.7, 10.0.0.3"], "10.0.0.7"),  # all trusted: the left-most is the client
        (["203.0.113.5:4711"], "203.0.113.5"),
        (["[2001:db8::1]:80"], "2001:db8::1"),
        (["::ffff:203.0.113.9"], "203.0.113.9"),
        (["garbage, 10.0.0.3"], "10.0.0.3"),  # no address: stop at the hop that wrote it
        (["1.1.1.1", "203.0.113.5"], "203.0.113.5"),  # two headers are one list
    ],
)
async def test_client_ip_behind_a_trusted_proxy(
    make_client: MakeClient, ops_redis: Redis, forwarded: list[str], expected: str
) -> None:
    client = await make_client(trusted_proxies=OUR_PROXIES, **IP_ONLY)
    headers = CIMultiDict(("X-Forwarded-For", value) for value in forwarded)
    response = await client.get("/openapi.json", headers=headers)
    assert response.status == 200
    assert await keyed_ips(ops_redis) == {expected}


@pytest.mark.parametrize("trusted", [(), proxies("10.0.0.0/8")])
async def test_header_is_ignored_unless_the_peer_is_trusted(
    make_client: MakeClient, ops_redis: Redis, trusted: tuple[Any, ...]
) -> None:
    client = await make_client(trusted_proxies=trusted, **IP_ONLY)
    statuses = []
    for spoofed in ("203.0.113.1", "203.0.113.2", "203.0.113.3"):
        response = await client.get("/openapi.json", headers={"X-Forwarded-For": spoofed})
        statuses.append(response.status)
    # Three made-up addresses, one budget of 2: the third is refused.
    assert statuses == [200, 200, 429]
    assert await keyed_ips(ops_redis) == {"127.0.0.1"}


async def test_clients_behind_a_trusted_proxy_get_separate_budgets(
    make_client: MakeClient,
) -> None:
    client = await make_client(trusted_proxies=OUR_PROXIES, **IP_ONLY)

    async def status(ip: str) -> int:
        response = await client.get("/openapi.json", headers={"X-Forwarded-For": ip})
        return response.status

    assert [await status("203.0.113.5") for _ in range(3)] == [200, 200, 429]
    assert await status("198.51.100.7") == 200  # another client, its own budget


def test_trusted_proxies_setting_parses_addresses_and_blocks() -> None:
    s = Settings.from_env({"TRUSTED_PROXIES": "10.0.0.0/8, 192.168.1.7 ,::1,fd00::/8"})
    assert [str(n) for n in s.trusted_proxies] == [
        "10.0.0.0/8",
        "192.168.1.7/32",
        "::1/128",
        "fd00::/8",
    ]
    assert Settings.from_env({}).trusted_proxies == ()


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "proxy.internal", "10.0.0.0/8, 300.1.1.1"])
def test_bad_trusted_proxies_stop_the_process_naming_the_variable(bad: str) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"TRUSTED_PROXIES": bad})
    assert "TRUSTED_PROXIES" in str(refused.value)
    assert "CIDR" in str(refused.value)
