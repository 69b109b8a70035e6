"""The ingest endpoints over real HTTP on loopback, against the real Redis (db 15) and, for
`?wait=true`, a real TimescaleDB database migrated from the project's migrations."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from gateway.app import create_app
from gateway.auth import mint_token
from gateway.ingest.ids import uuid7
from migrations import runner
from pipeline.runner import DeadLetter, Delivery, Runner
from schemas.events import StreamEvent, stream_event_decoder, stream_event_encoder
from schemas.settings import Settings
from schemas.streams import DLQ_STREAM, backlog_key, events_stream, partition_of
from sinks.db import connect
from tests.conftest import TEST_REDIS_URL, settings_for

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]
ScratchDb = Callable[[], Awaitable[Settings]]

PARTITIONS = settings_for().stream_partitions


def _users_on_distinct_partitions() -> tuple[str, str]:
    users = [f"user-{i}" for i in range(20)]
    first = users[0]
    second = next(
        u for u in users if partition_of(u, PARTITIONS) != partition_of(first, PARTITIONS)
    )
    return first, second


ALICE, BOB = _users_on_distinct_partitions()


def token(subject: str = "ingest-bot", role: str = "producer", ttl: float = 3600) -> str:
    return mint_token(settings_for(), subject=subject, role=role, ttl_seconds=ttl)  # type: ignore[arg-type]


def auth(subject: str = "ingest-bot", role: str = "producer") -> dict[str, str]:
    return {"Authorization": f"Bearer {token(subject, role)}"}


def iso(dt: datetime) -> str:
    return dt.isoformat()


def event(user_id: str = ALICE, **fields: Any) -> dict[str, Any]:
    return {"user_id": user_id, "type": "profile_view", **fields}


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(TEST_REDIS_URL)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
async def make_client(redis: Redis) -> AsyncIterator[MakeClient]:
    """Factory of gateways on loopback; `overrides` replace settings fields."""
    clients: list[Client] = []

    async def make(settings: Settings | None = None, **overrides: Any) -> Client:
        app = create_app(dataclasses.replace(settings or settings_for(), **overrides))
        client: Client = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def client(make_client: MakeClient) -> Client:
    return await make_client()


async def stream_events(redis: Redis) -> dict[int, list[list[StreamEvent]]]:
    """Per partition, per stream entry, the events in it (fields read pairwise)."""
    out: dict[int, list[list[StreamEvent]]] = {}
    for p in range(PARTITIONS):
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange(events_stream(p)))
        out[p] = []
        for _, fields in entries:
            decoded = [stream_event_decoder.decode(v) for v in fields.values()]
            assert [e.event_id.encode() for e in decoded] == list(fields)
            out[p].append(decoded)
    return out


async def all_events(redis: Redis) -> list[StreamEvent]:
    return [e for entries in (await stream_events(redis)).values() for en in entries for e in en]


async def total_len(redis: Redis) -> int:
    return sum([await redis.xlen(events_stream(p)) for p in range(PARTITIONS)])


# --- appending -----------------------------------------------------------------------------


async def test_single_event_is_appended_with_every_field(client: Client, redis: Redis) -> None:
    at = datetime.now(UTC).replace(microsecond=123456) - timedelta(minutes=1)
    before = time.time_ns() // 1000
    response = await client.post(
        "/ingest/event",
        json=event(event_id="e-1", time=iso(at), value=3, properties={"post_id": "p1"}),
        headers=auth(),
    )
    assert response.status == 202
    assert await response.json() == {"event_id": "e-1", "status": "accepted"}
    entries = (await stream_events(redis))[partition_of(ALICE, PARTITIONS)]
    assert len(entries) == 1
    [stored] = entries[0]
    assert stored.event_id == "e-1"
    assert stored.user_id == ALICE
    assert stored.type == "profile_view"
    assert stored.time_us == int(at.timestamp()) * 1_000_000 + 123456
    assert stored.value == 3.0
    assert json.loads(stored.properties) == {"post_id": "p1"}
    assert before <= stored.received_us <= time.time_ns() // 1000
    assert await redis.hget(backlog_key(partition_of(ALICE, PARTITIONS)), "appended") == b"1"


async def test_defaults_uuid7_id_receipt_time_and_empty_properties(
    client: Client, redis: Redis
) -> None:
    response = await client.post("/ingest/event", json=event(), headers=auth())
    assert response.status == 202
    event_id = (await response.json())["event_id"]
    assert uuid.UUID(event_id).version == 7
    [stored] = await all_events(redis)
    assert stored.event_id == event_id
    assert stored.time_us == stored.received_us
    assert stored.value == 1.0
    assert stored.properties == b"{}"
    # The id's timestamp is the receipt time, to the millisecond.
    assert int(event_id.replace("-", "")[:12], 16) == stored.received_us // 1000


def test_uuid7_layout_and_order() -> None:
    ids = [uuid7(1_700_000_000_000 + i) for i in range(50)]
    assert ids == sorted(ids)
    for value in ids:
        parsed = uuid.UUID(value)
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
    assert int(ids[0].replace("-", "")[:12], 16) == 1_700_000_000_000
    assert len({uuid7(5) for _ in range(1000)}) == 1000


async def test_batch_makes_one_entry_per_partition(client: Client, redis: Redis) -> None:
    batch = [event(ALICE if i % 2 else BOB, event_id=f"b-{i}", value=i) for i in range(100)]
    response = await client.post("/ingest/events", json=batch, headers=auth())
    assert response.status == 202
    body = await response.json()
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (100, 0, 0)
    assert body["results"][7] == {"index": 7, "event_id": "b-7", "status": "accepted"}
    per_partition = await stream_events(redis)
    assert len(per_partition[partition_of(ALICE, PARTITIONS)]) == 1
    assert len(per_partition[partition_of(BOB, PARTITIONS)]) == 1
    assert await total_len(redis) == 2
    stored = await all_events(redis)
    assert sorted(e.event_id for e in stored) == sorted(f"b-{i}" for i in range(100))
    # One user's events keep the request's order inside the entry.
    alice = [e.value for e in stored if e.user_id == ALICE]
    assert alice == sorted(alice)


async def test_ndjson_batch(client: Client, redis: Redis) -> None:
    lines = [json.dumps(event(event_id=f"n-{i}")) for i in range(3)]
    body = ("\n".join(lines[:2]) + "\n\n" + lines[2] + "\r\n").encode()
    response = await client.post(
        "/ingest/events",
        data=body,
        headers={**auth(), "Content-Type": "application/x-ndjson"},
    )
    assert response.status == 202
    assert [r["event_id"] for r in (await response.json())["results"]] == ["n-0", "n-1", "n-2"]
    assert sorted(e.event_id for e in await all_events(redis)) == ["n-0", "n-1", "n-2"]


# --- whole-request refusals ----------------------------------------------------------------


async def assert_error(
    response: Any, status: int, code: str, field: str | None = None
) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body: dict[str, Any] = await response.json()
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    if field is not None:
        assert body["error"]["field"] == field
    return body


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/ingest/event", "text/plain"),
        ("/ingest/event", "application/x-ndjson"),
        ("/ingest/events", "application/xml"),
        ("/ingest/events", "application/json; charset=latin-1"),
    ],
)
async def test_wrong_content_type_is_415(
    client: Client, redis: Redis, path: str, content_type: str
) -> None:
    response = await client.post(
        path, data=json.dumps(event()), headers={**auth(), "Content-Type": content_type}
    )
    await assert_error(response, 415, "unsupported_media_type")
    assert await total_len(redis) == 0


@pytest.mark.parametrize(
    ("path", "body", "code"),
    [
        ("/ingest/event", b'{"user_id": ', "malformed_json"),
        ("/ingest/event", b"[1, 2]", "not_an_object"),
        ("/ingest/events", b"[{}, ", "malformed_json"),
        ("/ingest/events", b'{"user_id": "u"}', "not_an_array"),
    ],
)
async def test_malformed_bodies_are_400(
    client: Client, redis: Redis, path: str, body: bytes, code: str
) -> None:
    response = await client.post(
        path, data=body, headers={**auth(), "Content-Type": "application/json"}
    )
    await assert_error(response, 400, code, "$")
    assert await total_len(redis) == 0


async def test_body_over_ingest_max_bytes_is_413(make_client: MakeClient, redis: Redis) -> None:
    client = await make_client(ingest_max_bytes=1024)
    big = [event(properties={"pad": "x" * 600}) for _ in range(2)]
    response = await client.post("/ingest/events", json=big, headers=auth())
    await assert_error(response, 413, "payload_too_large", "$")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: aiohttp's own limit
        for _ in range(4):
            yield b" " * 400
        yield json.dumps(big).encode()

    response = await client.post(
        "/ingest/events", data=chunks(), headers={**auth(), "Content-Type": "application/json"}
    )
    await assert_error(response, 413, "payload_too_large", "$")
    assert await total_len(redis) == 0


async def test_more_than_ingest_max_batch_events_is_413(
    make_client: MakeClient, redis: Redis
) -> None:
    client = await make_client(ingest_max_batch=3)
    response = await client.post("/ingest/events", json=[event()] * 4, headers=auth())
    await assert_error(response, 413, "too_many_events", "$")
    response = await client.post("/ingest/events", json=[event()] * 3, headers=auth())
    assert response.status == 202
    assert len(await all_events(redis)) == 3


def _now_plus(**delta: float) -> str:
    """Computed at collection: the margins beyond the limits (5 min, 90 days) are wide enough
    to hold however long the suite runs before this test."""
    return iso(datetime.now(UTC) + timedelta(**delta))


FIELD_ERRORS = [
    pytest.param(event("bad user!"), "invalid_event", "$.user_id", id="user_id-chars"),
    pytest.param({"type": "profile_view"}, "invalid_event", "$.user_id", id="user_id-missing"),
    pytest.param(event(type="profile_like"), "invalid_event", "$.type", id="type-unknown"),
    pytest.param(event(value="3"), "invalid_event", "$.value", id="value-string"),
    pytest.param(event(value=-1), "invalid_event", "$.value", id="value-negative"),
    pytest.param(event(time=_now_plus(hours=2)), "invalid_time", "$.time", id="time-future"),
    pytest.param(event(time=_now_plus(days=-100)), "invalid_time", "$.time", id="time-old"),
    pytest.param(event(time="2024-05-01T10:00:00"), "invalid_event", "$.time", id="time-naive"),
    pytest.param(event(properties=[1]), "invalid_properties", "$.properties", id="props-array"),
    pytest.param(
        event(properties={"pad": "x" * 9216}), "invalid_properties", "$.properties", id="props-9k"
    ),
    pytest.param(
        event(properties={"s": "a\u0000b"}), "invalid_properties", "$.properties", id="props-nul"
    ),
    pytest.param(event(foo=1), "invalid_event", "$.foo", id="unknown-field"),
    pytest.param(event(event_id="a\u0000b"), "invalid_event", "$.event_id", id="event_id-nul"),
    pytest.param(event(event_id="a\n"), "invalid_event", "$.event_id", id="event_id-newline"),
    # What the worker used to dead-letter after a 202, now refused at once (event_checks).
    pytest.param(
        event(type="profile_snapshot"), "invalid_properties", "$.properties", id="snapshot-empty"
    ),
    pytest.param(
        event(type="profile_snapshot", properties={"followers": 1.5}),
        "invalid_properties",
        "$.properties.followers",
        id="snapshot-fraction",
    ),
    pytest.param(
        event(type="profile_snapshot", properties={"profile_views": -1}),
        "invalid_properties",
        "$.properties.profile_views",
        id="snapshot-negative",
    ),
    pytest.param(
        event(type="profile_update", properties={"profile_completeness": 101}),
        "invalid_properties",
        "$.properties.profile_completeness",
        id="completeness-101",
    ),
    pytest.param(
        event(type="post_like", properties={"post_id": ""}),
        "invalid_properties",
        "$.properties.post_id",
        id="post_id-empty",
    ),
    pytest.param(event(type="post_like", value=1.5), "invalid_value", "$.value", id="like-half"),
    # Found by a fuzzer: an integer column refused it in the worker, after a 202.
    pytest.param(event(type="post_like", value=2**31), "invalid_value", "$.value", id="like-2^31"),
    pytest.param(
        event(type="profile_snapshot", properties={"followers": 2**31}),
        "invalid_properties",
        "$.properties.followers",
        id="followers-2^31",
    ),
]


@pytest.mark.parametrize(("body", "code", "field"), FIELD_ERRORS)
async def test_field_errors_are_422_and_append_nothing(
    client: Client, redis: Redis, body: dict[str, Any], code: str, field: str
) -> None:
    response = await client.post("/ingest/event", json=body, headers=auth())
    await assert_error(response, 422, code, field)
    response = await client.post("/ingest/events", json=[event(), body], headers=auth())
    assert response.status == 202
    rejected = (await response.json())["results"][1]
    assert rejected["status"] == "rejected"
    assert rejected["error"]["code"] == code
    assert rejected["error"]["field"] == field.replace("$", "$[1]", 1)
    assert len(await all_events(redis)) == 1  # only the valid first item


DEEP = b"[" * 1100 + b"]" * 1100
HOSTILE_BODIES = [
    # Each was a 500, or a 202 followed by a dead letter, before the gateway checked it. The
    # last column: how the same item fares first in a batch (a nesting too deep for the
    # decoder refuses the whole batch; anything else is that item's own result).
    pytest.param(
        b'{"user_id":"u1","type":"post_like","properties":{"n":1e400}}',
        (422, "invalid_properties", "$.properties"),
        "$[0].properties",
        id="number-past-double",
    ),
    pytest.param(
        b'{"user_id":"u1","type":"post_like","properties":{"s":"\xff"}}',
        (422, "invalid_properties", "$.properties"),
        "$[0].properties",
        id="props-invalid-utf8",
    ),
    pytest.param(
        b'{"user_id":"u1","type":"post_like","properties":{"a":' + DEEP + b"}}",
        (400, "malformed_json", "$"),
        None,
        id="props-nested-1100",
    ),
    pytest.param(DEEP, (400, "not_an_object", "$"), None, id="top-nested-1100"),
    pytest.param(
        b'{"user_id":"u\xff","type":"post_like"}',
        (400, "malformed_json", "$"),
        "$[0]",
        id="user_id-invalid-utf8",
    ),
]


@pytest.mark.parametrize(("body", "expected", "batch_field"), HOSTILE_BODIES)
async def test_hostile_bodies_are_4xx_and_others_are_served_meanwhile(
    client: Client,
    redis: Redis,
    body: bytes,
    expected: tuple[int, str, str],
    batch_field: str | None,
) -> None:
    headers = {**auth(), "Content-Type": "application/json"}
    hostile, health, valid = await asyncio.gather(
        client.post("/ingest/event", data=body, headers=headers),
        client.get("/health"),
        client.post("/ingest/event", json=event(event_id="fine"), headers=auth()),
    )
    await assert_error(hostile, *expected)
    assert health.status == 200 and valid.status == 202
    assert [e.event_id for e in await all_events(redis)] == ["fine"]

    batch = b"[" + body + b"," + json.dumps(event(event_id="next")).encode() + b"]"
    response = await client.post("/ingest/events", data=batch, headers=headers)
    if batch_field is None:
        await assert_error(response, 400, "malformed_json", "$")
        assert len(await all_events(redis)) == 1
        return
    assert response.status == 202
    first, second = (await response.json())["results"]
    assert first["status"] == "rejected" and second["status"] == "accepted"
    assert (first["error"]["code"], first["error"]["field"]) == (expected[1], batch_field)
    assert [e.event_id for e in await all_events(redis)] == ["fine", "next"]


async def test_escaped_backslash_before_u0000_is_not_a_nul(client: Client, redis: Redis) -> None:
    response = await client.post(
        "/ingest/event", json=event(properties={"path": "C:\\u0000"}), headers=auth()
    )
    assert response.status == 202
    assert json.loads((await all_events(redis))[0].properties) == {"path": "C:\\u0000"}


async def test_mixed_batch_appends_valid_items_and_lists_invalid_ones(
    client: Client, redis: Redis
) -> None:
    batch = [
        event(event_id="ok-0"),
        event(value=-5),
        event(event_id="ok-2"),
        event("bad user"),
        "not an object",
        event(event_id="ok-5", type="post_like"),
    ]
    response = await client.post("/ingest/events", json=batch, headers=auth())
    assert response.status == 202
    body = await response.json()
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (3, 0, 3)
    results = body["results"]
    assert [r["index"] for r in results] == list(range(6))
    assert [r["status"] for r in results] == ["accepted", "rejected"] * 2 + ["rejected", "accepted"]
    assert [r["error"]["field"] for r in results if r["status"] == "rejected"] == [
        "$[1].value",
        "$[3].user_id",
        "$[4]",
    ]
    assert sorted(e.event_id for e in await all_events(redis)) == ["ok-0", "ok-2", "ok-5"]


async def test_batch_with_only_invalid_items_is_422(client: Client, redis: Redis) -> None:
    response = await client.post(
        "/ingest/events", json=[event(value=-1), event(type="x")], headers=auth()
    )
    assert response.status == 422
    body = await response.json()
    assert (body["accepted"], body["rejected"]) == (0, 2)
    assert [r["error"]["field"] for r in body["results"]] == ["$[0].value", "$[1].type"]
    assert await total_len(redis) == 0


async def test_malformed_ndjson_line_is_one_rejected_item(client: Client, redis: Redis) -> None:
    body = json.dumps(event(event_id="fine")) + "\n{oops\n"
    response = await client.post(
        "/ingest/events", data=body, headers={**auth(), "Content-Type": "application/x-ndjson"}
    )
    assert response.status == 202
    bad = (await response.json())["results"][1]
    assert (bad["status"], bad["error"]["code"], bad["error"]["field"]) == (
        "rejected",
        "malformed_json",
        "$[1]",
    )
    assert [e.event_id for e in await all_events(redis)] == ["fine"]


# --- duplicates ----------------------------------------------------------------------------


async def test_same_event_id_twice_in_one_batch(client: Client, redis: Redis) -> None:
    batch = [event(event_id="twice"), event(event_id="other"), event(event_id="twice")]
    response = await client.post("/ingest/events", json=batch, headers=auth())
    assert response.status == 202
    body = await response.json()
    assert (body["accepted"], body["duplicates"]) == (2, 1)
    assert [r["status"] for r in body["results"]] == ["accepted", "accepted", "duplicate"]
    assert sorted(e.event_id for e in await all_events(redis)) == ["other", "twice"]


async def test_same_event_id_across_requests(client: Client, redis: Redis) -> None:
    first = await client.post("/ingest/event", json=event(event_id="again"), headers=auth())
    second = await client.post("/ingest/event", json=event(event_id="again"), headers=auth())
    assert await first.json() == {"event_id": "again", "status": "accepted"}
    assert second.status == 202
    assert await second.json() == {"event_id": "again", "status": "duplicate"}
    batch = await client.post(
        "/ingest/events", json=[event(event_id="again"), event(event_id="new")], headers=auth()
    )
    assert [r["status"] for r in (await batch.json())["results"]] == ["duplicate", "accepted"]
    assert sorted(e.event_id for e in await all_events(redis)) == ["again", "new"]
    assert await total_len(redis) == 2
    # The backlog counts appended events only.
    appended = [await redis.hget(backlog_key(p), "appended") for p in range(PARTITIONS)]
    assert sum(int(a or 0) for a in appended) == 2


async def test_idempotency_key_header(client: Client, redis: Redis) -> None:
    headers = {**auth(), "Idempotency-Key": "idem-1"}
    first = await client.post("/ingest/event", json=event(), headers=headers)
    second = await client.post("/ingest/event", json=event(), headers=headers)
    same = await client.post("/ingest/event", json=event(event_id="idem-1"), headers=headers)
    assert await first.json() == {"event_id": "idem-1", "status": "accepted"}
    assert await second.json() == {"event_id": "idem-1", "status": "duplicate"}
    assert await same.json() == {"event_id": "idem-1", "status": "duplicate"}
    differs = await client.post("/ingest/event", json=event(event_id="idem-2"), headers=headers)
    await assert_error(differs, 422, "invalid_event_id", "$.event_id")
    assert [e.event_id for e in await all_events(redis)] == ["idem-1"]


async def test_identity_is_user_and_event_id(client: Client, redis: Redis) -> None:
    # Per-user counters as ids: another user's "view-1" on the same partition is no duplicate.
    p = partition_of(ALICE, PARTITIONS)
    neighbour = next(u for u in (f"n-{i}" for i in range(100)) if partition_of(u, PARTITIONS) == p)
    batch = [event(ALICE, event_id="view-1"), event(neighbour, event_id="view-1")]
    response = await client.post("/ingest/events", json=batch, headers=auth())
    assert [r["status"] for r in (await response.json())["results"]] == ["accepted"] * 2
    assert len((await stream_events(redis))[p]) == 1


async def test_dedup_window_remembers_at_least_the_window(
    make_client: MakeClient, redis: Redis
) -> None:
    # A 1 s window in 4 slices of 0.25 s: remembered for 1 s to 1.25 s, keys expire after 1.5 s.
    client = await make_client(dedup_window=1.0)
    first = await client.post("/ingest/event", json=event(event_id="w"), headers=auth())
    assert (await first.json())["status"] == "accepted"
    await asyncio.sleep(0.5)
    again = await client.post("/ingest/event", json=event(event_id="w"), headers=auth())
    assert (await again.json())["status"] == "duplicate"
    await asyncio.sleep(1.6)
    later = await client.post("/ingest/event", json=event(event_id="w"), headers=auth())
    assert (await later.json())["status"] == "accepted"
    assert await total_len(redis) == 2


# --- authorization -------------------------------------------------------------------------


async def test_missing_token_is_401(client: Client, redis: Redis) -> None:
    response = await client.post("/ingest/event", json=event())
    await assert_error(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    response = await client.post("/ingest/events", json=[event()])
    await assert_error(response, 401, "unauthorized")
    assert await total_len(redis) == 0


async def test_user_token_may_only_send_its_own_events(client: Client, redis: Redis) -> None:
    alice = auth(ALICE, "user")
    other = await client.post("/ingest/event", json=event(BOB), headers=alice)
    await assert_error(other, 403, "forbidden", "$.user_id")
    own = await client.post("/ingest/event", json=event(ALICE, event_id="mine"), headers=alice)
    assert own.status == 202
    batch = await client.post(
        "/ingest/events", json=[event(ALICE, event_id="mine-2"), event(BOB)], headers=alice
    )
    assert batch.status == 202
    results = (await batch.json())["results"]
    assert results[0]["status"] == "accepted"
    assert results[1]["status"] == "rejected"
    assert results[1]["error"] == {
        "code": "forbidden",
        "message": "a user token may only send its own events",
        "field": "$[1].user_id",
    }
    assert sorted(e.event_id for e in await all_events(redis)) == ["mine", "mine-2"]


@pytest.mark.parametrize("role", ["producer", "admin"])
async def test_producer_and_admin_send_for_any_user(
    client: Client, redis: Redis, role: str
) -> None:
    response = await client.post(
        "/ingest/events", json=[event(ALICE), event(BOB)], headers=auth("svc", role)
    )
    assert response.status == 202
    assert {e.user_id for e in await all_events(redis)} == {ALICE, BOB}


# --- backpressure, failures ----------------------------------------------------------------


async def test_backlog_over_limit_is_429_and_appends_nothing(
    make_client: MakeClient, redis: Redis
) -> None:
    client = await make_client(ingest_max_backlog=10)
    await redis.hincrby(backlog_key(0), "appended", 8)
    await redis.hincrby(backlog_key(1), "appended", 5)
    await redis.hincrby(backlog_key(1), "acked", 2)  # backlog 8 + 3 = 11 > 10
    for path, body in [("/ingest/event", event()), ("/ingest/events", [event()])]:
        response = await client.post(path, json=body, headers=auth())
        await assert_error(response, 429, "backlog_full")
        assert response.headers["Retry-After"] == "1"
    assert await total_len(redis) == 0


async def test_redis_unreachable_is_503(make_client: MakeClient) -> None:
    client = await make_client(redis_port=1)  # nothing listens there: connection refused
    response = await client.post("/ingest/event", json=event(), headers=auth())
    await assert_error(response, 503, "redis_unavailable")
    assert response.headers["Retry-After"] == "1"


# --- group commit --------------------------------------------------------------------------


async def test_concurrent_requests_share_stream_entries(client: Client, redis: Redis) -> None:
    async def post(i: int) -> str:
        user = ALICE if i % 2 else BOB
        response = await client.post(
            "/ingest/event", json=event(user, event_id=f"c-{i}"), headers=auth()
        )
        assert response.status == 202
        body: dict[str, str] = await response.json()
        assert body["status"] == "accepted"
        return body["event_id"]

    ids = await asyncio.gather(*(post(i) for i in range(50)))
    assert sorted(ids) == sorted(f"c-{i}" for i in range(50))
    assert await total_len(redis) < 50
    stored = [e.event_id for e in await all_events(redis)]
    assert sorted(stored) == sorted(ids)  # each exactly once


async def test_script_is_reloaded_after_script_flush(client: Client, redis: Redis) -> None:
    assert (await client.post("/ingest/event", json=event(), headers=auth())).status == 202
    await redis.script_flush()
    assert (await client.post("/ingest/event", json=event(), headers=auth())).status == 202
    assert len(await all_events(redis)) == 2


# --- ?wait=true ----------------------------------------------------------------------------


@pytest.fixture
async def migrated(scratch_db: ScratchDb) -> AsyncIterator[tuple[Settings, asyncpg.Connection]]:
    """A fresh database at the current schema, and a connection to it (no worker runs)."""
    settings = await scratch_db()
    conn = await connect(settings)
    await runner.up(conn)
    yield settings, conn
    await conn.close()


@pytest.fixture
async def wait_client(
    redis: Redis, migrated: tuple[Settings, asyncpg.Connection]
) -> AsyncIterator[Client]:
    """A gateway on the migrated database, closed before that database is dropped."""
    client: Client = TestClient(TestServer(create_app(migrated[0])))
    await client.start_server()
    yield client
    await client.close()


async def store(conn: asyncpg.Connection, stored: StreamEvent) -> None:
    """What the processor's store stage does for one event, done by hand."""
    await conn.execute(
        "INSERT INTO real_time_events"
        " (time, user_id, event_id, event_type, value, properties, received_at)"
        " VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7)",
        datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=stored.time_us),
        stored.user_id,
        stored.event_id,
        stored.type,
        stored.value,
        stored.properties.decode(),
        datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=stored.received_us),
    )


