"""Ingest: `POST /ingest/event(s)` (`routes.py`) reads a request the same way for both routes
(`intake.py`), checks each event (`checks.py`, ids from `ids.py`) and appends it to its
partition stream through the group-commit appender (`appender.py`, running `append_script.py`
over a `packing.py` connection); `?wait=true` follows each event to its row or its dead
letter (`wait.py`)."""
