"""The error tree every process shares.

    AnalyticsError
    ├── SettingsError        a configuration variable is missing or malformed (fails at start)
    ├── ServicesError        local Redis / PostgreSQL / TimescaleDB could not be provided
    └── MigrationError       the schema cannot be brought to the requested state
        ├── MigrationChecksumError   an applied migration file was edited afterwards
        └── MigrationMissingObjectError  an object an applied migration creates is gone

Each error carries the data a caller needs to act on it, not only a message.
"""

from __future__ import annotations

__all__ = [
    "AnalyticsError",
    "MigrationChecksumError",
    "MigrationError",
    "MigrationMissingObjectError",
    "ServicesError",
    "SettingsError",
]


class AnalyticsError(Exception):
    """Base of every error this project raises on purpose."""


class SettingsError(AnalyticsError):
    """A configuration variable has a value the process cannot run with."""

    def __init__(self, variable: str, problem: str) -> None:
        self.variable = variable
        self.problem = problem
        super().__init__(f"{variable}: {problem}")


class ServicesError(AnalyticsError):
    """Providing a local service failed; `step` names what was being done."""

    def __init__(self, step: str, detail: str) -> None:
        self.step = step
        self.detail = detail
        super().__init__(f"{step}: {detail}")


class MigrationError(AnalyticsError):
    """The migration runner cannot reach the requested schema version."""


class MigrationChecksumError(MigrationError):
    """An applied migration's file no longer matches the checksum recorded when it ran."""

    def __init__(self, version: int, name: str, recorded: str, current: str) -> None:
        self.version = version
        self.name = name
        self.recorded = recorded
        self.current = current
        super().__init__(
            f"migration {version:04d} ({name}) was edited after it was applied: "
            f"recorded checksum {recorded[:12]}, file now {current[:12]}"
        )


class MigrationMissingObjectError(MigrationError):
    """A relation that an applied migration created no longer exists."""

    def __init__(self, missing: list[str]) -> None:
        self.missing = missing
        super().__init__("expected database objects are missing: " + ", ".join(missing))
