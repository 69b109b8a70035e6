"""Golden entries: the bytes every cross-process entry and key has today, pinned.

Old and new replicas run side by side during a rolling deploy, so a gateway of one release
appends what a worker of another reads. A change here is a change of contract: make it
compatible (new fields last, readers that skip what they do not know), then update the pins.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import redis.asyncio as redis

from gateway.ingest.append_script import id_digest
from pipeline.processor import metric_updates, touched
from pipeline.stages.enrich import read_scores, write_scores
from pipeline.stages.validate import ValidEvent
from schemas.alerts import Alert, alert_decoder, alert_entry
from schemas.dead_letters import letter_events, letter_fields
from schemas.events import StreamEvent, stream_event_decoder, stream_event_encoder
from schemas.streams import (
    ALERTS_STREAM,
    DLQ_STREAM,
    METRICS_STREAM,
    backlog_key,
    dedup_key,
    events_stream,
    partition_of,
    replay_mark_key,
)
from sinks.aggregations import AggregationRun, metrics_entries
from sinks.cache_generations import entry_key, generation_key
from tests.conftest import TEST_REDIS_URL

EVENT = StreamEvent(
    event_id="ev-1",
    user_id="u-1",
    type="post_like",
    time_us=1_767_225_600_000_000,  # 2026-01-01T00:00:00Z
    value=2.0,
    properties=b'{"post_id":"p-9"}',
    received_us=1_767_225_600_123_456,
)
# msgpack array of 7: id, user, type, time (uint64), value (float64), properties (bin), receipt.
EVENT_BYTES = bytes.fromhex(
    "97a465762d31a3752d31a9706f73745f6c696b65cf0006474846204000cb4000000000000000c4117b22706f"
    "73745f6964223a22702d39227dcf0006474846222240"
)
AT = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
COMMITTED = datetime(2026, 1, 1, 0, 0, 1, 500_000, tzinfo=UTC)


def test_the_events_entry_payload() -> None:
    assert stream_event_encoder.encode(EVENT) == EVENT_BYTES
    assert stream_event_decoder.decode(EVENT_BYTES) == EVENT
    # The dedup member: blake2b-128 of user NUL event id.
    assert id_digest("u-1", "ev-1").hex() == "f5772187d69ee8e7a395005dc0eb7761"


def test_the_metrics_entry_of_a_batch() -> None:
    events = [ValidEvent(EVENT, {"post_id": "p-9"})]
    updates = metric_updates(events, {"u-1": {"likes": 7.0}}, COMMITTED)
    stamps = b'"asOf":"2026-01-01T00:00:00.000Z","committedAt":"2026-01-01T00:00:01.500Z"}'
    assert orjson.dumps(updates) == (
        b'[{"userId":"u-1","metric":"engagementRate","value":null,' + stamps + b","
        b'{"userId":"u-1","metric":"influenceScore","value":null,' + stamps + b","
        b'{"userId":"u-1","metric":"likes","value":7.0,' + stamps + b"]"
    )
    assert touched(events) == {"u-1": [EVENT.time_us, EVENT.time_us]}


def test_the_metrics_entry_of_derived_values() -> None:
    run = AggregationRun(AT, COMMITTED, {}, {"u-1": {"postingStreak": 3.0}}, frozenset({"u-1"}))
    [entry] = metrics_entries(run)
    assert entry == {
        "v": 1,
        "updates": b'[{"userId":"u-1","metric":"postingStreak","value":3.0,'
        b'"asOf":"2026-01-01T00:00:00.000Z","committedAt":"2026-01-01T00:00:01.500Z"}]',
    }


def test_the_alerts_entry() -> None:
    alert = Alert(
        alert_id="a-1",
        user_id="u-1",
        rule_id="r-1",
        metric="profileViews",
        value=120.0,
        threshold=100.0,
        severity="warning",
        message="Profile views spike",
        triggered_at="2026-01-01T00:00:00.000Z",
    )
    entry = alert_entry(alert)
    assert entry == {
        "v": 1,
        "alert": b'{"alertId":"a-1","userId":"u-1","ruleId":"r-1","metric":"profileViews",'
        b'"value":120.0,"threshold":100.0,"severity":"warning","message":"Profile views spike",'
        b'"triggeredAt":"2026-01-01T00:00:00.000Z","asOf":null}',
    }
    assert alert_decoder.decode(entry["alert"]) == alert


def test_the_dead_letter_entry() -> None:
    common: dict[str, Any] = {
        "stream": "ia:events:{0}",
        "entry_id": "5-0",
        "group": "processor",
        "stage": "validate",
        "reason": "x" * 2500,
        "deliveries": 2,
        "failed_at_ms": 1_767_225_600_000,
    }
    one = letter_fields(**common, payload=EVENT_BYTES, entry=[])
    assert list(one) == [*common, "payload"]
    assert one["reason"] == "x" * 2000 and one["payload"] == EVENT_BYTES
    whole = letter_fields(**common, payload=b"", entry=[(b"ev-1", EVENT_BYTES), (b"ev-2", b"?")])
    assert list(whole)[-2:] == ["f0:ev-1", "f1:ev-2"]
    [decoded] = letter_events({k.encode(): _bytes(v) for k, v in one.items()})
    assert (decoded.event_id, decoded.user_id, decoded.type) == ("ev-1", "u-1", "post_like")


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def test_key_and_stream_names() -> None:
    assert [events_stream(3), backlog_key(3), dedup_key(3, 17)] == [
        "ia:events:{3}",
        "ia:backlog:{3}",
        "ia:dedup:{3}:17",
    ]
    assert replay_mark_key(1, "9-0") == "ia:replayed:{1}:9-0"
    assert (METRICS_STREAM, ALERTS_STREAM, DLQ_STREAM) == ("ia:metrics", "ia:alerts", "ia:dlq")
    assert generation_key("u-1") == "ia:cache:gen:{u-1}"
    assert entry_key("u-1", "summary") == "ia:cache:{u-1}:summary"
    assert [partition_of(u, 4) for u in ("u-1", "u-2", "alice", "bob")] == [0, 2, 3, 0]


async def test_the_influence_hash() -> None:
    client = redis.Redis.from_url(TEST_REDIS_URL)
    try:
        await client.delete("ia:influence")
        assert await write_scores(client, {"u-1": 42.5}, 1_767_225_600_000_000) == 1
        assert await client.hget("ia:influence", "u-1") == b"42.5|1767225600000000"
        assert await read_scores(client, ["u-1", "u-2"]) == {"u-1": 42.5}
    finally:
        await client.delete("ia:influence")
        await client.aclose()
