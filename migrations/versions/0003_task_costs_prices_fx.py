"""Task costs: priced columns and the contract's checks on execution_tasks, model prices with
their audit log, and FX rates.

Adding the checks validates existing rows: if a row breaks the documented contract
(docs/tasks.md), the upgrade stops with the name of the check it breaks, and nothing is changed.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 06:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COST_SOURCE = (
    "CASE WHEN cost_amount IS NOT NULL THEN 'sent' "
    "WHEN priced_amount IS NOT NULL THEN 'priced' ELSE 'unpriced' END"
)

TASK_CHECKS = {
    "status": "status IN ('queued', 'running', 'succeeded', 'failed', 'canceled')",
    "finished_after_start": "finished_at IS NULL OR finished_at >= started_at",
    "usage_non_negative": (
        "duration_ms >= 0 AND tokens_in >= 0 AND tokens_out >= 0 AND gpu_seconds >= 0"
    ),
    "cost": (
        "(cost_amount IS NULL) = (cost_currency IS NULL) AND cost_amount >= 0 "
        "AND cost_currency ~ '^[a-z]{3}$'"
    ),
    "priced": (
        "(priced_amount IS NULL) = (priced_currency IS NULL) "
        "AND (priced_amount IS NULL) = (price_id IS NULL) "
        "AND (cost_amount IS NULL OR priced_amount IS NULL)"
    ),
}


def _now() -> sa.TextClause:
    return sa.text("now()")


def upgrade() -> None:
    op.create_table(
        "model_prices",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("ai_model", sa.Text(), nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("per_million_in", sa.Numeric(precision=24, scale=12), nullable=True),
        sa.Column("per_million_out", sa.Numeric(precision=24, scale=12), nullable=True),
        sa.Column("per_gpu_second", sa.Numeric(precision=24, scale=12), nullable=True),
        sa.Column("valid_from", sa.DateTime(timezone=True), nullable=False),
        sa.Column("valid_to", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=_now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=_now(), nullable=False),
        sa.CheckConstraint("currency ~ '^[a-z]{3}$'", name=op.f("ck_model_prices_currency")),
        sa.CheckConstraint(
            "per_million_in IS NOT NULL OR per_million_out IS NOT NULL "
            "OR per_gpu_second IS NOT NULL",
            name=op.f("ck_model_prices_some_component"),
        ),
        sa.CheckConstraint(
            "per_million_in >= 0 AND per_million_out >= 0 AND per_gpu_second >= 0",
            name=op.f("ck_model_prices_components_non_negative"),
        ),
        sa.CheckConstraint(
            "valid_to IS NULL OR valid_to > valid_from", name=op.f("ck_model_prices_period")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_prices")),
    )
    op.create_index(
        "ix_model_prices_ai_model_valid_from",
        "model_prices",
        ["ai_model", "valid_from"],
        unique=True,
    )
    op.create_table(
        "model_price_changes",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("price_id", sa.BigInteger(), nullable=True),
        sa.Column("ai_model", sa.Text(), nullable=True),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("old_values", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("new_values", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("tasks_recomputed", sa.BigInteger(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), server_default=_now(), nullable=False),
        sa.CheckConstraint(
            "action IN ('create', 'update', 'end', 'reprice')",
            name=op.f("ck_model_price_changes_action"),
        ),
        sa.CheckConstraint("actor IN ('cli', 'api')", name=op.f("ck_model_price_changes_actor")),
        sa.ForeignKeyConstraint(
            ["price_id"],
            ["model_prices.id"],
            name=op.f("fk_model_price_changes_price_id_model_prices"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_price_changes")),
    )
    op.create_index(
        "ix_model_price_changes_price_id", "model_price_changes", ["price_id"], unique=False
    )
    op.create_table(
        "fx_rates",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("quote_currency", sa.Text(), nullable=False),
        sa.Column("rate", sa.Numeric(precision=24, scale=12), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=_now(), nullable=False),
        sa.CheckConstraint(
            "currency ~ '^[a-z]{3}$' AND quote_currency ~ '^[a-z]{3}$' "
            "AND currency <> quote_currency",
            name=op.f("ck_fx_rates_currencies"),
        ),
        sa.CheckConstraint("rate > 0", name=op.f("ck_fx_rates_rate_positive")),
        sa.PrimaryKeyConstraint("day", "currency", "quote_currency", name=op.f("pk_fx_rates")),
    )

    op.add_column("execution_tasks", sa.Column("priced_amount", sa.Numeric(24, 6), nullable=True))
    op.add_column("execution_tasks", sa.Column("priced_currency", sa.Text(), nullable=True))
    op.add_column("execution_tasks", sa.Column("price_id", sa.BigInteger(), nullable=True))
    op.add_column(
        "execution_tasks",
        sa.Column(
            "cost_source", sa.Text(), sa.Computed(COST_SOURCE, persisted=True), nullable=False
        ),
    )
    op.create_foreign_key(
        op.f("fk_execution_tasks_price_id_model_prices"),
        "execution_tasks",
        "model_prices",
        ["price_id"],
        ["id"],
    )
    for name, condition in TASK_CHECKS.items():
        op.create_check_constraint(op.f(f"ck_execution_tasks_{name}"), "execution_tasks", condition)
    op.create_index(
        "ix_execution_tasks_ai_model_started_at",
        "execution_tasks",
        ["ai_model", "started_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_execution_tasks_ai_model_started_at", table_name="execution_tasks")
    for name in reversed(list(TASK_CHECKS)):
        op.drop_constraint(op.f(f"ck_execution_tasks_{name}"), "execution_tasks", type_="check")
    op.drop_constraint(
        op.f("fk_execution_tasks_price_id_model_prices"), "execution_tasks", type_="foreignkey"
    )
    op.drop_column("execution_tasks", "cost_source")
    op.drop_column("execution_tasks", "price_id")
    op.drop_column("execution_tasks", "priced_currency")
    op.drop_column("execution_tasks", "priced_amount")
    op.drop_table("fx_rates")
    op.drop_index("ix_model_price_changes_price_id", table_name="model_price_changes")
    op.drop_table("model_price_changes")
    op.drop_index("ix_model_prices_ai_model_valid_from", table_name="model_prices")
    op.drop_table("model_prices")
