"""Ingest: `POST /ingest/event(s)` checks events and appends them to the partition streams
(`routes.py`), through the group-commit appender (`appender.py`); `?wait=true` follows each
event to its row or its dead letter (`wait.py`)."""
