"""The ledger's export cells that depend only on the row, stored as generated columns.

The ledger CSV export wrote every row's amount in major units, and for the rows converted by
their settlement the settled amount and the rate it implies, with numeric arithmetic and
`numeric_out` on every export: about a sixth of what PostgreSQL spends on the export (1M rows:
2.3 s of its CPU before, 1.9-2.0 s after, against 0.94 s for `COPY` of the bare rows). These
texts depend on nothing but the row (not on the export's zone, nor on the reporting currency
or the FX rates, which stay in the export's SQL), so PostgreSQL now writes them once, when the
row is written (GENERATED ALWAYS ... STORED; recomputed if the row changes), about 11 bytes a
row (1M rows: 172 -> 183 MB):
- `amount_major`: `amount` in major units of `currency` ('12.34', '-0.50', '1234' for jpy);
- `settlement_major`: `settlement_amount` in major units of `settlement_currency`;
- `settlement_rate`: major units of `settlement_currency` per major unit of `currency`, as the
  settlement implies, to 12 decimals, trailing zeros trimmed; '1' in the same currency, NULL
  for a zero amount.

Each is built with the same operations and numeric literals as the export's own expressions
(app/exports.py, app/metrics/conversion.py), so the bytes of an export do not change
(tests/app/export/test_ledger_cells.py compares the two); `roi migrate --check` compares this
SQL with the model's (app/models.py, from app/money.py) exactly, as PostgreSQL prints them.

Deploying it: adding the columns rewrites `ledger_entries` once (one statement for the three:
6.7 s for 1M rows on the dev box) under an ACCESS EXCLUSIVE lock, so everything that reads or
writes the ledger waits meanwhile: the dashboard, the metrics API, exports, compaction and
webhook deliveries (Stripe retries them). The lock is awaited for at most LOCK_TIMEOUT: the
ALTER would otherwise queue behind a long export, and every query after it behind the ALTER;
if it times out, the migration fails and changes nothing, and is run again at a quieter moment.
Code before it names its columns on every write and ignores these.

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-27 18:00:00
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelled out, not imported from app.money: a migration keeps meaning what it meant.
ZERO_OR_THREE_DECIMALS = (
    "'bhd', 'bif', 'clp', 'djf', 'gnf', 'jod', 'jpy', 'kmf', 'krw', 'kwd', 'mga', 'omr', 'pyg', "
    "'rwf', 'tnd', 'ugx', 'vnd', 'vuv', 'xaf', 'xof', 'xpf'"
)
THREE_DECIMALS = "'bhd', 'jod', 'kwd', 'omr', 'tnd'"
COLUMNS = ("amount_major", "settlement_major", "settlement_rate")
LOCK_TIMEOUT = "10s"


def by_exponent(currency: str, *, zero: str, three: str, other: str) -> str:
    return (
        f"CASE WHEN ({currency} = ANY (ARRAY[{ZERO_OR_THREE_DECIMALS}])) THEN "
        f"CASE WHEN ({currency} = ANY (ARRAY[{THREE_DECIMALS}])) THEN {three} ELSE {zero} END "
        f"ELSE {other} END"
    )


def major_units(amount: str, currency: str) -> str:
    factor = by_exponent(currency, zero="1::numeric", three="0.001", other="0.01")
    return f"(({amount} * {factor})::text)"


def power(n: int) -> str:
    return f"{Decimal(10) ** n:f}::numeric"


def from_currency(target: int) -> str:
    """`currency` minor units to minor units of a currency with `target` decimals."""
    return by_exponent(
        "currency", zero=power(target), three=power(target - 3), other=power(target - 2)
    )


SETTLEMENT_RATE = (
    "CASE WHEN (currency = settlement_currency) THEN '1' ELSE "
    "(trim_scale(round((settlement_amount)::numeric / nullif(amount * "
    + by_exponent(
        "settlement_currency",
        zero=from_currency(0),
        three=from_currency(3),
        other=from_currency(2),
    )
    + ", 0), 12)))::text END"
)


def upgrade() -> None:
    op.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
    # One statement: each ADD COLUMN of a stored generated column would rewrite the table.
    op.execute(
        "ALTER TABLE ledger_entries"
        f" ADD COLUMN amount_major text GENERATED ALWAYS AS {major_units('amount', 'currency')}"
        " STORED,"
        " ADD COLUMN settlement_major text GENERATED ALWAYS AS"
        f" {major_units('settlement_amount', 'settlement_currency')} STORED,"
        f" ADD COLUMN settlement_rate text GENERATED ALWAYS AS ({SETTLEMENT_RATE}) STORED"
    )


def downgrade() -> None:
    op.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
    op.execute("ALTER TABLE ledger_entries " + ", ".join(f"DROP COLUMN {name}" for name in COLUMNS))
