"""CSV exports: every ledger movement, the per-stream figures per bucket, and the tasks.

The API (`app/api/export.py`) and the CLI (`app/export_cli.py`) both write what `export_csv`
yields, so a file and a download of the same filters are the same bytes.

Format. UTF-8, a header row, RFC 4180 quoting (a field holding a comma, a quote or a line
break is quoted, quotes doubled). Records end with LF, not RFC 4180's CRLF: the ledger and
task exports are PostgreSQL's `COPY ... (FORMAT csv)`, which always writes LF, and rewriting
every line end in Python would cost a pass over every byte and could not tell a record's end
from a line break inside a quoted field (COPY keeps those verbatim). Every CSV reader finance
uses (Excel, LibreOffice, Google Sheets, pandas, Python's csv) reads LF; the per-stream export,
written by Python's csv module, uses LF too so all three are alike.

Numbers. Money is a decimal string in major units (`12.34`, `-0.50`, `1234` for jpy,
`1.234` for kwd), never a float and never in scientific notation (PostgreSQL's numeric text
and Python's Decimal with a fixed-point format have none). A converted amount keeps every
decimal of its exact conversion (`13.342433`), so the sums of a column equal the metrics
layer's exact sums; rounding happens once, on the total, as the dashboard does. An amount that
cannot be converted (accounting.md, "Money") is an empty cell, never 0.

Formula injection. A text cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage return
gets a single quote in front (`'=HYPERLINK(...)`), as OWASP's CSV-injection guidance advises:
spreadsheets then show the text instead of evaluating it, and the quote is visible, so the
change is plain to a reader rather than silent. Stream names are free text (Stripe metadata,
task intake) and Stripe ids arrive in payloads, so every text column is treated; numeric and
time columns are not, so `-12.34` stays a negative number (a number cannot carry a formula).

Reading. Every export reads one snapshot (REPEATABLE READ), however long the download takes.
PostgreSQL formatting the cells is what a ledger or tasks export waits for, on one core per
COPY, so one that PostgreSQL estimates at SEGMENTED_MIN_ROWS (100,000) rows or more is cut
by time into two periods of about equal rows (from the time column's `pg_stats` histogram: no
count) that are COPYed at once (`_segmented_csv`): the first on the export's connection,
streamed as it comes; the second on another connection that imports the first one's snapshot
(`pg_export_snapshot`, `SET TRANSACTION SNAPSHOT`), written to a temporary file (one chunk in
memory) until its turn. The periods are half-open, so a row booked exactly at the cut is in
the second only, and the bytes are those of one COPY: one header, the rows in order. One such
export runs at a time per process (others are one COPY), so an export takes at most one
connection more from the pool. Closing the generator early, or an error in either COPY, cancels
both and returns both connections; the error is raised to the reader, before the first chunk
when the second connection could not start. 1M ledger rows over HTTP, in times the same-run
`psql \\copy` of the rows: 2.2-2.7x as one COPY, 1.2-1.6x segmented (docs/performance.md).

Stored cells. What a ledger row's cells are depends mostly on the export (its zone, the
reporting currency, the FX rates), but its amount in major units, and its settled amount and
the rate that implies, depend on the row alone: the ledger stores those as text (generated
columns, migration 0015) and the export takes them where they are what its rules write.
"""

from __future__ import annotations

import bisect
import contextlib
import csv
import io
import itertools
import logging
import tempfile
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import errors, generators, pq, sql
from psycopg.abc import Buffer
from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Engine,
    Select,
    String,
    Subquery,
    and_,
    bindparam,
    case,
    cast,
    func,
    literal,
    literal_column,
    select,
)

from app.metrics.conversion import FX, Amount, fx_rate_of, with_fx_rate
from app.metrics.filters import MetricsFilter
from app.metrics.sources import among, utc_day
from app.models import execution_tasks, ledger_entries
from app.money import by_exponent, exponent, minor_to_major_factor

log = logging.getLogger(__name__)

