"""Trend alerts: each alert stored once, with when the outgoing webhook accepted it.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-22 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("stream", sa.Text(), nullable=False),
        sa.Column("metric", sa.Text(), nullable=False),
        sa.Column("direction", sa.Text(), nullable=False),
        sa.Column("detected_on", sa.Date(), nullable=False),
        sa.Column("change_started_on", sa.Date(), nullable=False),
        sa.Column("baseline_value", sa.Numeric(), nullable=False),
        sa.Column("recent_value", sa.Numeric(), nullable=False),
        sa.Column("change", sa.Numeric(), nullable=False),
        sa.Column("relative_change", sa.Numeric(), nullable=True),
        sa.Column("currency", sa.Text(), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("send_attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.CheckConstraint("metric IN ('net_revenue', 'margin', 'roi')", name="ck_alerts_metric"),
        sa.CheckConstraint("direction IN ('drop', 'rise')", name="ck_alerts_direction"),
        sa.PrimaryKeyConstraint("id", name="pk_alerts"),
        sa.UniqueConstraint(
            "stream", "metric", "direction", "detected_on", name="uq_alerts_stream"
        ),
    )
    op.create_index("ix_alerts_detected_on", "alerts", ["detected_on"])
    op.create_index(
        "ix_alerts_unsent", "alerts", ["id"], postgresql_where=sa.text("sent_at IS NULL")
    )


def downgrade() -> None:
    op.drop_index("ix_alerts_unsent", table_name="alerts")
    op.drop_index("ix_alerts_detected_on", table_name="alerts")
    op.drop_table("alerts")
