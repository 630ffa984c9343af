"""Converted daily figures: the per-stream sums of a UTC day, already in the reporting currency.

A 90-day daily series read about 12,600 daily rollup rows (20 streams x 4 ledger currency
pairs and 3 task currencies x 90 days) and converted each one by the rules of accounting.md
on every request: about 45 ms of a 50 ms budget on a slow 2-core machine, most of it numeric
arithmetic. `converted_daily` holds the result per reporting currency, day and stream (one row
where everything converts: 1,800 rows for that series), written by compaction for the days
whose rows it compacts. `converted_days` lists the days it holds, so a reader knows which
days to take from it and converts the rest (rows not compacted yet, days not built) itself.

An FX rate decides the conversion of its day, so a trigger on `fx_rates` drops the days a
changed rate affects; the next compaction builds them again.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-27 13:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FX_FUNCTION = """
CREATE OR REPLACE FUNCTION converted_daily_fx_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND (OLD.day, OLD.currency, OLD.quote_currency, OLD.rate)
            IS NOT DISTINCT FROM (NEW.day, NEW.currency, NEW.quote_currency, NEW.rate) THEN
        RETURN NULL;  -- the same rate imported again: nothing to rebuild
    END IF;
    -- Waits for a running compaction (app/metrics/rollups.py, its advisory lock), which may
    -- be rebuilding this very day from the old rate; the next one builds it from the new.
    PERFORM pg_advisory_xact_lock(7311402002);
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        DELETE FROM converted_days
        WHERE reporting_currency = OLD.quote_currency AND day = OLD.day;
        DELETE FROM converted_daily
        WHERE reporting_currency = OLD.quote_currency AND day = OLD.day;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        DELETE FROM converted_days
        WHERE reporting_currency = NEW.quote_currency AND day = NEW.day;
        DELETE FROM converted_daily
        WHERE reporting_currency = NEW.quote_currency AND day = NEW.day;
    END IF;
    RETURN NULL;
END $$;
"""


def upgrade() -> None:
    money = ["gross", "refunds", "disputes", "fees", "task_cost"]
    op.create_table(
        "converted_daily",
        sa.Column("reporting_currency", sa.Text(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("stream", sa.Text(), nullable=False),
        sa.Column("group_currency", sa.Text(), nullable=False),
        *[sa.Column(m, sa.Numeric(), nullable=False) for m in money],
        *[sa.Column(c, sa.BigInteger(), nullable=False) for c in ("tasks", "unpriced", "entries")],
        sa.PrimaryKeyConstraint(
            "reporting_currency", "day", "stream", "group_currency", name="pk_converted_daily"
        ),
    )
    op.create_table(
        "converted_days",
        sa.Column("reporting_currency", sa.Text(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.PrimaryKeyConstraint("reporting_currency", "day", name="pk_converted_days"),
    )
    op.execute(FX_FUNCTION)
    op.execute(
        "CREATE TRIGGER fx_rates_converted_daily AFTER INSERT OR UPDATE OR DELETE ON fx_rates "
        "FOR EACH ROW EXECUTE FUNCTION converted_daily_fx_changed()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER fx_rates_converted_daily ON fx_rates")
    op.execute("DROP FUNCTION converted_daily_fx_changed()")
    op.drop_table("converted_days")
    op.drop_table("converted_daily")
