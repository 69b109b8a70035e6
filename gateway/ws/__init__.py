"""The WebSocket service on /ws and WS_PORT: one reader of `ia:metrics` and `ia:alerts` per
process (`fanout.py`), fanned out to sessions (`session.py`) that subscribe, coalesce, resume
and receive snapshots."""
