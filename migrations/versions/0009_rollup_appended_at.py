"""When each rollup row was appended, so the pre-aggregation lag can be told in seconds.

Readers sum uncompacted rows, so a stalled compaction does not make figures wrong, only slower;
operators need to see it coming: /metrics and the data-health page report the age of the
oldest row not compacted yet, read through the partial "pending" index. Adding a column with a
non-volatile default (now() is stable) is instant in PostgreSQL 11+: no table rewrite; rows
already there get the time of the migration.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-22 08:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLLUPS = (
    "ledger_rollup",
    "task_rollup",
    "task_stream_rollup",
    "ledger_rollup_daily",
    "task_stream_rollup_daily",
)


def upgrade() -> None:
    for table in ROLLUPS:
        op.add_column(
            table,
            sa.Column(
                "appended_at",
                sa.DateTime(timezone=True),
                nullable=False,
                server_default=sa.text("now()"),
            ),
        )


def downgrade() -> None:
    for table in ROLLUPS:
        op.drop_column(table, "appended_at")
