"""Announce committed changes to tasks, prices, FX rates and stream mappings (NOTIFY).

Open dashboards redraw when a change is announced on the `roi_changes` channel (app/changes.py).
Statement triggers cover every writer of these tables, including systems that write
`execution_tasks` directly. The Stripe ledger is announced by the event writer after commit
instead: a trigger there would put NOTIFY's global lock inside the webhook's hot transactions.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22 08:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ANNOUNCED_TABLES = ["execution_tasks", "model_prices", "fx_rates", "stream_mappings"]


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION roi_announce_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            -- Identical notifications in one transaction are folded into one by PostgreSQL.
            PERFORM pg_notify('roi_changes', '');
            RETURN NULL;
        END $$
        """
    )
    for table in ANNOUNCED_TABLES:
        op.execute(
            f"CREATE TRIGGER {table}_announce AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE "
            f"ON {table} FOR EACH STATEMENT EXECUTE FUNCTION roi_announce_change()"
        )


def downgrade() -> None:
    for table in ANNOUNCED_TABLES:
        op.execute(f"DROP TRIGGER {table}_announce ON {table}")
    op.execute("DROP FUNCTION roi_announce_change()")