# The origin `date_bin` counts whole seconds from. Before every real instant: PostgreSQL 16.2
# (the embedded server's version) bins instants before the origin one second early, so with
# 2000-01-01 a whole second in 1970 was written with fractions.
A_WHOLE_SECOND: ColumnElement[datetime] = literal_column("'0001-01-01 00:00:00+00'::timestamptz")
# From this instant on, some zone's local year may have five digits (`_iso_time`).
NEAR_YEAR_10000: ColumnElement[datetime] = literal_column("'9999-12-31 00:00:00+00'::timestamptz")
# OWASP's list of the characters a spreadsheet reads as the start of a formula.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# Bytes handed to the HTTP response or the file at a time: large enough that per-chunk costs
# (a thread hop, a socket write) vanish, small enough that memory stays flat.
CHUNK_BYTES = 256 * 1024
EXPORTS = ("ledger", "streams", "tasks")
# The names of the bind parameters holding the period of the ledger and tasks exports.
PERIOD_START, PERIOD_END = "period_start", "period_end"


def neutralised(text: str) -> str:
    """`text` as a spreadsheet will show it: a leading formula character gets a quote."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def _neutralised_sql(column: ColumnElement[Any]) -> ColumnElement[str]:
    """The SQL twin of `neutralised`, so COPY writes cells already safe.

    Run on every text cell, so it is cheap: the first character is tested by its code (`ascii`:
    an integer; 0 for '', NULL for NULL) rather than cut out as text (`left`) and compared as
    strings, and since every formula character is at or below `@` (64) while ids and names
    mostly start with a letter, one integer comparison settles most cells before the list."""
    codes = sorted(ord(c) for c in FORMULA_STARTS)
    first = func.ascii(column)
    starts: list[ColumnElement[int]] = [literal_column(str(code)) for code in codes]
    formula = and_(first <= literal_column(str(codes[-1])), first.in_(starts))
    return case((formula, literal_column("''''") + column), else_=column)


def _decimal_text(
    value: ColumnElement[Any], places: ColumnElement[int] | int
) -> ColumnElement[str]:
    """An exact decimal without trailing zeros beyond `places` decimals: 13.342433000 ->
    13.342433, 12.000 -> 12.00 (places 2). PostgreSQL's numeric text has no exponent."""
    return cast(
        func.round(value, func.greatest(func.scale(func.trim_scale(value)), places)), String
    )


def _iso_time(
    ts: ColumnElement[datetime], as_text: ColumnElement[str] | None = None
) -> ColumnElement[str]:
    """ISO 8601 with the offset, in the session's time zone (set to the filter's zone for the
    export): what Python's `datetime.isoformat()` writes, fractions only when there are any.
    `ts` is a timestamptz; needs DateStyle ISO, which `_prepare_session` sets. `as_text` is
    `ts::text` worked out by an inner query level, where there is one: it is used twice here,
    and a column is worked out once where an expression would be twice (the ledger export:
    4-6% less of PostgreSQL's CPU, measured on 1M rows).

    Most times are written from PostgreSQL's own text of the instant (`ts::text`,
    `2026-03-10 06:59:59.123456-05`): the space becomes a `T` and the offset gets its
    minutes. On the slow box that text costs 0.27 us a row against 1.26 us for `to_char`, and
    the whole cell with its checks 0.8-0.9 us. That is exact for a whole-hour offset (`+HH`)
    with no fraction or all six digits of one, which the text's length tells. The text is 19
    characters, the fraction's 2-7 (a dot and 1-6 digits, trailing zeros trimmed) if any, the
    offset's 3, 6 or 9, one or two more for a year past 9999, three for ` BC`:
    - 22 is only a whole second with `+HH`;
    - 29 is six digits with `+HH`, or a whole millisecond (three digits with `+HH:MM`, in
      Kolkata say; or ` BC` or a longer year with a whole-millisecond fraction or none),
      which six digits never are, or a year past 9999 (from 9999-12-31 UTC on: no zone is
      more than 16 hours ahead), both of which go to `to_char`.
    Everything else (a fraction with trailing zeros trimmed, a `+HH:MM` offset) is written
    by `to_char`.

    A whole second or millisecond is told by `date_bin` (arithmetic on the instant) rather
    than `date_trunc`, which goes to the local time of the session's zone and back: the same
    answer, since zone offsets are whole seconds, at a fraction of the cost."""

    def whole(unit: str) -> ColumnElement[bool]:
        return func.date_bin(literal_column(f"'1 {unit}'::interval"), ts, A_WHOLE_SECOND) == ts

    text = cast(ts, String) if as_text is None else as_text
    with_t = func.replace(text, literal_column("' '"), literal_column("'T'"), type_=String)
    from_text = with_t.concat(literal_column("':00'"))
    by_to_char = func.to_char(
        ts,
        case(
            (whole("second"), literal_column("'YYYY-MM-DD\"T\"HH24:MI:SSTZH:TZM'")),
            else_=literal_column("'YYYY-MM-DD\"T\"HH24:MI:SS.USTZH:TZM'"),
        ),
    )
    six_digits = and_(ts < NEAR_YEAR_10000, ~whole("millisecond"))
    # The length as the CASE's operand: worked out once, not once per WHEN.
    return case(
        {22: from_text, 29: case((six_digits, from_text), else_=by_to_char)},
        value=func.octet_length(text),
        else_=by_to_char,
    )


