"""Where base sums come from: the hourly rollups, or the raw tables, in the same shape.

Both sources yield rows of (ts, stream, currency, ...sums) for a filter; the queries in
`queries.py` convert and group them the same way whichever source they read, so the rollups
can be checked against the raw tables (tests, bench) by flipping `raw=True`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Select, and_, case, func, literal, select

from app.metrics.filters import MetricsFilter
from app.models import execution_tasks, ledger_entries, ledger_rollup, task_rollup
from app.models import task_stream_rollup as stream_rollup

LEDGER_MONEY = ("gross", "refunds", "disputes", "fees")
KIND_OF = {"gross": "charge", "refunds": "refund", "disputes": "dispute", "fees": "fee"}


def _in(column: ColumnElement[str], values: tuple[str, ...]) -> ColumnElement[bool]:
    return column.in_(values) if values else literal(True)


def ledger_source(f: MetricsFilter, raw: bool) -> Select[Any]:
    """(ts, stream, currency, settlement_currency, gross..fees, settled_gross..settled_fees)."""
    if not raw:
        r = ledger_rollup.c
        return select(
            r.bucket.label("ts"),
            r.stream,
            r.currency,
            r.settlement_currency,
            *[r[m] for m in LEDGER_MONEY],
            *[r["settled_" + m] for m in LEDGER_MONEY],
        ).where(r.bucket >= f.start, r.bucket < f.end, _in(r.stream, f.streams))
    le = ledger_entries.c

    def of_kind(column: ColumnElement[int], money: str) -> ColumnElement[int]:
        return case((le.kind == KIND_OF[money], column), else_=0)

    return select(
        le.booked_at.label("ts"),
        le.stream,
        le.currency,
        func.coalesce(le.settlement_currency, "").label("settlement_currency"),
        *[of_kind(le.amount, m).label(m) for m in LEDGER_MONEY],
        *[
            of_kind(func.coalesce(le.settlement_amount, 0), m).label("settled_" + m)
            for m in LEDGER_MONEY
        ],
    ).where(le.booked_at >= f.start, le.booked_at < f.end, _in(le.stream, f.streams))


def task_source(f: MetricsFilter, raw: bool, detailed: bool) -> Select[Any]:
    """(ts, stream, [ai_model, task_type,] currency, tasks, unpriced, cost
    [, succeeded, failed, duration_ms, durations]). `detailed` keeps model and task type."""
    if not raw:
        table = task_rollup if (detailed or f.filters_tasks) else stream_rollup
        t = table.c
        columns: list[ColumnElement[Any]] = [t.bucket.label("ts"), t.stream]
        if detailed:
            columns += [t.ai_model, t.task_type]
        columns += [t.currency, t.tasks, t.unpriced, t.cost]
        if detailed:
            columns += [t.succeeded, t.failed, t.duration_ms, t.durations]
        conditions = [t.bucket >= f.start, t.bucket < f.end, _in(t.stream, f.streams)]
        if table is task_rollup:
            conditions += [_in(t.ai_model, f.ai_models), _in(t.task_type, f.task_types)]
        return select(*columns).where(*conditions)
    x = execution_tasks.c
    raw_columns: list[ColumnElement[Any]] = [x.started_at.label("ts"), x.stream]
    if detailed:
        raw_columns += [
            func.coalesce(x.ai_model, "").label("ai_model"),
            x.task_type,
        ]
    raw_columns += [
        func.coalesce(x.cost_currency, x.priced_currency, "").label("currency"),
        literal(1).label("tasks"),
        case((x.cost_source == "unpriced", 1), else_=0).label("unpriced"),
        func.coalesce(x.cost_amount, x.priced_amount, 0).label("cost"),
    ]
    if detailed:
        raw_columns += [
            case((x.status == "succeeded", 1), else_=0).label("succeeded"),
            case((x.status == "failed", 1), else_=0).label("failed"),
            func.coalesce(x.duration_ms, 0).label("duration_ms"),
            case((x.duration_ms.is_(None), 0), else_=1).label("durations"),
        ]
    return select(*raw_columns).where(
        and_(
            x.started_at >= f.start,
            x.started_at < f.end,
            _in(x.stream, f.streams),
            _in(func.coalesce(x.ai_model, ""), f.ai_models),
            _in(x.task_type, f.task_types),
        )
    )
