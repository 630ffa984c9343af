"""Money and ratios as a finance reader expects them."""

from __future__ import annotations

import pytest

from dashboards.format import Change, change, money, percent

MINUS = "\u2212"


@pytest.mark.parametrize(
    ("value", "currency", "shown"),
    [
        ("1234567.891", "usd", "$1,234,567.89"),  # the API sends the minor unit; shown as is
        ("0.00", "usd", "$0.00"),
        ("-3572.35", "usd", f"{MINUS}$3,572.35"),
        ("1234", "jpy", "¥1,234"),
        ("12.345", "kwd", "KWD 12.345"),
        ("99.50", "eur", "€99.50"),
        (None, "usd", "\u2014"),
    ],
)
def test_money_has_symbol_separators_and_a_visible_minus(
    value: str | None, currency: str, shown: str
) -> None:
    assert money(value, currency) == shown


def test_ratios_are_percentages_and_undefined_is_a_dash() -> None:
    assert percent("0.1234") == "12.3 %"
    assert percent("-5.3640") == f"{MINUS}536.4 %"
    assert percent(None) == "\u2014"


def test_change_of_money_is_relative_and_of_ratios_in_points() -> None:
    assert change("110.00", "100.00") == Change("+10.0 %", "up")
    assert change("-50.00", "100.00") == Change(f"{MINUS}150.0 %", "down")
    assert change("0.2000", "0.2500", is_ratio=True) == Change(f"{MINUS}5.0 pp", "down")
    assert change("10.00", "0.00") == Change("new", "up")
    assert change(None, "0.5") == Change("no comparison", "flat")
