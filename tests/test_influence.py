"""The influence score's pinned behaviour: the documented figures, bounds, monotonicity, and
stability when the same batch is processed again."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis

from pipeline.stages.enrich import INFLUENCE_KEY, read_scores, write_scores
from pipeline.worker import open_redis, run_worker
from schemas.influence import influence_score
from schemas.settings import Settings
from tests.streams_helpers import append, make_event, unprocessed

INPUTS = ("connections", "profile_views_7d", "engagement_rate", "profile_completeness")


def test_documented_examples() -> None:
    assert (
        influence_score(
            connections=1200, profile_views_7d=320, engagement_rate=0.045, profile_completeness=85
        )
        == 70.2
    )
    assert (
        influence_score(
            connections=500, profile_views_7d=150, engagement_rate=0.03, profile_completeness=100
        )
        == 60.0
    )
    assert (
        influence_score(
            connections=0, profile_views_7d=0, engagement_rate=0, profile_completeness=0
        )
        == 0.0
    )


GRID: dict[str, list[float]] = {
    "connections": [0, 10, 500, 5_000, 1e7],
    "profile_views_7d": [0, 5, 150, 10_000],
    "engagement_rate": [0, 0.01, 0.03, 0.5, 5.0],
    "profile_completeness": [0, 40, 100, 250],
}


def test_bounded_for_extreme_and_negative_inputs() -> None:
    for values in itertools.product(*GRID.values()):
        score = influence_score(**dict(zip(INPUTS, values, strict=True)))
        assert 0 <= score < 100
    assert (
        influence_score(
            connections=-5, profile_views_7d=-1, engagement_rate=-0.2, profile_completeness=-10
        )
        == 0.0
    )


@pytest.mark.parametrize("varied", INPUTS)
def test_monotone_in_each_input(varied: str) -> None:
    others = [k for k in INPUTS if k != varied]
    for fixed in itertools.product(*(GRID[k] for k in others)):
        base = dict(zip(others, fixed, strict=True))
        scores = [influence_score(**base, **{varied: x}) for x in sorted(GRID[varied])]
        assert scores == sorted(scores), (varied, base, scores)
    # Strictly rising somewhere: the input is not ignored.
    low = influence_score(**{k: GRID[k][1] for k in others}, **{varied: 0})
    high = influence_score(**{k: GRID[k][1] for k in others}, **{varied: GRID[varied][2]})
    assert high > low


@pytest.fixture
async def client(migrated: Settings) -> AsyncIterator[redis.Redis]:
    c = open_redis(migrated)
    await c.delete(INFLUENCE_KEY)
    yield c
    await c.delete(INFLUENCE_KEY)
    await c.aclose()


async def test_newest_computation_wins_whatever_the_order(client: redis.Redis) -> None:
    assert await write_scores(client, {"a": 40.0}, version_us=200) == 1
    assert await write_scores(client, {"a": 10.0}, version_us=100) == 0  # older: ignored
    assert await read_scores(client, ["a"]) == {"a": 40.0}
    assert await write_scores(client, {"a": 55.5}, version_us=300) == 1
    assert await read_scores(client, ["a", "missing"]) == {"a": 55.5}


async def test_replaying_a_batch_gives_the_same_score(
    migrated: Settings, client: redis.Redis
) -> None:
    s = dataclasses.replace(migrated, batch_max_wait_ms=20)
    user = f"infl-{uuid.uuid4().hex[:8]}"
    events = [
        make_event(
            user, "profile_snapshot", properties={"connections": 800, "profile_completeness": 70}
        ),
        make_event(user, "profile_view", value=40),
        make_event(user, "post_impression", value=1000),
        make_event(user, "post_like", value=30),
    ]

    async def process() -> float:
        await append(client, s, events)
        stop = asyncio.Event()
        task = asyncio.create_task(run_worker(s, stop))
        try:
            async with asyncio.timeout(15):
                while True:
                    await asyncio.sleep(0.05)
                    if await unprocessed(client, s) == 0:
                        break
        finally:
            stop.set()
            await task
        return (await read_scores(client, [user]))[user]

    first = await process()
    second = await process()  # the same entries again: a redelivery
    assert first == second
    assert first == influence_score(
        connections=800, profile_views_7d=40, engagement_rate=0.03, profile_completeness=70
    )
