"""What a metrics request asks for, validated: period, zone, granularity and filters."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
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


def whole_hour_offsets(f: MetricsFilter) -> bool:
    """True when the zone's UTC offset is a whole number of hours throughout the period."""
    probe = f.start
    while probe < f.end + timedelta(days=1):
        offset = probe.astimezone(f.tz).utcoffset()
        if offset is None or offset.total_seconds() % 3600:
            return False
        probe += timedelta(days=14)
    return True
