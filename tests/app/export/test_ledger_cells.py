"""The ledger's stored export cells (migration 0015): for every kind of row, the ledger export
writes from them exactly what it worked out per export before, and the database computes them
as app/models.py says."""

from __future__ import annotations

import itertools
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import String, case, cast, insert, literal, select
from sqlalchemy.types import Numeric

from app.exports import (
    _converted_columns,
    _ledger_converted_columns,
    ledger_query,
)
from app.metrics.conversion import Amount
from app.metrics.filters import build_filter
from app.models import ledger_entries
from app.money import format_major, minor_to_major_factor
from tests.conftest import TestDatabase

# Two-, zero- and three-decimal currencies.
CURRENCIES = ("usd", "eur", "jpy", "clp", "kwd", "bhd")
AMOUNTS = (0, 1, -1, 7, -50, 1234, -1_000_001, 99_999_999_999)
# Settled amounts whose ratio to the amounts above does not terminate, rounds up, or is exact.
SETTLED = (0, 3, -93, 2170, 66_667)
FX_RATE = Decimal("1.085000000000")  # as fx_rates stores it: numeric(24, 12)


def movements() -> list[dict[str, Any]]:
    rows = []
    # Not settled yet; settled in a two-, zero- or three-decimal currency; and the odd shapes
    # a row should never have but must not break: one of the pair missing, no currency.
    settlements: list[tuple[str | None, int | None]] = [(None, None), ("usd", None), (None, 5)]
    settlements += [("", 0), ("", 7)]
    settlements += itertools.product(("usd", "eur", "jpy", "kwd"), SETTLED)
    for n, (currency, amount, (settlement_currency, settled)) in enumerate(
        itertools.product(("", *CURRENCIES), AMOUNTS, settlements)
    ):
        if currency == "" and amount:
            continue  # '' is only the currency of a zero amount
        rows.append(
            {
                "entry_key": f"e{n}",
                "kind": "charge",
                "charge_id": f"ch_{n}",
                "object_id": f"ch_{n}",
                "stream": "api",
                "amount": amount,
                "currency": currency,
                "booked_at": "2024-03-10T12:00:00Z",
                "settlement_amount": settled,
                "settlement_currency": settlement_currency,
            }
        )
    return rows


@pytest.fixture
def ledger(db: TestDatabase) -> TestDatabase:
    with db.engine.begin() as conn:
        conn.execute(insert(ledger_entries), movements())
    return db


def test_the_stored_cells_are_the_amounts_in_major_units(ledger: TestDatabase) -> None:
    stored = ledger.rows(
        "SELECT amount, currency, settlement_amount, settlement_currency, amount_major,"
        " settlement_major FROM ledger_entries"
    )

    assert len(stored) == len(movements())
    for row in stored:
        assert row["amount_major"] == format_major(row["amount"], row["currency"]), row
        if row["settlement_amount"] is None:
            assert row["settlement_major"] is None
        elif row["settlement_currency"] is not None:  # (with none, the export never reads it)
            settled = format_major(row["settlement_amount"], row["settlement_currency"])
            assert row["settlement_major"] == settled, row


@pytest.mark.parametrize(
    ("amount", "currency", "settled", "settlement_currency", "rate"),
    [
        (2000, "eur", 2170, "usd", "1.085"),
        (1234, "usd", 1234, "usd", "1"),
        (1000, "jpy", 666, "usd", "0.00666"),
        (3, "usd", 1, "usd", "1"),  # the same currency: 1 whatever was settled
        (3, "eur", 2, "usd", "0.666666666667"),
        (1000, "usd", 1234, "kwd", "0.1234"),
        (0, "eur", 0, "usd", None),  # a zero amount implies no rate
        (500, "eur", None, None, None),
    ],
)
def test_the_stored_rate_is_what_the_settlement_implies(
    db: TestDatabase,
    amount: int,
    currency: str,
    settled: int | None,
    settlement_currency: str | None,
    rate: str | None,
) -> None:
    row = {**movements()[0], "amount": amount, "currency": currency}
    row |= {"settlement_amount": settled, "settlement_currency": settlement_currency}
    with db.engine.begin() as conn:
        conn.execute(insert(ledger_entries), [row])

    assert db.scalar("SELECT settlement_rate FROM ledger_entries") == rate


@pytest.mark.parametrize("reporting", ["usd", "eur", "jpy", "kwd"])
def test_the_export_writes_from_the_stored_cells_what_it_worked_out_before(
    ledger: TestDatabase, reporting: str
) -> None:
    # The conversion columns as the ledger export wrote them before migration 0015 (worked out
    # from the amounts by the rules of app/metrics/conversion.py) and as it writes them now,
    # for every kind of row, with an FX rate for some rows (those of one amount) and not others.
    le = ledger_entries.c
    fx_rate = case((le.amount == 1234, literal(FX_RATE, Numeric)))
    movement = select(*le, fx_rate.label("fx_rate")).subquery("movement")
    m = movement.c
    before = _converted_columns(
        Amount(
            amount=m.amount,
            currency=m.currency,
            rate=m.fx_rate,
            settled=m.settlement_amount,
            settlement_currency=m.settlement_currency,
        ),
        reporting,
        whole_minor_units=True,
    )
    now = _ledger_converted_columns(movement, reporting)
    with ledger.engine.connect() as conn:
        got = conn.execute(select(m.entry_key, *before, *now)).all()

    rules = set()
    for key, *columns in got:
        assert columns[:3] == columns[3:], (key, columns)
        rules.add(columns[2])
    assert rules == {"settlement", "same", "fx", None}  # every rule, and none, was compared


def test_the_amount_cell_is_what_the_export_worked_out_before(ledger: TestDatabase) -> None:
    # Before migration 0015 the amount cell was `amount * 10 ** -exponent(currency)`.
    le = ledger_entries.c
    before = cast(le.amount * minor_to_major_factor(le.currency), String)
    with ledger.engine.connect() as conn:
        got = conn.execute(select(le.entry_key, before, le.amount_major)).all()

    assert got
    assert [(key, a) for key, a, _ in got] == [(key, b) for key, _, b in got]


def test_the_ledger_export_refuses_an_upper_case_reporting_currency() -> None:
    # The stored cells are looked up by the codes as stored (lower case); settings fold the
    # setting's case, and any other caller must too.
    f = build_filter(start="2024-03-10", end="2024-03-11", tz="UTC")
    with pytest.raises(ValueError, match="'JPY'"):
        ledger_query(f, "JPY")
