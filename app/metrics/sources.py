"""Where base sums come from: the hourly rollups, or the raw tables, in the same shape.

Both sources yield rows of (ts, stream, currency, ...sums) for a filter; the queries in
`queries.py` convert and group them the same way whichever source they read, so the rollups
can be checked against the raw tables (tests, bench) by flipping `raw=True`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    CompoundSelect,
    Date,
    DateTime,
    Select,
    Table,
    all_,
    and_,
    any_,
    case,
    cast,
    func,
    literal,
    literal_column,
    select,
    union_all,
)

from app.metrics.filters import MetricsFilter, daily_span, moved_hours
from app.models import (
    converted_days,
    execution_tasks,
    ledger_entries,
    ledger_rollup,
    ledger_rollup_daily,
    task_rollup,
    task_stream_rollup_daily,
)
from app.models import task_stream_rollup as stream_rollup

LEDGER_MONEY = ("gross", "refunds", "disputes", "fees")
KIND_OF = {"gross": "charge", "refunds": "refund", "disputes": "dispute", "fees": "fee"}


def among(column: ColumnElement[str], values: tuple[str, ...]) -> ColumnElement[bool]:
    """`column` is one of `values`; no condition when there are none."""
    return column.in_(values) if values else literal(True)


Columns = tuple[list[ColumnElement[Any]], list[ColumnElement[Any]]]  # (keys, sums)
NOON: ColumnElement[Any] = literal_column("interval '12 hours'")
HOURS = ARRAY(DateTime(timezone=True))


def day_noon(day: ColumnElement[Any]) -> ColumnElement[Any]:
    """Noon UTC of a UTC day: the instant that decides a daily row's bucket."""
    return func.timezone("UTC", cast(day, DateTime())) + NOON


def _hourly_and_daily(
    f: MetricsFilter,
    by_bucket: bool,
    hourly: Table,
    daily: Table,
    columns: Callable[[Table], Columns],
    converted: str | None,
) -> Select[Any] | CompoundSelect[Any]:
    """Rollup rows covering [start, end): daily rows for the whole UTC days inside it (when
    `daily_span` allows), hourly rows for the rest. `ts` is the hour, or the day's noon (the
    instant that decides a daily row's bucket, and whose UTC day its FX rate is of).

    With `converted` (a reporting currency), the days that `converted_daily` holds in it, cut
    to fit these buckets (`pieces_zone`), are left to the caller, who reads them converted;
    only their hourly rows not compacted yet are read here. The other days are read as
    without it.

    With buckets in a zone other than UTC, some hours of a day belong to another bucket than
    its noon (`moved_hours`): they are read from hourly rows and counted twice, negated at the
    day's noon and as they are in their own bucket, so every bucket gets exactly its hours."""
    h = hourly.c
    span = daily_span(f, by_bucket)

    def hours(lo: datetime, hi: datetime, *where: ColumnElement[bool]) -> Select[Any]:
        keys, sums = columns(hourly)
        return select(h.bucket.label("ts"), *keys, *sums).where(
            h.bucket >= lo, h.bucket < hi, among(h.stream, f.streams), *where
        )

    if span is None:
        return hours(f.start, f.end)
    first, last = span
    parts = [hours(f.start, first), hours(last, f.end)]
    unbuilt = None
    if converted is not None:
        unbuilt = _unbuilt_days(span, converted, pieces_zone(f, by_bucket, span))
        # The built days' rows compaction has not folded into `converted_daily` yet: few,
        # through the partial index on them.
        parts.append(hours(first, last, ~h.compacted, utc_day(h.bucket) != all_(unbuilt)))
    parts.append(_daily_rows(f, daily, columns, span, unbuilt))
    moved = moved_hours(f, span) if by_bucket else ()
    if moved:
        parts += _moved_rows(f, hourly, columns, moved, unbuilt)
    return union_all(*parts)


def pieces_zone(f: MetricsFilter, by_bucket: bool, span: tuple[datetime, datetime]) -> str | None:
    """The zone `converted_daily`'s days must be cut in to fit these buckets: the filter's own
    when some hours of a UTC day lie in another bucket than its noon (`moved_hours`), else
    None (any cut fits: the buckets follow UTC days, or there are none)."""
    return f.tz.key if by_bucket and moved_hours(f, span) else None


