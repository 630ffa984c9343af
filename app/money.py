"""Currencies and their minor units, as Stripe counts them (accounting.md, "Money")."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, Numeric, Text, case, cast, func, literal_column

# fmt: off
ZERO_DECIMAL = frozenset([
    "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga",
    "pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf",
])
# fmt: on
THREE_DECIMAL = frozenset(["bhd", "jod", "kwd", "omr", "tnd"])


def exponent(currency: str) -> int:
    """How many decimals the currency's minor unit has."""
    code = currency.lower()
    if code in ZERO_DECIMAL:
        return 0
    if code in THREE_DECIMAL:
        return 3
    return 2


def to_major(amount_minor: int, currency: str) -> Decimal:
    """An exact decimal in major units: 1234 usd -> 12.34, 1234 jpy -> 1234."""
    return Decimal(amount_minor).scaleb(-exponent(currency))


def format_major(amount_minor: int, currency: str) -> str:
    """The decimal string finance reads: '12.34', '-0.50', '1234', '1.234'."""
    places = exponent(currency)
    return f"{to_major(amount_minor, currency):.{places}f}"


def minor_unit_factor_sql(currency_column: str) -> str:
    """SQL for 10 ** exponent(currency_column): the same lists as `exponent`, for queries that
    turn major units into minor ones (pricing, FX conversion)."""
    zero = ", ".join(f"'{code}'" for code in sorted(ZERO_DECIMAL))
    three = ", ".join(f"'{code}'" for code in sorted(THREE_DECIMAL))
    return (
        f"(CASE WHEN {currency_column} IN ({zero}) THEN 1 "
        f"WHEN {currency_column} IN ({three}) THEN 1000 ELSE 100 END)"
    )


# The same, as SQLAlchemy expressions: the metrics' conversion (app/metrics/conversion.py),
# the CSV exports, and the ledger's stored export cells (app/models.py, migration 0015).


def currency_codes(codes: frozenset[str]) -> list[ColumnElement[str]]:
    # Inline constants: the same SQL text on every call, so PostgreSQL can reuse its plans.
    return [literal_column(f"'{code}'") for code in sorted(codes)]


def by_exponent(
    currency: ColumnElement[str],
    *,
    zero: ColumnElement[Any],
    three: ColumnElement[Any],
    other: ColumnElement[Any],
) -> ColumnElement[Any]:
    """`zero`, `three` or `other` by the number of decimals of `currency`, as `exponent` tells
    them for the lower-case codes the database holds (SQL does not fold case).

    Most amounts are in two-decimal currencies, so they are told apart with one test against
    the 21 other codes (an IN list that long PostgreSQL answers with a hash lookup) rather than
    two lists tried in turn: this runs once per exported row."""
    return case(
        (
            currency.in_(currency_codes(ZERO_DECIMAL | THREE_DECIMAL)),
            case((currency.in_(currency_codes(THREE_DECIMAL)), three), else_=zero),
        ),
        else_=other,
    )


def minor_to_major_factor(currency: ColumnElement[str]) -> ColumnElement[Decimal]:
    """10 ** -exponent(currency) as an exact numeric literal: minor units times it are major
    units with exactly the currency's decimals (1234 * 0.01 = 12.34)."""
    return by_exponent(
        currency,
        zero=literal_column("1::numeric"),
        three=literal_column("0.001"),
        other=literal_column("0.01"),
    )


def to_decimals_factor(currency: ColumnElement[str], decimals: int) -> ColumnElement[Decimal]:
    """Factor from `currency` minor units to the minor units of a currency with `decimals`: an
    exact numeric power of ten (0.1, 1, 100...), so the product stays exact."""

    def factor(e: int) -> ColumnElement[Decimal]:
        return literal_column(f"{Decimal(10) ** (decimals - e):f}::numeric")

    return by_exponent(currency, zero=factor(0), three=factor(3), other=factor(2))


def major_units_text(
    amount: ColumnElement[int], currency: ColumnElement[str]
) -> ColumnElement[str]:
    """`format_major(amount, currency)` of an integer column of minor units, in SQL."""
    return cast(amount * minor_to_major_factor(currency), Text)


def implied_rate_text(
    amount: ColumnElement[int],
    currency: ColumnElement[str],
    settled: ColumnElement[int],
    settlement_currency: ColumnElement[str],
) -> ColumnElement[str]:
    """The rate a settlement implies, as text: major units of `settlement_currency` per major
    unit of `currency`, rounded to 12 decimals as FX rates are stored (fewer from a rate of
    10 ** 8 on: PostgreSQL's division keeps 16-20 significant digits), trailing zeros
    trimmed; '1' in the same currency, NULL for a zero amount (no rate is implied). What
    `Amount.rate_used` gives a row converted by its settlement, as text."""
    to_settlement = by_exponent(
        settlement_currency,
        zero=to_decimals_factor(currency, 0),
        three=to_decimals_factor(currency, 3),
        other=to_decimals_factor(currency, 2),
    )
    rate = func.round(cast(settled, Numeric) / func.nullif(amount * to_settlement, 0), 12)
    return case(
        (currency == settlement_currency, literal_column("'1'")),
        else_=cast(func.trim_scale(rate), Text),
    )
