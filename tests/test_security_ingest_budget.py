"""End users may ingest their own events, within RATE_LIMIT_INGEST_USER: one flooding user
is refused with 429 `rate_limited` long before the backlog fills, so producers (whose own
budget stays off by default) keep being served."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from schemas.settings import Settings
from tests.ops_support import MakeClient, bearer

EVENT = {"user_id": "bot-user", "type": "profile_view"}


def test_user_budget_is_on_and_producer_budget_off_by_default() -> None:
    defaults = Settings.from_env({})
    assert defaults.rate_limit_ingest_user == 60
    assert defaults.rate_limit_ingest_subject == 0
    assert Settings.from_env({"RATE_LIMIT_INGEST_USER": "0"}).rate_limit_ingest_user == 0


async def test_a_flooding_user_cannot_starve_a_producer(
    make_client: MakeClient, ops_redis: Redis
) -> None:
    # Default budgets; 60 user batches of 15 (900 events) stay under the backlog limit, the
    # 200 sent here (3,000) would pass it and get every producer refused.
    client = await make_client(ingest_max_backlog=1000)
    flooder = bearer("user", "flood")
    producer = bearer("producer", "bot")
    batch = [{"user_id": "flood", "type": "profile_view"}] * 15
    statuses: list[int] = []
    producer_statuses: list[int] = []
    flooding = True

    async def flood() -> None:
        nonlocal flooding
        for _ in range(200):
            response = await client.post("/ingest/events", json=batch, headers=flooder)
            statuses.append(response.status)
            if response.status == 429:
                body = await response.json()
                assert body["error"]["code"] == "rate_limited", body
                assert "ingest rate limit of 60" in body["error"]["message"]
                assert int(response.headers["Retry-After"]) >= 1
        flooding = False

    async def produce() -> None:
        while flooding:
            response = await client.post("/ingest/event", json=EVENT, headers=producer)
            producer_statuses.append(response.status)
            await asyncio.sleep(0.01)

    await asyncio.gather(flood(), produce())
    assert statuses.count(202) == 60 and statuses.count(429) == 140, statuses
    assert producer_statuses and set(producer_statuses) == {202}, producer_statuses
    await asyncio.sleep(0.25)  # past the appender's backlog cache
    # The producer's own budget is off: it is never rate limited, whatever it sends.
    for _ in range(70):
        response = await client.post("/ingest/event", json=EVENT, headers=producer)
        assert response.status == 202, await response.text()
        assert "RateLimit-Limit" not in response.headers
