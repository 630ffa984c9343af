"""The view kept in the URL: presets, custom periods, and links with mistakes in them."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from app.periods import BadParameter
from dashboards.app import view_from_controls
from dashboards.view import View, period_dates, view_from_query

TODAY = date(2026, 5, 20)


@pytest.mark.parametrize(
    ("period", "start"),
    [
        ("today", date(2026, 5, 20)),
        ("7d", date(2026, 5, 14)),
        ("30d", date(2026, 4, 21)),
        ("90d", date(2026, 2, 20)),
        ("mtd", date(2026, 5, 1)),
        ("qtd", date(2026, 4, 1)),
        ("ytd", date(2026, 1, 1)),
    ],
)
def test_presets_end_with_today_included(period: str, start: date) -> None:
    assert period_dates(period, TODAY) == (start, date(2026, 5, 21))


def test_a_view_survives_the_round_trip_through_its_url() -> None:
    view = View("custom", "Europe/Paris", "week", ("api", "=odd&name"), date(2026, 1, 1),
                date(2026, 2, 1))  # fmt: skip
    parsed, problems = view_from_query(view.to_query(), "UTC")
    assert (parsed, problems) == (view, [])


def test_a_link_with_mistakes_still_opens_and_says_what_was_ignored() -> None:
    view, problems = view_from_query("?period=fortnight&tz=Mars/Olympus&granularity=minute", "UTC")
    assert view == View("30d", "UTC", "day")
    assert len(problems) == 3
    assert "fortnight" in problems[0] and "Mars/Olympus" in problems[1]

    view, problems = view_from_query("?period=custom&start=2026-02-01&end=2026-01-01", "UTC")
    assert view.period == "30d" and "end after start" in problems[0]


def test_the_filter_is_cut_in_the_views_zone() -> None:
    view = View("today", "America/New_York", "hour")
    # 02:00 UTC on the 21st is still the 20th in New York.
    f = view.metrics_filter(datetime(2026, 5, 21, 2, 0, tzinfo=UTC))
    assert f.start == datetime(2026, 5, 20, 4, 0, tzinfo=UTC)
    assert f.end == datetime(2026, 5, 21, 4, 0, tzinfo=UTC)


def test_a_too_fine_granularity_is_refused_naming_the_field() -> None:
    view = View("custom", "UTC", "hour", start=date(2020, 1, 1), end=date(2026, 1, 1))
    with pytest.raises(BadParameter) as caught:
        view.metrics_filter(datetime(2026, 5, 21, tzinfo=UTC))
    assert caught.value.field == "granularity"


def test_picking_dates_makes_the_period_custom_with_the_end_day_included() -> None:
    view = view_from_controls("dates", "7d", "2026-03-01", "2026-03-31", ["api"], "day", "UTC",
                              "UTC")  # fmt: skip
    assert view == View("custom", "UTC", "day", ("api",), date(2026, 3, 1), date(2026, 4, 1))


def test_picking_a_period_picks_a_granularity_that_suits_it() -> None:
    view = view_from_controls("period", "today", None, None, None, "month", None, "UTC")
    assert (view.period, view.granularity) == ("today", "hour")
