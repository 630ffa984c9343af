"""Trend alerts: a change in a stream's daily figures against its own recent baseline.

A pure function of daily series; no database, no clock. The method and the reasoning behind
every parameter are in docs/alerts.md. In short, for each day t of a series:

1. Baseline: the BASELINE_DAYS days that end WINDOW_DAYS before t. Each day's expected value is
   the median of the baseline's same weekdays (weekly seasonality), and the spread is the MAD of
   the baseline's deviations from those medians (robust: one odd day moves neither), floored.
2. Each of the last WINDOW_DAYS days is standardised against its expected value, z clipped to
   +-Z_CLIP so that no single day, however odd, raises an alert on its own.
3. One-sided CUSUM over those days (reference K, decision threshold H): the strongest evidence of
   a change that started within the window. The change start is estimated within that run by
   the generalised likelihood ratio of a shift; the "changed days" run from it to t.
4. The day is in alarm when the CUSUM exceeds H and the change over the changed days is
   material: at
   least MIN_RELATIVE_CHANGE of the expected value and at least the metric's minimum absolute
   change (money: a setting in the reporting currency per day; ratios: MIN_RATIO_CHANGE).
5. An alert is raised on the first day in alarm after QUIET_DAYS without one, for that stream,
   metric and direction: a lasting change is told once, and is the new normal once it fills
   the baseline.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from statistics import median
from typing import Literal

from app.money import exponent

Metric = Literal["net_revenue", "margin", "roi"]
Direction = Literal["drop", "rise"]

METRICS: tuple[Metric, ...] = ("net_revenue", "margin", "roi")
MONEY_METRICS: frozenset[Metric] = frozenset({"net_revenue", "margin"})
DIRECTIONS: tuple[Direction, ...] = ("drop", "rise")

BASELINE_DAYS = 28  # four of each weekday: enough for a median per weekday
MIN_BASELINE_DAYS = 14  # days with a non-zero value (of 28) needed to judge a stream at all
WINDOW_DAYS = 7  # how far back a change may start and still be detected (CUSUM memory)
QUIET_DAYS = 14  # an alert is raised only after this many days without alarm
K = Decimal("1.0")  # CUSUM reference: half the shift (in spreads) we most want to catch fast
H = Decimal("4.0")  # CUSUM decision threshold
Z_CLIP = Decimal("4.0")  # a day adds at most Z_CLIP - K = 3 < H: one day never alerts alone
MAD_TO_SIGMA = Decimal("1.4826")  # MAD of a normal distribution times this is its sigma
SPREAD_FLOOR = Decimal("0.10")  # spread at least 10 % of the baseline median's size
MIN_RELATIVE_CHANGE = Decimal("0.20")  # ignore changes under 20 % of the expected value
MIN_RATIO_CHANGE = Decimal("0.10")  # ROI: ignore changes under 0.10 (10 points)
# A day's history must reach this far back for an alarm, and an alert needs QUIET_DAYS before.
HISTORY_DAYS = BASELINE_DAYS + WINDOW_DAYS + QUIET_DAYS

LABELS: dict[Metric, str] = {"net_revenue": "Net revenue", "margin": "Margin", "roi": "ROI"}


@dataclass(frozen=True)
class Alert:
    stream: str
    metric: Metric
    direction: Direction
    detected_on: date  # the last day of data that made the alarm
    change_started_on: date  # estimated first changed day (likelihood ratio within the CUSUM run)
    baseline_value: Decimal  # mean expected value over the changed days (per day)
    recent_value: Decimal  # mean observed value over the changed days (per day)
    change: Decimal  # recent - baseline
    relative_change: Decimal | None  # change / |baseline|; None when the baseline is 0
    currency: str | None  # reporting currency of money metrics; None for ROI
    message: str


@dataclass(frozen=True)
class _Alarm:
    started_on: date
    expected: Decimal
    observed: Decimal


def detect_alerts(
    stream: str,
    metric: Metric,
    series: Mapping[date, Decimal | None],
    *,
    first_day: date,
    last_day: date,
    min_change: Decimal,
    currency: str | None = None,
) -> list[Alert]:
    """Alerts for one stream's daily `metric` over [first_day, last_day].

    `series` maps days to values; a day absent or None has no value (a ratio whose denominator
    was 0). Money metrics should give days without activity as 0: no revenue is a fact, not a
    gap. `min_change` is the smallest absolute change per day worth an alert (in the series'
    unit). Alerts are only raised for days with HISTORY_DAYS of history inside the range, so
    the answer for a day does not depend on where the range starts.
    """
    alerts: list[Alert] = []
    for direction in DIRECTIONS:
        last_alarm: date | None = None
        day = first_day + timedelta(days=BASELINE_DAYS + WINDOW_DAYS)
        while day <= last_day:
            alarm = _alarm(series, day, direction, min_change)
            if alarm is not None:
                quiet = last_alarm is None or (day - last_alarm).days > QUIET_DAYS
                judged_quiet = (day - first_day).days >= HISTORY_DAYS
                if quiet and judged_quiet:
                    alerts.append(_alert(stream, metric, direction, day, alarm, currency))
                last_alarm = day
            day += timedelta(days=1)
    alerts.sort(key=lambda a: (a.detected_on, a.metric, a.direction))
    return alerts


def _alarm(
    series: Mapping[date, Decimal | None], day: date, direction: Direction, min_change: Decimal
) -> _Alarm | None:
    """The alarm state of one day, from the BASELINE_DAYS + WINDOW_DAYS days ending on it."""
    window_start = day - timedelta(days=WINDOW_DAYS - 1)
    baseline_days = [window_start - timedelta(days=i) for i in range(BASELINE_DAYS, 0, -1)]
    baseline = {d: v for d in baseline_days if (v := series.get(d)) is not None}
    if sum(1 for v in baseline.values() if v != 0) < MIN_BASELINE_DAYS:
        return None
    overall = median(baseline.values())
    by_weekday: dict[int, list[Decimal]] = {}
    for d, v in baseline.items():
        by_weekday.setdefault(d.weekday(), []).append(v)
    # A weekday seen fewer than twice in the baseline has no median of its own worth trusting.
    expected_by_weekday = {wd: median(vs) for wd, vs in by_weekday.items() if len(vs) >= 2}

    def expected(d: date) -> Decimal:
        return expected_by_weekday.get(d.weekday(), overall)

    deviations = [abs(v - expected(d)) for d, v in baseline.items()]
    spread = max(
        MAD_TO_SIGMA * median(deviations),
        SPREAD_FLOOR * abs(overall),
        min_change / 2,  # a baseline at 0 with no spread must not make every cent a signal
    )
    sign = -1 if direction == "drop" else 1
    # The window's CUSUM started at 0 equals the largest sum of (sign * z - K) over the runs of
    # days ending today. Within the run reaching it, the change is estimated to start where the
    # generalised likelihood ratio of a shift is largest, (sum of z)^2 / days: unlike the run's
    # start, it does not pull in the mildly unlucky days just before a change.
    cusum, run_start, suffix = Decimal(0), day, Decimal(0)
    glr: list[tuple[date, Decimal]] = []  # (start, GLR) for every start from today back
    z_sum, n = Decimal(0), 0
    for i in range(WINDOW_DAYS):
        d = day - timedelta(days=i)
        value = series.get(d)
        if value is None:
            continue  # no value (ROI without cost): no evidence either way
        z = max(-Z_CLIP, min(Z_CLIP, (value - expected(d)) / spread))
        suffix += sign * z - K
        if suffix > cusum:
            cusum, run_start = suffix, d
        z_sum, n = z_sum + sign * z, n + 1
        glr.append((d, z_sum * z_sum / n if z_sum > 0 else Decimal(0)))
    if cusum <= H:
        return None
    # Ties go to the later start: the shorter claim.
    started_on = max((g for g in glr if g[0] >= run_start), key=lambda g: (g[1], g[0]))[0]
    run = [
        (d, v)
        for i in range((day - started_on).days + 1)
        if (v := series.get(d := started_on + timedelta(days=i))) is not None
    ]
    expected_mean = sum((expected(d) for d, _ in run), Decimal(0)) / len(run)
    observed_mean = sum((v for _, v in run), Decimal(0)) / len(run)
    change = observed_mean - expected_mean
    if sign * change <= 0 or abs(change) < min_change:
        return None
    if abs(change) < MIN_RELATIVE_CHANGE * abs(expected_mean):
        return None
    return _Alarm(started_on=started_on, expected=expected_mean, observed=observed_mean)


def _alert(
    stream: str,
    metric: Metric,
    direction: Direction,
    day: date,
    alarm: _Alarm,
    currency: str | None,
) -> Alert:
    change = alarm.observed - alarm.expected
    relative = None if alarm.expected == 0 else change / abs(alarm.expected)
    return Alert(
        stream=stream,
        metric=metric,
        direction=direction,
        detected_on=day,
        change_started_on=alarm.started_on,
        baseline_value=alarm.expected,
        recent_value=alarm.observed,
        change=change,
        relative_change=relative,
        currency=currency,
        message=describe(
            stream, metric, direction, alarm.started_on, day, alarm, relative, currency
        ),
    )


def _figure(value: Decimal, metric: Metric, currency: str | None) -> str:
    if metric in MONEY_METRICS:
        places = exponent(currency) if currency else 2
        return f"{value:,.{places}f}" + (f" {currency}" if currency else "") + " a day"
    return f"{value:.2f}"


def describe(
    stream: str,
    metric: Metric,
    direction: Direction,
    started_on: date,
    detected_on: date,
    alarm: _Alarm,
    relative: Decimal | None,
    currency: str | None,
) -> str:
    """The sentence a person reads on the dashboard and in Slack."""
    verb = "dropped" if direction == "drop" else "rose"
    by = f" {abs(relative):.0%}" if relative is not None else ""
    days = (detected_on - started_on).days + 1
    since = f"since {started_on.isoformat()} ({days} day{'s' if days > 1 else ''})"
    return (
        f"{LABELS[metric]} of stream {stream!r} {verb}{by} {since}: "
        f"{_figure(alarm.observed, metric, currency)} against "
        f"{_figure(alarm.expected, metric, currency)} expected from the same weekdays "
        f"of the previous {BASELINE_DAYS // 7} weeks."
    )


def ratio_is_material(daily_denominator: Mapping[date, Decimal], min_change: Decimal) -> bool:
    """Whether a stream's ratio (ROI: margin / cost) is worth judging: its typical day's
    denominator (the median, days without any counted as 0) is at least `min_change`. Below
    that, the ratio of a tiny stream swings by whole units for cents of money."""
    values = list(daily_denominator.values())
    return bool(values) and median(values) >= min_change
