"""What a metrics request asks for, validated: period, zone, granularity and filters."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from app.periods import BadParameter, period, zone

GRANULARITIES = ("hour", "day", "week", "month", "quarter")
MAX_BUCKETS = 20_000  # a series longer than this is a mistake, not a chart


@dataclass(frozen=True)
class MetricsFilter:
    start: datetime  # inclusive, aware
    end: datetime  # exclusive, aware
    tz: ZoneInfo
    granularity: str = "day"
    streams: tuple[str, ...] = ()
    ai_models: tuple[str, ...] = ()
    task_types: tuple[str, ...] = ()

    @property
    def filters_tasks(self) -> bool:
        """Model or task-type filters: costs must come from the detailed task rollup."""
        return bool(self.ai_models or self.task_types)

    def previous(self) -> MetricsFilter:
        """The period of equal length just before this one."""
        length = self.end - self.start
        return MetricsFilter(
            start=self.start - length,
            end=self.start,
            tz=self.tz,
            granularity=self.granularity,
            streams=self.streams,
            ai_models=self.ai_models,
            task_types=self.task_types,
        )


def _clean(values: Sequence[str] | None, field: str) -> tuple[str, ...]:
    cleaned = tuple(dict.fromkeys(v.strip() for v in values or () if v is not None))
    if any(not v for v in cleaned):
        raise BadParameter(field, "must not be empty")
    return cleaned


def build_filter(
    *,
    start: str,
    end: str,
    tz: str,
    granularity: str = "day",
    streams: Sequence[str] | None = None,
    ai_models: Sequence[str] | None = None,
    task_types: Sequence[str] | None = None,
) -> MetricsFilter:
    """Parse and check a request; raises BadParameter naming the field at fault."""
    zone_info = zone(tz)
    if granularity not in GRANULARITIES:
        raise BadParameter("granularity", f"must be one of {', '.join(GRANULARITIES)}")
    lo, hi = period(start, end, zone_info)
    approx = {"hour": 1, "day": 24, "week": 168, "month": 720, "quarter": 2160}[granularity]
    if (hi - lo) / timedelta(hours=approx) > MAX_BUCKETS:
        raise BadParameter("granularity", f"too fine for this period (over {MAX_BUCKETS} buckets)")
    return MetricsFilter(
        start=lo,
        end=hi,
        tz=zone_info,
        granularity=granularity,
        streams=_clean(streams, "stream"),
        ai_models=_clean(ai_models, "ai_model"),
        task_types=_clean(task_types, "task_type"),
    )


def rollups_are_exact(f: MetricsFilter) -> bool:
    """Hourly UTC rollups answer exactly when the period starts and ends on whole UTC hours
    and every bucket boundary in the zone falls on one: zones whose offset is a whole number
    of hours throughout the period (DST included). Otherwise (India, Nepal, Newfoundland,
    Adelaide, Lord Howe...) the raw tables are used."""
    for instant in (f.start, f.end):
        if instant.astimezone(ZoneInfo("UTC")).replace(minute=0, second=0, microsecond=0) != (
            instant
        ):
            return False
    return whole_hour_offsets(f)


def daily_span(f: MetricsFilter, by_bucket: bool) -> tuple[datetime, datetime] | None:
    """The whole UTC days inside the period that daily rollups can answer for, or None.

    Without buckets (a summary) any whole UTC day inside the period will do. With buckets, a
    granularity of a day or more: each day's row goes to the bucket of its noon, and the few
    hours of it that belong to another bucket (`moved_hours`) are moved there from hourly rows.
    Hourly buckets are read from hourly rows only."""
    if by_bucket and f.granularity == "hour":
        return None
    utc = ZoneInfo("UTC")
    start, end = f.start.astimezone(utc), f.end.astimezone(utc)
    first = start.replace(hour=0, minute=0, second=0, microsecond=0)
    if first < start:
        first += timedelta(days=1)
    last = end.replace(hour=0, minute=0, second=0, microsecond=0)
    return (first, last) if first < last else None


# Cached: each part of a statement being built asks (app/metrics/sources.py, queries.py).
@functools.lru_cache(maxsize=256)
def moved_hours(
    f: MetricsFilter, span: tuple[datetime, datetime]
) -> tuple[tuple[datetime, datetime], ...]:
    """The UTC hours of the span's days that lie in another bucket than their day's noon, each
    with the first such hour of its day and bucket (the hours a query can sum together).

    A daily rollup row is counted in the bucket of its UTC day's noon; these hours of it are
    taken out of that bucket and counted in their own, from hourly rows. None in UTC; in New
    York, the 4 or 5 hours before each local midnight for daily buckets, and only the hours
    around each month's first midnight for monthly ones. (Zones whose offset is not whole
    hours never get here: `rollups_are_exact` sends them to the raw tables.)"""
    first, last = span
    moved: list[tuple[datetime, datetime]] = []
    day = first
    while day < last:
        home = _bucket_date(day + timedelta(hours=12), f)
        group_start: dict[date, datetime] = {}
        for hour in (day + timedelta(hours=h) for h in range(24)):
            bucket = _bucket_date(hour, f)
            if bucket != home:
                moved.append((hour, group_start.setdefault(bucket, hour)))
        day += timedelta(days=1)
    return tuple(moved)


def _bucket_date(instant: datetime, f: MetricsFilter) -> date:
    """The local date the bucket holding `instant` starts on: PostgreSQL's
    `date_trunc(granularity, instant, zone)`, as a date (weeks start on Monday, as ISO's)."""
    local = instant.astimezone(f.tz).date()
    if f.granularity == "week":
        return local - timedelta(days=local.weekday())
    if f.granularity == "month":
        return local.replace(day=1)
    if f.granularity == "quarter":
        return local.replace(month=3 * ((local.month - 1) // 3) + 1, day=1)
    return local


@functools.lru_cache(maxsize=256)  # asked for every part of a statement, as moved_hours
def constant_offset(f: MetricsFilter) -> int | None:
    """The zone's UTC offset in seconds when it is the same throughout the period, else None.
    Sampled every 6 hours and at the end: no zone changes its offset and back within that."""
    offsets = set()
    probe = f.start
    while True:
        offset = probe.astimezone(f.tz).utcoffset()
        if offset is None:
            return None
        offsets.add(int(offset.total_seconds()))
        if len(offsets) > 1:
            return None
        if probe >= f.end:
            return offsets.pop()
        probe = min(probe + timedelta(hours=6), f.end)


def whole_hour_offsets(f: MetricsFilter) -> bool:
    """True when the zone's UTC offset is a whole number of hours throughout the period."""
    return _offsets_all(f, lambda seconds: seconds % 3600 == 0)


def _offsets_all(f: MetricsFilter, test: Callable[[float], bool]) -> bool:
    """Whether the zone's UTC offset (in seconds) passes `test` throughout the period; probed
    every 14 days, which no real zone's offset changes faster than."""
    probe = f.start
    while probe < f.end + timedelta(days=1):
        offset = probe.astimezone(f.tz).utcoffset()
        if offset is None or not test(offset.total_seconds()):
            return False
        probe += timedelta(days=14)
    return True
