"""Numbers as a finance reader expects them: currency symbol, thousands separators, a visible
minus, percentages. Input is the metrics API's decimal strings; nothing is recomputed here."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from app.money import exponent

MINUS = "\u2212"  # a real minus sign: a hyphen is easy to miss in a column of figures
DASH = "\u2014"
SYMBOLS = {
    "usd": "$", "eur": "€", "gbp": "£", "jpy": "¥", "cny": "CN¥", "inr": "₹", "krw": "₩",
    "cad": "CA$", "aud": "A$", "nzd": "NZ$", "chf": "CHF ", "sek": "SEK ", "brl": "R$",
}  # fmt: skip


def money(value: str | None, currency: str) -> str:
    """'-1234.5' usd -> '(MINUS)$1,234.50'; None -> an em dash."""
    if value is None:
        return DASH
    amount = Decimal(value)
    places = exponent(currency)
    symbol = SYMBOLS.get(currency.lower(), currency.upper() + " ")
    sign = MINUS if amount < 0 else ""
    return f"{sign}{symbol}{abs(amount):,.{places}f}"


def percent(ratio: str | None, places: int = 1) -> str:
    """'0.1234' -> '12.3 %'; None (undefined: no revenue, no cost) -> '—'."""
    if ratio is None:
        return DASH
    value = Decimal(ratio) * 100
    sign = MINUS if value < 0 else ""
    return f"{sign}{abs(value):,.{places}f} %"


def count(value: int) -> str:
    return f"{value:,}"


def is_negative(value: str | None) -> bool:
    return value is not None and Decimal(value) < 0


@dataclass(frozen=True)
class Change:
    """A KPI's change against the previous period, as shown under the KPI."""

    text: str
    direction: str  # "up", "down" or "flat"


def change(current: str | None, previous: str | None, *, is_ratio: bool = False) -> Change:
    """Money: relative change ('+12.5 %'); ratios: percentage points ('+3.1 pp')."""
    if current is None or previous is None:
        return Change("no comparison", "flat")
    now, before = Decimal(current), Decimal(previous)
    if is_ratio:
        diff = (now - before) * 100
        text = f"{diff:+,.1f} pp"
    elif before == 0:
        return Change("new" if now != 0 else "no change", "up" if now > 0 else "flat")
    else:
        diff = (now - before) / abs(before) * 100
        text = f"{diff:+,.1f} %"
    direction = "up" if diff > 0 else "down" if diff < 0 else "flat"
    return Change(text.replace("-", MINUS), direction)
