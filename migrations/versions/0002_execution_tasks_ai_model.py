"""Add execution_tasks.ai_model: which AI model ran the task (nullable text).

The column whose absence once stopped production (`column "ai_model" of relation
"execution_tasks" does not exist`); it has a revision of its own so it can be rolled back.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 05:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("execution_tasks", sa.Column("ai_model", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("execution_tasks", "ai_model")
