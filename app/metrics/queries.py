"""Figures per stream, per time bucket and per AI model / task type.

Every amount is converted into the reporting currency row by row before it is summed
(accounting.md, "Money"): the settlement amount of the Stripe balance transaction when it is
in the reporting currency; else the amount itself when already in it; else the amount times
the FX rate of its UTC day; else it stays unconverted and is reported by currency, never
added to a total.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    and_,
    case,
    cast,
    func,
    literal,
    literal_column,
    null,
    select,
    union_all,
)
from sqlalchemy.sql import Join, Subquery
from sqlalchemy.types import BigInteger, Numeric, Text

from app.metrics.conversion import Amount, with_fx_rate
from app.metrics.figures import ZERO, BaseFigures, Figures, derive
from app.metrics.filters import (
    MetricsFilter,
    constant_offset,
    daily_span,
    moved_hours,
    rollups_are_exact,
    whole_hour_offsets,
)
from app.metrics.sources import (
    LEDGER_MONEY,
    among,
    ledger_source,
    pieces_zone,
    task_source,
    utc_day,
)
from app.models import converted_daily, execution_tasks, ledger_entries, stripe_events

UNATTRIBUTED = "unattributed"


@dataclass
class Trust:
    """What a user needs to trust the figures."""

    unattributed_net_revenue: Decimal = Decimal(0)
    unconverted_revenue: dict[str, int] = field(default_factory=dict)
    unconverted_cost: dict[str, Decimal] = field(default_factory=dict)
    unpriced_tasks: int = 0
    failed_events: int = 0
    # Charges booked in the period (and streams) whose balance transaction, so fee and
    # settlement amount, is not known yet: fees and cost are understated by theirs.
    fees_unknown: int | None = 0  # None: not counted (no Stripe API key: no fee is known)
    as_of: datetime | None = None


@dataclass
class StreamRow:
    stream: str
    base: BaseFigures
    figures: Figures


@dataclass
class Summary:
    filter: MetricsFilter
    currency: str
    streams: list[StreamRow]
    total: Figures
    total_base: BaseFigures
    previous_total: Figures
    previous_base: BaseFigures
    trust: Trust
    source: str  # "rollup" or "raw"


# A point's sums as PostgreSQL wrote them, when all of its amounts converted (the usual
# case): gross, refunds, disputes, fees and task cost as exact decimal text (minor units of
# the reporting currency), then tasks and unpriced tasks. Text, so that presentation can look
# a point up by it (`app.api.metrics.presented_points`) without making a Decimal: hashing a
# new Decimal of 20 digits costs more than everything else a point needs.
SumsText = tuple[str, str, str, str, str, int, int]


def base_of(text: SumsText) -> BaseFigures:
    gross, refunds, disputes, fees, task_cost, tasks, unpriced = text
    return BaseFigures(
        gross=Decimal(gross), refunds=Decimal(refunds), disputes=Decimal(disputes),
        fees=Decimal(fees), task_cost=Decimal(task_cost), tasks=tasks, unpriced_tasks=unpriced,
    )  # fmt: skip


@dataclass
class SeriesPoint:
    bucket: datetime
    stream: str
    sums: SumsText | BaseFigures  # BaseFigures where some amount did not convert

    @property
    def text(self) -> SumsText | None:
        return None if isinstance(self.sums, BaseFigures) else self.sums

    @functools.cached_property
    def base(self) -> BaseFigures:
        return self.sums if isinstance(self.sums, BaseFigures) else base_of(self.sums)

    @functools.cached_property
    def figures(self) -> Figures:
        """Derived when first read: the API presents most points from a memo of their sums
        (`app.api.metrics.presented_points`) and never needs them."""
        return derive(self.base)


def _one_row_per_bucket(f: MetricsFilter, raw: bool, by_bucket: bool) -> bool:
    """Whether the source rows are already one per bucket and key (up to rows compaction has
    not merged yet): hourly rollup rows for hourly buckets; daily rollup rows for daily
    buckets in a zone where no hour moves (`moved_hours`). Summing those again before
    converting them would only cost time."""
    if raw or not by_bucket:
        return False
    if f.granularity == "hour":
        return True
    span = daily_span(f, by_bucket)
    return f.granularity == "day" and span is not None and not moved_hours(f, span)


def _dated(
    source: Select[Any],
    f: MetricsFilter,
    reporting: str,
    by_bucket: bool,
    keys: list[str],
    sums: list[str],
    *,
    presummed: bool,
) -> Subquery:
    """Source rows summed per bucket, keys, and the UTC day whose FX rate converts them.

    An FX rate holds for a whole UTC day and conversion is linear, so converting sums is exact.
    Only rows that need a rate keep their day (`fx_day`); the others (in the reporting
    currency, or settled in it) are summed over the whole bucket first, so a summary converts
    about one row per stream and currency instead of one per stream, currency and day. Rows
    that are `presummed` (`_one_row_per_bucket`) are only given their bucket and day."""
    src = source.subquery("src")
    bucket = _bucket(f, src.c.ts) if by_bucket else null()
    columns = [src.c[k] for k in keys]
    if presummed:
        day = utc_day(src.c.ts)
        sum_columns = [src.c[s] for s in sums]
        return select(bucket.label("bucket"), day.label("day"), *columns, *sum_columns).subquery(
            "pre"
        )
    # Only which rule applies matters here, not the amounts: any column stands for them, and
    # no rate is needed to tell that the FX rule is the one left.
    money = Amount(
        amount=src.c[sums[0]],
        currency=src.c.currency,
        rate=cast(null(), Numeric),
        settled=src.c[sums[0]] if "settlement_currency" in keys else None,
        settlement_currency=src.c.settlement_currency if "settlement_currency" in keys else None,
    )
    fx_day = case((money.needs_rate(reporting), utc_day(src.c.ts)), else_=null())
    return (
        select(
            bucket.label("bucket"),
            fx_day.label("day"),
            *columns,
            *[func.sum(src.c[s]).label(s) for s in sums],
        )
        .group_by(*([bucket] if by_bucket else []), fx_day, *columns)
        .subquery("pre")
    )


def _with_fx(src: Subquery, reporting: str) -> tuple[Join, ColumnElement[Decimal]]:
    """The sums joined with the FX rate of their UTC day into the reporting currency (NULL
    when there is none)."""
    return with_fx_rate(src, src.c.day, src.c.currency, reporting)


# Where `date_bin` counts its strides from: midnight UTC of Monday 0001-01-01, before every
# real instant (PostgreSQL 16.2 bins instants before the origin one stride early).
BIN_ORIGIN = "'0001-01-01 00:00:00+00'::timestamptz"


def _bucket(f: MetricsFilter, ts: ColumnElement[datetime]) -> ColumnElement[datetime]:
    """The bucket start, cut in the filter's zone. Hours are cut in UTC where the zone's
    offset is whole hours: the same boundaries, and the two 01:00-02:00 hours of a
    daylight-saving fall-back stay two buckets instead of merging.

    Where buckets are fixed strides (hours in such a zone; days and weeks in a zone whose
    offset does not change during the period) they are counted with `date_bin`, plain
    arithmetic on the instant, instead of `date_trunc` in a zone, which looks the zone up for
    every row (~0.2 us: 30 ms for a 90-day hourly series)."""
    if f.granularity == "hour" and whole_hour_offsets(f):
        return func.date_bin(literal_column("'1 hour'::interval"), ts, literal_column(BIN_ORIGIN))
    offset = constant_offset(f)
    if f.granularity in ("day", "week") and offset is not None:
        stride = "'1 day'::interval" if f.granularity == "day" else "'7 days'::interval"
        # Local midnight of that Monday, as an instant: the origin moved back by the offset.
        origin: ColumnElement[datetime] = literal_column(
            f"{BIN_ORIGIN} - '{offset} seconds'::interval"
        )
        return func.date_bin(literal_column(stride), ts, origin)
    return func.date_trunc(f.granularity, ts, f.tz.key)


def _amount(
    src: Subquery, rate: ColumnElement[Decimal], amount: str, settled: str | None
) -> Amount:
    """One amount column of `src` with what converting it takes (app/metrics/conversion.py)."""
    return Amount(
        amount=src.c[amount],
        currency=src.c.currency,
        rate=rate,
        settled=None if settled is None else src.c[settled],
        settlement_currency=None if settled is None else src.c.settlement_currency,
    )


def _converted_or_own(
    src: Subquery, rate: ColumnElement[Decimal], reporting: str, amount: str, settled: str | None
) -> ColumnElement[Decimal]:
    """One amount column in reporting minor units by the rules of accounting.md, or, where no
    rule converts it, in its own currency (the row's `group_currency` then says which)."""
    return func.coalesce(_amount(src, rate, amount, settled).converted(reporting), src.c[amount])


def _group_currency(
    src: Subquery, rate: ColumnElement[Decimal], reporting: str, settled: bool
) -> ColumnElement[str]:
    """'' for rows converted into the reporting currency, else the currency they stay in."""
    # Which amount column is irrelevant: only the currencies and the rate decide.
    money = LEDGER_MONEY[0] if settled else "cost"
    converted = _amount(src, rate, money, "settled_" + money if settled else None).is_converted(
        reporting
    )
    return case((converted, literal_column("''")), else_=src.c.currency)


# The columns every part of `_sums_query` yields: money in reporting minor units (or in
# `group_currency` where not converted), signed as in the ledger; then counters. `entries`
# (ledger rows) and `tasks` tell a group with rows from one whose moved hours cancelled out.
SUM_COLUMNS = (*LEDGER_MONEY, "task_cost", "tasks", "unpriced", "entries")


def _ledger_part(
    f: MetricsFilter, reporting: str, raw: bool, by_bucket: bool, converted: str | None = None
) -> Select[Any]:
    return converted_ledger(
        ledger_source(f, raw, by_bucket, converted),
        f,
        reporting,
        by_bucket,
        presummed=_one_row_per_bucket(f, raw, by_bucket),
    )


def converted_ledger(
    source: Select[Any], f: MetricsFilter, reporting: str, by_bucket: bool, *, presummed: bool
) -> Select[Any]:
    """Ledger rollup rows of `source` (`ledger_source`'s shape) converted, per bucket (or
    none), stream and `group_currency`, in the columns of `SUM_COLUMNS`."""
    src = _dated(
        source,
        f,
        reporting,
        by_bucket,
        ["stream", "currency", "settlement_currency"],
        [*LEDGER_MONEY, *("settled_" + m for m in LEDGER_MONEY), "entries"],
        presummed=presummed,
    )
    joined, rate = _with_fx(src, reporting)
    zero: ColumnElement[int] = literal_column("0")
    return select(
        src.c.bucket,
        src.c.stream,
        _group_currency(src, rate, reporting, settled=True).label("group_currency"),
        *[
            _converted_or_own(src, rate, reporting, m, "settled_" + m).label(m)
            for m in LEDGER_MONEY
        ],
        *[zero.label(c) for c in ("task_cost", "tasks", "unpriced")],
        src.c.entries,
    ).select_from(joined)


def _task_part(
    f: MetricsFilter, reporting: str, raw: bool, by_bucket: bool, converted: str | None = None
) -> Select[Any]:
    return converted_tasks(
        task_source(f, raw, detailed=False, by_bucket=by_bucket, converted=converted),
        f,
        reporting,
        by_bucket,
        presummed=_one_row_per_bucket(f, raw, by_bucket),
    )


def converted_tasks(
    source: Select[Any], f: MetricsFilter, reporting: str, by_bucket: bool, *, presummed: bool
) -> Select[Any]:
    """Per-stream task rollup rows of `source` (`task_source`'s shape, not detailed) converted,
    per bucket (or none), stream and `group_currency`, in the columns of `SUM_COLUMNS`."""
    src = _dated(
        source,
        f,
        reporting,
        by_bucket,
        ["stream", "currency"],
        ["cost", "tasks", "unpriced"],
        presummed=presummed,
    )
    joined, rate = _with_fx(src, reporting)
    zero: ColumnElement[int] = literal_column("0")
    return select(
        src.c.bucket,
        src.c.stream,
        _group_currency(src, rate, reporting, settled=False).label("group_currency"),
        *[zero.label(m) for m in LEDGER_MONEY],
        _converted_or_own(src, rate, reporting, "cost", None).label("task_cost"),
        src.c.tasks,
        src.c.unpriced,
        zero.label("entries"),
    ).select_from(joined)


def _converted_daily_part(
    f: MetricsFilter, reporting: str, by_bucket: bool, span: tuple[datetime, datetime]
) -> Select[Any]:
    """The span's days as `converted_daily` holds them in `reporting` (already converted and
    summed per stream and piece of a day), each piece in the bucket of its first instant. For
    buckets that do not follow UTC days, only days cut in the filter's zone (`pieces_zone`);
    the sources read the others."""
    c = converted_daily.c
    first, last = span
    zone = pieces_zone(f, by_bucket, span)
    bucket = _bucket(f, c.piece_start) if by_bucket else null()
    return select(
        bucket.label("bucket"),
        c.stream,
        c.group_currency,
        *[c[m] for m in LEDGER_MONEY],
        c.task_cost,
        c.tasks,
        c.unpriced,
        c.entries,
    ).where(
        c.reporting_currency == reporting,
        c.day >= first.date(),
        c.day < last.date(),
        among(c.stream, f.streams),
        c.split_zone == zone if zone is not None else literal(True),
    )


Sums = dict[tuple[datetime | None, str], BaseFigures]
PointSums = dict[tuple[datetime | None, str], SumsText | BaseFigures]


@functools.lru_cache(maxsize=512)
def _sums_query(
    periods: tuple[MetricsFilter, ...], reporting: str, raw: bool | None, by_bucket: bool
) -> Select[Any]:
    """The statement of `_sums`. Building it costs more Python than running it costs SQL
    (several ms), and a dashboard asks for the same few views over and over: kept per filter
    (frozen, so hashable; a statement is immutable and safe to run from any thread)."""
    parts = []
    for index, f in enumerate(periods):
        use_raw = _use_raw(f, raw)
        tag: ColumnElement[int] = literal_column(str(index)).label("period")
        span = daily_span(f, by_bucket)
        # The days `converted_daily` holds are read from it (not with task filters: it has
        # the costs of all of a stream's tasks), the rest converted here.
        converted = None if use_raw or span is None or f.filters_tasks else reporting
        for part in (_ledger_part, _task_part):
            parts.append(part(f, reporting, use_raw, by_bucket, converted).add_columns(tag))
        if converted is not None and span is not None:
            parts.append(_converted_daily_part(f, reporting, by_bucket, span).add_columns(tag))
    rows = union_all(*parts).subquery("parts")
    query = select(
        rows.c.period,
        rows.c.bucket,
        rows.c.stream,
        rows.c.group_currency,
        # As text: see `SumsText`.
        *[cast(func.sum(rows.c[c]), Text).label(c) for c in (*LEDGER_MONEY, "task_cost")],
        # Counts come back as integers (sum() of integers is numeric in PostgreSQL).
        *[cast(func.sum(rows.c[c]), BigInteger).label(c) for c in ("tasks", "unpriced")],
    ).group_by(rows.c.period, rows.c.bucket, rows.c.stream, rows.c.group_currency)
    # A group whose rows all moved to a neighbouring bucket (`moved_hours`) has no ledger
    # entry or task behind it, and sums of zero: the raw tables would not have it.
    query = query.having(func.sum(rows.c.entries) + func.sum(rows.c.tasks) != 0)
    # Ordered here, cheaper than sorting the points in Python (aware datetimes compare
    # slowly); "C": by code point, as Python orders strings.
    return query.order_by(rows.c.period, rows.c.bucket, rows.c.stream.collate("C"))


def _point_sums(
    conn: Connection,
    periods: list[MetricsFilter],
    reporting: str,
    raw: bool | None,
    by_bucket: bool,
) -> list[PointSums]:
    """Sums per (bucket, stream) of each period, revenue and task costs together, in one
    statement: the parts of every period are stacked and grouped once, so a request costs one
    round trip and one plan whatever it asks for. `raw` as in `stream_summary`.

    A point whose amounts all converted is one row, kept as its text (`SumsText`); one with
    amounts left in their own currency has a row per currency, merged into BaseFigures."""
    query = _sums_query(tuple(periods), reporting, raw, by_bucket)
    sums: list[PointSums] = [{} for _ in periods]
    # Unpacked by position: a few thousand rows per request, and attribute access by name
    # costs more than the rest.
    for period, bucket, stream, currency, *amounts in conn.execute(query).all():
        point = sums[period].get((bucket, stream))
        if point is None and not currency:  # the usual case: one converted row per point
            sums[period][(bucket, stream)] = tuple(amounts)
            continue
        if point is None:
            base = BaseFigures()
        elif isinstance(point, BaseFigures):
            base = point
        else:
            base = base_of(point)
        sums[period][(bucket, stream)] = base
        _add_row(base, currency, *amounts)
    return sums


def _add_row(
    base: BaseFigures,
    currency: str,
    gross: str,
    refunds: str,
    disputes: str,
    fees: str,
    task_cost: str,
    tasks: int,
    unpriced: int,
) -> None:
    """Add one row of `_sums_query` to `base`: to its figures when converted (`currency`
    ''), else to its unconverted amounts in `currency`."""
    base.tasks += tasks
    base.unpriced_tasks += unpriced
    if not currency:
        base.gross += Decimal(gross)
        base.refunds += Decimal(refunds)
        base.disputes += Decimal(disputes)
        base.fees += Decimal(fees)
        base.task_cost += Decimal(task_cost)
        return
    net = int(Decimal(gross) + Decimal(refunds) + Decimal(disputes))
    if net:
        base.unconverted_revenue[currency] = base.unconverted_revenue.get(currency, 0) + net
    # Cost is positive: task costs as they are, fees (negative in the ledger) negated.
    cost = Decimal(task_cost) - Decimal(fees)
    if cost:
        base.unconverted_cost[currency] = base.unconverted_cost.get(currency, ZERO) + cost


def _sums(
    conn: Connection,
    periods: list[MetricsFilter],
    reporting: str,
    raw: bool | None,
    by_bucket: bool,
) -> list[Sums]:
    """`_point_sums` as BaseFigures."""
    return [
        {
            key: point if isinstance(point, BaseFigures) else base_of(point)
            for key, point in period.items()
        }
        for period in _point_sums(conn, periods, reporting, raw, by_bucket)
    ]


def _use_raw(f: MetricsFilter, raw: bool | None) -> bool:
    return (not rollups_are_exact(f)) if raw is None else raw


def stream_summary(
    conn: Connection,
    f: MetricsFilter,
    reporting: str,
    *,
    raw: bool | None = None,
    count_unknown_fees: bool = True,
) -> Summary:
    """Per stream over the whole period, the total, the previous period's total, and trust
    counts. `raw` forces the source (None: rollups wherever they are exact).

    `count_unknown_fees`: count the period's charges whose fee is not known yet. That count
    reads one index entry per such charge, so it is only cheap while fees are being fetched
    (STRIPE_API_KEY set: few are pending); without a key every charge is pending and the
    count would cost in proportion to the rows, so callers leave it out (None)."""
    use_raw = _use_raw(f, raw)
    previous = f.previous()
    current, before = _sums(conn, [f, previous], reporting, raw, by_bucket=False)
    rows = [
        StreamRow(stream=stream, base=base, figures=derive(base))
        for (_, stream), base in sorted(current.items(), key=lambda kv: kv[0][1])
    ]
    total_base = BaseFigures()
    for row in rows:
        total_base.add(row.base)
    previous_base = BaseFigures()
    for base in before.values():
        previous_base.add(base)
    trust = _trust(conn, f, rows, total_base, count_unknown_fees)
    return Summary(
        filter=f,
        currency=reporting,
        streams=rows,
        total=derive(total_base),
        total_base=total_base,
        previous_total=derive(previous_base),
        previous_base=previous_base,
        trust=trust,
        source="raw" if use_raw else "rollup",
    )


def stream_timeseries(
    conn: Connection, f: MetricsFilter, reporting: str, *, raw: bool | None = None
) -> list[SeriesPoint]:
    """Per stream and per bucket of the filter's granularity, cut in its time zone; ordered by
    bucket, then stream (`_sums` reads them in that order)."""
    (per_bucket,) = _point_sums(conn, [f], reporting, raw, by_bucket=True)
    return [
        SeriesPoint(bucket=bucket, stream=stream, sums=sums)
        for (bucket, stream), sums in per_bucket.items()
        if bucket is not None
    ]


def _trust(
    conn: Connection,
    f: MetricsFilter,
    rows: list[StreamRow],
    total: BaseFigures,
    count_unknown_fees: bool,
) -> Trust:
    ev, tasks, le = stripe_events.c, execution_tasks.c, ledger_entries.c
    # Matches the partial index ix_ledger_entries_settlement_unknown (migration 0010).
    fee_unknown = [
        le.settlement_amount.is_(None),
        le.kind == "charge",
        le.booked_at >= f.start,
        le.booked_at < f.end,
    ]
    if f.streams:
        fee_unknown.append(le.stream.in_(f.streams))
    failed, fees_unknown, newest_event, newest_task = conn.execute(
        select(
            select(func.count()).where(ev.status == "failed").scalar_subquery(),
            select(func.count()).select_from(ledger_entries).where(*fee_unknown).scalar_subquery()
            if count_unknown_fees
            else null(),
            select(func.max(ev.received_at)).scalar_subquery(),
            select(func.max(tasks.updated_at)).scalar_subquery(),
        )
    ).one()
    unattributed = next((r.figures.net_revenue for r in rows if r.stream == UNATTRIBUTED), None)
    newest = [t for t in (newest_event, newest_task) if t is not None]
    return Trust(
        unattributed_net_revenue=unattributed or Decimal(0),
        unconverted_revenue=dict(total.unconverted_revenue),
        unconverted_cost=dict(total.unconverted_cost),
        unpriced_tasks=total.unpriced_tasks,
        failed_events=int(failed),
        fees_unknown=None if fees_unknown is None else int(fees_unknown),
        as_of=max(newest) if newest else None,
    )


TASK_COUNTERS = ("tasks", "unpriced", "succeeded", "failed", "duration_ms", "durations")


def _detailed_task_rows(f: MetricsFilter, reporting: str, raw: bool) -> Subquery:
    """Task rollup (or raw) rows per stream, AI model and task type over the period, with their
    cost converted (or in `group_currency` where it cannot be), ready to be grouped."""
    keys = ["stream", "ai_model", "task_type", "currency"]
    src = _dated(
        task_source(f, raw, detailed=True, by_bucket=False),
        f,
        reporting,
        False,
        keys,
        ["cost", *TASK_COUNTERS],
        presummed=False,
    )
    joined, rate = _with_fx(src, reporting)
    return (
        select(
            src.c.stream,
            src.c.ai_model,
            src.c.task_type,
            _group_currency(src, rate, reporting, settled=False).label("group_currency"),
            _converted_or_own(src, rate, reporting, "cost", None).label("cost"),
            *[src.c[c] for c in TASK_COUNTERS],
        )
        .select_from(joined)
        .subquery("per_row")
    )


@dataclass
class BreakdownRow:
    """One AI model or one task type over the period."""

    key: str
    tasks: int
    succeeded: int
    failed: int
    success_rate: Decimal | None
    avg_duration_ms: Decimal | None
    p95_duration_ms: Decimal | None
    cost: Decimal
    cost_per_successful_task: Decimal | None
    net_revenue_per_task: Decimal | None
    unpriced_tasks: int
    unconverted_cost: dict[str, Decimal]


def model_breakdown(
    conn: Connection, f: MetricsFilter, reporting: str, *, raw: bool | None = None
) -> dict[str, list[BreakdownRow]]:
    """Per AI model and per task type: tasks, success rate (succeeded / (succeeded + failed)),
    average and p95 duration, cost, cost per successful task, and net revenue per task (each
    stream's net revenue shared equally across that stream's tasks in the period)."""
    # A stream's revenue is shared across all its tasks, whatever the model filter keeps (the
    # ledger has no model: only the task counts change without the model filters).
    (per_stream,) = _sums(conn, [replace(f, ai_models=(), task_types=())], reporting, raw, False)
    net_by_stream = {stream: derive(base).net_revenue for (_, stream), base in per_stream.items()}
    stream_tasks = {stream: base.tasks for (_, stream), base in per_stream.items()}
    p = _detailed_task_rows(f, reporting, _use_raw(f, raw)).c
    query = select(
        p.ai_model,
        p.task_type,
        p.stream,
        p.group_currency.label("currency"),
        *[func.sum(p[c]).label(c) for c in TASK_COUNTERS],
        func.sum(p.cost).label("cost"),
    ).group_by(p.ai_model, p.task_type, p.stream, p.group_currency)
    rows = conn.execute(query).all()
    p95 = _p95_durations(conn, f)
    result: dict[str, list[BreakdownRow]] = {}
    for dimension in ("ai_model", "task_type"):
        acc: dict[str, dict[str, Any]] = defaultdict(
            lambda: defaultdict(int, cost=Decimal(0), revenue=Decimal(0), unconverted={})
        )
        for row in rows:
            a = acc[getattr(row, dimension)]
            for name in ("tasks", "succeeded", "failed", "unpriced", "duration_ms", "durations"):
                a[name] += int(getattr(row, name))
            if row.currency:
                a["unconverted"][row.currency] = (
                    a["unconverted"].get(row.currency, Decimal(0)) + row.cost
                )
            else:
                a["cost"] += row.cost
            if stream_tasks.get(row.stream):
                share = net_by_stream.get(row.stream, Decimal(0)) / stream_tasks[row.stream]
                a["revenue"] += share * int(row.tasks)
        result[dimension] = [
            BreakdownRow(
                key=key,
                tasks=a["tasks"],
                succeeded=a["succeeded"],
                failed=a["failed"],
                success_rate=_ratio(a["succeeded"], a["succeeded"] + a["failed"]),
                avg_duration_ms=_ratio(a["duration_ms"], a["durations"]),
                p95_duration_ms=p95[dimension].get(key),
                cost=a["cost"],
                cost_per_successful_task=_ratio(a["cost"], a["succeeded"]),
                net_revenue_per_task=_ratio(a["revenue"], a["tasks"]),
                unpriced_tasks=a["unpriced"],
                unconverted_cost=a["unconverted"],
            )
            for key, a in sorted(acc.items())
        ]
    return result


def _ratio(numerator: Decimal | int, denominator: Decimal | int) -> Decimal | None:
    return None if not denominator else Decimal(numerator) / Decimal(denominator)


def _p95_durations(conn: Connection, f: MetricsFilter) -> dict[str, dict[str, Decimal]]:
    """Exact 95th percentile of task durations (ms), per model and per task type, from the
    raw tasks (a percentile cannot be summed from rollups)."""
    x = execution_tasks.c
    model = func.coalesce(x.ai_model, "")
    where = and_(
        x.started_at >= f.start,
        x.started_at < f.end,
        x.duration_ms.is_not(None),
        among(x.stream, f.streams),
        among(model, f.ai_models),
        among(x.task_type, f.task_types),
    )
    p95 = func.percentile_cont(0.95).within_group(x.duration_ms)
    out: dict[str, dict[str, Decimal]] = {"ai_model": {}, "task_type": {}}
    for key, value in conn.execute(select(model, p95).where(where).group_by(model)):
        out["ai_model"][key] = Decimal(str(value))
    for key, value in conn.execute(select(x.task_type, p95).where(where).group_by(x.task_type)):
        out["task_type"][key] = Decimal(str(value))
    return out
