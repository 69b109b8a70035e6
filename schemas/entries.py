"""The `ia:metrics` entry: what is appended after a commit and what every reader takes from it.

Written by the processor (pipeline/processor.py) after each stored batch and by the maintenance
task (sinks/aggregations.py) for the derived series; read by the rollup group
(pipeline/stages/rollup.py) and by every gateway's fan-out and resume (gateway/ws/). One entry
is one committed change, its fields in this order:

- `v`: the format version, `1`. Readers skip (and count) versions they do not know, so a newer
  writer can roll out while older gateways still run.
- `updates`: a JSON list of `MetricUpdate`, camelCase, one per (user, metric) whose current
  value the commit may have changed, carrying the new value.
- `touched` (processor only): a JSON object, user -> [first, last] event time in microseconds
  of the rows the batch stored, which the rollup group recomputes. Absent when no raw rows
  changed (derived values): the rollups have nothing to do.

Writers build each update with `metric_update` and the fields with `metrics_entry`; readers
use `read_updates` and `read_touched`. tests/test_entries_golden.py pins the bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, cast

import msgspec
import orjson
from redis.typing import EncodableT, FieldT

__all__ = [
    "METRICS_ENTRY_VERSION",
    "MetricUpdate",
    "Spans",
    "UnreadableEntry",
    "metric_update",
    "metric_updates_decoder",
    "metrics_entry",
    "read_touched",
    "read_updates",
]

# Bumped only for an incompatible change; see the module docstring for what readers do.
METRICS_ENTRY_VERSION: Final = 1
# The version as a reader gets it back: Redis stores every field value as a string.
_VERSION_BYTES: Final = str(METRICS_ENTRY_VERSION).encode()

# user -> (first, last) event time in microseconds: what a stored batch touched.
Spans = dict[str, tuple[int, int]]


class MetricUpdate(msgspec.Struct, frozen=True, rename="camel"):
    """One (user, metric) current value: `as_of` is the event time of the newest data it
    includes, `committed_at` when the commit that produced it ended (RFC 3339, milliseconds,
    schemas/timefmt.py); the fan-out measures its lag from the latter."""

    user_id: str
    metric: str
    value: float | None
    as_of: str
    committed_at: str


class UnreadableEntry(ValueError):
    """An entry of a known version whose `updates` or `touched` field cannot be read."""


metric_updates_decoder: Final = msgspec.json.Decoder(list[MetricUpdate])
_spans_decoder: Final = msgspec.json.Decoder(Spans)


def metric_update(
    user_id: str, metric: str, value: float | None, as_of: str, committed_at: str
) -> dict[str, Any]:
    """One update as the entry's JSON carries it: `MetricUpdate`'s fields under their wire
    names (the struct is the one place they are spelt)."""
    update = MetricUpdate(user_id, metric, value, as_of, committed_at)
    return cast(dict[str, Any], msgspec.to_builtins(update))


def metrics_entry(
    updates: list[dict[str, Any]], touched: Mapping[str, Sequence[int]] | None = None
) -> dict[FieldT, EncodableT]:
    """The stream fields of one entry, ready for XADD; `updates` as `metric_update` makes them.

    Encoded with orjson rather than a msgspec encoder: the two write a float of magnitude 1e16
    or more differently (`1e+16`, `1e16`). Readers take either, but the bytes stay those every
    release so far has written.
    """
    fields: dict[FieldT, EncodableT] = {
        "v": METRICS_ENTRY_VERSION,
        "updates": orjson.dumps(updates),
    }
    if touched is not None:
        fields["touched"] = orjson.dumps(touched)
    return fields


def read_updates(fields: Mapping[bytes, bytes]) -> list[MetricUpdate] | None:
    """The entry's updates; None for an entry of a version this reader does not know (the
    caller skips it). Raises UnreadableEntry when `updates` is missing or malformed."""
    if fields.get(b"v") != _VERSION_BYTES:
        return None
    raw = fields.get(b"updates")
    if raw is None:
        raise UnreadableEntry("the entry has no updates field")
    try:
        return metric_updates_decoder.decode(raw)
    except msgspec.DecodeError as e:
        raise UnreadableEntry(f"updates: {e}") from e


def read_touched(fields: Mapping[bytes, bytes]) -> Spans | None:
    """The entry's touched spans; None when it has none (derived values: no raw rows changed).
    Read whatever the entry's version: recomputing a span is idempotent, so the rollup group
    loses nothing by acting on an entry whose updates it would not understand. Raises
    UnreadableEntry when `touched` is malformed."""
    raw = fields.get(b"touched")
    if raw is None:
        return None
    try:
        return _spans_decoder.decode(raw)
    except msgspec.DecodeError as e:
        raise UnreadableEntry(str(e)) from e