def _converted_columns(
    money: Amount, reporting: str, *, whole_minor_units: bool
) -> tuple[ColumnElement[str], ColumnElement[str], ColumnElement[str | None]]:
    """reporting_amount (major units, exact), rate, conversion rule: from the same rules the
    metrics layer sums (app/metrics/conversion.py).

    With `whole_minor_units` (ledger amounts: integers), an amount that is not converted by
    a rate already has exactly the reporting currency's decimals once scaled, so only an FX
    conversion pays for trimming its trailing zeros (a tenth of the rows, not all of them)."""
    places = exponent(reporting)
    to_major: ColumnElement[Decimal] = literal_column(f"{Decimal(10) ** -places:f}")
    whens = [
        (
            when,
            cast(minor * to_major, String)
            if whole_minor_units and name != FX
            else _decimal_text(minor * to_major, places),
        )
        for name, when, minor in money.rules(reporting)
    ]
    return (
        case(*whens),
        cast(func.trim_scale(money.rate_used(reporting)), String),
        money.rule(reporting),
    )


def _ledger_converted_columns(
    movement: Subquery, reporting: str
) -> tuple[ColumnElement[str], ColumnElement[str], ColumnElement[str | None]]:
    """`_converted_columns` of a ledger row, taking the texts the row stores (migration 0015)
    where they are what a rule writes: the settled amount and the rate it implies when it
    settled in the reporting currency (rule `settlement`), the amount and a rate of 1 when it
    is in that currency (`same`). So only the other rows (an FX conversion, a zero amount
    with no currency) are worked out by each export."""
    m = movement.c
    money = Amount(
        amount=m.amount,
        currency=m.currency,
        rate=m.fx_rate,
        settled=m.settlement_amount,
        settlement_currency=m.settlement_currency,
    )
    reporting_amount, rate_used, rule = _converted_columns(money, reporting, whole_minor_units=True)
    settled_in_reporting = m.settlement_currency == reporting
    return (
        case(
            (settled_in_reporting, m.settlement_major),
            (m.currency == reporting, m.amount_major),
            else_=reporting_amount,
        ),
        case(
            (settled_in_reporting, m.settlement_rate),
            (m.currency == reporting, literal_column("'1'")),
            else_=rate_used,
        ),
        rule,
    )


def _in_period(time: ColumnElement[datetime], f: MetricsFilter) -> list[ColumnElement[bool]]:
    """[f.start, f.end) on `time`, as two named parameters: a segmented export runs one compiled
    statement over each of its periods by changing only these (`_segmented_csv`)."""
    return [
        time >= bindparam(PERIOD_START, f.start, type_=time.type),
        time < bindparam(PERIOD_END, f.end, type_=time.type),
    ]


def _ledger_filter(f: MetricsFilter) -> list[ColumnElement[bool]]:
    le = ledger_entries.c
    return [*_in_period(le.booked_at, f), among(le.stream, f.streams)]


