"""Settings: defaults, every variable's bad values name the variable, production refusals."""

from __future__ import annotations

import subprocess
import sys

import pytest

from schemas.errors import SettingsError
from schemas.settings import PLACEHOLDER_SECRETS, Settings, parse_duration

STRONG_SECRET = "s" * 48


def test_defaults_match_the_documented_ones() -> None:
    s = Settings.from_env({})
    assert (s.http_port, s.ws_port, s.ws_heartbeat_interval) == (3004, 3007, 30000)
    assert s.ws_enabled is True
    assert s.dedup_window == 600.0
    assert s.timescale_port == 5432 and s.redis_port == 6379


def test_values_are_parsed_into_their_types() -> None:
    s = Settings.from_env(
        {
            "WS_ENABLED": "false",
            "HTTP_PORT": "8080",
            "DEDUP_WINDOW": "15m",
            "CORS_ORIGINS": "https://a.example, https://b.example",
            "BATCH_MAX_ROWS": "20_000",
        }
    )
    assert s.ws_enabled is False
    assert s.http_port == 8080
    assert s.dedup_window == 900.0
    assert s.cors_origins == ("https://a.example", "https://b.example")
    assert s.batch_max_rows == 20000


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TIMESCALE_PORT", "abc"),
        ("TIMESCALE_PORT", "0"),
        ("REDIS_PORT", "70000"),
        ("HTTP_PORT", "-1"),
        ("WS_PORT", "3.5"),
        ("WS_ENABLED", "maybe"),
        ("WS_HEARTBEAT_INTERVAL", "10"),
        ("APP_ENV", "staging"),
        ("LOG_LEVEL", "loud"),
        ("STREAM_PARTITIONS", "0"),
        ("BATCH_MAX_ROWS", "many"),
        ("BATCH_MAX_WAIT_MS", "0"),
        ("CLAIM_IDLE_MS", "5"),
        ("MAX_DELIVERIES", "0"),
        ("INGEST_MAX_BACKLOG", "0"),
        ("INGEST_MAX_BATCH", "x"),
        ("INGEST_MAX_BYTES", "10"),
        ("DEDUP_WINDOW", "ten minutes"),
        ("DEDUP_WINDOW", "30d"),
        ("RETENTION_DAYS", "0"),
        ("REDIS_DB", "16"),
        ("TIMESCALE_HOST", "   "),
        ("PERF_SAMPLE_INTERVAL", "0"),
    ],
)
def test_each_bad_value_names_its_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({variable: value})
    assert caught.value.variable == variable
    assert str(caught.value).startswith(f"{variable}: ")
    assert repr(value.strip()) in str(caught.value) or value.strip() in str(caught.value)


def test_cross_field_rules() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"DB_POOL_MIN": "20", "DB_POOL_MAX": "5"})
    assert caught.value.variable == "DB_POOL_MIN"
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"WS_PORT": "3004"})
    assert caught.value.variable == "WS_PORT"
    assert Settings.from_env({"WS_PORT": "3004", "WS_ENABLED": "false"}).ws_port == 3004


@pytest.mark.parametrize("secret", sorted(PLACEHOLDER_SECRETS) + ["short-but-unique"])
def test_production_refuses_placeholder_or_weak_jwt_secret(secret: str) -> None:
    env = {"APP_ENV": "production"}
    if secret:
        env["JWT_SECRET"] = secret
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    assert caught.value.variable == "JWT_SECRET"


def test_production_accepts_a_strong_secret_and_development_the_placeholder() -> None:
    assert Settings.from_env({"APP_ENV": "production", "JWT_SECRET": STRONG_SECRET}).jwt_secret
    assert Settings.from_env({}).app_env == "development"


def test_repr_redacts_secrets() -> None:
    s = Settings.from_env(
        {"JWT_SECRET": STRONG_SECRET, "TIMESCALE_PASSWORD": "pg-pass", "REDIS_PASSWORD": "rd-pass"}
    )
    text = repr(s)
    for secret in (STRONG_SECRET, "pg-pass", "rd-pass"):
        assert secret not in text
    assert "jwt_secret='***'" in text and "http_port=3004" in text


@pytest.mark.parametrize(
    ("raw", "seconds"), [("600", 600.0), ("10m", 600.0), ("250ms", 0.25), ("1.5h", 5400.0)]
)
def test_parse_duration(raw: str, seconds: float) -> None:
    assert parse_duration(raw) == seconds


def test_command_line_stops_at_start_naming_the_variable() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "token", "--user", "u"],
        env={"WS_HEARTBEAT_INTERVAL": "fast", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "WS_HEARTBEAT_INTERVAL" in proc.stderr
    assert proc.stdout == ""
