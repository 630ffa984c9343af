"""FX rates by day: the table, its CSV and API import, and the conversion helper.

accounting.md ("Money"): an amount is converted into REPORTING_CURRENCY with its settlement
amount when known; otherwise with the rate for that day from this table; otherwise it is not
converted and is reported as unconverted, by currency, never added to another currency's total.

Choices made here:
- A row says: one unit (major) of `currency` is worth `rate` units of `quote_currency` on `day`.
  Only that direction is used: no inverse (1 / rate) and no cross rates, so no rounding is
  introduced; import the pairs you report in.
- "That day" is the UTC calendar day of the amount's booking instant (`rate_day`), so an
  amount converts the same whatever time zone a chart is cut in.
- No carrying forward: a day without a rate (a weekend, say) leaves the amount unconverted.
  Import a rate for every day you need (e.g. repeat Friday's for the weekend).
- A converted amount is in minor units of the quote currency, rounded half away from zero to
  6 decimals, like task costs; sums are rounded for display by whoever shows them.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import Connection, text

from app.fields import BadLine, Currency, Day, FxRate, RowError, error_reasons
from app.money import exponent

PLACES = Decimal("0.000001")
CSV_COLUMNS = ("day", "currency", "quote_currency", "rate")
CSV_REQUIRED = ("day", "currency", "rate")


class FxRateIn(BaseModel):
    """One day's rate: 1 `currency` = `rate` `quote_currency`."""

    model_config = ConfigDict(extra="forbid")

    day: Day
    currency: Currency = Field(description="The currency converted from.")
    quote_currency: Currency | None = Field(
        default=None, description="The currency converted into; default REPORTING_CURRENCY."
    )
    rate: FxRate


@dataclass(frozen=True)
class FxRateRow:
    day: date
    currency: str
    quote_currency: str
    rate: Decimal


@dataclass(frozen=True)
class UpsertCounts:
    inserted: int
    updated: int
    unchanged: int


class FxImportError(ValueError):
    """Rows the user must fix; nothing was written."""

    def __init__(self, errors: list[RowError]) -> None:
        super().__init__(f"{len(errors)} problem(s)")
        self.errors = errors


# --- validation (shared by the CSV import and the API) ----------------------------------------


def validate_rates(
    raws: Iterable[tuple[int, object]], *, default_quote: str
) -> tuple[list[FxRateRow], list[RowError]]:
    """Valid rows (duplicates with the same rate kept once) and every error of the others.
    The same day and pair twice with different rates is an error: which one would be meant?"""
    rows: dict[tuple[date, str, str], tuple[int, FxRateRow]] = {}
    errors: list[RowError] = []
    for index, raw in raws:
        if isinstance(raw, BadLine):
            errors.append(RowError(index, "(line)", raw.reason))
            continue
        if not isinstance(raw, Mapping):
            errors.append(RowError(index, "(row)", "expected an object"))
            continue
        try:
            parsed = FxRateIn.model_validate(raw)
        except ValidationError as exc:
            for name, reason in error_reasons(cast(list[Any], exc.errors(include_url=False))):
                errors.append(RowError(index, name, reason))
            continue
        row = FxRateRow(
            parsed.day, parsed.currency, parsed.quote_currency or default_quote, parsed.rate
        )
        if row.currency == row.quote_currency:
            errors.append(RowError(index, "currency", f"is the quote currency ({row.currency})"))
            continue
        key = (row.day, row.currency, row.quote_currency)
        seen = rows.get(key)
        if seen is None:
            rows[key] = (index, row)
        elif seen[1].rate != row.rate:
            errors.append(
                RowError(
                    index,
                    "rate",
                    f"{row.rate} conflicts with {seen[1].rate} given at {seen[0]} for the same "
                    "day and currencies",
                )
            )
    return [row for _, row in rows.values()], errors


def read_csv(lines: Iterable[str]) -> Iterator[tuple[int, dict[str, str] | BadLine]]:
    """(line number, row) of a CSV with a header; empty cells are absent. A bad header raises
    FxImportError naming the columns."""
    reader = csv.DictReader(iter(lines))
    header = reader.fieldnames or []
    problems = [RowError(1, name, "unknown column") for name in header if name not in CSV_COLUMNS]
    problems += [RowError(1, name, "missing column") for name in CSV_REQUIRED if name not in header]
    if problems:
        raise FxImportError(problems)
    for row in reader:
        if None in row:
            yield reader.line_num, BadLine("more cells than the header has columns")
            continue
        yield reader.line_num, {k: v for k, v in row.items() if v is not None and v.strip()}


def import_csv(conn: Connection, lines: Iterable[str], *, default_quote: str) -> UpsertCounts:
    """Validate the whole file, then write it in the caller's transaction; any bad row raises
    FxImportError listing every problem (line, field, reason), and nothing is written."""
    rows, errors = validate_rates(read_csv(lines), default_quote=default_quote)
    if errors:
        raise FxImportError(errors)
    return upsert_rates(conn, rows)