async def store_later(redis: Redis, conn: asyncpg.Connection, count: int) -> None:
    """After 200 ms, store the first `count` events found in the streams."""
    await asyncio.sleep(0.2)
    stored = await all_events(redis)
    assert len(stored) == count
    for e in stored:
        await store(conn, e)


async def test_wait_times_out_with_pending_ids_when_no_worker_commits(
    wait_client: Client, redis: Redis
) -> None:
    client = wait_client
    started = time.monotonic()
    response = await client.post(
        "/ingest/event?wait=true&timeout=0.5", json=event(event_id="w-1"), headers=auth()
    )
    body = await assert_error(response, 504, "commit_timeout")
    assert body["pending"] == ["w-1"]
    # Answered when the timeout passed, well before the 10 s default (a loaded CI machine may
    # add seconds; the point is that the timeout asked for is the one applied).
    assert 0.5 <= time.monotonic() - started < 8
    assert [e.event_id for e in await all_events(redis)] == ["w-1"]  # still in flight


async def test_wait_answers_200_once_committed(
    wait_client: Client, redis: Redis, migrated: tuple[Settings, asyncpg.Connection]
) -> None:
    client, conn = wait_client, migrated[1]
    storing = asyncio.create_task(store_later(redis, conn, 1))
    response = await client.post(
        "/ingest/event?wait=true&timeout=5", json=event(event_id="w-2"), headers=auth()
    )
    await storing
    assert response.status == 200
    assert await response.json() == {"event_id": "w-2", "status": "accepted"}


