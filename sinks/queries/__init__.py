"""The reads shared by the analytics API, the WebSocket's snapshots and the worker: series,
current and past values, derived values. Every query is per user and walks an index whose
leading columns are (user_id, time/bucket)."""