def ledger_query(f: MetricsFilter, reporting: str) -> Select[Any]:
    """Every ledger movement booked in the period (and streams) of `f`, one row each, oldest
    first. Model and task-type filters do not apply: revenue has no model, as in the metrics.

    Two levels. The inner one reads the rows in order and looks up the FX rate for the rows
    that need one (those no earlier rule converts: `Amount.rate_for_fx`), once per row rather
    than joining every row to `fx_rates`; its ORDER BY also keeps PostgreSQL from merging it
    into the outer level, which would repeat the lookup in each expression using the rate.
    The outer level formats the cells from the inner one's columns.

    `reporting` is a lower-case code, as settings hold it: the SQL compares codes as stored."""
    if reporting != reporting.lower():
        raise ValueError(f"reporting currency {reporting!r}: expected a lower-case ISO code")
    le = ledger_entries.c
    looked_up = Amount(
        amount=le.amount,
        currency=le.currency,
        rate=fx_rate_of(utc_day(le.booked_at), le.currency, reporting),
        settled=le.settlement_amount,
        settlement_currency=le.settlement_currency,
    )
    movements = (
        select(
            le.booked_at,
            cast(le.booked_at, String).label("booked_at_text"),  # in the export's zone
            le.stream,
            le.kind,
            le.entry_key,
            le.event_id,
            le.charge_id,
            le.object_id,
            le.balance_transaction,
            le.amount,
            le.currency,
            le.settlement_amount,
            le.settlement_currency,
            le.amount_major,
            le.settlement_major,
            le.settlement_rate,
            looked_up.rate_for_fx(reporting).label("fx_rate"),
        )
        .where(*_ledger_filter(f))
        .order_by(le.booked_at, le.entry_key)
        .subquery("movement")
    )
    m = movements.c
    reporting_amount, rate_used, rule = _ledger_converted_columns(movements, reporting)
    text = _neutralised_sql
    # The refund or dispute object; a refund seen only on its charge (`ch_...:refunded`) has
    # none of its own yet.
    refund_or_dispute = case(
        (and_(m.kind.in_(("refund", "dispute")), m.object_id != m.charge_id), text(m.object_id))
    )
    return select(
        _iso_time(m.booked_at, m.booked_at_text).label("time"),
        text(m.stream).label("stream"),
        m.kind.label("kind"),
        text(m.entry_key).label("entry_key"),
        text(m.event_id).label("event_id"),
        text(m.charge_id).label("charge_id"),
        refund_or_dispute.label("refund_or_dispute_id"),
        text(m.balance_transaction).label("balance_transaction_id"),
        m.amount_major.label("amount"),
        text(m.currency).label("currency"),
        reporting_amount.label("reporting_amount"),
        literal(reporting).label("reporting_currency"),
        rate_used.label("rate"),
        rule.label("conversion"),
    ).order_by(m.booked_at, m.entry_key)  # the inner level's order: no second sort


def tasks_query(f: MetricsFilter, reporting: str) -> Select[Any]:
    """Every task started in the period of `f` (and its streams, models, task types), with its
    effective cost (as sent, else as priced), where that came from, and its conversion."""
    x = execution_tasks.c
    currency = func.coalesce(x.cost_currency, x.priced_currency)  # NULL: unpriced
    cost = func.coalesce(x.cost_amount, x.priced_amount)
    joined, rate = with_fx_rate(execution_tasks, utc_day(x.started_at), currency, reporting)
    money = Amount(amount=cost, currency=currency, rate=rate)
    reporting_cost, rate_used, rule = _converted_columns(money, reporting, whole_minor_units=False)
    text = _neutralised_sql
    return (
        select(
            _iso_time(x.started_at).label("started_at"),
            _iso_time(x.finished_at).label("finished_at"),
            text(x.external_id).label("external_id"),
            text(x.stream).label("stream"),
            text(x.task_type).label("task_type"),
            text(x.ai_model).label("ai_model"),
            x.status.label("status"),
            x.duration_ms,
            x.tokens_in,
            x.tokens_out,
            cast(func.trim_scale(x.gpu_seconds), String).label("gpu_seconds"),
            _decimal_text(cost * minor_to_major_factor(currency), _places(currency)).label("cost"),
            text(currency).label("currency"),
            x.cost_source.label("cost_source"),
            reporting_cost.label("reporting_cost"),
            literal(reporting).label("reporting_currency"),
            rate_used.label("rate"),
            rule.label("conversion"),
        )
        .select_from(joined)
        .where(
            *_in_period(x.started_at, f),
            among(x.stream, f.streams),
            among(func.coalesce(x.ai_model, ""), f.ai_models),
            among(x.task_type, f.task_types),
        )
        .order_by(x.started_at, x.external_id)
    )


def _places(currency: ColumnElement[str]) -> ColumnElement[int]:
    return by_exponent(
        currency, zero=literal_column("0"), three=literal_column("3"), other=literal_column("2")
    )


def _compiled(conn: Connection, query: Select[Any]) -> tuple[str, dict[str, Any]]:
    """`query` as psycopg takes it: SQL with %(name)s placeholders and their values."""
    compiled = query.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    return str(compiled), dict(compiled.params)


def _copy_statement(select_sql: str, *, header: bool = True) -> str:
    """`COPY (select_sql) TO STDOUT`, its parameters bound client-side by psycopg (COPY cannot
    take server-side parameters)."""
    return f"COPY ({select_sql}) TO STDOUT WITH (FORMAT csv{', HEADER' if header else ''})"