# --- the table --------------------------------------------------------------------------------

UPSERT_SQL = """
INSERT INTO fx_rates AS f (day, currency, quote_currency, rate)
SELECT * FROM unnest(CAST(:day AS date[]), CAST(:currency AS text[]),
                     CAST(:quote_currency AS text[]), CAST(:rate AS numeric[]))
ORDER BY 1, 2, 3
ON CONFLICT (day, currency, quote_currency) DO UPDATE
   SET rate = EXCLUDED.rate, updated_at = now()
 WHERE f.rate IS DISTINCT FROM EXCLUDED.rate
RETURNING (xmax = 0) AS inserted
"""


def upsert_rates(conn: Connection, rows: list[FxRateRow]) -> UpsertCounts:
    """Insert new rates, update changed ones, leave equal ones untouched."""
    if not rows:
        return UpsertCounts(0, 0, 0)
    written = (
        conn.execute(
            text(UPSERT_SQL),
            {
                "day": [r.day for r in rows],
                "currency": [r.currency for r in rows],
                "quote_currency": [r.quote_currency for r in rows],
                "rate": [r.rate for r in rows],
            },
        )
        .scalars()
        .all()
    )
    inserted = sum(1 for new in written if new)
    return UpsertCounts(inserted, len(written) - inserted, len(rows) - len(written))


def list_rates(
    conn: Connection,
    *,
    currency: str | None = None,
    quote_currency: str | None = None,
    start: date | None = None,
    end: date | None = None,
    limit: int = 1000,
) -> list[FxRateRow]:
    """Rates with `start <= day < end`, by day then currencies."""
    rows = conn.execute(
        text(
            "SELECT day, currency, quote_currency, rate FROM fx_rates"
            " WHERE (CAST(:currency AS text) IS NULL OR currency = CAST(:currency AS text))"
            "   AND (CAST(:quote AS text) IS NULL OR quote_currency = CAST(:quote AS text))"
            "   AND (CAST(:start AS date) IS NULL OR day >= CAST(:start AS date))"
            "   AND (CAST(:end AS date) IS NULL OR day < CAST(:end AS date))"
            " ORDER BY day, currency, quote_currency LIMIT :limit"
        ),
        {"currency": currency, "quote": quote_currency, "start": start, "end": end, "limit": limit},
    )
    return [FxRateRow(*row) for row in rows.all()]


# --- conversion (pure) ------------------------------------------------------------------------


def rate_day(booked_at: datetime) -> date:
    """The day whose rate converts an amount booked at `booked_at`: its UTC calendar day."""
    if booked_at.tzinfo is None:
        raise ValueError("booked_at must be timezone-aware")
    return booked_at.astimezone(UTC).date()


def convert_minor(
    amount_minor: int | Decimal, currency: str, quote_currency: str, rate: Decimal
) -> Decimal:
    """`amount_minor` of `currency` in minor units of `quote_currency` at `rate` (1 currency =
    rate quote_currency, major units), rounded half away from zero to 6 decimals.
    1234 usd at 150.25 jpy/usd -> 1854.085 jpy; 1000 jpy at 0.0067 usd/jpy -> 670 usd cents."""
    major = Decimal(amount_minor).scaleb(-exponent(currency))
    return (major * rate).scaleb(exponent(quote_currency)).quantize(PLACES, ROUND_HALF_UP)


@dataclass(frozen=True)
class Rates:
    """Rates into one quote currency, by (day, currency): what `load_rates` read."""

    quote_currency: str
    by_day: Mapping[tuple[date, str], Decimal]

    def rate(self, day: date, currency: str) -> Decimal | None:
        """The rate of that day, 1 for the quote currency itself, None when there is none."""
        if currency == self.quote_currency:
            return Decimal(1)
        return self.by_day.get((day, currency))

    def convert(self, amount_minor: int | Decimal, currency: str, day: date) -> Decimal | None:
        """The amount in minor units of the quote currency, or None: report it unconverted."""
        rate = self.rate(day, currency)
        if rate is None:
            return None
        return convert_minor(amount_minor, currency, self.quote_currency, rate)


def load_rates(conn: Connection, quote_currency: str, start: date, end: date) -> Rates:
    """Every rate into `quote_currency` for days in [start, end)."""
    rows = conn.execute(
        text(
            "SELECT day, currency, rate FROM fx_rates"
            " WHERE quote_currency = :quote AND day >= :start AND day < :end"
        ),
        {"quote": quote_currency, "start": start, "end": end},
    ).all()
    return Rates(quote_currency, {(day, currency): rate for day, currency, rate in rows})
