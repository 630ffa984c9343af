"""Currencies and their minor units, as Stripe counts them (accounting.md, "Money")."""

from __future__ import annotations

from decimal import Decimal

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