def utc_day(instant: ColumnElement[Any]) -> ColumnElement[Any]:
    """The UTC day of an instant: the day whose FX rate converts what happened then."""
    return cast(func.timezone("UTC", instant), Date)


def _unbuilt_days(
    span: tuple[datetime, datetime], reporting: str, zone: str | None
) -> ColumnElement[Any]:
    """The span's days that `converted_daily` does not hold in `reporting` (cut in `zone`,
    when given), as an array: none once compaction has built them all."""
    first, last = span
    built = converted_days.c
    span_days = select(
        cast(
            func.generate_series(
                literal(first.replace(tzinfo=None), DateTime()),
                literal((last - timedelta(days=1)).replace(tzinfo=None), DateTime()),
                literal_column("interval '1 day'"),
            ),
            Date,
        ).label("day")
    )
    listed = select(built.day).where(
        built.reporting_currency == reporting,
        built.day >= first.date(),
        built.day < last.date(),
        built.split_zone == zone if zone is not None else literal(True),
    )
    unbuilt = span_days.except_(listed).subquery("unbuilt")
    # = ANY(ARRAY(SELECT ...)) where used: PostgreSQL computes the days first, then reads only
    # theirs through the index (none once all are built).
    return func.array(select(unbuilt.c.day).scalar_subquery())


def _daily_rows(
    f: MetricsFilter,
    daily: Table,
    columns: Callable[[Table], Columns],
    span: tuple[datetime, datetime],
    unbuilt: ColumnElement[Any] | None,
) -> Select[Any]:
    """The daily rollup rows of the span's days (only of the `unbuilt` ones, when given)."""
    d = daily.c
    first, last = span
    keys, sums = columns(daily)
    query: Select[Any] = select(day_noon(d.day).label("ts"), *keys, *sums)
    query = query.where(d.day >= first.date(), d.day < last.date(), among(d.stream, f.streams))
    return query if unbuilt is None else query.where(d.day == any_(unbuilt))


def _moved_rows(
    f: MetricsFilter,
    hourly: Table,
    columns: Callable[[Table], Columns],
    moved: tuple[tuple[datetime, datetime], ...],
    unbuilt: ColumnElement[Any] | None,
) -> list[Select[Any]]:
    """The moved hours' rows (only of the `unbuilt` days, when given), summed per (day and
    bucket, keys) first (a few rows per day instead of one per hour), then twice: negated at
    their day's noon, and as they are at the first hour of their group, which lies in their
    own bucket."""
    h = hourly.c
    keys, sums = columns(hourly)
    all_hours = literal([hour for hour, _ in moved], HOURS)
    groups = (
        func.unnest(all_hours, literal([first for _, first in moved], HOURS))
        .table_valued("hour", "first_hour")
        .render_derived(name="moved_hours")
    )
    read: ColumnElement[Any] = all_hours
    if unbuilt is not None:
        wanted = func.unnest(all_hours).table_valued("hour").render_derived(name="wanted")
        read = func.array(
            select(wanted.c.hour).where(utc_day(wanted.c.hour) == any_(unbuilt)).scalar_subquery()
        )
    summed = (
        select(
            groups.c.first_hour.label("ts"),
            *keys,
            # Back to the column's own type: sum(bigint) is numeric, slower to sum again.
            *[cast(func.sum(c), c.type).label(c.name) for c in sums],
        )
        .select_from(hourly.join(groups, h.bucket == groups.c.hour))
        # Also as a condition on the indexed column, so the hours are read through the index.
        .where(h.bucket == any_(read))
        .where(among(h.stream, f.streams))
        .group_by(groups.c.first_hour, *keys)
        .cte(f"moved_{hourly.name}")  # read by both selects below, computed once
    )
    m = summed.c
    key_columns = [m[k.name] for k in keys]
    their_noon = func.date_trunc("day", m.ts, "UTC") + NOON
    return [
        select(their_noon.label("ts"), *key_columns, *[(-m[s.name]).label(s.name) for s in sums]),
        select(m.ts, *key_columns, *[m[s.name] for s in sums]),
    ]