async def test_wait_on_a_batch_covers_accepted_and_duplicate_events(
    wait_client: Client, redis: Redis, migrated: tuple[Settings, asyncpg.Connection]
) -> None:
    client, conn = wait_client, migrated[1]
    first = await client.post("/ingest/event", json=event(event_id="old"), headers=auth())
    assert first.status == 202
    [old] = await all_events(redis)
    await store(conn, old)
    await redis.delete(*(events_stream(p) for p in range(PARTITIONS)))  # as if trimmed
    storing = asyncio.create_task(store_later(redis, conn, 2))
    response = await client.post(
        "/ingest/events?wait=true&timeout=5",
        # "old" is a duplicate whose time defaulted to this receipt: stored with an earlier time.
        json=[event(event_id="old"), event(BOB, event_id="b-new"), event(event_id="a-new")],
        headers=auth(),
    )
    await storing
    assert response.status == 200
    body = await response.json()
    assert [r["status"] for r in body["results"]] == ["duplicate", "accepted", "accepted"]


async def test_wait_without_a_reachable_database_is_503(
    make_client: MakeClient, redis: Redis
) -> None:
    client = await make_client(timescale_port=1)  # nothing listens there
    response = await client.post(
        "/ingest/event?wait=true&timeout=5", json=event(event_id="w-3"), headers=auth()
    )
    await assert_error(response, 503, "database_unavailable")
    assert [e.event_id for e in await all_events(redis)] == ["w-3"]  # accepted all the same


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("wait=maybe", "wait"),
        ("wait=true&timeout=0", "timeout"),
        # Found by a fuzzer: accepted, then a 504 before any worker could have committed.
        ("wait=true&timeout=5e-324", "timeout"),
        ("wait=true&timeout=0.05", "timeout"),
        ("wait=true&timeout=61", "timeout"),
        ("wait=true&timeout=nan", "timeout"),
        ("wait=true&timeout=inf", "timeout"),
        ("wait=true&timeout=-1", "timeout"),
        ("timeout=5", "timeout"),  # a timeout without wait would be silently ignored
    ],
)
async def test_bad_wait_parameters_are_400(
    client: Client, redis: Redis, query: str, field: str
) -> None:
    for path, body in (("/ingest/event", event()), ("/ingest/events", [event()])):
        response = await client.post(f"{path}?{query}", json=body, headers=auth())
        await assert_error(response, 400, "invalid_parameter", field)
    assert await total_len(redis) == 0


