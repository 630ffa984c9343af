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
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Select,
    String,
    and_,
    case,
    cast,
    func,
    literal,
    literal_column,
    select,
)
from sqlalchemy.types import Date

from app.api.metrics import presented_points
from app.metrics.conversion import FX, Amount, by_exponent, fx_rate_of, with_fx_rate
from app.metrics.filters import MetricsFilter
from app.models import execution_tasks, ledger_entries
from app.money import exponent

# The origin `date_bin` counts whole seconds from. Before every real instant: PostgreSQL 16.2
# (the embedded server's version) bins instants before the origin one second early, so with
# 2000-01-01 a whole second in 1970 was written with fractions.
A_WHOLE_SECOND: ColumnElement[datetime] = literal_column("'0001-01-01 00:00:00+00'::timestamptz")
# OWASP's list of the characters a spreadsheet reads as the start of a formula.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# Bytes handed to the HTTP response or the file at a time: large enough that per-chunk costs
# (a thread hop, a socket write) vanish, small enough that memory stays flat.
CHUNK_BYTES = 256 * 1024
EXPORTS = ("ledger", "streams", "tasks")


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


def _minor_to_major_factor(currency: ColumnElement[str]) -> ColumnElement[Decimal]:
    """10 ** -exponent(currency) as an exact numeric literal: minor units times it are major
    units with exactly the currency's decimals (1234 * 0.01 = 12.34)."""
    return by_exponent(
        currency,
        zero=literal_column("1::numeric"),
        three=literal_column("0.001"),
        other=literal_column("0.01"),
    )


def _decimal_text(
    value: ColumnElement[Any], places: ColumnElement[int] | int
) -> ColumnElement[str]:
    """An exact decimal without trailing zeros beyond `places` decimals: 13.342433000 ->
    13.342433, 12.000 -> 12.00 (places 2). PostgreSQL's numeric text has no exponent."""
    return cast(
        func.round(value, func.greatest(func.scale(func.trim_scale(value)), places)), String
    )


def _iso_time(ts: ColumnElement[Any]) -> ColumnElement[str]:
    """ISO 8601 with the offset, in the session's time zone (set to the filter's zone for the
    export): what Python's `datetime.isoformat()` writes, fractions only when there are any.

    A whole second is told by `date_bin` (arithmetic on the instant) rather than
    `date_trunc('second', ...)`, which goes to the local time of the session's zone and back:
    the same answer, since zone offsets are whole seconds, at a fraction of the cost."""
    whole_second = func.date_bin(literal_column("'1 second'::interval"), ts, A_WHOLE_SECOND) == ts
    return func.to_char(
        ts,
        case(
            (whole_second, literal_column("'YYYY-MM-DD\"T\"HH24:MI:SSTZH:TZM'")),
            else_=literal_column("'YYYY-MM-DD\"T\"HH24:MI:SS.USTZH:TZM'"),
        ),
    )


def _utc_day(ts: ColumnElement[Any]) -> ColumnElement[Any]:
    """The UTC day whose FX rate applies (the metrics layer uses the same)."""
    return cast(func.timezone("UTC", ts), Date)


def _in(column: ColumnElement[str], values: tuple[str, ...]) -> ColumnElement[bool]:
    return column.in_(values) if values else literal(True)


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


def _ledger_filter(f: MetricsFilter) -> list[ColumnElement[bool]]:
    le = ledger_entries.c
    return [le.booked_at >= f.start, le.booked_at < f.end, _in(le.stream, f.streams)]


def ledger_query(f: MetricsFilter, reporting: str) -> Select[Any]:
    """Every ledger movement booked in the period (and streams) of `f`, one row each, oldest
    first. Model and task-type filters do not apply: revenue has no model, as in the metrics.

    Two levels. The inner one reads the rows in order and looks up the FX rate for the rows
    that need one (those no earlier rule converts: `Amount.rate_for_fx`), once per row rather
    than joining every row to `fx_rates`; its ORDER BY also keeps PostgreSQL from merging it
    into the outer level, which would repeat the lookup in each expression using the rate.
    The outer level formats the cells from the inner one's columns."""
    le = ledger_entries.c
    looked_up = Amount(
        amount=le.amount,
        currency=le.currency,
        rate=fx_rate_of(_utc_day(le.booked_at), le.currency, reporting),
        settled=le.settlement_amount,
        settlement_currency=le.settlement_currency,
    )
    movements = (
        select(
            le.booked_at,
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
            looked_up.rate_for_fx(reporting).label("fx_rate"),
        )
        .where(*_ledger_filter(f))
        .order_by(le.booked_at, le.entry_key)
        .subquery("movement")
    )
    m = movements.c
    money = Amount(
        amount=m.amount,
        currency=m.currency,
        rate=m.fx_rate,
        settled=m.settlement_amount,
        settlement_currency=m.settlement_currency,
    )
    reporting_amount, rate_used, rule = _converted_columns(money, reporting, whole_minor_units=True)
    text = _neutralised_sql
    # The refund or dispute object; a refund seen only on its charge (`ch_...:refunded`) has
    # none of its own yet.
    refund_or_dispute = case(
        (and_(m.kind.in_(("refund", "dispute")), m.object_id != m.charge_id), text(m.object_id))
    )
    return select(
        _iso_time(m.booked_at).label("time"),
        text(m.stream).label("stream"),
        m.kind.label("kind"),
        text(m.entry_key).label("entry_key"),
        text(m.event_id).label("event_id"),
        text(m.charge_id).label("charge_id"),
        refund_or_dispute.label("refund_or_dispute_id"),
        text(m.balance_transaction).label("balance_transaction_id"),
        (m.amount * _minor_to_major_factor(m.currency)).label("amount"),
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
    joined, rate = with_fx_rate(execution_tasks, _utc_day(x.started_at), currency, reporting)
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
            _decimal_text(cost * _minor_to_major_factor(currency), _places(currency)).label("cost"),
            text(currency).label("currency"),
            x.cost_source.label("cost_source"),
            reporting_cost.label("reporting_cost"),
            literal(reporting).label("reporting_currency"),
            rate_used.label("rate"),
            rule.label("conversion"),
        )
        .select_from(joined)
        .where(
            x.started_at >= f.start,
            x.started_at < f.end,
            _in(x.stream, f.streams),
            _in(func.coalesce(x.ai_model, ""), f.ai_models),
            _in(x.task_type, f.task_types),
        )
        .order_by(x.started_at, x.external_id)
    )


