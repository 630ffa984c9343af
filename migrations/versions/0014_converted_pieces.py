"""Converted daily figures split at the local midnights of the app's zone.

A UTC day's converted row went to the bucket of its noon, so a daily series in a zone off UTC
(New York) still had to move the 4-5 hours before each local midnight into the previous
bucket, from hourly rollup rows converted on every request: about 63,000 of them for 90 days,
280 ms. Split where the app's zone (ROI_TIMEZONE) starts a local day, each piece lies in one
local day, week, month and quarter, so a series in that zone reads the pieces as they are.

`converted_daily` gets the piece's first instant (`piece_start`) in its key and the zone it was
split in (`split_zone`); `converted_days` records that zone too, so readers in another zone know
the pieces do not fit their buckets. The pieces are built from the compacted hourly rollup rows
(a day's hours say where to cut it, its daily row cannot), and readers add the hourly rows not
compacted yet: app/metrics/converted.py.

Deploying it: processes of the code before it should not outlive the migration by more than a
moment (the release phase, then new processes): they read the pieces as whole days and add the
daily rows not compacted yet, which can differ from the hourly ones for a compaction round.

Both tables are derived data, emptied both ways: compaction builds them again in a few rounds.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-27 14:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DAY_KEY = ["reporting_currency", "day", "stream", "group_currency"]  # 0013's
PIECE_KEY = ["reporting_currency", "day", "piece_start", "stream", "group_currency"]


def upgrade() -> None:
    op.execute("TRUNCATE converted_daily, converted_days")
    op.drop_constraint("pk_converted_daily", "converted_daily", type_="primary")
    op.add_column(
        "converted_daily",
        sa.Column("piece_start", sa.DateTime(timezone=True), nullable=False),
    )
    op.add_column("converted_daily", sa.Column("split_zone", sa.Text(), nullable=False))
    op.create_primary_key("pk_converted_daily", "converted_daily", PIECE_KEY)
    op.add_column("converted_days", sa.Column("split_zone", sa.Text(), nullable=False))


def downgrade() -> None:
    op.execute("TRUNCATE converted_daily, converted_days")
    op.drop_column("converted_days", "split_zone")
    op.drop_constraint("pk_converted_daily", "converted_daily", type_="primary")
    op.drop_column("converted_daily", "split_zone")
    op.drop_column("converted_daily", "piece_start")
    op.create_primary_key("pk_converted_daily", "converted_daily", DAY_KEY)
