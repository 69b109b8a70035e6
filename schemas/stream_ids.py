"""Redis stream entry ids (`<ms>-<seq>`) as keys that sort.

Ids do not order as strings (`9-0` sorts after `10-0`), so every comparison of ids, by the
workers' runtime (claims, trimming) and by the gateways' fan-out (resume, replay, snapshots),
goes through `id_key`.
"""

from __future__ import annotations

__all__ = ["EntryKey", "id_key"]

EntryKey = tuple[int, int]


def id_key(entry_id: str) -> EntryKey:
    """A stream id as a sortable (ms, seq) pair; `<ms>` alone means `<ms>-0`."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
