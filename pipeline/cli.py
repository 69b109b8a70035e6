"""The `analytics` command: the composition root, the one place that imports every part.

Settings are read from the environment once, here, and passed down. A bad value stops the
process before anything starts, with the variable's name.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import orjson

from schemas.errors import AnalyticsError, SettingsError
from schemas.settings import Settings, parse_duration
from schemas.streams import ALERTING_GROUP, PROCESSOR_GROUP

# The groups `--groups` accepts, all run by default (pipeline/worker.py ALL_GROUPS; the rollup
# group's name lives with its stage, which this module does not import at start).
_GROUPS = (PROCESSOR_GROUP, "rollup", ALERTING_GROUP)

__all__ = ["main"]

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="analytics", description="inergize-analytics: real-time LinkedIn analytics pipeline."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("up", help="migrate, then run the gateway and every stage in one process")
    sub.add_parser("gateway", help="run the HTTP and WebSocket gateway only")
    worker = sub.add_parser(
        "worker", help="run consumer-group stages only (any number side by side)"
    )
    worker.add_argument(
        "--groups",
        default=",".join(_GROUPS),
        help="comma-separated consumer groups to run (default: processor,rollup,alerting)",
    )

    migrate = sub.add_parser("migrate", help="database schema migrations")
    msub = migrate.add_subparsers(dest="action", required=True, metavar="ACTION")
    mup = msub.add_parser("up", help="apply every pending migration (or up to --to N)")
    mup.add_argument("--to", type=int, default=None, metavar="N")
    mdown = msub.add_parser("down", help="revert applied migrations above version N")
    mdown.add_argument("--to", type=int, required=True, metavar="N")
    msub.add_parser("status", help="list migrations and whether each is applied")
    msub.add_parser("verify", help="fail if an applied file changed or an object is missing")
    mnew = msub.add_parser("new", help="create the next numbered up/down pair")
    mnew.add_argument("description")

    services = sub.add_parser("services", help="local Redis and TimescaleDB without Docker")
    ssub = services.add_subparsers(dest="action", required=True, metavar="ACTION")
    sup = ssub.add_parser("up", help="install what is missing, start, create role and database")
    sup.add_argument(
        "--timescaledb-source",
        type=Path,
        metavar="PATH",
        help="build the full TimescaleDB edition from this upstream tarball or source tree",
    )
    sup.add_argument(
        "--edition",
        choices=("apache", "timescale"),
        help="TimescaleDB edition of the application's database (timescale needs a full build)",
    )
    ssub.add_parser("down", help="stop the local PostgreSQL cluster and Redis")
    ssub.add_parser("status", help="report what runs and the TimescaleDB edition")

    seed = sub.add_parser("seed", help="development data (refused when APP_ENV=production)")
    seed.add_argument("action", nargs="?", choices=("load", "status", "clear"), default="load")
    seed.add_argument("--users", type=int, default=5)
    seed.add_argument("--days", type=int, default=30)
    seed.add_argument("--seed", type=int, default=7)

    maintenance = sub.add_parser("maintenance", help="retention, derived aggregations, report")
    maintenance.add_argument("action", choices=("run", "report"))

    token = sub.add_parser("token", help="mint a development JWT")
    token.add_argument("--user", required=True)
    token.add_argument("--role", choices=("user", "producer", "admin"), default="user")
    token.add_argument("--ttl", default="1h", help="lifetime, e.g. 15m, 1h, 7d (default 1h)")
    return parser


async def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from migrations import runner
    from sinks.db import connect

    if args.action == "new":
        up_path, down_path = runner.new(args.description)
        print(up_path)
        print(down_path)
        return 0
    conn = await connect(settings)
    try:
        if args.action == "up":
            for m in await runner.up(conn, target=args.to):
                print(f"applied  {m.version:04d} {m.name}")
            print(f"schema at version {await runner.current_version(conn)}")
        elif args.action == "down":
            for m in await runner.down(conn, to=args.to):
                print(f"reverted {m.version:04d} {m.name}")
            print(f"schema at version {await runner.current_version(conn)}")
        elif args.action == "status":
            for s in await runner.status(conn):
                state = "applied" if s.applied_at else "pending"
                if s.applied_at and not s.checksum_ok:
                    state = "EDITED"
                print(f"{s.version:04d} {state:8} {s.name}")
        else:
            await runner.verify(conn)
            print("schema verified: checksums match and every expected object exists")
    finally:
        await conn.close()
    return 0


def _services(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline import services

    action = args.action
    if action == "up":
        services.up(settings, args.timescaledb_source, args.edition)
    elif action == "down":
        services.down(settings)
    else:
        return 0 if services.status(settings) else 1
    return 0


async def _seed(settings: Settings, args: argparse.Namespace) -> int:
    from seeder.generate import clear, seed, seed_status
    from sinks.db import connect

    if settings.app_env == "production" and args.action != "status":
        print("analytics: seeding is refused when APP_ENV=production", file=sys.stderr)
        return 1
    if not (1 <= args.users <= 100_000 and 1 <= args.days <= 3650):
        print("analytics: --users must be 1-100000 and --days 1-3650", file=sys.stderr)
        return 2
    conn = await connect(settings)
    try:
        if args.action == "status":
            print(orjson.dumps(await seed_status(conn), option=orjson.OPT_INDENT_2).decode())
        elif args.action == "clear":
            print(orjson.dumps(await clear(conn), option=orjson.OPT_INDENT_2).decode())
        else:
            report = await seed(
                conn, users=args.users, days=args.days, seed=args.seed, progress=args.users >= 50
            )
            total = sum(report.rows.values())
            print(
                f"seeded {len(report.users)} users x {report.days} days: {total:,} rows "
                f"in {report.seconds:.1f} s {report.rows}"
            )
    finally:
        await conn.close()
    return 0


async def _maintenance(settings: Settings, action: str) -> int:
    from pipeline import maintenance
    from sinks.db import connect

    conn = await connect(settings)
    try:
        out = (
            await maintenance.run(conn, settings)
            if action == "run"
            else await maintenance.report(conn)
        )
    finally:
        await conn.close()
    print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
    return 0


def _token(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.auth import mint_token

    try:
        ttl = parse_duration(args.ttl)
        token = mint_token(settings, subject=args.user, role=args.role, ttl_seconds=ttl)
    except ValueError as e:  # unreadable, or longer than JWT_MAX_TTL
        raise SettingsError("--ttl", str(e)) from None
    print(token)
    return 0


async def _serve(settings: Settings, command: str, groups: tuple[str, ...]) -> int:
    from pipeline.serve import serve

    if command == "up":
        from migrations import runner
        from sinks.db import connect

        conn = await connect(settings)
        try:
            applied = await runner.up(conn)
        finally:
            await conn.close()
        log.info("migrations applied", extra={"count": len(applied)})
    await serve(
        settings,
        gateway=command in ("up", "gateway"),
        worker=command in ("up", "worker"),
        groups=groups,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as e:
        print(f"analytics: configuration error: {e}", file=sys.stderr)
        return 2

    from schemas.logs import configure_logging

    configure_logging(settings.log_level)
    try:
        if args.command == "migrate":
            return asyncio.run(_migrate(settings, args))
        if args.command == "services":
            return _services(settings, args)
        if args.command == "token":
            return _token(settings, args)
        if args.command == "seed":
            return asyncio.run(_seed(settings, args))
        if args.command == "maintenance":
            return asyncio.run(_maintenance(settings, args.action))
        groups = tuple(g.strip() for g in getattr(args, "groups", ",".join(_GROUPS)).split(","))
        unknown = set(groups) - set(_GROUPS)
        if unknown:
            print(f"analytics: unknown group(s): {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        return asyncio.run(_serve(settings, args.command, groups))
    except AnalyticsError as e:
        print(f"analytics: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