def ledger_columns(table: Table) -> Columns:
    t = table.c
    return (
        [t.stream, t.currency, t.settlement_currency],
        [
            *[t[m] for m in LEDGER_MONEY],
            *[t["settled_" + m] for m in LEDGER_MONEY],
            t.entries,
        ],
    )


def ledger_source(
    f: MetricsFilter, raw: bool, by_bucket: bool = True, converted: str | None = None
) -> Select[Any]:
    """(ts, stream, currency, settlement_currency, gross..fees, settled_gross..settled_fees,
    entries). `converted` as in `_hourly_and_daily`."""
    if not raw:
        rows = _hourly_and_daily(
            f, by_bucket, ledger_rollup, ledger_rollup_daily, ledger_columns, converted
        )
        return select(rows.subquery("rollup"))
    le = ledger_entries.c

    def of_kind(column: ColumnElement[int], money: str) -> ColumnElement[int]:
        return case((le.kind == KIND_OF[money], column), else_=0)

    return select(
        le.booked_at.label("ts"),
        le.stream,
        le.currency,
        func.coalesce(le.settlement_currency, "").label("settlement_currency"),
        *[of_kind(le.amount, m).label(m) for m in LEDGER_MONEY],
        *[
            of_kind(func.coalesce(le.settlement_amount, 0), m).label("settled_" + m)
            for m in LEDGER_MONEY
        ],
        literal(1).label("entries"),
    ).where(le.booked_at >= f.start, le.booked_at < f.end, among(le.stream, f.streams))


def task_stream_columns(table: Table) -> Columns:
    t = table.c
    return [t.stream, t.currency], [t.tasks, t.unpriced, t.cost]


def task_source(
    f: MetricsFilter,
    raw: bool,
    detailed: bool,
    by_bucket: bool = True,
    converted: str | None = None,
) -> Select[Any]:
    """(ts, stream, [ai_model, task_type,] currency, tasks, unpriced, cost
    [, succeeded, failed, duration_ms, durations]). `detailed` keeps model and task type.
    `converted` as in `_hourly_and_daily` (only for the per-stream rollups)."""
    if not raw and not (detailed or f.filters_tasks):
        rows = _hourly_and_daily(
            f, by_bucket, stream_rollup, task_stream_rollup_daily, task_stream_columns, converted
        )
        return select(rows.subquery("rollup"))
    if not raw:  # per model and task type, or filtered by them: the detailed hourly rollup
        t = task_rollup.c
        columns: list[ColumnElement[Any]] = [t.bucket.label("ts"), t.stream]
        if detailed:
            columns += [t.ai_model, t.task_type]
        columns += [t.currency, t.tasks, t.unpriced, t.cost]
        if detailed:
            columns += [t.succeeded, t.failed, t.duration_ms, t.durations]
        return select(*columns).where(
            t.bucket >= f.start,
            t.bucket < f.end,
            among(t.stream, f.streams),
            among(t.ai_model, f.ai_models),
            among(t.task_type, f.task_types),
        )
    x = execution_tasks.c
    raw_columns: list[ColumnElement[Any]] = [x.started_at.label("ts"), x.stream]
    if detailed:
        raw_columns += [
            func.coalesce(x.ai_model, "").label("ai_model"),
            x.task_type,
        ]
    raw_columns += [
        func.coalesce(x.cost_currency, x.priced_currency, "").label("currency"),
        literal(1).label("tasks"),
        case((x.cost_source == "unpriced", 1), else_=0).label("unpriced"),
        func.coalesce(x.cost_amount, x.priced_amount, 0).label("cost"),
    ]
    if detailed:
        raw_columns += [
            case((x.status == "succeeded", 1), else_=0).label("succeeded"),
            case((x.status == "failed", 1), else_=0).label("failed"),
            func.coalesce(x.duration_ms, 0).label("duration_ms"),
            case((x.duration_ms.is_(None), 0), else_=1).label("durations"),
        ]
    return select(*raw_columns).where(
        and_(
            x.started_at >= f.start,
            x.started_at < f.end,
            among(x.stream, f.streams),
            among(func.coalesce(x.ai_model, ""), f.ai_models),
            among(x.task_type, f.task_types),
        )
    )
