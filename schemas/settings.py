"""Typed settings, read from the environment once in `main()` and passed down.

Every field maps to the upper-cased environment variable of the same name. A bad value raises
`SettingsError` naming the variable, so a misconfigured process stops at start instead of
failing on the first request.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias, TypeVar, cast

from schemas.errors import SettingsError

__all__ = ["PLACEHOLDER_SECRETS", "IPNetwork", "Settings", "parse_duration"]

T = TypeVar("T")

# Values that ship in examples and compose files; a production process refuses them because
# anyone who read our README could forge tokens.
PLACEHOLDER_SECRETS = frozenset(
    {
        "",
        "change-me",
        "changeme",
        "secret",
        "your-secret-key",
        "dev-secret-change-me",
        "dev-secret-change-me-not-for-production-use",
        "development-secret-change-me",
    }
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(raw: str) -> float:
    """Seconds from `600`, `600s`, `10m`, `1.5h`, `250ms` or `1d`; a bare number is seconds."""
    match = _DURATION.match(raw)
    if match is None:
        raise ValueError(f"expected a duration such as 600, 10m or 250ms, got {raw!r}")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"]


def _int(lo: int, hi: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip().replace("_", ""))
        except ValueError:
            raise ValueError(f"expected an integer, got {raw!r}") from None
        if not lo <= value <= hi:
            raise ValueError(f"expected an integer from {lo} to {hi}, got {value}")
        return value

    return parse


def _duration(lo: float, hi: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        value = parse_duration(raw)
        if not lo <= value <= hi:
            raise ValueError(f"expected a duration from {lo:g}s to {hi:g}s, got {raw!r}")
        return value

    return parse


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {raw!r}")
        return value

    return parse


def _text(raw: str) -> str:
    return raw.strip()


def _host(raw: str) -> str:
    value = raw.strip()
    if not value or any(c.isspace() for c in value):
        raise ValueError(f"expected a host name or address, got {raw!r}")
    return value


def _csv(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(raw: str) -> tuple[IPNetwork, ...]:
    """IP addresses and CIDR blocks; host bits are ignored (`10.1.2.3/8` is `10.0.0.0/8`)."""
    out = []
    for item in _csv(raw):
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(
                f"expected IP addresses or CIDR blocks such as 10.0.0.0/8, got {item!r}"
            ) from None
    return tuple(out)


def _setting(default: T, parse: Callable[[str], Any], *, secret: bool = False) -> Any:
    return field(default=default, metadata={"parse": parse, "secret": secret})


_PORT = _int(1, 65535)


@dataclass(frozen=True, slots=True)
class Settings:
    """Configuration of every process. Field `x_y` is read from variable `X_Y`."""

    app_env: Literal["development", "test", "production"] = _setting(
        "development", _choice("development", "test", "production")
    )
    log_level: str = _setting("INFO", _choice("debug", "info", "warning", "error"))

    timescale_host: str = _setting("127.0.0.1", _host)
    timescale_port: int = _setting(5432, _PORT)
    timescale_user: str = _setting("analytics", _text)
    timescale_password: str = _setting("analytics", _text, secret=True)
    timescale_database: str = _setting("inergize_analytics", _text)
    db_pool_min: int = _setting(2, _int(1, 100))
    db_pool_max: int = _setting(10, _int(1, 500))

    redis_host: str = _setting("127.0.0.1", _host)
    redis_port: int = _setting(6379, _PORT)
    redis_password: str = _setting("", _text, secret=True)
    redis_db: int = _setting(0, _int(0, 15))

    jwt_secret: str = _setting("dev-secret-change-me-not-for-production-use", _text, secret=True)

    http_host: str = _setting("127.0.0.1", _host)
    http_port: int = _setting(3004, _PORT)
    ws_enabled: bool = _setting(True, _bool)
    ws_port: int = _setting(3007, _PORT)
    # Milliseconds, as the existing dashboards configure it.
    ws_heartbeat_interval: int = _setting(30000, _int(1000, 600_000))
    # Largest client message read; up to 4x is refused with an error frame, beyond it the
    # socket closes with 1009 at once. Client messages are small JSON commands.
    ws_max_frame_bytes: int = _setting(16384, _int(256, 1_048_576))
    # Unsent bytes per socket beyond which metric values are coalesced (twice as many close
    # the socket with 1013): the bound on what one slow client can make the gateway hold.
    ws_send_queue_bytes: int = _setting(65536, _int(4096, 64 * 1_048_576))
    # Bounds of a subscription's updateFrequency (seconds; 0 means every change).
    ws_min_update_frequency: float = _setting(0.0, _duration(0, 3600))
    ws_max_update_frequency: float = _setting(3600.0, _duration(0, 86400))
    # Client messages per second per socket; beyond it they are ignored, at twice it the
    # socket closes with 1008.
    ws_max_client_rate: int = _setting(50, _int(1, 100_000))
    metrics_port: int = _setting(9464, _PORT)

    # Changing the partition count re-homes users to other streams; per-user order is only
    # guaranteed while it stays fixed, so drain the streams before changing it.
    stream_partitions: int = _setting(4, _int(1, 1024))
    batch_max_rows: int = _setting(5000, _int(1, 100_000))
    batch_max_wait_ms: int = _setting(200, _int(1, 60_000))
    claim_idle_ms: int = _setting(30_000, _int(100, 3_600_000))
    max_deliveries: int = _setting(5, _int(1, 1000))
    # Runners per worker process: one stores a batch while the other reads and decodes the next.
    worker_concurrency: int = _setting(2, _int(1, 64))
    ingest_max_backlog: int = _setting(1_000_000, _int(1, 1_000_000_000))
    ingest_max_batch: int = _setting(1000, _int(1, 100_000))
    ingest_max_bytes: int = _setting(1_048_576, _int(1024, 1_073_741_824))
    dedup_window: float = _setting(600.0, _duration(1, 7 * 86400))
    retention_days: int = _setting(90, _int(1, 3650))
    perf_sample_interval: float = _setting(10.0, _duration(1, 3600))
    maintenance_interval: float = _setting(900.0, _duration(10, 86400))
    # How long ia:metrics keeps entries every group has acknowledged: the window in which a
    # reconnecting dashboard resumes from the stream instead of resyncing from the database.
    metrics_stream_retention: float = _setting(3600.0, _duration(60, 7 * 86400))
    cors_origins: tuple[str, ...] = _setting((), _csv)
    # Rate-limit budgets: requests per RATE_LIMIT_WINDOW, per token subject and per client IP,
    # kept in Redis so every gateway replica draws on the same budget; 0 turns one off. Ingest
    # budgets are off by default: producers are trusted services, the backlog 429 already
    # protects the pipeline, and the per-request Redis check halved single-event POST
    # throughput (2,379 -> 1,230 req/s, docs/benchmarks.md); turn them on for untrusted
    # producers. The API budgets guard the database against one runaway dashboard.
    rate_limit_window: float = _setting(60.0, _duration(1, 86400))
    rate_limit_ingest_subject: int = _setting(0, _int(0, 1_000_000_000))
    rate_limit_ingest_ip: int = _setting(0, _int(0, 1_000_000_000))
    # End users may ingest their own events, but are not trusted services: without a budget
    # one user could fill INGEST_MAX_BACKLOG and get every producer refused with 429. It
    # replaces RATE_LIMIT_INGEST_SUBJECT for `user` tokens; 60 requests (of up to
    # INGEST_MAX_BATCH events) a minute is far beyond what a browser or app sends for one user.
    rate_limit_ingest_user: int = _setting(60, _int(0, 1_000_000_000))
    rate_limit_api_subject: int = _setting(1200, _int(0, 1_000_000_000))
    rate_limit_api_ip: int = _setting(3000, _int(0, 1_000_000_000))
    rate_limit_ws_subject: int = _setting(60, _int(0, 1_000_000_000))
    rate_limit_ws_ip: int = _setting(120, _int(0, 1_000_000_000))
    # Reverse proxies whose `X-Forwarded-For` is believed for the client IP (rate limits). Empty
    # trusts nobody: otherwise any client could name its own IP and dodge the per-IP budgets.
    trusted_proxies: tuple[IPNetwork, ...] = _setting((), _networks)
    # JWT verification: HS256 with JWT_SECRET, or RS256 with JWT_PUBLIC_KEY (PEM; `\n` escapes
    # are accepted for one-line environment values). Audience and issuer are checked when set.
    jwt_algorithm: str = _setting("hs256", _choice("hs256", "rs256"))
    jwt_public_key: str = _setting("", _text)
    jwt_audience: str = _setting("", _text)
    jwt_issuer: str = _setting("", _text)
    # The longest a token may still be valid when it is presented (`exp` at most this far
    # ahead): a leaked token must not work for years because its issuer chose `exp: 1e30`.
    # A week covers `analytics token --ttl 7d` service tokens; identity providers issue hours.
    jwt_max_ttl: float = _setting(7 * 86400.0, _duration(60, 366 * 86400))
    # How long a hot analytics API answer stays cached in Redis (0 turns the cache off). New
    # data for a user invalidates that user's answers at once; the TTL bounds how stale the
    # sliding "last 7 days" windows of a quiet user's answers can get.
    api_cache_ttl: float = _setting(300.0, _duration(0, 86400))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every field from `environ` (default `os.environ`), then check cross-field rules."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = f.name.upper()
            raw = env.get(name)
            if raw is None:
                continue
            parse = cast(Callable[[str], Any], f.metadata["parse"])
            try:
                values[f.name] = parse(raw)
            except ValueError as e:
                raise SettingsError(name, str(e)) from None
        settings = cls(**values)
        settings._check()
        return settings

    def _check(self) -> None:
        if self.db_pool_min > self.db_pool_max:
            raise SettingsError(
                "DB_POOL_MIN", f"{self.db_pool_min} exceeds DB_POOL_MAX ({self.db_pool_max})"
            )
        if self.claim_idle_ms < 3 * self.batch_max_wait_ms:
            # Entries still being collected into a batch must not look abandoned to replicas.
            raise SettingsError(
                "CLAIM_IDLE_MS",
                f"{self.claim_idle_ms} is under 3 x BATCH_MAX_WAIT_MS ({self.batch_max_wait_ms})",
            )
        if self.ws_enabled and self.ws_port == self.http_port:
            raise SettingsError("WS_PORT", f"{self.ws_port} is already HTTP_PORT")
        if self.ws_min_update_frequency > self.ws_max_update_frequency:
            raise SettingsError(
                "WS_MIN_UPDATE_FREQUENCY",
                f"{self.ws_min_update_frequency:g}s exceeds WS_MAX_UPDATE_FREQUENCY "
                f"({self.ws_max_update_frequency:g}s)",
            )
        if self.app_env == "production":
            if self.jwt_secret.lower() in PLACEHOLDER_SECRETS:
                raise SettingsError(
                    "JWT_SECRET",
                    "unset or a published placeholder; refused when APP_ENV=production",
                )
            if len(self.jwt_secret.encode()) < 32:
                raise SettingsError(
                    "JWT_SECRET", "shorter than 32 bytes; refused when APP_ENV=production"
                )

    @property
    def database_dsn(self) -> str:
        """libpq-style DSN for asyncpg; the password travels separately, never in logs."""
        return (
            f"postgresql://{self.timescale_user}@{self.timescale_host}:"
            f"{self.timescale_port}/{self.timescale_database}"
        )

    @property
    def redis_url(self) -> str:
        return f"redis://{self.redis_host}:{self.redis_port}/{self.redis_db}"

    def __repr__(self) -> str:
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            shown = "'***'" if f.metadata["secret"] and value else repr(value)
            parts.append(f"{f.name}={shown}")
        return f"Settings({', '.join(parts)})"
