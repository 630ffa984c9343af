"""`converted_daily`: the per-stream sums of each UTC day, already in the reporting currency and
cut where the app's zone starts a local day (migrations 0013, 0014), and how compaction keeps
it.

It holds, for each day listed in `converted_days`, exactly the conversion of that day's
*compacted* hourly rollup rows. Readers (`app/metrics/sources.py`) take those days from it and
add the day's hourly rows not compacted yet; days not listed they read from the daily rollups
as before. That holds because only compaction makes rows compacted, and it rebuilds the days
whose hours it rewrote in the same transaction; an FX rate change drops its day (trigger). So a
figure never depends on this table being up to date, only its speed does.

Pieces: a UTC day is cut where `split_zone` starts a local day (New York: at 04:00 or 05:00
UTC), so each piece lies in one bucket of a day or more in that zone, as in UTC; a series in
another zone whose buckets do not follow UTC days reads the daily rollups instead.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Connection,
    Date,
    Select,
    Table,
    any_,
    delete,
    func,
    insert,
    literal,
    literal_column,
    select,
    union_all,
)

from app.metrics.filters import MetricsFilter
from app.metrics.queries import SUM_COLUMNS, converted_ledger, converted_tasks
from app.metrics.sources import HOURS, Columns, ledger_columns, task_stream_columns, utc_day
from app.models import (
    converted_daily,
    converted_days,
    ledger_rollup,
    ledger_rollup_daily,
    task_stream_rollup,
    task_stream_rollup_daily,
)

# Days built per compaction at most, newest first: a first build of years of history (about
# 5,000 hourly rows a day at the bench's 10M rows) is spread over rounds of a second or two
# instead of one long transaction.
MAX_DAYS_PER_ROUND = 60
DATES = ARRAY(Date)
ALMOST_AN_HOUR: ColumnElement[Any] = literal_column("interval '1 hour' - interval '1 microsecond'")


def _compacted_rows(
    hourly: Table, columns: Callable[[Table], Columns], days: list[date], split_zone: str
) -> Select[Any]:
    """The compacted hourly rows of `days`, each at its piece's first instant: the later of its
    UTC day's start and its local day's start in `split_zone`, rounded up to a whole hour (the
    rollups' unit: a zone whose midnight is not on one, India's, is never read in pieces, and
    its pieces then simply start at their first hour)."""
    r = hourly.c
    keys, sums = columns(hourly)
    local_day = func.date_trunc("day", r.bucket, split_zone)
    first_hour = func.date_trunc("hour", local_day + ALMOST_AN_HOUR, "UTC")
    piece_start = func.greatest(func.date_trunc("day", r.bucket, "UTC"), first_hour)
    hours = [datetime.combine(d, time(hour), UTC) for d in days for hour in range(24)]
    query: Select[Any] = select(piece_start.label("ts"), *keys, *sums)
    return query.where(r.compacted, r.bucket == any_(literal(hours, HOURS)))


def _build(conn: Connection, reporting: str, split_zone: str, days: list[date]) -> None:
    """Write the converted sums of the pieces of `days` in `reporting` and list the days."""
    # Hourly buckets in UTC: each piece start is its own bucket, and the FX rate is its day's.
    first, last = min(days), max(days) + timedelta(days=1)
    f = MetricsFilter(
        start=datetime.combine(first, time(), UTC),
        end=datetime.combine(last, time(), UTC),
        tz=ZoneInfo("UTC"),
        granularity="hour",
    )
    parts = union_all(
        converted_ledger(
            _compacted_rows(ledger_rollup, ledger_columns, days, split_zone),
            f, reporting, True, presummed=False,
        ),
        converted_tasks(
            _compacted_rows(task_stream_rollup, task_stream_columns, days, split_zone),
            f, reporting, True, presummed=False,
        ),
    ).subquery("parts")  # fmt: skip
    p = parts.c
    day = utc_day(p.bucket)
    sums = list(SUM_COLUMNS)
    rows = select(
        literal(reporting).label("reporting_currency"),
        day.label("day"),
        p.bucket.label("piece_start"),
        literal(split_zone).label("split_zone"),
        p.stream,
        p.group_currency,
        *[func.sum(p[c]).label(c) for c in sums],
    ).group_by(p.bucket, p.stream, p.group_currency)
    conn.execute(
        insert(converted_daily).from_select(
            [
                "reporting_currency", "day", "piece_start", "split_zone", "stream",
                "group_currency", *sums,
            ],
            rows,
        )
    )  # fmt: skip
    listed = [{"reporting_currency": reporting, "day": d, "split_zone": split_zone} for d in days]
    conn.execute(insert(converted_days), listed)


def _drop(conn: Connection, days: Collection[date], reporting: str | None = None) -> None:
    """Drop `days` from `converted_daily` (in `reporting`, or in every reporting currency)."""
    c, listed = converted_daily.c, converted_days.c
    stale = literal(sorted(days), DATES)
    for table, column, currency in (
        (converted_daily, c.day, c.reporting_currency),
        (converted_days, listed.day, listed.reporting_currency),
    ):
        query = delete(table).where(column == any_(stale))
        conn.execute(query if reporting is None else query.where(currency == reporting))


def unbuilt_days(
    conn: Connection, reporting: str, split_zone: str, limit: int | None = None
) -> list[date]:
    """Days with compacted rollup rows that `converted_daily` does not hold in `reporting`, cut
    in `split_zone` (not at all, or cut in another zone), newest first."""
    listed = converted_days.c
    # The daily rollups tell which days have rows, from 24 times fewer rows than the hourly.
    with_rows = union_all(
        *[
            select(t.c.day).where(t.c.compacted).distinct()
            for t in (ledger_rollup_daily, task_stream_rollup_daily)
        ]
    ).subquery("with_rows")
    unbuilt = (
        select(with_rows.c.day)
        .except_(
            select(listed.day).where(
                listed.reporting_currency == reporting, listed.split_zone == split_zone
            )
        )
        .subquery("unbuilt")
    )
    query = select(unbuilt.c.day).order_by(unbuilt.c.day.desc()).limit(limit)
    return list(conn.execute(query).scalars().all())


def refresh(
    conn: Connection, changed: Collection[date], reporting: str | None, *, split_zone: str
) -> int:
    """In compaction's transaction, after it: drop the `changed` days (whose compacted hourly
    rows it just rewrote) in every reporting currency, then build, in `reporting` and cut in
    `split_zone`, those days and any other day with compacted rows not built in that currency
    and zone yet (newest first, at most `MAX_DAYS_PER_ROUND`). Returns the number of days
    built."""
    if changed:
        _drop(conn, changed)
    if reporting is None:
        return 0
    days = sorted(unbuilt_days(conn, reporting, split_zone, MAX_DAYS_PER_ROUND))
    if days:
        _drop(conn, days, reporting)  # those cut in another zone
        _build(conn, reporting, split_zone, days)
    return len(days)
