"""What writes to the outside world: TimescaleDB and notification channels."""
