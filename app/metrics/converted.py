"""`converted_daily`: the per-stream sums of each UTC day, already in the reporting currency
(migration 0013), and how compaction keeps it.

It holds, for each day listed in `converted_days`, exactly the conversion of that day's
*compacted* daily rollup rows. Readers (`app/metrics/queries.py`) take those days from it and
convert the rest themselves: rows not compacted yet, and days not listed. That holds because
only compaction makes rows compacted, and it rebuilds the days it compacted in the same
transaction; an FX rate change drops its day (trigger), and a day that is not listed is simply
converted by the reader. So a figure never depends on this table being up to date, only its
speed does.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import (
    ARRAY,
    Connection,
    Date,
    Select,
    Table,
    any_,
    cast,
    delete,
    func,
    insert,
    literal,
    select,
    union_all,
)

from app.metrics.filters import MetricsFilter
from app.metrics.queries import SUM_COLUMNS, converted_ledger, converted_tasks
from app.metrics.sources import Columns, day_noon, ledger_columns, task_stream_columns
from app.models import (
    converted_daily,
    converted_days,
    ledger_rollup_daily,
    task_stream_rollup_daily,
)

# Days built per compaction at most, newest first: a first build of years of history is
# spread over a few rounds instead of one long transaction.
MAX_DAYS_PER_ROUND = 400
DATES = ARRAY(Date)


def _compacted_rows(
    daily: Table, columns: Callable[[Table], Columns], days: list[date]
) -> Select[Any]:
    d = daily.c
    keys, sums = columns(daily)
    query: Select[Any] = select(day_noon(d.day).label("ts"), *keys, *sums)
    return query.where(d.compacted, d.day == any_(literal(days, DATES)))


def _build(conn: Connection, reporting: str, days: list[date]) -> None:
    """Write the converted sums of `days` in `reporting` and list them."""
    # Buckets of one UTC day: the conversion the readers run, per day.
    first, last = min(days), max(days) + timedelta(days=1)
    f = MetricsFilter(
        start=datetime(first.year, first.month, first.day, tzinfo=UTC),
        end=datetime(last.year, last.month, last.day, tzinfo=UTC),
        tz=ZoneInfo("UTC"),
    )
    parts = union_all(
        converted_ledger(
            _compacted_rows(ledger_rollup_daily, ledger_columns, days),
            f, reporting, True, presummed=False,
        ),
        converted_tasks(
            _compacted_rows(task_stream_rollup_daily, task_stream_columns, days),
            f, reporting, True, presummed=False,
        ),
    ).subquery("parts")  # fmt: skip
    day = cast(func.timezone("UTC", parts.c.bucket), Date)
    sums = list(SUM_COLUMNS)
    rows = select(
        literal(reporting).label("reporting_currency"),
        day.label("day"),
        parts.c.stream,
        parts.c.group_currency,
        *[func.sum(parts.c[c]).label(c) for c in sums],
    ).group_by(day, parts.c.stream, parts.c.group_currency)
    conn.execute(
        insert(converted_daily).from_select(
            ["reporting_currency", "day", "stream", "group_currency", *sums], rows
        )
    )
    listed = [{"reporting_currency": reporting, "day": d} for d in days]
    conn.execute(insert(converted_days), listed)


def refresh(conn: Connection, changed: Collection[date], reporting: str | None) -> int:
    """In compaction's transaction, after it: drop the `changed` days (whose compacted rows it
    just rewrote) in every reporting currency, then build, in `reporting`, those days and any
    other day with compacted rows that is not built yet (newest first, at most
    `MAX_DAYS_PER_ROUND`). Returns the number of days built."""
    c, listed = converted_daily.c, converted_days.c
    if changed:
        stale = literal(sorted(changed), DATES)
        conn.execute(delete(converted_daily).where(c.day == any_(stale)))
        conn.execute(delete(converted_days).where(listed.day == any_(stale)))
    if reporting is None:
        return 0
    with_rows = union_all(
        *[
            select(t.c.day).where(t.c.compacted).distinct()
            for t in (ledger_rollup_daily, task_stream_rollup_daily)
        ]
    ).subquery("with_rows")
    unbuilt = (
        select(with_rows.c.day)
        .except_(select(listed.day).where(listed.reporting_currency == reporting))
        .subquery("unbuilt")
    )
    todo = select(unbuilt.c.day).order_by(unbuilt.c.day.desc()).limit(MAX_DAYS_PER_ROUND)
    days = sorted(conn.execute(todo).scalars().all())
    if days:
        _build(conn, reporting, days)
    return len(days)
