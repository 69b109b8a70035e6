"""Self-monitoring: every PERF_SAMPLE_INTERVAL a process turns its own cumulative Prometheus
figures into one `performance_metrics` row (sinks/performance.py).

The figures come from what the process already counts; each side says which (gateway/ops/perf.py,
pipeline/perf.py) as a `Totals` snapshot, and the sampler stores the differences between two
snapshots divided by the seconds between them. COPY latency p99 is estimated from the
histogram's bucket counts added in the interval, the way Prometheus' `histogram_quantile`
does (linear within a bucket), so it is as coarse as the buckets. RSS and CPU are read here,
with the sampler's own CPU baseline: `/status` resets its own on every call.

A sample the database does not take (down, slow) stays in a bounded buffer and goes with the
next write, so a short outage leaves no gap. The sampler runs in its own task: a failed read
or write is logged and counted in `ia_perf_sample_errors_total`, the loop goes on, and ingest
never waits for it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import resource
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import asyncpg
from prometheus_client import Counter
from prometheus_client.registry import Collector
from redis.asyncio import Redis
from redis.exceptions import RedisError

from sinks.performance import ProcessKind, Sample, insert_samples

__all__ = [
    "SAMPLE_ERRORS",
    "Sampler",
    "Totals",
    "histogram_buckets",
    "metric_value",
    "process_name",
    "quantile",
    "read_lag",
]

log = logging.getLogger(__name__)

SAMPLE_ERRORS = Counter(
    "ia_perf_sample_errors_total",
    "Performance samples that failed a step (lag: reading group lag; write: storing; "
    "sample: anything else), each followed by the next round.",
    ["step"],
)
for _step in ("lag", "write", "sample"):
    SAMPLE_ERRORS.labels(_step)

# A hung database delays a write by at most this; the tick schedule skips the ticks missed
# meanwhile, and the next sample simply covers a longer interval.
WRITE_TIMEOUT_S: Final = 5.0
# Group lag is one pipelined XINFO round trip; a Redis that does not answer in this time
# leaves the sample's lag null rather than holding it back.
LAG_TIMEOUT_S: Final = 2.0
# Samples kept while the database refuses them: an hour at the default 10 s interval.
PENDING_MAX: Final = 360
# What the database may answer a write: down, overloaded, read-only after a failover, not
# migrated yet. The samples wait for the next round; anything else is a bug and goes to the
# supervisor with its traceback.
_WRITE_FAILED: Final = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
_PAGE: Final = os.sysconf("SC_PAGE_SIZE")

PoolGetter = Callable[[], Awaitable[asyncpg.Pool]]


@dataclass(frozen=True, slots=True)
class Totals:
    """Cumulative figures of one process at one moment (since it started)."""

    events_in: float = 0.0
    events_out: float = 0.0
    batches: float = 0.0
    batch_events: float = 0.0
    # (upper bound, cumulative count) of the COPY duration histogram, +Inf last.
    copy_buckets: tuple[tuple[float, float], ...] = ()
    ws_connections: int | None = None  # a gauge: taken as it is, not differenced


def metric_value(metric: Collector, suffix: str = "", **labels: str) -> float:
    """The sum of `metric`'s samples named `<name><suffix>` whose labels include `labels`
    (`_total` of a counter, `_sum`/`_count` of a histogram, `""` for a gauge)."""
    total = 0.0
    for family in metric.collect():
        name = family.name + suffix
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def histogram_buckets(metric: Collector, **labels: str) -> tuple[tuple[float, float], ...]:
    """(upper bound, cumulative count) per bucket of a histogram, in bound order."""
    found: dict[float, float] = {}
    for family in metric.collect():
        for s in family.samples:
            if s.name == family.name + "_bucket" and all(
                s.labels.get(k) == v for k, v in labels.items()
            ):
                le = float(s.labels["le"])
                found[le] = found.get(le, 0.0) + s.value
    return tuple(sorted(found.items()))


def quantile(
    q: float, before: Sequence[tuple[float, float]], after: Sequence[tuple[float, float]]
) -> float | None:
    """The q-quantile of the observations made between two snapshots of one histogram, as
    histogram_quantile estimates it; None when there were none."""
    if not after:
        return None
    earlier = dict(before)
    counts = [(le, n - earlier.get(le, 0.0)) for le, n in after]
    total = counts[-1][1]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for le, n in counts:
        if n >= rank:
            if math.isinf(le):
                return lower  # the highest finite bound: all the histogram can say
            return lower + (le - lower) * (rank - below) / (n - below)
        lower, below = le, n
    return lower


async def read_lag(redis: Redis, pairs: Sequence[tuple[str, str]]) -> dict[str, int]:
    """Per consumer group, stream entries not yet delivered to it, summed over its streams
    (`pairs` of stream and group). A stream or group that does not exist yet is left out."""
    streams = sorted({stream for stream, _ in pairs})
    async with redis.pipeline(transaction=False) as pipe:
        for stream in streams:
            _ = pipe.xinfo_groups(stream)
        replies = await pipe.execute(raise_on_error=False)
    wanted = set(pairs)
    lag: dict[str, int] = {}
    for stream, groups in zip(streams, replies, strict=True):
        if isinstance(groups, BaseException):
            continue  # no such stream yet: XINFO answers an error
        for g in groups:
            name = g["name"].decode() if isinstance(g["name"], bytes) else str(g["name"])
            if (stream, name) in wanted and g.get("lag") is not None:
                lag[name] = lag.get(name, 0) + int(g["lag"])
    return lag


def process_name() -> str:
    """Host and pid: a pod's name in Kubernetes, so a restarted pod continues its series."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _rss() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # the peak, in KiB


