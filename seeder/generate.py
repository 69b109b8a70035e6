"""Deterministic development data: `seed(conn, users=5, days=30, seed=7)`.

Each user follows a persona (seeder/personas.py) with weekly and daily rhythm, growth, noise,
posts whose impressions decay over three days, one viral post, a daily profile snapshot,
goals and alert rules. The same seed, users, days and `until` give the same rows. Rows are
written by binary COPY straight into the event tables (the pipeline is not involved), then the
rollups are brought level with them and the derived series computed for every day, so every
dashboard and API query has data at once.

Everything the seeder writes is recorded in `seed_runs` and carries `seed:` event ids and
`demo-` user ids, so `clear()` removes it and nothing else.

This module is the seeder's front door, the names the CLI, the gateway's `/admin/seed`, the
benchmarks and the tests import: generating a user's rows is seeder/users.py (their shape
seeder/rows.py), loading and clearing them seeder/load.py.
"""

from __future__ import annotations

from seeder.load import SeedReport, clear, seed, seed_status
from seeder.users import generate_user, user_ids

__all__ = ["SeedReport", "clear", "generate_user", "seed", "seed_status", "user_ids"]