async def dead_letter_later(redis: Redis, count: int, reason: str, whole_entry: bool) -> None:
    """After 200 ms, dead-letter the first `count` events found in the streams, with the
    runner's own code: one letter per event, or one letter for their whole entry."""
    await asyncio.sleep(0.2)
    stored = (await all_events(redis))[:count]
    assert len(stored) == count

    async def never(batch: list[Delivery]) -> list[DeadLetter]:
        raise AssertionError("not run")

    runner = Runner(redis, settings_for(), "processor", [], never, "store")
    fields = [(e.event_id.encode(), stream_event_encoder.encode(e)) for e in stored]
    entry = Delivery(events_stream(0), "1-0", fields, deliveries=6)
    if whole_entry:
        letters = [DeadLetter(entry, reason, "store")]
    else:
        letters = [DeadLetter(entry, reason, "store", payload) for _, payload in fields]
    await runner._dead_letter(letters)


@pytest.mark.parametrize("whole_entry", [False, True], ids=["event-letter", "entry-letter"])
async def test_wait_answers_422_as_soon_as_an_event_is_dead_lettered(
    wait_client: Client, redis: Redis, whole_entry: bool
) -> None:
    """Before, the request waited out its timeout and said the event was still in flight."""
    reason = "CheckViolationError: the database refused the row"
    failing = asyncio.create_task(dead_letter_later(redis, 1, reason, whole_entry))
    started = time.monotonic()
    response = await wait_client.post(
        "/ingest/event?wait=true&timeout=30", json=event(event_id="doomed"), headers=auth()
    )
    await failing
    body = await assert_error(response, 422, "dead_lettered")
    assert time.monotonic() - started < 10
    [letter] = body["deadLettered"]
    assert (letter["event_id"], letter["reason"], letter["stage"]) == ("doomed", reason, "store")
    listed: Any = await redis.xrange(DLQ_STREAM)
    assert letter["letter"] == listed[0][0].decode()


