"""Pre-aggregated figures: hourly rollups of the ledger and of task costs, kept by triggers.

Every statement that writes `ledger_entries` or `execution_tasks` appends its net change,
grouped by UTC hour and key, to the rollup tables (an update appends the old row negated and
the new one). Appending never waits on another transaction's row lock, so ingestion does not
serialise on the current hour. Rows of one key are summed by every reader and merged in the
background (`compact_rollups()`), so a figure is exact as soon as its transaction commits.

Also adds the settlement amount (from the Stripe balance transaction, when known) to ledger
entries: the first choice for converting into the reporting currency.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 05:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LEDGER_MONEY = ["gross", "refunds", "disputes", "fees"]
KIND_OF = {"gross": "charge", "refunds": "refund", "disputes": "dispute", "fees": "fee"}


def _ledger_select(rows: str, sign: str) -> str:
    original = ",\n".join(
        f"{sign}COALESCE(sum(amount) FILTER (WHERE kind = '{KIND_OF[m]}'), 0)" for m in LEDGER_MONEY
    )
    settled = ",\n".join(
        f"{sign}COALESCE(sum(settlement_amount) FILTER (WHERE kind = '{KIND_OF[m]}'), 0)"
        for m in LEDGER_MONEY
    )
    return f"""
        INSERT INTO ledger_rollup (bucket, stream, currency, settlement_currency,
            {", ".join(LEDGER_MONEY)}, {", ".join("settled_" + m for m in LEDGER_MONEY)}, entries)
        SELECT date_trunc('hour', booked_at, 'UTC'), stream, currency,
               COALESCE(settlement_currency, ''),
               {original},
               {settled},
               {sign}count(*)
        FROM {rows}
        GROUP BY 1, 2, 3, 4;"""


LEDGER_FUNCTION = f"""
CREATE FUNCTION ledger_rollup_append() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        {_ledger_select("new_rows", "")}
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        {_ledger_select("old_rows", "-")}
    END IF;
    RETURN NULL;
END
$$;
"""


def _task_select(table: str, rows: str, sign: str, detailed: bool) -> str:
    keys = "stream, ai_model, task_type, currency" if detailed else "stream, currency"
    key_values = (
        "stream, COALESCE(ai_model, ''), task_type, COALESCE(cost_currency, priced_currency, '')"
        if detailed
        else "stream, COALESCE(cost_currency, priced_currency, '')"
    )
    group = "1, 2, 3, 4, 5" if detailed else "1, 2, 3"
    detail_columns = ", succeeded, failed, duration_ms, durations" if detailed else ""
    detail_values = (
        f""",
               {sign}count(*) FILTER (WHERE status = 'succeeded'),
               {sign}count(*) FILTER (WHERE status = 'failed'),
               {sign}COALESCE(sum(duration_ms), 0),
               {sign}count(duration_ms)"""
        if detailed
        else ""
    )
    return f"""
        INSERT INTO {table} (bucket, {keys}, tasks, unpriced, cost{detail_columns})
        SELECT date_trunc('hour', started_at, 'UTC'), {key_values},
               {sign}count(*),
               {sign}count(*) FILTER (WHERE cost_source = 'unpriced'),
               {sign}COALESCE(sum(COALESCE(cost_amount, priced_amount)), 0){detail_values}
        FROM {rows}
        GROUP BY {group};"""


TASK_FUNCTION = f"""
CREATE FUNCTION task_rollup_append() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        {_task_select("task_rollup", "new_rows", "", True)}
        {_task_select("task_stream_rollup", "new_rows", "", False)}
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        {_task_select("task_rollup", "old_rows", "-", True)}
        {_task_select("task_stream_rollup", "old_rows", "-", False)}
    END IF;
    RETURN NULL;