def _places(currency: ColumnElement[str]) -> ColumnElement[int]:
    return by_exponent(
        currency, zero=literal_column("0"), three=literal_column("3"), other=literal_column("2")
    )


def _copy_statement(conn: Connection, query: Select[Any]) -> tuple[str, dict[str, Any]]:
    """`COPY (query) TO STDOUT` as psycopg takes it: SQL with %(name)s placeholders, bound
    client-side by psycopg (COPY cannot take server-side parameters)."""
    compiled = query.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    return f"COPY ({compiled}) TO STDOUT WITH (FORMAT csv, HEADER)", dict(compiled.params)


def copy_csv(conn: Connection, query: Select[Any], f: MetricsFilter) -> Iterator[bytes]:
    """The rows of `query` as CSV from PostgreSQL's COPY, in chunks of about CHUNK_BYTES.

    COPY hands over one row at a time; gathering them here keeps the number of writes (and,
    over HTTP, of thread hops) per export small while memory stays at one chunk."""
    statement, params = _copy_statement(conn, query)
    driver = conn.connection.driver_connection
    assert driver is not None
    # Times are written in the filter's zone; LOCAL: only for this transaction, so a pooled
    # connection goes back as it was. COPY writes in the client encoding: make it UTF-8.
    # No JIT: the planner prices the ledger's FX lookup as if every row ran it (it cannot see
    # the CASE in front), so LLVM would compile with full optimisation (0.1-0.2 s), which one
    # streaming pass of cell formatting never wins back (measured: about 5% more CPU with it).
    conn.exec_driver_sql(
        "SELECT set_config('TimeZone', %(tz)s, true), set_config('client_encoding', 'UTF8', true),"
        " set_config('jit', 'off', true)",
        {"tz": f.tz.key},
    )
    with driver.cursor() as cursor, cursor.copy(statement, params) as copy:
        buffer = bytearray()
        for data in copy:
            buffer += data
            if len(buffer) >= CHUNK_BYTES:
                yield bytes(buffer)
                buffer.clear()
        if buffer:
            yield bytes(buffer)


STREAM_COLUMNS = (
    "bucket", "stream", "currency", "gross", "refunds", "disputes", "fees", "net_revenue",
    "task_cost", "cost", "margin", "margin_pct", "roi", "tasks", "unpriced_tasks",
)  # fmt: skip


def streams_csv(conn: Connection, f: MetricsFilter, reporting: str) -> Iterator[bytes]:
    """Per stream and bucket, the figures exactly as `GET /api/metrics/timeseries` presents
    them (the same `presented_points`); an undefined ratio is an empty cell. Its size is
    bounded by the buckets (at most MAX_BUCKETS) times the streams, so it is built from the
    metrics layer's list rather than streamed from the database."""
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


def export_csv(engine: Engine, request: ExportRequest) -> Generator[bytes]:
    """The CSV bytes of `request`, in chunks, read in one transaction on one connection (a
    consistent snapshot however long the download takes), rolled back and returned to the
    pool at the end or when the reader stops early (closing the generator cancels the COPY)."""
    f, reporting = request.filter, request.reporting
    writers: dict[str, Callable[[Connection], Iterator[bytes]]] = {
        "ledger": lambda conn: copy_csv(conn, ledger_query(f, reporting), f),
        "tasks": lambda conn: copy_csv(conn, tasks_query(f, reporting), f),
        "streams": lambda conn: streams_csv(conn, f, reporting),
    }
    write = writers[request.name]
    with engine.connect() as conn:
        conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield from write(conn)


def count_rows(engine: Engine, request: ExportRequest) -> int | None:
    """How many data rows the export will have (for a progress bar); None for the per-stream
    export, whose rows only exist once the metrics layer has summed them."""
    f = request.filter
    if request.name == "ledger":
        query = select(func.count()).select_from(ledger_entries).where(*_ledger_filter(f))
    elif request.name == "tasks":
        rows = tasks_query(f, request.reporting).order_by(None).subquery()
        query = select(func.count()).select_from(rows)
    else:
        return None
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())
