"""Request ids and log lines: `X-Request-ID` is echoed (or generated), every log line written
while a request is handled carries it, and no bearer token ever reaches a log."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from schemas.logs import LOG_CONTEXT, JsonFormatter, bind_log_context, json_handler
from tests.ops_support import MakeClient, bearer

ReadLines = Callable[[], list[dict[str, Any]]]


@pytest.fixture
def log_lines() -> Iterator[ReadLines]:
    """Reads the JSON lines the project's own handler (as `configure_logging` installs it)
    wrote on the root logger since the test started."""
    stream = io.StringIO()
    handler = json_handler(stream)
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


async def test_request_id_is_echoed(make_client: MakeClient) -> None:
    client = await make_client()
    response = await client.get("/health", headers={"X-Request-ID": "trace-42.a:b"})
    assert response.headers["X-Request-ID"] == "trace-42.a:b"


@pytest.mark.parametrize("sent", [None, "", "has space", "x" * 129, "<script>", "a/b", "é"])
async def test_missing_or_unsafe_request_id_is_replaced(
    make_client: MakeClient, sent: str | None
) -> None:
    client = await make_client()
    headers = {} if sent is None else {"X-Request-ID": sent}
    response = await client.get("/health", headers=headers)
    generated = response.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    again = await client.get("/health", headers=headers)
    assert again.headers["X-Request-ID"] != generated  # one per request


async def test_request_id_on_responses_aiohttp_builds_itself(make_client: MakeClient) -> None:
    client = await make_client()
    response = await client.get("/no-such-route", headers={"X-Request-ID": "r-404"})
    assert response.status == 404
    assert response.headers["X-Request-ID"] == "r-404"


async def test_every_log_line_of_concurrent_requests_carries_its_own_id(
    make_client: MakeClient, log_lines: ReadLines
) -> None:
    client = await make_client(redis_port=1, timescale_port=1)  # /ready logs a line per check
    headers = bearer()
    token = headers["Authorization"].split()[1]
    responses = await asyncio.gather(
        *(
            client.get("/ready", headers={**headers, "X-Request-ID": rid})
            for rid in ("req-a", "req-b")
        )
    )
    assert [r.status for r in responses] == [503, 503]
    lines = [line for line in log_lines() if line["message"] == "readiness check failed"]
    assert sorted((line["request_id"], line["check"]) for line in lines) == [
        ("req-a", "database"),
        ("req-a", "redis"),
        ("req-b", "database"),
        ("req-b", "redis"),
    ]
    assert all(line["logger"] == "gateway.ops.health" and line["error"] for line in lines)
    everything = json.dumps(log_lines())
    assert token not in everything
    assert token.split(".")[2] not in everything  # not even the signature


async def test_lines_outside_a_request_have_no_id(log_lines: ReadLines) -> None:
    logging.getLogger("tests.ops").warning("background", extra={"stream": "s"})
    [line] = [line for line in log_lines() if line["message"] == "background"]
    assert "request_id" not in line
    assert line["stream"] == "s"


def test_formatter_redacts_credentials_passed_as_context() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "login", (), None)
    record.token = "eyJhbGciOi.secret.sig"  # noqa: S105 - a fake, to be redacted
    record.Authorization = "Bearer abc"
    record.user = "alice"
    entry = json.loads(JsonFormatter().format(record))
    assert entry["token"] == "***"  # noqa: S105
    assert entry["Authorization"] == "***"
    assert entry["user"] == "alice"


def test_context_fields_do_not_override_explicit_extra() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("tests.ops.context")
    handler = json_handler(stream)
    logger.addHandler(handler)
    logger.propagate = False
    token = bind_log_context(request_id="ctx", stage="s1")
    try:
        logger.warning("one", extra={"stage": "explicit"})
    finally:
        LOG_CONTEXT.reset(token)
        logger.removeHandler(handler)
        logger.propagate = True
    entry = json.loads(stream.getvalue())
    assert (entry["request_id"], entry["stage"]) == ("ctx", "explicit")
