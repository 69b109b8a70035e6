"""The Redis Streams runtime, its stages, and the `analytics` command line."""
