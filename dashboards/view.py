"""What a dashboard shows, as kept in its URL: period, zone, granularity, streams.

`?period=30d&tz=Europe/Paris&granularity=day&stream=api&stream=app` is a shareable view; a
custom period adds `start` and `end` (dates, `end` exclusive, as in the metrics API). Relative
periods (`7d`, `mtd`...) are resolved against the current date in the view's zone, so a shared
"last 7 days" link shows the last 7 days whenever it is opened.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode
from zoneinfo import ZoneInfo

from app.metrics.filters import GRANULARITIES, MetricsFilter, build_filter

PERIODS = {
    "today": "Today",
    "7d": "Last 7 days",
    "30d": "Last 30 days",
    "90d": "Last 90 days",
    "mtd": "Month to date",
    "qtd": "Quarter to date",
    "ytd": "Year to date",
    "custom": "Custom",
}
DEFAULT_PERIOD = "30d"
DEFAULT_GRANULARITY = {"today": "hour", "ytd": "week"}


@dataclass(frozen=True)
class View:
    period: str
    tz: str
    granularity: str
    streams: tuple[str, ...] = ()
    start: date | None = None  # custom periods only
    end: date | None = None  # exclusive

    def to_query(self) -> str:
        params: list[tuple[str, str]] = [
            ("period", self.period),
            ("tz", self.tz),
            ("granularity", self.granularity),
        ]
        if self.period == "custom" and self.start and self.end:
            params += [("start", self.start.isoformat()), ("end", self.end.isoformat())]
        params += [("stream", s) for s in self.streams]
        return "?" + urlencode(params)

    def dates(self, today: date) -> tuple[date, date]:
        """[start, end) as dates in the view's zone."""
        if self.period == "custom" and self.start and self.end:
            return self.start, self.end
        return period_dates(self.period, today)

    def metrics_filter(
        self, now: datetime, *, streams: tuple[str, ...] | None = None
    ) -> MetricsFilter:
        """The metrics layer's filter for this view at `now` (raises BadParameter)."""
        start, end = self.dates(now.astimezone(ZoneInfo(self.tz)).date())
        return build_filter(
            start=start.isoformat(),
            end=end.isoformat(),
            tz=self.tz,
            granularity=self.granularity,
            streams=self.streams if streams is None else streams,
        )

    def api_query(self, today: date) -> str:
        """The same view as query parameters of the metrics API and the CSV exports."""
        start, end = self.dates(today)
        params = [("start", start.isoformat()), ("end", end.isoformat()), ("tz", self.tz),
                  ("granularity", self.granularity)]  # fmt: skip
        params += [("stream", s) for s in self.streams]
        return "?" + urlencode(params)

    def with_streams(self, streams: tuple[str, ...]) -> View:
        return replace(self, streams=streams)

    def to_store(self) -> dict[str, Any]:
        """A JSON-able form for a dcc.Store."""
        return {
            "period": self.period,
            "tz": self.tz,
            "granularity": self.granularity,
            "streams": list(self.streams),
            "start": self.start.isoformat() if self.start else None,
            "end": self.end.isoformat() if self.end else None,
        }

    @classmethod
    def from_store(cls, data: dict[str, Any]) -> View:
        return cls(
            period=data["period"],
            tz=data["tz"],
            granularity=data["granularity"],
            streams=tuple(data["streams"]),
            start=date.fromisoformat(data["start"]) if data.get("start") else None,
            end=date.fromisoformat(data["end"]) if data.get("end") else None,
        )


def period_dates(period: str, today: date) -> tuple[date, date]:
    """Relative periods end with today (included): [start, tomorrow)."""
    tomorrow = today + timedelta(days=1)
    days = {"today": 1, "7d": 7, "30d": 30, "90d": 90}
    if period in days:
        return tomorrow - timedelta(days=days[period]), tomorrow
    if period == "mtd":
        return today.replace(day=1), tomorrow
    if period == "qtd":
        return today.replace(month=(today.month - 1) // 3 * 3 + 1, day=1), tomorrow
    if period == "ytd":
        return today.replace(month=1, day=1), tomorrow
    raise ValueError(f"unknown period {period!r}")


def view_from_query(search: str | None, default_tz: str) -> tuple[View, list[str]]:
    """The view a URL asks for, and what in it was not understood (shown, then ignored: a
    shared link with one bad parameter still opens)."""
    params = parse_qs((search or "").lstrip("?"))
    problems: list[str] = []

    def one(name: str) -> str | None:
        values = params.get(name)
        return values[-1] if values else None

    period = one("period") or DEFAULT_PERIOD
    if period not in PERIODS:
        problems.append(f"period {period!r} is not one of {', '.join(PERIODS)}")
        period = DEFAULT_PERIOD
    tz = one("tz") or default_tz
    try:
        ZoneInfo(tz)
    except (ValueError, KeyError):  # ZoneInfoNotFoundError is a KeyError
        problems.append(f"unknown time zone {tz!r}")
        tz = default_tz
    granularity = one("granularity") or DEFAULT_GRANULARITY.get(period, "day")
    if granularity not in GRANULARITIES:
        problems.append(f"granularity {granularity!r} is not one of {', '.join(GRANULARITIES)}")
        granularity = DEFAULT_GRANULARITY.get(period, "day")
    start = end = None
    if period == "custom":
        try:
            start = date.fromisoformat(one("start") or "")
            end = date.fromisoformat(one("end") or "")
            if end <= start:
                raise ValueError
        except ValueError:
            problems.append(
                "a custom period needs start and end dates (YYYY-MM-DD), end after start"
            )
            period, start, end = DEFAULT_PERIOD, None, None
    streams = tuple(dict.fromkeys(s for s in params.get("stream", []) if s.strip()))
    return View(period, tz, granularity, streams, start, end), problems
