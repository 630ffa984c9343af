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


def _codes(codes: frozenset[str]) -> str:
    return ", ".join(f"'{code}'" for code in sorted(codes))


def minor_unit_factor_sql(currency_column: str) -> str:
    """SQL for 10 ** exponent(currency_column): the same lists as `exponent`, for queries that
    turn major units into minor ones (pricing, FX conversion)."""
    return (
        f"(CASE WHEN {currency_column} IN ({_codes(ZERO_DECIMAL)}) THEN 1 "
        f"WHEN {currency_column} IN ({_codes(THREE_DECIMAL)}) THEN 1000 ELSE 100 END)"
    )


# The ledger's stored cells (app/models.py, migration 0015): SQL for generated columns, so
# only IMMUTABLE functions. Each is the text the CSV export writes, built with the very
# operations (and numeric literals, whose scales carry into the text) of the export's own
# expressions in app/metrics/conversion.py and app/exports.py; tests/app/export pins both
# to the same text.


def _by_exponent_sql(currency: str, *, zero: str, three: str, other: str) -> str:
    """`zero`, `three` or `other` by the decimals of `currency`, as `conversion.by_exponent`."""
    return (
        f"CASE WHEN ({currency} = ANY (ARRAY[{_codes(ZERO_DECIMAL | THREE_DECIMAL)}])) THEN "
        f"CASE WHEN ({currency} = ANY (ARRAY[{_codes(THREE_DECIMAL)}])) THEN {three} "
        f"ELSE {zero} END "
        f"ELSE {other} END"
    )


def major_units_text_sql(amount: str, currency: str) -> str:
    """SQL for `format_major(amount, currency)` of an integer column of minor units, for the
    lower-case codes the ledger stores (the SQL does not fold case, as `exponent` does)."""
    factor = _by_exponent_sql(currency, zero="1::numeric", three="0.001", other="0.01")
    return f"(({amount} * {factor})::text)"


def implied_rate_text_sql(amount: str, currency: str, settled: str, settlement: str) -> str:
    """SQL for the rate a settlement implies, as text: major units of the `settlement`
    currency per major unit of `currency`, rounded to 12 decimals as FX rates are stored
    (fewer from a rate of 10 ** 8 on: PostgreSQL's division keeps 16-20 significant digits),
    trailing zeros trimmed; '1' in the same currency, NULL for a zero amount (no rate is
    implied). The export wrote the very same before it was stored (`Amount.rate_used`)."""

    def power(n: int) -> str:
        return f"{Decimal(10) ** n:f}::numeric"

    def from_currency(target: int) -> str:  # `currency` minor units -> `target`'s
        return _by_exponent_sql(
            currency, zero=power(target), three=power(target - 3), other=power(target - 2)
        )

    factor = _by_exponent_sql(
        settlement, zero=from_currency(0), three=from_currency(3), other=from_currency(2)
    )
    return (
        f"CASE WHEN ({currency} = {settlement}) THEN '1' ELSE "
        f"(trim_scale(round(({settled})::numeric / nullif({amount} * {factor}, 0), 12)))::text END"
    )
