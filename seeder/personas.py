"""Who the development data is about: distinct LinkedIn personas with their own rhythms.

Figures are per day unless named otherwise; the generator adds weekly and daily rhythm,
growth and noise around them, deterministically for a given seed.
"""

from __future__ import annotations

from typing import Final

import msgspec

__all__ = ["PERSONAS", "Persona"]


class Persona(msgspec.Struct, frozen=True):
    key: str
    title: str
    profile_views: float  # mean per day at the start
    search_appearances: float
    connections: int  # at the start
    connections_per_day: float
    followers: int
    completeness: float  # percent at the start; rises over the period
    posts_per_week: float
    impressions_per_post: float
    engagement_rate: float  # interactions / impressions
    growth_per_day: float  # multiplicative drift of visibility, e.g. 0.01 = +1 %/day
    weekend_factor: float  # activity on Saturday and Sunday relative to weekdays
    peak_hour: int  # UTC hour of most activity


PERSONAS: Final[tuple[Persona, ...]] = (
    Persona(
        "recruiter",
        "Technical recruiter",
        85,
        140,
        2400,
        6.0,
        900,
        95,
        3.0,
        1800,
        0.018,
        0.004,
        0.25,
        9,
    ),
    Persona(
        "job_seeker",
        "Job seeker, data analyst",
        22,
        45,
        310,
        2.5,
        120,
        70,
        1.5,
        600,
        0.035,
        0.015,
        0.6,
        14,
    ),
    Persona(
        "founder", "Start-up founder", 60, 70, 1500, 3.0, 4200, 88, 4.0, 5200, 0.042, 0.008, 0.7, 7
    ),
    Persona(
        "engineer",
        "Senior software engineer",
        30,
        55,
        650,
        1.2,
        300,
        80,
        0.7,
        900,
        0.028,
        0.002,
        0.4,
        17,
    ),
    Persona(
        "marketer", "Growth marketer", 45, 90, 1100, 2.0, 2600, 92, 5.0, 3100, 0.031, 0.006, 0.5, 11
    ),
)