async def test_wait_on_a_batch_reports_the_dead_letters_once_the_rest_is_committed(
    wait_client: Client, redis: Redis, migrated: tuple[Settings, asyncpg.Connection]
) -> None:
    conn = migrated[1]
    # A letter from before the request names an event id of this batch: not its fate.
    await dead_letter_later(redis, 0, "old", whole_entry=False)

    async def fates() -> None:
        await dead_letter_later(redis, 1, "refused", whole_entry=False)
        for e in (await all_events(redis))[1:]:
            await store(conn, e)

    settling = asyncio.create_task(fates())
    response = await wait_client.post(
        "/ingest/events?wait=true&timeout=30",
        json=[event(event_id="x-dead"), event(event_id="x-kept")],
        headers=auth(),
    )
    await settling
    body = await assert_error(response, 422, "dead_lettered")
    assert [d["event_id"] for d in body["deadLettered"]] == ["x-dead"]


async def test_a_letter_for_another_event_does_not_end_the_wait(
    wait_client: Client, redis: Redis, migrated: tuple[Settings, asyncpg.Connection]
) -> None:
    conn = migrated[1]

    async def fates() -> None:
        await asyncio.sleep(0.2)
        other = StreamEvent("elsewhere", BOB, "post_like", 1, 1.0, b"{}", 1)
        runner_fields = [(b"elsewhere", stream_event_encoder.encode(other))]
        entry = Delivery(events_stream(1), "1-0", runner_fields, deliveries=1)

        async def never(batch: list[Delivery]) -> list[DeadLetter]:
            raise AssertionError("not run")

        runner = Runner(redis, settings_for(), "processor", [], never, "store")
        await runner._dead_letter([DeadLetter(entry, "not ours", "store")])
        await store_later(redis, conn, 1)

    settling = asyncio.create_task(fates())
    response = await wait_client.post(
        "/ingest/event?wait=true&timeout=30", json=event(event_id="w-ok"), headers=auth()
    )
    await settling
    assert response.status == 200, await response.text()
    assert await redis.xlen(DLQ_STREAM) == 1
