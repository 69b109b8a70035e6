"""One JSON formatter, configured once by the command line: one object per line.

Request-scoped context (the gateway's request id) lives in a `ContextVar`, set once per request
by a middleware; `ContextFilter` copies it onto every record logged while that request is
handled, whichever module logs, so no call site has to pass it along.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import IO, Any

import orjson

__all__ = [
    "LOG_CONTEXT",
    "ContextFilter",
    "JsonFormatter",
    "bind_log_context",
    "configure_logging",
    "json_handler",
]

# Attributes every LogRecord has; anything else came from `extra=` and is context worth keeping.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
# Context fields of the current task (request_id, ...). Immutable mappings, replaced not
# mutated, so a task spawned inside a request keeps the snapshot it was created with.
LOG_CONTEXT: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "log_context", default=MappingProxyType({})
)
# Credentials must never reach a log line, even when a caller passes them by mistake.
_SECRET_KEYS = frozenset({"authorization", "token", "password", "secret", "jwt", "cookie"})


def bind_log_context(**fields: Any) -> contextvars.Token[Mapping[str, Any]]:
    """Add fields to the current context; `LOG_CONTEXT.reset(token)` restores the previous."""
    return LOG_CONTEXT.set({**LOG_CONTEXT.get(), **fields})


class ContextFilter(logging.Filter):
    """Stamps the current context's fields onto each record (a field given in `extra=` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in LOG_CONTEXT.get().items():
            if key not in record.__dict__:
                setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = "***" if key.lower() in _SECRET_KEYS else value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def json_handler(stream: IO[str] | None = None) -> logging.Handler:
    """A handler writing JSON lines with the context fields (stderr by default)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    return handler


def configure_logging(level: str) -> None:
    handler = json_handler()
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
