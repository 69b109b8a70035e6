"""Admin API over real HTTP: role checks on every endpoint, migrations, the DLQ listing and
replays that put each dead letter back into its partition stream exactly once."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from redis.asyncio import Redis

from gateway.ops.admin import append_letter
from pipeline.runner import DeadLetter, Delivery, Runner
from schemas.events import StreamEvent, stream_event_decoder, stream_event_encoder
from schemas.streams import (
    DLQ_STREAM,
    backlog_key,
    events_stream,
    partition_of,
    replay_mark_key,
)
from tests.conftest import ScratchDb
from tests.ops_support import MakeClient, bearer, ops_settings
from tests.streams_helpers import make_event

ADMIN_ENDPOINTS = [
    ("POST", "/admin/migrate", None),
    ("GET", "/admin/dlq", None),
    ("POST", "/admin/dlq/replay", {"all": True}),
]
PARTITIONS = ops_settings().stream_partitions


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ENDPOINTS)
async def test_admin_endpoints_refuse_anonymous_and_non_admin(
    make_client: MakeClient, method: str, path: str, body: Any
) -> None:
    client = await make_client()
    anonymous = await client.request(method, path, json=body)
    assert anonymous.status == 401
    for role in ("user", "producer"):
        response = await client.request(method, path, json=body, headers=bearer(role))
        assert response.status == 403, role
        assert (await response.json())["error"]["code"] == "forbidden"


async def test_migrate_applies_pending_migrations_once(
    make_client: MakeClient, scratch_db: ScratchDb
) -> None:
    client = await make_client(await scratch_db())
    assert (await client.get("/ready")).status == 503
    response = await client.post("/admin/migrate", headers=bearer())
    assert response.status == 200
    body = await response.json()
    versions = [m["version"] for m in body["applied"]]
    assert versions == list(range(1, len(versions) + 1)) and len(versions) >= 5
    assert body["applied"][0]["name"] == "event_hypertables"
    assert body["version"] == versions[-1]
    again = await (await client.post("/admin/migrate", headers=bearer())).json()
    assert again == {"applied": [], "version": versions[-1]}
    assert (await client.get("/ready")).status == 200


async def test_migrate_answers_503_when_the_database_is_down(make_client: MakeClient) -> None:
    client = await make_client(timescale_port=1)
    response = await client.post("/admin/migrate", headers=bearer())
    assert response.status == 503
    assert (await response.json())["error"]["code"] == "database_unavailable"


# --- dead letters --------------------------------------------------------------------------


def user_on(partition: int) -> str:
    return next(
        u for u in (f"dlq-user-{i}" for i in range(100)) if partition_of(u, PARTITIONS) == partition
    )


def delivery(events: list[StreamEvent], partition: int) -> Delivery:
    fields = [(e.event_id.encode(), stream_event_encoder.encode(e)) for e in events]
    return Delivery(events_stream(partition), f"{1000 + partition}-0", fields, deliveries=6)


async def dead_letter(redis: Redis, *letters: DeadLetter) -> list[str]:
    """Write letters with the runner's own code, so the format is the one workers produce."""

    async def never(batch: list[Delivery]) -> list[DeadLetter]:
        raise AssertionError("not run")

    runner = Runner(redis, ops_settings(), "processor", [], never, "validate")
    await runner._dead_letter(list(letters))
    rows: Any = await redis.xrange(DLQ_STREAM)
    return [entry_id.decode() for entry_id, _ in rows]


def one_event_letter(partition: int, reason: str = "snapshot without figures") -> DeadLetter:
    event = make_event(user_on(partition), "profile_snapshot", event_id=uuid.uuid4().hex)
    return DeadLetter(
        delivery([event], partition), reason, "validate", stream_event_encoder.encode(event)
    )


async def stream_entries(redis: Redis, partition: int) -> list[list[StreamEvent]]:
    rows: Any = await redis.xrange(events_stream(partition))
    out = []
    for _, fields in rows:
        events = [stream_event_decoder.decode(v) for v in fields.values()]
        assert [e.event_id.encode() for e in events] == list(fields)  # the gateway's format
        out.append(events)
    return out


