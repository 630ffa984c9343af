"""Initial schema: raw Stripe events, merged Stripe facts, the ledger, and execution_tasks.

Revision ID: 0001
Revises:
Create Date: 2026-11-22 04:45:59.554206
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "attribution_hints",
        sa.Column("anchor_id", sa.Text(), nullable=False),
        sa.Column("source_id", sa.Text(), nullable=False),
        sa.Column("priority", sa.SmallInteger(), nullable=False),
        sa.Column("stream", sa.Text(), nullable=True),
        sa.Column("event_created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("anchor_id", "source_id", name=op.f("pk_attribution_hints")),
    )
    op.create_table(
        "balance_transactions",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("charge_id", sa.Text(), nullable=False),
        sa.Column("source_id", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("fee", sa.BigInteger(), nullable=False),
        sa.Column("net", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("exchange_rate", sa.Numeric(precision=24, scale=12), nullable=True),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_balance_transactions")),
    )
    op.create_index(
        "ix_balance_transactions_charge_id", "balance_transactions", ["charge_id"], unique=False
    )
    op.create_table(
        "charges",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("currency", sa.Text(), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=True),
        sa.Column("amount_captured", sa.BigInteger(), nullable=True),
        sa.Column("captured", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("succeeded", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=True),
        sa.Column("payment_intent", sa.Text(), nullable=True),
        sa.Column("invoice", sa.Text(), nullable=True),
        sa.Column("customer", sa.Text(), nullable=True),
        sa.Column("balance_transaction", sa.Text(), nullable=True),
        sa.Column("meta_stream", sa.Text(), nullable=True),
        sa.Column("meta_event_created", sa.DateTime(timezone=True), nullable=True),
        sa.Column("meta_event_id", sa.Text(), nullable=True),
        sa.Column("amount_refunded", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("amount_refunded_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("event_id", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_charges")),
    )
    op.create_index("ix_charges_invoice", "charges", ["invoice"], unique=False)
    op.create_index("ix_charges_payment_intent", "charges", ["payment_intent"], unique=False)
    op.create_table(
        "disputes",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("charge_id", sa.Text(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("withdrawn", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("withdrawn_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reinstated", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("reinstated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("event_id", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_disputes")),
    )
    op.create_index("ix_disputes_charge_id", "disputes", ["charge_id"], unique=False)
    op.create_table(
        "execution_tasks",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("external_id", sa.Text(), nullable=False),
        sa.Column("stream", sa.Text(), nullable=False),
        sa.Column("task_type", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("duration_ms", sa.BigInteger(), nullable=True),
        sa.Column("tokens_in", sa.BigInteger(), nullable=True),
        sa.Column("tokens_out", sa.BigInteger(), nullable=True),
        sa.Column("gpu_seconds", sa.Numeric(precision=18, scale=6), nullable=True),
        sa.Column("cost_amount", sa.Numeric(precision=24, scale=6), nullable=True),
        sa.Column("cost_currency", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_execution_tasks")),
        sa.UniqueConstraint("external_id", name=op.f("uq_execution_tasks_external_id")),
    )
    op.create_index(
        "ix_execution_tasks_started_at", "execution_tasks", ["started_at"], unique=False
    )
    op.create_table(
        "ledger_entries",
        sa.Column("entry_key", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("charge_id", sa.Text(), nullable=False),
        sa.Column("object_id", sa.Text(), nullable=False),
        sa.Column("stream", sa.Text(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("booked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("balance_transaction", sa.Text(), nullable=True),
        sa.Column("event_id", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "kind IN ('charge', 'refund', 'dispute', 'fee')", name=op.f("ck_ledger_entries_kind")
        ),
        sa.PrimaryKeyConstraint("entry_key", name=op.f("pk_ledger_entries")),
    )
    op.create_index("ix_ledger_entries_booked_at", "ledger_entries", ["booked_at"], unique=False)
    op.create_index("ix_ledger_entries_charge_id", "ledger_entries", ["charge_id"], unique=False)
    op.create_table(
        "refunds",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("charge_id", sa.Text(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("status_rank", sa.SmallInteger(), nullable=False),
        sa.Column("reversed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("balance_transaction", sa.Text(), nullable=True),
        sa.Column("event_id", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_refunds")),
    )
    op.create_index("ix_refunds_charge_id", "refunds", ["charge_id"], unique=False)
    op.create_table(
        "stream_mappings",
        sa.Column("stripe_id", sa.Text(), nullable=False),
        sa.Column("stream", sa.Text(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "stripe_id ~ '^(prod|price|cus)_'", name=op.f("ck_stream_mappings_stripe_id_kind")
        ),
        sa.PrimaryKeyConstraint("stripe_id", name=op.f("pk_stream_mappings")),
    )
    op.create_table(
        "stripe_events",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("api_version", sa.Text(), nullable=True),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("livemode", sa.Boolean(), nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "received_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('processed', 'ignored', 'failed')", name=op.f("ck_stripe_events_status")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stripe_events")),
    )
    op.create_index("ix_stripe_events_created", "stripe_events", ["created"], unique=False)
    op.create_index(
        "ix_stripe_events_status_failed",
        "stripe_events",
        ["status"],
        unique=False,
        postgresql_where=sa.text("status = 'failed'"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_stripe_events_status_failed",
        table_name="stripe_events",
        postgresql_where=sa.text("status = 'failed'"),
    )
    op.drop_index("ix_stripe_events_created", table_name="stripe_events")
    op.drop_table("stripe_events")
    op.drop_table("stream_mappings")
    op.drop_index("ix_refunds_charge_id", table_name="refunds")
    op.drop_table("refunds")
    op.drop_index("ix_ledger_entries_charge_id", table_name="ledger_entries")
    op.drop_index("ix_ledger_entries_booked_at", table_name="ledger_entries")
    op.drop_table("ledger_entries")
    op.drop_index("ix_execution_tasks_started_at", table_name="execution_tasks")
    op.drop_table("execution_tasks")
    op.drop_index("ix_disputes_charge_id", table_name="disputes")
    op.drop_table("disputes")
    op.drop_index("ix_charges_payment_intent", table_name="charges")
    op.drop_index("ix_charges_invoice", table_name="charges")
    op.drop_table("charges")
    op.drop_index("ix_balance_transactions_charge_id", table_name="balance_transactions")
    op.drop_table("balance_transactions")
    op.drop_table("attribution_hints")
