"""Catch-up from the Stripe API: fee fetches that gave up, the event catch-up's high-water
mark, and a partial index on ledger movements whose balance transaction is not known yet.

The index is the fee fetcher's work list and what the metrics API counts as `fees_unknown`;
once fees are caught up it holds only the newest charges, so both stay cheap at any ledger size.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-22 08:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "stripe_fee_fetches",
        sa.Column("balance_transaction", sa.Text(), nullable=False),
        sa.Column("charge_id", sa.Text(), nullable=False),
        sa.Column("source_id", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("balance_transaction", name=op.f("pk_stripe_fee_fetches")),
    )
    op.create_table(
        "stripe_catchup_state",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("high_water", sa.DateTime(timezone=True), nullable=True),
        sa.Column("high_water_event_id", sa.Text(), nullable=True),
        sa.Column("last_run_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.CheckConstraint("name IN ('events')", name=op.f("ck_stripe_catchup_state_name")),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_stripe_catchup_state")),
    )
    op.create_index(
        "ix_ledger_entries_settlement_unknown",
        "ledger_entries",
        ["booked_at", "entry_key"],
        postgresql_where=sa.text("settlement_amount IS NULL"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_ledger_entries_settlement_unknown",
        table_name="ledger_entries",
        postgresql_where=sa.text("settlement_amount IS NULL"),
    )
    op.drop_table("stripe_catchup_state")
    op.drop_table("stripe_fee_fetches")
