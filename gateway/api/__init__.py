"""The analytics REST API under /api/v1: metrics, summary, catalogue, activity feed,
aggregations, goals and system performance, with a per-user Redis cache of hot answers."""