def _prepare_session(conn: Connection, f: MetricsFilter, *, jit: bool) -> None:
    """The export's session settings, LOCAL (only for this transaction), so a pooled
    connection goes back as it was: times in the filter's zone, in ISO DateStyle (`_iso_time`
    starts from it); COPY writes in the client encoding: UTF-8.

    With `jit` (an export of JIT_MIN_ROWS or more), JIT compiled but not optimised, whatever
    the server's or the role's `jit`; else none. The planner prices the ledger's FX lookup as
    if every row ran it, so left to its thresholds it would pick LLVM's inlining and
    optimisation too (0.1-0.2 s, which one streaming pass never wins back). A server without
    LLVM ignores the setting."""
    conn.exec_driver_sql(
        "SELECT set_config('TimeZone', %(tz)s, true), set_config('DateStyle', 'ISO', true),"
        " set_config('client_encoding', 'UTF8', true), set_config('jit', %(jit)s, true),"
        " set_config('jit_above_cost', '0', true), set_config('jit_inline_above_cost', '-1', true),"
        " set_config('jit_optimize_above_cost', '-1', true)",
        {"tz": f.tz.key, "jit": "on" if jit else "off"},
    )


def _driver(conn: Connection) -> psycopg.Connection[Any]:
    driver = conn.connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    return driver


def _copy_rows(driver: psycopg.Connection[Any], copy: psycopg.Copy) -> Iterator[Buffer]:
    """The rows of a running `COPY ... TO STDOUT`, as `copy` would give them, for half the
    Python CPU: a row libpq has already received is taken from it directly (one call), and
    only when none has arrived does psycopg's `Copy.read` run its per-row machinery (a
    generator driven through `wait`: about 0.8 us more per row here), waiting for the server
    with the GIL released. That CPU counts once two COPYs and their reader share two cores.

    When libpq reports the end of the COPY (a completion or an error), its result is read as
    psycopg's own `copy_from` reads it (`fetch_many`, then `error_from_result`: the same
    error classes), so a failed COPY raises as before. Leaving early is psycopg's business as
    before: the COPY has not ended, so `Copy.__exit__` cancels it and drains what is left."""
    pgconn = driver.pgconn
    while True:
        size, row = pgconn.get_copy_data(1)  # asynchronous: 0 when no row is there yet
        if size > 0:
            yield row
        elif size == 0:
            if not (waited := copy.read()):
                return
            yield waited
        else:
            results = driver.wait(generators.fetch_many(pgconn))
            if len(results) != 1 or results[0].status != pq.ExecStatus.COMMAND_OK:
                raise errors.error_from_result(results[0], encoding=driver.info.encoding)
            return


def _copy_chunks(
    driver: psycopg.Connection[Any], statement: str, params: dict[str, Any]
) -> Generator[bytes]:
    """The output of the COPY `statement` in chunks of about CHUNK_BYTES. COPY hands over one
    row at a time; gathering them keeps the number of writes (and, over HTTP, of thread hops)
    per export small while memory stays at one chunk."""
    with driver.cursor() as cursor, cursor.copy(statement, params) as copy:
        buffer = bytearray()
        for data in _copy_rows(driver, copy):
            buffer += data
            if len(buffer) >= CHUNK_BYTES:
                yield bytes(buffer)
                buffer.clear()
        if buffer:
            yield bytes(buffer)


# ---------------------------------------------------------------------------------------------
# Segmented exports: one export COPYed in consecutive periods, on two connections at once

# How many periods a large ledger or tasks export is cut into, each COPYed on a connection of
# its own at the same time. PostgreSQL formats the cells on one core per COPY, and that, not
# Python, is what an export waits for (docs/performance.md, "CSV export"); the machines here
# have 2 cores.
SEGMENTS = 2
# From this many rows (PostgreSQL's estimate) on, an export's expressions and tuple deforming
# are JIT-compiled (`_prepare_session`): 7% less of PostgreSQL's CPU for 1M ledger rows, for
# about 40 ms of compiling per connection (both measured on the slow box), so it pays from
# about 100,000 rows a connection, which a segmented export of this many has.
JIT_MIN_ROWS = 200_000
# Below this many rows (PostgreSQL's estimate) an export is one plain COPY: there a second
# connection, a snapshot and a thread would cost about what they save.
SEGMENTED_MIN_ROWS = 100_000
# A later segment waits for its turn in a temporary file; this much of it may stay in memory.
# One chunk: a segment holds 50,000 rows or more (7 MB of ledger CSV), so it goes to disk
# anyway, and a larger buffer only adds to the peak (4 MiB: +4 MB, and its copy on rollover).
SPOOL_MEMORY_BYTES = CHUNK_BYTES
# Segmented exports at once in this process: one. A second at the same time would find the
# cores busy with the first, so it could only lose, and this bounds what exports take from the
# connection pool (`ROI_DB_POOL_SIZE`) to one connection each plus one. An export that finds
# the slot taken is one plain COPY, as before.
_segmented_slots = threading.BoundedSemaphore(1)


