"""The influence score: one number 0-100 for how visible and engaging a profile is.

    score = 100 * (0.30 * sat(connections, 500)
                 + 0.25 * sat(profile_views_7d, 150)
                 + 0.25 * sat(engagement_rate, 0.03)
                 + 0.20 * clamp(profile_completeness / 100))

    sat(x, half) = x / (x + half)   for x >= 0: 0 at 0, 1/2 at `half`, approaching 1

Each term rises with its input and saturates, so no single figure can dominate and the score
stays below 100. The half-points are typical LinkedIn figures: 500 connections, 150 profile
views a week, a 3% engagement rate. The score is a pure function of the current values, which
the worker reads from TimescaleDB after each commit, so replaying a batch gives the same score.
See docs/influence.md for a worked example.
"""

from __future__ import annotations

from typing import Final

__all__ = ["WEIGHTS", "influence_score"]

WEIGHTS: Final = {
    "connections": 0.30,
    "profile_views": 0.25,
    "engagement": 0.25,
    "completeness": 0.20,
}
HALF_CONNECTIONS: Final = 500.0
HALF_VIEWS_7D: Final = 150.0
HALF_ENGAGEMENT_RATE: Final = 0.03


def _sat(x: float, half: float) -> float:
    x = max(x, 0.0)
    return x / (x + half)


def influence_score(
    *,
    connections: float,
    profile_views_7d: float,
    engagement_rate: float,
    profile_completeness: float,
) -> float:
    score = 100.0 * (
        WEIGHTS["connections"] * _sat(connections, HALF_CONNECTIONS)
        + WEIGHTS["profile_views"] * _sat(profile_views_7d, HALF_VIEWS_7D)
        + WEIGHTS["engagement"] * _sat(engagement_rate, HALF_ENGAGEMENT_RATE)
        + WEIGHTS["completeness"] * min(max(profile_completeness, 0.0), 100.0) / 100.0
    )
    return round(score, 2)
