"""Generating one user's rows: a persona's rhythm, growth, noise, posts and one viral post.

Each user follows a persona (seeder/personas.py): activity peaks around its hour of the day
and dips at weekends, visibility grows by a daily factor, counts are Poisson draws around the
persona's means, a post's impressions decay over three days, and the founder has one viral
post. Once a day a profile snapshot records the running totals and the influence score.
Everything is drawn from one `random.Random` per user, seeded by (seed, index), so the same
arguments give the same rows; the order of the draws is therefore part of the output.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from schemas.influence import influence_score
from seeder.personas import PERSONAS, Persona
from seeder.rows import UserRows

__all__ = ["generate_user", "user_ids"]

# (hour index, post id, impressions still to come over the next 72 h, engagement rate)
_Post = tuple[int, str, float, float]


def user_ids(users: int, seed: int) -> list[str]:
    return [f"demo-{PERSONAS[i % len(PERSONAS)].key}-{seed}-{i}" for i in range(users)]


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 30:  # normal approximation: exact sampling would cost O(lam) per draw
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def _rhythm(p: Persona) -> list[float]:
    """Share of a day's activity per UTC hour: a bump around the persona's peak hour."""
    raw = [0.15 + math.exp(-(((h - p.peak_hour + 12) % 24 - 12) ** 2) / 18) for h in range(24)]
    total = sum(raw)
    return [r / total for r in raw]


def _profile_hour(
    rows: UserRows,
    rng: random.Random,
    p: Persona,
    t: datetime,
    visibility: float,
    share: float,
    score: float,
) -> tuple[int, int]:
    """One hour's profile events; returns (views, net connections)."""
    views = _poisson(rng, p.profile_views * visibility)
    if views:
        rows.profile_row(t, "profile_view", views, score)
    found = _poisson(rng, p.search_appearances * visibility)
    if found:
        rows.profile_row(t, "search_appearance", found, score)
    net = _poisson(rng, p.connections_per_day * share)
    if net:
        rows.profile_row(t, "connection_added", net, score)
    if rng.random() < 0.01:
        rows.profile_row(t, "connection_removed", 1, score)
        net -= 1
    if (msgs := _poisson(rng, 1.5 * share)) > 0:
        rows.profile_row(t, "message_received", msgs, score)
    return views, net


def _engagement_hour(
    rows: UserRows, rng: random.Random, posts: list[_Post], now_hour: int, t: datetime
) -> None:
    for posted_hour, post_id, reach, rate in posts:
        age = now_hour - posted_hour
        if not 0 <= age < 72:
            continue
        # Most impressions arrive in the first hours, then decay (shares sum to about 1).
        shown = _poisson(rng, reach * math.exp(-age / 10) / 7.6)
        if not shown:
            continue
        rows.engagement_row(t, "post_impression", shown, post_id)
        for kind, part in (("post_like", 0.75), ("post_comment", 0.15), ("post_share", 0.10)):
            if (n := _poisson(rng, shown * rate * part)) > 0:
                rows.engagement_row(t, kind, n, post_id)


@dataclass(slots=True)
class _Profile:
    """A user's running figures, carried from one day to the next."""

    connections: int
    followers: int
    completeness: float
    total_views: int = 0
    views_per_day: list[int] = field(default_factory=list)
    posts: list[_Post] = field(default_factory=list)  # those still gathering impressions


class _UserDays:
    """One user's generation, a day at a time; the steps keep the original order of draws."""

    def __init__(self, index: int, user: str, seed: int, days: int, until: datetime) -> None:
        self.p = p = PERSONAS[index % len(PERSONAS)]
        # Reproducibility is the point here, not unpredictability.
        self.rng = random.Random(f"{seed}:{index}")  # noqa: S311
        self.rows = UserRows(user, seed)
        self.rhythm = _rhythm(p)
        self.start = until - timedelta(days=days)
        self.days = days
        self.viral_day = int(days * 0.6) if p.key == "founder" else -1
        self.state = _Profile(p.connections, p.followers, p.completeness)

    def day(self, day: int) -> None:
        p, state = self.p, self.state
        day_start = self.start + timedelta(days=day)
        weekend = day_start.weekday() >= 5
        scale = (1 + p.growth_per_day) ** day * (p.weekend_factor if weekend else 1.0)
        score = self._snapshot(day_start)
        if day == self.days // 2:
            state.completeness = min(100.0, state.completeness + 8)
            self.rows.profile_row(
                day_start + timedelta(hours=10),
                "profile_update",
                1,
                score,
                profile_completeness=round(state.completeness, 1),
            )
        self._maybe_post(day, day_start, weekend)
        day_views = self._hours(day, day_start, scale, score)
        state.posts = [x for x in state.posts if day * 24 + 24 - x[0] < 72]
        state.views_per_day.append(day_views)
        state.total_views += day_views
        state.followers += _poisson(self.rng, state.followers * 0.002 + 1)
        state.completeness = min(100.0, state.completeness + 0.05)

    def _snapshot(self, day_start: datetime) -> float:
        """The day's profile snapshot; returns the influence score it carries."""
        state = self.state
        score = influence_score(
            connections=state.connections,
            profile_views_7d=sum(state.views_per_day[-7:]),
            engagement_rate=self.p.engagement_rate,
            profile_completeness=state.completeness,
        )
        self.rows.profile_row(
            day_start + timedelta(minutes=5),
            "profile_snapshot",
            1,
            score,
            profile_views=state.total_views,
            connections=state.connections,
            followers=state.followers,
            profile_completeness=round(state.completeness, 1),
        )
        return score

    def _maybe_post(self, day: int, day_start: datetime, weekend: bool) -> None:
        p, rng = self.p, self.rng
        viral = day == self.viral_day
        if viral or rng.random() < p.posts_per_week / 7 * (p.weekend_factor if weekend else 1.0):
            post_id = f"post-{self.rows.user}-{day}"
            reach = p.impressions_per_post * (12 if viral else rng.uniform(0.6, 1.5))
            rate = p.engagement_rate * (1.8 if viral else rng.uniform(0.7, 1.3))
            self.state.posts.append((day * 24 + p.peak_hour, post_id, reach, rate))
            self.rows.engagement_row(
                day_start + timedelta(hours=p.peak_hour), "post_published", 1, post_id
            )

    def _hours(self, day: int, day_start: datetime, scale: float, score: float) -> int:
        """The day's 24 hours of profile and post activity; returns the day's profile views."""
        rows, rng, rhythm, state = self.rows, self.rng, self.rhythm, self.state
        day_views = 0
        for hour in range(24):
            t = day_start + timedelta(hours=hour, minutes=rng.randrange(60))
            views, added = _profile_hour(
                rows, rng, self.p, t, scale * rhythm[hour], rhythm[hour], score
            )
            day_views += views
            state.connections += added
            _engagement_hour(rows, rng, state.posts, day * 24 + hour, t)
        return day_views


def generate_user(index: int, user: str, seed: int, days: int, until: datetime) -> UserRows:
    """Every row of one user, deterministic for (seed, index, days, until)."""
    user_days = _UserDays(index, user, seed, days, until)
    for day in range(days):
        user_days.day(day)
    return user_days.rows