@dataclass(frozen=True)
class _TimeOrdered:
    """A COPY export whose rows are ordered by `time` first and selected by
    `f.start <= time < f.end` through the PERIOD_START and PERIOD_END parameters: its
    statement over consecutive periods gives consecutive runs of its rows."""

    time: Column[datetime]
    query: Callable[[MetricsFilter, str], Select[Any]]


TIME_ORDERED = {
    "ledger": _TimeOrdered(ledger_entries.c.booked_at, ledger_query),
    "tasks": _TimeOrdered(execution_tasks.c.started_at, tasks_query),
}


@dataclass(frozen=True)
class SegmentPlan:
    """How an export is cut: the instants between consecutive segments (none: one COPY), and
    PostgreSQL's estimate of its rows (from its statistics, as for a query plan)."""

    cuts: tuple[datetime, ...]
    estimated_rows: int


def equal_row_cuts(
    bounds: Sequence[datetime], start: datetime, end: datetime, parts: int
) -> tuple[datetime, ...]:
    """Up to `parts - 1` instants cutting [start, end) into periods of about equal rows, read
    off a histogram of the time column (`bounds`, as `pg_stats.histogram_bounds`: an equal
    share of the rows between each pair of neighbours, spread evenly in between, as the
    planner assumes). Increasing and strictly inside (start, end); none when the histogram
    knows nothing of the period. Any instants are correct cuts (the periods are half-open, so
    each row falls in exactly one, ties at a cut in the later); good ones balance the work."""
    buckets = len(bounds) - 1
    if buckets < 1 or parts < 2:
        return ()

    def share_before(t: datetime) -> float:
        if t <= bounds[0]:
            return 0.0
        if t >= bounds[-1]:
            return 1.0
        j = bisect.bisect_right(bounds, t) - 1  # bounds[j] <= t < bounds[j + 1]
        return (j + (t - bounds[j]) / (bounds[j + 1] - bounds[j])) / buckets

    def instant_at(share: float) -> datetime:
        j = min(int(share * buckets), buckets - 1)
        return bounds[j] + (bounds[j + 1] - bounds[j]) * (share * buckets - j)

    first, last = share_before(start), share_before(end)
    cuts: list[datetime] = []
    for k in range(1, parts):
        cut = instant_at(first + (last - first) * k / parts)
        if start < cut < end and (not cuts or cut > cuts[-1]):
            cuts.append(cut)
    return tuple(cuts)


def plan_segments(
    conn: Connection,
    time: Column[datetime],
    select_sql: str,
    params: dict[str, Any],
    f: MetricsFilter,
) -> SegmentPlan:
    """Where to cut the export `select_sql` (over `f`'s period) into SEGMENTS periods of about
    equal rows, from PostgreSQL's statistics alone: its row estimate for the statement and
    the histogram of `time`. A few milliseconds, where counting the rows or finding the middle
    one would read an index entry per row (0.1-0.2 s per million). Without statistics (a table
    never ANALYZEd) there is no histogram, so no cut: one COPY."""
    plan = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + select_sql, params).scalar_one()
    estimated = int(plan[0]["Plan"]["Plan Rows"])
    if estimated < SEGMENTED_MIN_ROWS:
        return SegmentPlan((), estimated)
    bounds = conn.exec_driver_sql(
        "SELECT histogram_bounds::text::timestamptz[] FROM pg_stats"
        " WHERE schemaname = current_schema() AND tablename = %(table)s"
        " AND attname = %(column)s AND NOT inherited",
        {"table": time.table.name, "column": time.name},
    ).scalar()
    return SegmentPlan(equal_row_cuts(bounds or (), f.start, f.end, SEGMENTS), estimated)


