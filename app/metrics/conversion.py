"""Conversion into the reporting currency, as SQL: the one copy of the rules of accounting.md
("Money") that the metrics layer sums and the CSV exports write row by row.

An amount in minor units of `currency` is converted, in this order, by:

1. `settlement`: the settlement amount of its Stripe balance transaction, when that is in the
   reporting currency (ledger rows only);
2. `same`: the amount itself, when it is already in the reporting currency;
3. `fx`: the amount times the `fx_rates` rate of its UTC day;
4. otherwise it is not converted (NULL): reported by currency, never added to a total.

The result is in minor units of the reporting currency, exact (a rate keeps its decimals;
rounding happens once, when a figure is presented).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Numeric,
    and_,
    case,
    cast,
    false,
    func,
    literal_column,
    null,
    or_,
    select,
    true,
)
from sqlalchemy.sql import FromClause, Join

from app.models import fx_rates
from app.money import exponent, to_decimals_factor

# The rules by name, in the order they are tried (what the CSV export's `conversion` says).
SETTLEMENT, SAME, FX = "settlement", "same", "fx"


def to_reporting_scale(currency: ColumnElement[str], reporting: str) -> ColumnElement[Decimal]:
    """Factor from `currency` minor units (after the FX rate) to reporting minor units: an
    exact numeric power of ten (0.1, 1, 100...), so the product stays exact."""
    return to_decimals_factor(currency, exponent(reporting))


def with_fx_rate(
    source: FromClause,
    day: ColumnElement[Any],
    currency: ColumnElement[str],
    reporting: str,
) -> tuple[Join, ColumnElement[Decimal]]:
    """`source` joined with the FX rate of `day` (a UTC date) from `currency` into the
    reporting currency, and that rate (NULL when there is none)."""
    fx = fx_rates.alias("fx")
    joined = source.outerjoin(
        fx, and_(fx.c.day == day, fx.c.currency == currency, fx.c.quote_currency == reporting)
    )
    return joined, fx.c.rate


def fx_rate_of(
    day: ColumnElement[Any], currency: ColumnElement[str], reporting: str
) -> ColumnElement[Decimal]:
    """The FX rate of `day` from `currency` into the reporting currency (NULL when there is
    none), as a correlated subquery: it is looked up only where it is evaluated. Behind
    `Amount.rate_for_fx` that is only for the amounts no earlier rule converts, which suits the
    row-by-row export; sums over many rows are better served by the join of `with_fx_rate`."""
    fx = fx_rates.alias("fx")
    return (
        select(fx.c.rate)
        .where(fx.c.day == day, fx.c.currency == currency, fx.c.quote_currency == reporting)
        .scalar_subquery()
    )


@dataclass(frozen=True)
class Amount:
    """The SQL columns of one amount to convert. `settled` and `settlement_currency` only for
    ledger rows (rule 1); `''` as a currency means "nothing to convert" (a zero amount)."""

    amount: ColumnElement[Any]
    currency: ColumnElement[str]
    rate: ColumnElement[Decimal]
    settled: ColumnElement[Any] | None = None
    settlement_currency: ColumnElement[str] | None = None

    def rules(self, reporting: str) -> list[tuple[str, ColumnElement[bool], ColumnElement[Any]]]:
        """(name, applies when, converted amount in reporting minor units), in the order they
        are tried: for a CASE over them, the first that applies wins."""
        rules: list[tuple[str, ColumnElement[bool], ColumnElement[Any]]] = []
        if self.settled is not None and self.settlement_currency is not None:
            rules.append((SETTLEMENT, self.settlement_currency == reporting, self.settled))
        rules.append((SAME, self.currency.in_((reporting, "")), self.amount))
        rules.append(
            (
                FX,
                self.rate.is_not(None),
                self.amount * self.rate * to_reporting_scale(self.currency, reporting),
            )
        )
        return rules

    def converted(self, reporting: str) -> ColumnElement[Decimal]:
        """In minor units of `reporting`, exact; NULL when no rule applies."""
        rules = self.rules(reporting)
        *whens, (_, _, by_fx) = rules
        # The last rule's condition is its own NULL test: the product is NULL without a rate.
        return case(*[(when, value) for _, when, value in whens], else_=by_fx)

    def needs_rate(self, reporting: str) -> ColumnElement[bool]:
        """True where only an FX rate can convert it: no rule before `fx` applies. Never NULL:
        a rule whose test is NULL (an unknown settlement currency) does not apply, as in the
        CASEs of `converted`."""
        *earlier, _ = self.rules(reporting)
        return case((or_(*[when for _, when, _ in earlier]), false()), else_=true())

    def rate_for_fx(self, reporting: str) -> ColumnElement[Decimal | None]:
        """`rate` where the FX rule is the one tried (no earlier rule applies), else NULL.

        An Amount with this as its rate converts exactly as this one does (the rate is only
        dropped where an earlier rule wins), and with `fx_rate_of` as the rate the lookup then
        runs only for the amounts that need it."""
        return case((self.needs_rate(reporting), self.rate), else_=null())

    def is_converted(self, reporting: str) -> ColumnElement[bool]:
        return or_(*[when for _, when, _ in self.rules(reporting)])

    def rule(self, reporting: str) -> ColumnElement[str | None]:
        """The name of the rule that converts it (settlement, same, fx), or NULL."""
        return case(
            *[(when, literal_column(f"'{name}'")) for name, when, _ in self.rules(reporting)]
        )

    def rate_used(self, reporting: str) -> ColumnElement[Decimal | None]:
        """Reporting-currency major units per major unit of `currency`, by the rule that
        applies: 1 (same), the FX rate (fx), or for a settlement amount the rate Stripe's
        settlement implies, to 12 decimals as FX rates are stored; NULL when not converted
        (or for a zero amount settled in another currency: no rate can be implied)."""
        rules = self.rules(reporting)
        one: ColumnElement[Decimal] = literal_column("1::numeric")
        by_rule: dict[str, ColumnElement[Any]] = {SAME: one, FX: self.rate}
        if self.settled is not None:
            by_rule[SETTLEMENT] = case(
                (self.currency == reporting, one),
                else_=func.round(
                    cast(self.settled, Numeric)
                    / func.nullif(self.amount * to_reporting_scale(self.currency, reporting), 0),
                    12,
                ),
            )
        return case(*[(when, by_rule[name]) for name, when, _ in rules])