class Sampler:
    """One process's sampler. `totals` snapshots its counters, `lag` reads the lag of the
    groups it serves (or None), `pool` gives the database pool (opened on first use)."""

    def __init__(
        self,
        *,
        kind: ProcessKind,
        interval: float,
        totals: Callable[[], Totals],
        pool: PoolGetter,
        lag: Callable[[], Awaitable[dict[str, int]]] | None = None,
        name: str | None = None,
    ) -> None:
        self.kind: Final = kind
        self.name: Final = name or process_name()
        self.interval: Final = interval
        self.written = 0  # samples stored, over the sampler's life
        self._totals = totals
        self._lag = lag
        self._pool = pool
        self._pending: deque[Sample] = deque(maxlen=PENDING_MAX)
        self._last = totals()
        self._wall = time.monotonic()
        self._cpu = time.process_time()

    @property
    def pending(self) -> int:
        """Samples taken but not stored yet."""
        return len(self._pending)

    async def run(self, stop: asyncio.Event) -> None:
        """Sample every `interval` until `stop` is set; never raises but CancelledError."""
        due = time.monotonic() + self.interval
        while True:
            try:
                async with asyncio.timeout(max(0.0, due - time.monotonic())):
                    await stop.wait()
                return
            except TimeoutError:
                pass
            # Fixed cadence; ticks missed while a write hung are skipped, not bunched up.
            due += self.interval
            late = time.monotonic() - due
            if late > 0:
                due += math.ceil(late / self.interval) * self.interval
            try:
                await self.tick()
            except Exception:
                SAMPLE_ERRORS.labels("sample").inc()
                log.exception("performance sample failed", extra={"process_name": self.name})

    async def tick(self) -> None:
        """Take one sample and store it with any that are still pending."""
        self._pending.append(await self.take())
        await self.flush()

    async def take(self) -> Sample:
        lag: dict[str, int] | None = None
        if self._lag is not None:
            try:
                async with asyncio.timeout(LAG_TIMEOUT_S):
                    lag = await self._lag()
            except (TimeoutError, RedisError, OSError) as e:
                SAMPLE_ERRORS.labels("lag").inc()
                log.warning("group lag not read", extra={"error": repr(e)})
        now, wall, cpu = self._totals(), time.monotonic(), time.process_time()
        before, span = self._last, max(wall - self._wall, 1e-9)
        cpu_percent = (cpu - self._cpu) / span * 100
        self._last, self._wall, self._cpu = now, wall, cpu
        events_in = now.events_in - before.events_in
        events_out = now.events_out - before.events_out
        batches = now.batches - before.batches
        batch_events = now.batch_events - before.batch_events
        return Sample(
            time=datetime.now(UTC),
            process_kind=self.kind,
            process_name=self.name,
            events_in_per_s=events_in / span,
            events_out_per_s=events_out / span,
            batch_size_avg=batch_events / batches if batches > 0 else None,
            copy_latency_p99_s=quantile(0.99, before.copy_buckets, now.copy_buckets),
            group_lag=sum(lag.values()) if lag else None,
            ws_connections=now.ws_connections,
            rss_bytes=_rss(),
            cpu_percent=round(cpu_percent, 2),
            # The raw counts: exact sums and batch-weighted averages over any range.
            extra={
                "interval_s": span,
                "events_in": events_in,
                "events_out": events_out,
                "batches": batches,
                "lag": lag,
                "pid": os.getpid(),
            },
        )

    async def flush(self) -> None:
        """Store every pending sample; on a database failure keep them for the next round."""
        if not self._pending:
            return
        batch = list(self._pending)
        try:
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                pool = await self._pool()
                async with pool.acquire() as conn:
                    await insert_samples(conn, batch)
        except _WRITE_FAILED as e:
            SAMPLE_ERRORS.labels("write").inc()
            log.warning(
                "performance samples not stored",
                extra={"pending": len(batch), "error": repr(e)},
            )
            return
        for _ in batch:
            self._pending.popleft()
        self.written += len(batch)