class ExportAbandoned(Exception):
    """The reader of a segmented export gave up (its `abandoned` event was set) while the export
    waited for a later segment: nothing more will be read."""


class _Stopped(Exception):
    """Raised inside a segment's COPY to leave it early (psycopg then cancels it)."""


class _SpooledSegment:
    """A later segment of a segmented export: COPYed on a connection of its own, in the
    snapshot exported by the export's first connection (so all segments read the same data),
    into a temporary file while the segments before it stream out, and written out in turn.

    Its thread holds the connection from checkout to return. `stop` cancels the COPY from the
    caller's thread, only while that COPY runs (so a cancel cannot hit what the connection does
    next), then waits for the thread, so the connection is back in the pool when it returns."""

    def __init__(self, engine: Engine, statement: str, params: dict[str, Any],
                 f: MetricsFilter, snapshot: str, *, jit: bool) -> None:  # fmt: skip
        # Closed by `stop`: the file lives as long as the segment, not this call.
        self.file = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)  # noqa: SIM115
        # Set once the connection is in the snapshot and the COPY is sent, or on an error.
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._copying: psycopg.Connection[Any] | None = None
        self._stopped = False
        self._thread = threading.Thread(
            target=self._run, args=(engine, statement, params, f, snapshot, jit),
            name="export-segment", daemon=True,
        )  # fmt: skip
        self._thread.start()

    def _run(self, engine: Engine, statement: str, params: dict[str, Any],
             f: MetricsFilter, snapshot: str, jit: bool) -> None:  # fmt: skip
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                driver = _driver(conn)
                driver.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
                _prepare_session(conn, f, jit=jit)
                with self._lock:
                    if self._stopped:
                        return
                    self._copying = driver
                try:
                    self.ready.set()
                    for chunk in _copy_chunks(driver, statement, params):
                        if self._stopped:
                            raise _Stopped
                        self.file.write(chunk)
                finally:
                    with self._lock:
                        self._copying = None
        except BaseException as exc:  # for the export's reader, which raises it
            if not self._stopped:
                self.error = exc
        finally:
            self.ready.set()
            self._done.set()

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def chunks(self, abandoned: threading.Event | None) -> Iterator[bytes]:
        """The segment's CSV once its COPY has ended, or its error. While it waits, a reader
        that gave up (`abandoned`) gets ExportAbandoned within a tenth of a second."""
        while not self._done.wait(0.1):
            if abandoned is not None and abandoned.is_set():
                raise ExportAbandoned
        self.raise_error()
        self.file.seek(0)
        while block := self.file.read(CHUNK_BYTES):
            yield block

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
        # Again each second while the COPY runs: a cancel that reached the server before the
        # COPY did (it was being sent) is ignored there.
        while self._thread.is_alive():
            with self._lock:
                if self._copying is not None:
                    try:
                        self._copying.cancel_safe(timeout=5)
                    except psycopg.Error as exc:  # the COPY then runs to its end
                        log.warning("could not cancel an export segment's COPY: %s", exc)
            self._thread.join(1)
        self.file.close()


def _segmented_csv(
    engine: Engine,
    conn: Connection,
    select_sql: str,
    params: dict[str, Any],
    f: MetricsFilter,
    cuts: Sequence[datetime],
    abandoned: threading.Event | None,
    *,
    jit: bool,
) -> Iterator[bytes]:
    """The export `select_sql` as one COPY per period between `cuts`, all at once: the first on
    `conn` (in its REPEATABLE READ transaction), streamed as it comes; each later one on a
    connection of its own that imports `conn`'s snapshot, spooled until its turn. The bytes of
    one COPY of the whole period: one header, then the rows in order. An error in any segment
    is raised here; closing the generator cancels every COPY and gives every connection back."""
    periods = [
        {**params, PERIOD_START: start, PERIOD_END: end}
        for start, end in itertools.pairwise([f.start, *cuts, f.end])
    ]
    snapshot = conn.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one()
    rest = _copy_statement(select_sql, header=False)
    later: list[_SpooledSegment] = []
    try:
        later.extend(_SpooledSegment(engine, rest, p, f, snapshot, jit=jit) for p in periods[1:])
        _prepare_session(conn, f, jit=jit)
        first = _copy_chunks(_driver(conn), _copy_statement(select_sql), periods[0])
        with contextlib.closing(first):
            for n, chunk in enumerate(first):
                if n == 0:
                    # Before the first byte leaves (the API answers with its status then): the
                    # other segments have a connection in the snapshot, or their error is the
                    # export's.
                    for segment in later:
                        segment.ready.wait()
                for segment in later:
                    segment.raise_error()
                yield chunk
        for segment in later:
            yield from segment.chunks(abandoned)
    finally:
        for segment in later:
            segment.stop()