async def test_dlq_lists_letters_with_reasons_page_by_page(
    make_client: MakeClient, ops_redis: Redis
) -> None:
    ids = await dead_letter(ops_redis, *(one_event_letter(0, f"reason {i}") for i in range(5)))
    client = await make_client()
    seen: list[dict[str, Any]] = []
    after: str | None = None
    pages = 0
    while True:
        query = {"limit": "2", **({"after": after} if after else {})}
        response = await client.get("/admin/dlq", params=query, headers=bearer())
        assert response.status == 200
        body = await response.json()
        assert body["total"] == 5
        seen += body["letters"]
        pages += 1
        after = body["next"]
        if after is None:
            break
    assert pages == 3
    assert [letter["id"] for letter in seen] == ids
    first = seen[0]
    assert first["reason"] == "reason 0"
    assert (first["stage"], first["group"], first["kind"]) == ("validate", "processor", "event")
    assert first["deliveries"] == 6
    assert first["stream"] == events_stream(0)
    assert first["failed_at_ms"] > 0
    [event] = first["events"]
    assert event["type"] == "profile_snapshot" and event["user_id"] == user_on(0)


U64 = (1 << 64) - 1


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("limit", "0"),
        ("limit", "x"),
        ("limit", "501"),
        ("limit", "\u00b2"),  # isdigit() says yes, int() says no
        ("limit", "9" * 5000),
        ("after", "abc"),
        # Found by a fuzzer: twenty digits, but past 64 bits, reached Redis and answered 503.
        ("after", "76232935475048196500-012776641190"),
        ("after", f"{U64 + 1}-0"),
        ("after", f"0-{U64 + 1}"),
        ("after", "\u0661-0"),  # an Arabic-Indic digit: a Unicode digit, not an ASCII one
        ("after", "1-0\n"),
    ],
)
async def test_dlq_refuses_bad_parameters_naming_them(
    make_client: MakeClient, name: str, value: str
) -> None:
    client = await make_client()
    response = await client.get("/admin/dlq", params={name: value}, headers=bearer())
    assert response.status == 400, (name, value)
    body = await response.json()
    assert (body["error"]["code"], body["error"]["field"]) == ("invalid_parameter", name)


async def test_dlq_pages_up_to_the_largest_stream_id(
    make_client: MakeClient, ops_redis: Redis
) -> None:
    [letter] = await dead_letter(ops_redis, one_event_letter(0))
    client = await make_client()
    for after, expected in ((f"{U64}-{U64}", []), (f"{U64}-0", []), ("0-0", [letter])):
        response = await client.get("/admin/dlq", params={"after": after}, headers=bearer())
        assert response.status == 200, after
        body = await response.json()
        assert [x["id"] for x in body["letters"]] == expected
        assert body["total"] == 1


async def test_replay_appends_once_and_removes_the_letter(
    make_client: MakeClient, ops_redis: Redis
) -> None:
    letter = one_event_letter(1)
    [dlq_id] = await dead_letter(ops_redis, letter)
    client = await make_client()
    response = await client.post("/admin/dlq/replay", json={"ids": [dlq_id]}, headers=bearer())
    assert response.status == 200
    body = await response.json()
    assert body["replayed"] == 1
    [result] = body["results"]
    assert (result["status"], result["stream"], result["events"]) == (
        "replayed",
        events_stream(1),
        1,
    )
    [[event]] = await stream_entries(ops_redis, 1)
    assert event == stream_event_decoder.decode(letter.payload)
    assert await ops_redis.hget(backlog_key(1), "appended") == b"1"
    assert await ops_redis.xlen(DLQ_STREAM) == 0

    again = await client.post("/admin/dlq/replay", json={"ids": [dlq_id]}, headers=bearer())
    assert (await again.json())["results"] == [{"id": dlq_id, "status": "not_found"}]
    assert len(await stream_entries(ops_redis, 1)) == 1  # not appended twice
    assert await ops_redis.hget(backlog_key(1), "appended") == b"1"


async def test_concurrent_replays_of_one_letter_append_it_once(
    make_client: MakeClient, ops_redis: Redis
) -> None:
    [dlq_id] = await dead_letter(ops_redis, one_event_letter(2))
    a, b = await make_client(), await make_client()
    responses = await asyncio.gather(
        *(c.post("/admin/dlq/replay", json={"ids": [dlq_id]}, headers=bearer()) for c in [a, b] * 4)
    )
    replayed = [(await r.json())["replayed"] for r in responses]
    assert sorted(replayed) == [0] * 7 + [1]
    assert len(await stream_entries(ops_redis, 2)) == 1


