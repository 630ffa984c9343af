"""What there is to filter by: the streams that have ever had revenue or tasks."""

from __future__ import annotations

from sqlalchemy import Connection, select, union

from app.models import ledger_rollup_daily, task_stream_rollup_daily


def known_streams(conn: Connection) -> list[str]:
    """Every stream with a ledger entry or a task, sorted; read from the daily rollups, which
    hold a row per stream and day rather than per movement."""
    streams = union(
        select(ledger_rollup_daily.c.stream).distinct(),
        select(task_stream_rollup_daily.c.stream).distinct(),
    ).subquery()
    return list(conn.scalars(select(streams.c.stream).order_by(streams.c.stream)))