def _time_ordered_csv(
    engine: Engine,
    conn: Connection,
    export: _TimeOrdered,
    f: MetricsFilter,
    reporting: str,
    on_row_estimate: Callable[[int], None] | None,
    abandoned: threading.Event | None,
) -> Iterator[bytes]:
    select_sql, params = _compiled(conn, export.query(f, reporting))
    plan = plan_segments(conn, export.time, select_sql, params, f)
    if on_row_estimate is not None:
        on_row_estimate(plan.estimated_rows)
    jit = plan.estimated_rows >= JIT_MIN_ROWS
    if plan.cuts and _segmented_slots.acquire(blocking=False):
        try:
            yield from _segmented_csv(
                engine, conn, select_sql, params, f, plan.cuts, abandoned, jit=jit
            )
        finally:
            _segmented_slots.release()
    else:
        _prepare_session(conn, f, jit=jit)
        yield from _copy_chunks(_driver(conn), _copy_statement(select_sql), params)


STREAM_COLUMNS = (
    "bucket", "stream", "currency", "gross", "refunds", "disputes", "fees", "net_revenue",
    "task_cost", "cost", "margin", "margin_pct", "roi", "tasks", "unpriced_tasks",
)  # fmt: skip


def streams_csv(conn: Connection, f: MetricsFilter, reporting: str) -> Iterator[bytes]:
    """Per stream and bucket, the figures exactly as `GET /api/metrics/timeseries` presents
    them (the same `presented_points`); an undefined ratio is an empty cell. Its size is
    bounded by the buckets (at most MAX_BUCKETS) times the streams, so it is built from the
    metrics layer's list rather than streamed from the database."""
    # Only here: the ledger and tasks exports (and `roi export` of them) do without FastAPI.
    from app.api.metrics import presented_points

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(STREAM_COLUMNS)
    for point in presented_points(conn, f, reporting):
        writer.writerow(
            [
                point["bucket"].isoformat(),
                neutralised(point["stream"]),
                reporting,
                *["" if point[c] is None else point[c] for c in STREAM_COLUMNS[3:]],
            ]
        )
        if out.tell() >= CHUNK_BYTES:
            yield out.getvalue().encode()
            out.seek(0)
            out.truncate()
    yield out.getvalue().encode()


@dataclass(frozen=True)
class ExportRequest:
    """One export to write: which, with what filters, in which reporting currency."""

    name: str  # one of EXPORTS
    filter: MetricsFilter
    reporting: str

    @property
    def filename(self) -> str:
        start = self.filter.start.astimezone(self.filter.tz).date().isoformat()
        end = self.filter.end.astimezone(self.filter.tz).date().isoformat()
        return f"roi-{self.name}-{start}-{end}.csv"


def export_csv(
    engine: Engine,
    request: ExportRequest,
    *,
    on_row_estimate: Callable[[int], None] | None = None,
    abandoned: threading.Event | None = None,
) -> Generator[bytes]:
    """The CSV bytes of `request`, in chunks, read in one snapshot (REPEATABLE READ: consistent
    however long the download takes). A large ledger or tasks export is COPYed in segments on
    two connections at once (`_segmented_csv`), any other on one. Every connection is rolled
    back and returned to the pool at the end, or when the reader stops early (closing the
    generator cancels the COPYs).

    `on_row_estimate` (for a progress bar) is called before the first chunk with PostgreSQL's
    estimate of the data rows, from its statistics (the segments are planned from it, so it
    costs nothing more; an exact count would read an index entry per row); not for the
    per-stream export, whose rows only exist once the metrics layer has summed them.

    `abandoned`: set, from another thread, by a reader that will read no more (a client that
    hung up). Closing the generator needs it suspended, which it is not while it waits for a
    later segment; there it raises ExportAbandoned instead, so it can be closed at once."""
    f, reporting = request.filter, request.reporting
    with engine.connect() as conn:
        conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        if request.name in TIME_ORDERED:
            export = TIME_ORDERED[request.name]
            yield from _time_ordered_csv(
                engine, conn, export, f, reporting, on_row_estimate, abandoned
            )
        else:
            yield from streams_csv(conn, f, reporting)