async def test_replay_completes_a_replay_whose_gateway_died_half_way(
    make_client: MakeClient, ops_redis: Redis
) -> None:
    """State a gateway leaves when it dies between the append (partition slot) and the XDEL
    (DLQ slot): the events appended and marked, the letter still listed. A retry appends
    nothing and removes the letter."""
    letter = one_event_letter(1)
    [dlq_id] = await dead_letter(ops_redis, letter)
    rows: Any = await ops_redis.xrange(DLQ_STREAM, dlq_id, dlq_id)
    first = await append_letter(ops_redis, ops_settings(), dlq_id, dict(rows[0][1]))
    assert isinstance(first, dict) and first["fresh"] is True
    assert await ops_redis.xlen(DLQ_STREAM) == 1  # ... and here the gateway died

    client = await make_client()
    response = await client.post("/admin/dlq/replay", json={"ids": [dlq_id]}, headers=bearer())
    [result] = (await response.json())["results"]
    assert result["status"] == "replayed"
    assert result["new_entry_id"] == first["new_entry_id"]  # the first append, not a new one
    [[event]] = await stream_entries(ops_redis, 1)
    assert event == stream_event_decoder.decode(letter.payload)
    assert await ops_redis.hget(backlog_key(1), "appended") == b"1"
    assert await ops_redis.xlen(DLQ_STREAM) == 0
    assert await ops_redis.ttl(replay_mark_key(1, dlq_id)) > 86400


async def test_a_letter_that_dies_again_can_be_replayed_again(
    make_client: MakeClient, ops_redis: Redis
) -> None:
    """Marks are per letter, not per event: the same event dead-lettered a second time is a new
    letter, and replaying it appends it again (the first replay's mark does not block it)."""
    letter = one_event_letter(2)
    [first_id] = await dead_letter(ops_redis, letter)
    client = await make_client()
    await client.post("/admin/dlq/replay", json={"ids": [first_id]}, headers=bearer())
    [second_id] = await dead_letter(ops_redis, letter)
    response = await client.post("/admin/dlq/replay", json={"ids": [second_id]}, headers=bearer())
    assert (await response.json())["replayed"] == 1
    assert len(await stream_entries(ops_redis, 2)) == 2


async def test_replay_all_restores_whole_entries_in_order(
    make_client: MakeClient, ops_redis: Redis
) -> None:
    user = user_on(3)
    events = [make_event(user, "profile_view", event_id=f"w-{i}") for i in range(4)]
    whole = DeadLetter(delivery(events, 3), "delivered 6 times (MAX_DELIVERIES)", "processor")
    await dead_letter(ops_redis, whole, one_event_letter(0))
    client = await make_client()
    response = await client.post("/admin/dlq/replay", json={"all": True}, headers=bearer())
    body = await response.json()
    assert (body["replayed"], body["more"]) == (2, False)
    [entry] = await stream_entries(ops_redis, 3)
    assert [e.event_id for e in entry] == ["w-0", "w-1", "w-2", "w-3"]
    assert await ops_redis.hget(backlog_key(3), "appended") == b"4"
    assert len(await stream_entries(ops_redis, 0)) == 1
    assert await ops_redis.xlen(DLQ_STREAM) == 0


async def test_undecodable_letters_stay_in_the_dlq(
    make_client: MakeClient, ops_redis: Redis
) -> None:
    bad = DeadLetter(
        Delivery(events_stream(0), "1-0", [(b"x", b"\xc1")], 1), "undecodable", "validate", b"\xc1"
    )
    [dlq_id] = await dead_letter(ops_redis, bad)
    client = await make_client()
    body = await (
        await client.post("/admin/dlq/replay", json={"ids": [dlq_id]}, headers=bearer())
    ).json()
    assert body["results"][0]["status"] == "skipped"
    assert await ops_redis.xlen(DLQ_STREAM) == 1
    listed = await (await client.get("/admin/dlq", headers=bearer())).json()
    assert listed["letters"][0]["events"] == [{"event_id": None, "user_id": None, "type": None}]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"ids": ["1-0"], "all": True},
        {"ids": ["nope"]},
        {"ids": ["76232935475048196500-0"]},
        {"all": True, "x": 1},
        "not json",
    ],
)
async def test_replay_refuses_bad_bodies(make_client: MakeClient, body: Any) -> None:
    client = await make_client()
    kwargs: dict[str, Any] = {"data": body} if isinstance(body, str) else {"json": body}
    response = await client.post("/admin/dlq/replay", headers=bearer(), **kwargs)
    assert response.status == 422
