"""What operators call: health and readiness probes, /status, /metrics, the admin routes
(migrations, dead letters, seeding), the OpenAPI document, and the process's own samples."""
