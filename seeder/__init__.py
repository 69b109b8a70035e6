"""Deterministic development data."""
