"""Batch writer into TimescaleDB: binary COPY, one transaction per batch, effectively once.

The fast path COPYs every table's rows inside one transaction. A batch that was stored before
(a redelivery after a crash between commit and acknowledgement) or that repeats an event id
hits the unique key `(user_id, time, event_id)`; the writer then rolls back and stores the
batch again through session-local staging tables with `ON CONFLICT DO NOTHING`, so the rows
that are new land and the repeated ones are skipped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from prometheus_client import Counter, Histogram

from schemas.tables import TABLE_COLUMNS
from sinks.db import Conn

# TABLE_COLUMNS, the records' column order, lives in schemas/tables.py; re-exported for the
# ingest benchmark (load/bench_ingest.py), which COPYs as this writer does.
__all__ = ["COPY_SECONDS", "ROWS_WRITTEN", "TABLE_COLUMNS", "WriteResult", "write_batch"]

log = logging.getLogger(__name__)

COPY_SECONDS = Histogram(
    "ia_copy_duration_seconds",
    "Time to COPY one batch into TimescaleDB and commit.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ROWS_WRITTEN = Counter("ia_rows_written_total", "Rows committed, by table.", ["table"])


@dataclass(frozen=True, slots=True)
class WriteResult:
    rows: dict[str, int]  # rows actually inserted, per table
    deduplicated: bool  # True when the staging path ran


async def write_batch(conn: Conn, rows: Mapping[str, Sequence[tuple[Any, ...]]]) -> WriteResult:
    """Store `rows` (table -> records in TABLE_COLUMNS order) atomically."""
    started = time.perf_counter()
    try:
        async with conn.transaction():
            for table, records in rows.items():
                if records:
                    await conn.copy_records_to_table(
                        table, records=records, columns=TABLE_COLUMNS[table]
                    )
        written = {table: len(records) for table, records in rows.items()}
        deduplicated = False
    except asyncpg.UniqueViolationError:
        written = await _write_skipping_duplicates(conn, rows)
        deduplicated = True
        log.info("batch stored through staging", extra={"rows": written})
    COPY_SECONDS.observe(time.perf_counter() - started)
    for table, n in written.items():
        ROWS_WRITTEN.labels(table).inc(n)
    return WriteResult(written, deduplicated)


async def _write_skipping_duplicates(
    conn: Conn, rows: Mapping[str, Sequence[tuple[Any, ...]]]
) -> dict[str, int]:
    written: dict[str, int] = {}
    async with conn.transaction():
        for table, records in rows.items():
            if not records:
                written[table] = 0
                continue
            staging = f"staging_{table}"
            columns = ", ".join(TABLE_COLUMNS[table])
            # Temporary, so each connection has its own; emptied at commit.
            await conn.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS {staging} "
                f"(LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            )
            await conn.copy_records_to_table(staging, records=records, columns=TABLE_COLUMNS[table])
            status = await conn.execute(
                f"INSERT INTO {table} ({columns}) "  # noqa: S608 - fixed identifiers
                f"SELECT {columns} FROM {staging} ON CONFLICT DO NOTHING"
            )
            written[table] = int(status.rsplit(" ", 1)[1])
    return written
