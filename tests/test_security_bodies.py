"""Coded request bodies: inflated only on the ingest routes, after authentication, within
INGEST_MAX_BYTES and MAX_RATIO; a gzip bomb costs the gateway next to nothing and /health is
answered while it arrives; a Content-Encoding anywhere else is a 415."""

from __future__ import annotations

import asyncio
import gzip
import time
import zlib
from collections.abc import Awaitable
from typing import Any

import orjson

from gateway.http.bodies import MAX_RATIO
from tests.ops_support import Client, MakeClient, bearer

EVENT = {"user_id": "u1", "type": "profile_view"}
GZIP_JSON = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
_BOMB_CACHE: dict[int, bytes] = {}


def bomb(expanded_mib: int) -> bytes:
    """gzip of `expanded_mib` MiB of zeros (1 GiB -> ~1 MB), built once per size."""
    if expanded_mib not in _BOMB_CACHE:
        deflater = zlib.compressobj(9, zlib.DEFLATED, 31)
        zeros = bytes(1 << 20)
        parts = [deflater.compress(zeros) for _ in range(expanded_mib)]
        _BOMB_CACHE[expanded_mib] = b"".join([*parts, deflater.flush()])
    return _BOMB_CACHE[expanded_mib]


async def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status == status, await response.text()
    body = await response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    return error


async def with_health(client: Client, hostile: Awaitable[Any]) -> tuple[Any, list[float]]:
    """Run `hostile` while another client polls /health; (its result, /health latencies).
    Every /health must be a 200: the gateway kept serving others."""
    done = asyncio.Event()
    latencies: list[float] = []

    async def poll() -> None:
        while not done.is_set() or not latencies:
            started = time.perf_counter()
            response = await client.get("/health")
            assert response.status == 200
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(0.005)

    poller = asyncio.create_task(poll())
    try:
        result = await hostile
        await asyncio.sleep(0.05)  # a body the handler did not read is drained after the answer
    finally:
        done.set()
        await poller
    return result, latencies


async def test_gzip_bomb_unauthenticated_costs_no_inflating(make_client: MakeClient) -> None:
    client = await make_client()
    body = bomb(1024)
    cpu = time.process_time()
    response, health = await with_health(
        client, client.post("/ingest/event", data=body, headers=GZIP_JSON)
    )
    spent = time.process_time() - cpu
    error = await error_of(response, 401)
    assert error["code"] == "unauthorized"
    assert health
    # aiohttp's inflating of this body cost ~1 s of CPU; sending 1 MB and reading it, ~0.01 s.
    assert spent < 0.3, spent


async def test_gzip_bomb_from_a_producer_is_413_once_past_the_limit(
    make_client: MakeClient,
) -> None:
    client = await make_client()
    cpu = time.process_time()
    response, health = await with_health(
        client,
        client.post("/ingest/events", data=bomb(1024), headers={**GZIP_JSON, **bearer("producer")}),
    )
    spent = time.process_time() - cpu
    error = await error_of(response, 413)
    assert error["code"] == "payload_too_large"
    assert error["field"] == "$"
    assert "1048576" in error["message"] and "decompressed" in error["message"]
    assert health
    assert spent < 0.3, spent


async def test_ratio_bound_refuses_a_bomb_under_a_large_limit(make_client: MakeClient) -> None:
    client = await make_client(ingest_max_bytes=256 << 20)
    response, health = await with_health(
        client,
        client.post("/ingest/event", data=bomb(64), headers={**GZIP_JSON, **bearer("producer")}),
    )
    error = await error_of(response, 413)
    assert error["code"] == "payload_too_large"
    assert f"expands more than {MAX_RATIO} times" in error["message"]
    assert health


async def test_gzip_and_deflate_batches_are_accepted(make_client: MakeClient) -> None:
    client = await make_client()
    plain = orjson.dumps([EVENT, EVENT])
    producer = bearer("producer")
    for coding, body in (("gzip", gzip.compress(plain)), ("deflate", zlib.compress(plain))):
        response = await client.post(
            "/ingest/events",
            data=body,
            headers={"Content-Encoding": coding, "Content-Type": "application/json", **producer},
        )
        assert response.status == 202, await response.text()
        assert (await response.json())["accepted"] == 2


async def test_a_body_that_does_not_inflate_is_400(make_client: MakeClient) -> None:
    client = await make_client()
    producer = bearer("producer")
    for body in (b"not gzip at all", gzip.compress(orjson.dumps(EVENT))[:-6]):
        response = await client.post("/ingest/event", data=body, headers={**GZIP_JSON, **producer})
        error = await error_of(response, 400)
        assert error["code"] == "malformed_body"
        assert "gzip" in error["message"]


async def test_other_codings_on_ingest_are_415(make_client: MakeClient) -> None:
    client = await make_client()
    response = await client.post(
        "/ingest/event",
        data=b"\x28\xb5\x2f\xfd",
        headers={"Content-Encoding": "zstd", "Content-Type": "application/json", **bearer()},
    )
    error = await error_of(response, 415)
    assert error["code"] == "unsupported_content_encoding"
    assert error["field"] == "Content-Encoding"
    assert "zstd" in error["message"]
    assert (await client.get("/health")).status == 200


async def test_content_encoding_elsewhere_is_415_before_anything_reads_it(
    make_client: MakeClient,
) -> None:
    client = await make_client()
    cpu = time.process_time()
    response, health = await with_health(
        client,
        client.post("/api/v1/goals", data=bomb(1024), headers={**GZIP_JSON, **bearer("user")}),
    )
    spent = time.process_time() - cpu
    error = await error_of(response, 415)
    assert error["code"] == "unsupported_content_encoding"
    assert error["field"] == "Content-Encoding"
    assert "gzip" in error["message"]
    assert health
    assert spent < 0.3, spent
