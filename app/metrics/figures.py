"""Base figures in, derived figures out: the one place margin, margin % and ROI are computed.

All amounts are exact Decimals in the reporting currency's MINOR unit (conversions leave
fractions); they are rounded once, when presented (`present_money`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal

from app.money import exponent

ZERO = Decimal(0)
RATIO_QUANTUM = Decimal("0.0001")


@dataclass
class BaseFigures:
    """Sums for one stream (and bucket), signed as in the ledger: refunds, disputes, fees <= 0."""

    gross: Decimal = ZERO
    refunds: Decimal = ZERO
    disputes: Decimal = ZERO
    fees: Decimal = ZERO
    task_cost: Decimal = ZERO
    tasks: int = 0
    unpriced_tasks: int = 0
    # Amounts that could not be converted, by currency, in that currency's minor unit:
    # net revenue, and cost (task costs and fees, positive).
    unconverted_revenue: dict[str, int] = field(default_factory=dict)
    unconverted_cost: dict[str, Decimal] = field(default_factory=dict)

    def add(self, other: BaseFigures) -> None:
        self.gross += other.gross
        self.refunds += other.refunds
        self.disputes += other.disputes
        self.fees += other.fees
        self.task_cost += other.task_cost
        self.tasks += other.tasks
        self.unpriced_tasks += other.unpriced_tasks
        for currency, amount in other.unconverted_revenue.items():
            self.unconverted_revenue[currency] = self.unconverted_revenue.get(currency, 0) + amount
        for currency, cost in other.unconverted_cost.items():
            self.unconverted_cost[currency] = self.unconverted_cost.get(currency, ZERO) + cost


@dataclass(frozen=True, slots=True)
class Figures:
    gross: Decimal
    refunds: Decimal  # positive: money given back
    disputes: Decimal  # positive: money lost to disputes, net of reinstatements
    fees: Decimal  # positive: Stripe fees
    net_revenue: Decimal
    task_cost: Decimal
    cost: Decimal
    margin: Decimal
    margin_pct: Decimal | None  # None when net revenue is 0
    roi: Decimal | None  # None when cost is 0


def derive(base: BaseFigures) -> Figures:
    """accounting.md, "Figures": net = gross - refunds - disputes; cost = task cost + fees;
    margin = net - cost; margin % = margin / net; ROI = margin / cost."""
    refunds, disputes, fees = -base.refunds, -base.disputes, -base.fees
    net = base.gross - refunds - disputes
    cost = base.task_cost + fees
    margin = net - cost
    return Figures(
        gross=base.gross,
        refunds=refunds,
        disputes=disputes,
        fees=fees,
        net_revenue=net,
        task_cost=base.task_cost,
        cost=cost,
        margin=margin,
        margin_pct=None if net == 0 else margin / net,
        roi=None if cost == 0 else margin / cost,
    )


def present_money(amount_minor: Decimal, currency: str) -> str:
    """Minor units -> a decimal string in major units, rounded half-even to the minor unit."""
    places, quantum = _minor_unit(currency)
    # Quantized, its exponent is -places: str() then writes exactly that many decimals and
    # never an exponent, as format(".2f") would, at a third of the cost (called per figure).
    return str(amount_minor.scaleb(-places).quantize(quantum, ROUND_HALF_EVEN))


@functools.cache
def _minor_unit(currency: str) -> tuple[int, Decimal]:
    """Decimals of the currency and the quantum they round to (called per figure: cached)."""
    places = exponent(currency)
    return places, Decimal(1).scaleb(-places)


def present_ratio(value: Decimal | None) -> str | None:
    """A ratio as a decimal string with 4 decimals (0.1234 = 12.34 %), or None."""
    if value is None:
        return None
    # str() of the quantized value: exactly 4 decimals, never an exponent (see present_money).
    return str(value.quantize(RATIO_QUANTUM, ROUND_HALF_EVEN))
