"""The trend detector on synthetic series: real changes are caught within the documented delay
(docs/alerts.md), noise, weekly patterns and small streams are not flagged."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import pytest

from app.alerts.detect import Alert, Metric, detect_alerts, ratio_is_material
from tests.app.alerts.synthetic import LAST, START, daily_series

# docs/alerts.md: a lasting drop of 40 % with +-15 % daily noise is detected by its 4th day
# (on its 2nd in most series).
DETECTION_DELAY_DAYS = 4
MIN_CHANGE = Decimal(10)  # ROI_ALERT_MIN_DAILY_CHANGE's default
CHANGE_ON = 62  # day index of the change: late enough for a full baseline and quiet period
SEEDS = range(12)


def detect(
    series: dict[date, Decimal | None],
    *,
    metric: Metric = "margin",
    first_day: date = START,
    last_day: date = LAST,
    min_change: Decimal = MIN_CHANGE,
) -> list[Alert]:
    return detect_alerts(
        "api",
        metric,
        series,
        first_day=first_day,
        last_day=last_day,
        min_change=min_change,
        currency="usd",
    )


def day(index: int) -> date:
    return START + timedelta(days=index)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_lasting_margin_drop_of_40_percent_is_caught_within_the_documented_delay(
    seed: int,
) -> None:
    change_on = CHANGE_ON + seed % 7  # every weekday
    series = daily_series(seed=seed, change_on=change_on, factor=0.6)

    (alert,) = detect(series)

    assert (alert.metric, alert.direction) == ("margin", "drop")
    delay = (alert.detected_on - day(change_on)).days + 1
    assert 1 <= delay <= DETECTION_DELAY_DAYS
    assert abs((alert.change_started_on - day(change_on)).days) <= 1
    assert alert.relative_change is not None
    assert Decimal("-0.55") < alert.relative_change < Decimal("-0.25")
    assert alert.change == alert.recent_value - alert.baseline_value
    assert "Margin of stream 'api' dropped" in alert.message


@pytest.mark.parametrize("seed", SEEDS)
def test_noise_and_a_weekly_pattern_are_not_flagged(seed: int) -> None:
    series = daily_series(seed=seed, noise=0.15, weekend=0.6)

    assert detect(series) == []


@pytest.mark.parametrize("seed", SEEDS)
def test_noise_without_a_weekly_pattern_is_not_flagged(seed: int) -> None:
    assert detect(daily_series(seed=1000 + seed, weekend=1.0)) == []


def test_a_small_streams_tiny_absolute_changes_are_not_flagged() -> None:
    # 3.00 a day halving is a large relative change but 1.50 a day: under the minimum.
    small = daily_series(seed=7, level=3.0, change_on=CHANGE_ON, factor=0.5)
    assert detect(small) == []
    # The same shape at 1,000 a day is an alert: it is the size that keeps the small one quiet.
    large = daily_series(seed=7, level=1000.0, change_on=CHANGE_ON, factor=0.5)
    assert [a.direction for a in detect(large)] == ["drop"]


def test_a_change_under_the_minimum_relative_change_is_not_flagged() -> None:
    # 15 % lower from day 62, with almost no noise: clear statistically, too small to matter.
    series = daily_series(seed=3, noise=0.01, change_on=CHANGE_ON, factor=0.85)
    assert detect(series) == []


def test_a_rise_is_not_a_drop() -> None:
    series = daily_series(seed=5, change_on=CHANGE_ON, factor=1.6)

    (alert,) = detect(series)

    assert alert.direction == "rise"
    assert alert.relative_change is not None and alert.relative_change > 0
    assert "rose" in alert.message


def test_revenue_stopping_altogether_is_a_drop() -> None:
    series = daily_series(seed=11, change_on=CHANGE_ON, factor=0.0)

    (alert,) = detect(series, metric="net_revenue")

    assert alert.direction == "drop"
    assert alert.recent_value == 0
    assert alert.relative_change == -1
    assert (alert.detected_on - day(CHANGE_ON)).days + 1 <= 2


def test_one_bad_day_is_not_an_alert() -> None:
    series = daily_series(seed=2)
    series[day(70)] = Decimal(0)
    assert detect(series) == []


def test_a_lasting_change_is_told_once_then_becomes_the_baseline() -> None:
    # Changed on day 40: alarm for a few weeks, then the new level fills the baseline.
    series = daily_series(seed=4, change_on=49, factor=0.5)
    alerts = detect(series)
    assert [(a.metric, a.direction) for a in alerts] == [("margin", "drop")]


def test_ratio_days_without_a_value_are_skipped_not_zero() -> None:
    # ROI with no value every third day (no cost that day): neither a drop nor noise.
    roi = daily_series(seed=8, level=2.0, weekend=1.0)
    for i in range(0, 90, 3):
        roi[day(i)] = None
    assert detect(roi, metric="roi", min_change=Decimal("0.10")) == []

    roi_dropping = daily_series(seed=8, level=2.0, weekend=1.0, change_on=CHANGE_ON, factor=0.5)
    for i in range(0, 90, 3):
        roi_dropping[day(i)] = None
    (alert,) = detect(roi_dropping, metric="roi", min_change=Decimal("0.10"))
    assert (alert.metric, alert.direction) == ("roi", "drop")
    assert "ROI of stream 'api' dropped" in alert.message


def test_too_little_history_is_not_judged() -> None:
    # 40 days of a stream that then halves: not enough days for a baseline and a quiet period.
    series = daily_series(seed=9, days=40, change_on=36, factor=0.5)
    assert detect(series, last_day=day(39)) == []


def test_a_days_verdict_does_not_depend_on_where_the_range_starts() -> None:
    series = daily_series(seed=6, change_on=CHANGE_ON, factor=0.5)
    whole = detect(series)
    later = detect(series, first_day=day(10))
    assert whole == later and len(whole) == 1


def test_days_without_any_activity_make_a_stream_too_sparse_to_judge() -> None:
    # Revenue on two days a week only: the daily method cannot tell a drop from a quiet week.
    series = daily_series(seed=10, change_on=CHANGE_ON, factor=0.3)
    for d in list(series):
        if d.weekday() not in (1, 4):
            series[d] = Decimal(0)
    assert detect(series) == []


def test_a_ratio_is_judged_only_for_streams_with_material_money_behind_it() -> None:
    cost = {d: v or Decimal(0) for d, v in daily_series(seed=1, level=12.0).items()}
    assert ratio_is_material(cost, MIN_CHANGE)
    tiny = {d: v or Decimal(0) for d, v in daily_series(seed=1, level=0.5).items()}
    assert not ratio_is_material(tiny, MIN_CHANGE)
    assert not ratio_is_material({}, MIN_CHANGE)
