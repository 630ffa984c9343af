"""Periods as users give them: [start, end) dates or ISO datetimes, cut in an IANA time zone."""

from __future__ import annotations

from datetime import date, datetime, time
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class BadParameter(ValueError):
    """A query parameter the user must fix; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def zone(name: str, field: str = "tz") -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise BadParameter(field, f"unknown time zone {name!r}") from exc


def instant(value: str, tz: ZoneInfo, field: str) -> datetime:
    """A date means its midnight in `tz`; a datetime without offset is read in `tz`."""
    try:
        if len(value) == 10:
            return datetime.combine(date.fromisoformat(value), time(0), tzinfo=tz)
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise BadParameter(
            field, f"expected YYYY-MM-DD or an ISO 8601 datetime, got {value!r}"
        ) from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=tz)


def period(start: str, end: str, tz: ZoneInfo) -> tuple[datetime, datetime]:
    lo, hi = instant(start, tz, "start"), instant(end, tz, "end")
    if hi <= lo:
        raise BadParameter("end", "must be after start (the period is [start, end))")
    return lo, hi