END
$$;
"""


def _triggers(table: str, function: str) -> list[str]:
    return [
        f"CREATE TRIGGER {table}_rollup_insert AFTER INSERT ON {table} "
        f"REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION {function}()",
        f"CREATE TRIGGER {table}_rollup_update AFTER UPDATE ON {table} "
        f"REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()",
        f"CREATE TRIGGER {table}_rollup_delete AFTER DELETE ON {table} "
        f"REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION {function}()",
    ]


def _money(name: str) -> sa.Column[int]:
    return sa.Column(name, sa.BigInteger(), nullable=False, server_default=sa.text("0"))


def upgrade() -> None:
    op.add_column("ledger_entries", sa.Column("settlement_amount", sa.BigInteger(), nullable=True))
    op.add_column("ledger_entries", sa.Column("settlement_currency", sa.Text(), nullable=True))
    # For `as_of`, the newest data included: an index scan instead of a table scan.
    op.create_index("ix_stripe_events_received_at", "stripe_events", ["received_at"])
    op.create_index("ix_execution_tasks_updated_at", "execution_tasks", ["updated_at"])
    op.create_table(
        "ledger_rollup",
        sa.Column("bucket", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stream", sa.Text(), nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("settlement_currency", sa.Text(), nullable=False),
        *[_money(m) for m in LEDGER_MONEY],
        *[_money("settled_" + m) for m in LEDGER_MONEY],
        _money("entries"),
        sa.Column("compacted", sa.Boolean(), nullable=False, server_default=sa.text("false")),
    )
    op.create_index("ix_ledger_rollup_bucket", "ledger_rollup", ["bucket"])
    op.create_index(
        "ix_ledger_rollup_pending",
        "ledger_rollup",
        ["bucket"],
        postgresql_where=sa.text("NOT compacted"),
    )
    for table, detailed in (("task_rollup", True), ("task_stream_rollup", False)):
        detail = (
            [
                sa.Column("ai_model", sa.Text(), nullable=False),
                sa.Column("task_type", sa.Text(), nullable=False),
            ]
            if detailed
            else []
        )
        counters = (
            [_money("succeeded"), _money("failed"), _money("duration_ms"), _money("durations")]
            if detailed
            else []
        )
        op.create_table(
            table,
            sa.Column("bucket", sa.DateTime(timezone=True), nullable=False),
            sa.Column("stream", sa.Text(), nullable=False),
            *detail,
            sa.Column("currency", sa.Text(), nullable=False),
            _money("tasks"),
            _money("unpriced"),
            sa.Column("cost", sa.Numeric(30, 6), nullable=False, server_default=sa.text("0")),
            *counters,
            sa.Column("compacted", sa.Boolean(), nullable=False, server_default=sa.text("false")),
        )
        op.create_index(f"ix_{table}_bucket", table, ["bucket"])
        op.create_index(
            f"ix_{table}_pending", table, ["bucket"], postgresql_where=sa.text("NOT compacted")
        )
    op.execute(LEDGER_FUNCTION)
    op.execute(TASK_FUNCTION)
    for statement in _triggers("ledger_entries", "ledger_rollup_append") + _triggers(
        "execution_tasks", "task_rollup_append"
    ):
        op.execute(statement)
    # Existing rows: roll them up once (the triggers only see what changes from now on).
    op.execute(_ledger_select("ledger_entries", ""))
    op.execute(_task_select("task_rollup", "execution_tasks", "", True))
    op.execute(_task_select("task_stream_rollup", "execution_tasks", "", False))


def downgrade() -> None:
    for table in ("ledger_entries", "execution_tasks"):
        for op_name in ("insert", "update", "delete"):
            op.execute(f"DROP TRIGGER {table}_rollup_{op_name} ON {table}")
    op.execute("DROP FUNCTION task_rollup_append()")
    op.execute("DROP FUNCTION ledger_rollup_append()")
    op.drop_table("task_stream_rollup")
    op.drop_table("task_rollup")
    op.drop_table("ledger_rollup")
    op.drop_index("ix_execution_tasks_updated_at", table_name="execution_tasks")
    op.drop_index("ix_stripe_events_received_at", table_name="stripe_events")
    op.drop_column("ledger_entries", "settlement_currency")
    op.drop_column("ledger_entries", "settlement_amount")
