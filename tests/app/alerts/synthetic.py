"""Synthetic daily series for the trend-alert tests: a level, a weekly pattern, noise, and an
optional lasting change from a given day on."""

from __future__ import annotations

import random
from datetime import date, timedelta
from decimal import Decimal

START = date(2026, 3, 2)  # a Monday
DAYS = 90
LAST = START + timedelta(days=DAYS - 1)


def daily_series(
    *,
    seed: int,
    level: float = 1000.0,
    noise: float = 0.15,
    weekend: float = 0.6,
    change_on: int | None = None,
    factor: float = 1.0,
    days: int = DAYS,
) -> dict[date, Decimal | None]:
    """Day i: level x (weekend on Saturdays and Sundays) x uniform(1 - noise, 1 + noise),
    times `factor` from day `change_on` on; rounded to the cent like presented figures."""
    rng = random.Random(seed)
    series: dict[date, Decimal | None] = {}
    for i in range(days):
        day = START + timedelta(days=i)
        value = level * (weekend if day.weekday() >= 5 else 1.0)
        value *= 1 + rng.uniform(-noise, noise)
        if change_on is not None and i >= change_on:
            value *= factor
        series[day] = Decimal(f"{value:.2f}")
    return series
