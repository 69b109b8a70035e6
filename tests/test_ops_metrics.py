"""`GET /metrics`: valid Prometheus text (checked by promtool from Debian's `prometheus`
package), and counters and gauges that follow what really happens."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

import pipeline.prom  # noqa: F401 - registers the worker's metrics
import sinks.timescale  # noqa: F401 - registers the COPY writer's metrics
from schemas.settings import Settings
from schemas.streams import DLQ_STREAM, events_stream
from tests.ops_support import Client, MakeClient, bearer

PROMTOOL = shutil.which("promtool")


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one series in an exposition, 0 if absent."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(m.group(3))
    return 0.0


async def scrape(client: Client) -> str:
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith(
        "text/plain; version=0.0.4"
    )  # promtool's format
    return await response.text()


@pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: `make test` installs prometheus")
async def test_exposition_passes_promtool(make_client: MakeClient, migrated: Settings) -> None:
    client = await make_client(migrated)
    await client.get("/health")
    await client.post("/ingest/event", json={"user_id": "u1", "type": "profile_view"})
    text = await scrape(client)
    assert PROMTOOL is not None
    proc = await asyncio.create_subprocess_exec(
        PROMTOOL,
        "check",
        "metrics",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate(text.encode())
    assert proc.returncode == 0, out.decode()
    # Every family promised in docs/operations.md is there, worker ones included.
    for name, kind in (
        ("ia_http_requests_total", "counter"),
        ("ia_http_request_duration_seconds", "histogram"),
        ("ia_ingest_events_total", "counter"),
        ("ia_stream_length", "gauge"),
        ("ia_db_pool_connections", "gauge"),
        ("ia_batch_rows", "histogram"),
        ("ia_rows_written_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
    ):
        assert f"# TYPE {name} {kind}\n" in text, name
    assert sample(text, "ia_ingest_events_total", outcome="duplicate") >= 0
    assert 'ia_ingest_events_total{outcome="duplicate"}' in text  # present before any


async def test_counters_move_as_events_flow(make_client: MakeClient, migrated: Settings) -> None:
    client = await make_client(migrated)
    before = await scrape(client)
    headers = bearer("producer")
    batch = [
        {"user_id": "u1", "type": "profile_view", "event_id": "m-1"},
        {"user_id": "u2", "type": "post_like", "event_id": "m-2"},
        {"user_id": "u3", "type": "not_a_type"},
    ]
    response = await client.post("/ingest/events", json=batch, headers=headers)
    assert response.status == 202
    again = {"user_id": "u1", "type": "profile_view", "event_id": "m-1"}
    response = await client.post("/ingest/event", json=again, headers=headers)
    assert (await response.json())["status"] == "duplicate"
    response = await client.post("/ingest/event", json={"user_id": "u1"}, headers=headers)
    assert response.status == 422
    assert (await client.post("/ingest/event", json=again)).status == 401
    after = await scrape(client)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("ia_ingest_events_total", outcome="accepted") == 2
    assert delta("ia_ingest_events_total", outcome="duplicate") == 1
    assert delta("ia_ingest_events_total", outcome="rejected") == 2
    route = {"method": "POST", "route": "/ingest/event"}
    assert delta("ia_http_requests_total", **route, status="202") == 1
    assert delta("ia_http_requests_total", **route, status="422") == 1
    assert delta("ia_http_requests_total", **route, status="401") == 1
    assert delta("ia_http_request_duration_seconds_count", **route) == 3
    assert delta("ia_http_requests_total", method="POST", route="/ingest/events", status="202") == 1


async def test_unknown_paths_share_one_series(make_client: MakeClient) -> None:
    client = await make_client()
    before = await scrape(client)
    for i in range(3):
        assert (await client.get(f"/no-such-{i}")).status == 404
    after = await scrape(client)
    labels = {"method": "GET", "route": "unmatched", "status": "404"}
    assert (
        sample(after, "ia_http_requests_total", **labels)
        - sample(before, "ia_http_requests_total", **labels)
        == 3
    )
    assert "no-such" not in after


async def test_stream_group_and_pool_gauges_are_read_on_scrape(
    make_client: MakeClient, migrated: Settings, ops_redis: Redis
) -> None:
    stream = events_stream(2)
    for i in range(3):
        await ops_redis.xadd(stream, {f"e{i}": b"x"})
    await ops_redis.xgroup_create(stream, "processor", id="0")
    await ops_redis.xreadgroup("processor", "w", {stream: ">"}, count=2)
    await ops_redis.xadd(DLQ_STREAM, {"reason": "r"})
    client = await make_client(migrated)
    await client.get("/ready")  # opens the database pool
    text = await scrape(client)
    assert sample(text, "ia_stream_length", stream=stream) == 3
    assert sample(text, "ia_stream_length", stream=DLQ_STREAM) == 1
    assert sample(text, "ia_stream_group_pending", stream=stream, group="processor") == 2
    assert sample(text, "ia_stream_group_lag", stream=stream, group="processor") == 1
    assert sample(text, "ia_stream_group_consumers_alive", stream=stream, group="processor") == 1
    pool = sample(text, "ia_db_pool_connections", state="idle") + sample(
        text, "ia_db_pool_connections", state="in_use"
    )
    assert pool >= migrated.db_pool_min
    assert sample(text, "ia_db_pool_max_connections") == migrated.db_pool_max

    await ops_redis.delete(stream)  # a vanished stream stops being exported
    text = await scrape(client)
    assert f'stream="{stream}",group=' not in text
    assert sample(text, "ia_stream_length", stream=stream) == 0


async def test_scrape_answers_while_redis_is_down(make_client: MakeClient) -> None:
    client = await make_client(redis_port=1, timescale_port=1)
    before = sample(await scrape(client), "ia_scrape_errors_total", source="redis")
    text = await scrape(client)
    assert sample(text, "ia_scrape_errors_total", source="redis") == before + 1
    assert "ia_http_requests_total" in text


def test_docs_and_dashboard_name_only_metrics_that_exist() -> None:
    """docs/operations.md and the Grafana dashboard stay true to the registry."""
    import gateway.app  # noqa: F401 - registers every gateway-side metric

    registered = set(REGISTRY._names_to_collectors)
    root = Path(__file__).resolve().parent.parent / "docs"
    dashboard = json.loads((root / "grafana" / "inergize-analytics.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    used = set(re.findall(r"\b(ia_[a-z_]+|process_[a-z_]+)", exprs))
    used |= set(re.findall(r"`(ia_[a-z_]+)`", (root / "operations.md").read_text()))
    assert used, "nothing parsed"
    assert used - registered == set()
