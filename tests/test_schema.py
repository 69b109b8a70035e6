"""The migrated schema: hypertables with 6-hour chunks and the expected dimensions, the unique
keys that make redelivery harmless, and rollups in the form the running edition supports."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from schemas.settings import Settings
from sinks.db import connect

EVENT_TABLES = ("profile_metrics", "engagement_metrics", "real_time_events")
USER_HYPERTABLES = (*EVENT_TABLES, "metric_aggregations", "alert_history")
ROLLUPS = (
    "profile_metrics_5min",
    "profile_metrics_hourly",
    "profile_metrics_daily",
    "engagement_hourly",
)


@pytest.fixture
async def conn(migrated: Settings) -> AsyncIterator[asyncpg.Connection]:
    c = await connect(migrated)
    yield c
    await c.close()


async def test_raw_hypertables_have_6_hour_chunks_and_a_user_hash_dimension(
    conn: asyncpg.Connection,
) -> None:
    rows = await conn.fetch(
        "SELECT hypertable_name, column_name, dimension_type, time_interval, num_partitions "
        "FROM timescaledb_information.dimensions"
    )
    dims: dict[str, dict[str, asyncpg.Record]] = {}
    for r in rows:
        dims.setdefault(r["hypertable_name"], {})[r["column_name"]] = r
    for table in (*USER_HYPERTABLES, "performance_metrics"):
        time_dim = dims[table]["time"]
        assert time_dim["dimension_type"] == "Time"
        assert time_dim["time_interval"].total_seconds() == 6 * 3600, table
    for table in USER_HYPERTABLES:
        space = dims[table]["user_id"]
        assert (space["dimension_type"], space["num_partitions"]) == ("Space", 4), table
    assert "user_id" not in dims["performance_metrics"]


async def test_event_tables_refuse_a_second_row_with_the_same_event_id(
    conn: asyncpg.Connection,
) -> None:
    t = datetime(2026, 1, 1, tzinfo=UTC)
    async with conn.transaction():
        insert = (
            "INSERT INTO real_time_events (time, user_id, event_id, event_type, received_at) "
            "VALUES ($1, 'schema-test', 'dup-1', 'profile_view', $1)"
        )
        await conn.execute(insert, t)
        with pytest.raises(asyncpg.UniqueViolationError):
            async with conn.transaction():
                await conn.execute(insert, t)
        await conn.execute("DELETE FROM real_time_events WHERE user_id = 'schema-test'")


async def test_each_event_table_has_only_its_unique_key(conn: asyncpg.Connection) -> None:
    for table in EVENT_TABLES:
        indexes = await conn.fetch(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename = $1",
            table,
        )
        assert len(indexes) == 1, table
        assert "UNIQUE" in indexes[0]["indexdef"]
        assert '(user_id, "time" DESC, event_id)' in indexes[0]["indexdef"]


async def test_rollups_take_the_form_of_the_running_edition(conn: asyncpg.Connection) -> None:
    edition = await conn.fetchval("SELECT current_setting('timescaledb.license', true)")
    caggs = {
        r["view_name"]: r
        for r in await conn.fetch(
            "SELECT view_name, materialized_only FROM timescaledb_information.continuous_aggregates"
        )
    }
    hypertables = {
        r["hypertable_name"]
        for r in await conn.fetch("SELECT hypertable_name FROM timescaledb_information.hypertables")
    }
    for rollup in ROLLUPS:
        if edition == "timescale":
            assert rollup in caggs, rollup
            assert caggs[rollup]["materialized_only"] is False
        else:
            assert edition == "apache"
            assert rollup not in caggs
            assert rollup in hypertables, rollup
    columns = {
        r["column_name"]
        for r in await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = $1",
            "engagement_hourly",
        )
    }
    assert {"bucket", "user_id", "impressions", "likes", "engagement_rate"} <= columns


async def test_lifecycle_policies_follow_the_edition(conn: asyncpg.Connection) -> None:
    edition = await conn.fetchval("SELECT current_setting('timescaledb.license', true)")
    jobs = await conn.fetch(
        "SELECT proc_name, hypertable_name FROM timescaledb_information.jobs "
        "WHERE proc_name IN ('policy_retention', 'policy_compression')"
    )
    if edition == "timescale":
        retention = {j["hypertable_name"] for j in jobs if j["proc_name"] == "policy_retention"}
        assert set(EVENT_TABLES) <= retention
    else:
        assert jobs == []


async def test_apache_rollup_derives_engagement_rate_from_its_sums(
    conn: asyncpg.Connection,
) -> None:
    edition = await conn.fetchval("SELECT current_setting('timescaledb.license', true)")
    if edition == "timescale":
        kind = await conn.fetchval(
            "SELECT count(*) FROM timescaledb_information.continuous_aggregates "
            "WHERE view_name = 'engagement_hourly'"
        )
        assert kind == 1
        return
    t = datetime(2026, 1, 1, tzinfo=UTC)
    async with conn.transaction():
        rate = await conn.fetchval(
            "INSERT INTO engagement_hourly (bucket, user_id, impressions, likes, comments, shares) "
            "VALUES ($1, 'schema-test', 200, 6, 3, 1) RETURNING engagement_rate",
            t,
        )
        assert rate == pytest.approx(0.05)
        await conn.execute("DELETE FROM engagement_hourly WHERE user_id = 'schema-test'")
