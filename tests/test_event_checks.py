"""The stateless event checks (`schemas/event_checks.py`) give the worker's validate stage the
same verdict the gateway gives a producer: the same field, the same message."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from pipeline.runner import Delivery
from pipeline.stages.validate import validate
from schemas.event_checks import Problem, checked_properties
from schemas.events import StreamEvent, stream_event_encoder

CASES = [
    pytest.param("profile_snapshot", 1.0, b"{}", "properties", id="snapshot-empty"),
    pytest.param("profile_snapshot", 1.0, b'{"followers":1.5}', "properties.followers", id="half"),
    pytest.param("profile_snapshot", 1.0, b'{"connections":"many"}', "properties.connections"),
    pytest.param("profile_snapshot", 1.0, b'{"profile_views":true}', "properties.profile_views"),
    pytest.param("post_like", 1.5, b"{}", "value", id="fraction"),
    pytest.param("profile_view", 2.0**31, b"{}", "value", id="past-int32"),
    pytest.param("profile_update", 1.0, b'{"completeness":-1}', "properties.completeness"),
    pytest.param("post_share", 1.0, b'{"post_id":7}', "properties.post_id", id="post_id-number"),
    pytest.param("post_like", 1.0, b'{"n":1e400}', "properties", id="past-double"),
    pytest.param("post_like", 1.0, b'{"s":"\xff"}', "properties", id="invalid-utf8"),
    pytest.param("post_like", 1.0, b"[1]", "properties", id="not-object"),
    pytest.param("page_view", 1.0, b"{}", "type", id="unknown-type"),
]


def _delivery(event: StreamEvent) -> Delivery:
    return Delivery("ia:events:0", "1-0", [(b"e1", stream_event_encoder.encode(event))])


@pytest.mark.parametrize(("event_type", "value", "props", "field"), CASES)
def test_gateway_and_worker_refuse_with_the_same_field(
    event_type: str, value: float, props: bytes, field: str
) -> None:
    problem = checked_properties(event_type, value, props)
    assert isinstance(problem, Problem)
    assert problem.field == field and problem.message
    event = StreamEvent("e1", "u1", event_type, 1, value, props, 1)
    valid, dead = validate([_delivery(event)])
    assert valid == []
    [letter] = dead
    assert letter.reason == f"{field}: {problem.message}"
    assert letter.stage == "validate" and letter.payload == stream_event_encoder.encode(event)


@pytest.mark.parametrize(
    ("event_type", "value", "props"),
    [
        ("profile_snapshot", 1.0, {"followers": 120, "profile_completeness": 87.5}),
        ("profile_snapshot", 1.0, {"connections": 0}),
        ("post_like", 3.0, {"post_id": "p-1"}),
        ("post_impression", 2.0**31 - 1, {}),
        ("profile_snapshot", 1.0, {"followers": 2**31 - 1, "profile_views": 10**12}),
        ("profile_update", 1.0, {"completeness": 100}),
        ("profile_view", 1.0, {}),
    ],
)
def test_good_events_pass_both(event_type: str, value: float, props: dict[str, Any]) -> None:
    raw = orjson.dumps(props)
    assert checked_properties(event_type, value, raw) == props
    event = StreamEvent("e1", "u1", event_type, 1, value, raw, 1)
    valid, dead = validate([_delivery(event)])
    assert dead == [] and [v.properties for v in valid] == [props]
