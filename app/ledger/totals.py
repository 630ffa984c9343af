"""The finance audit view: ledger totals per stream and currency, in minor units."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, func, select

from app.models import ledger_entries, stripe_events


@dataclass(frozen=True)
class StreamCurrencyTotals:
    stream: str
    currency: str
    gross: int
    refunds: int
    disputes: int
    fees: int

    @property
    def net(self) -> int:
        """Net revenue (accounting.md): gross - refunds - disputes, fees not deducted."""
        return self.gross + self.refunds + self.disputes


def _sum_of(kind: str):  # type: ignore[no-untyped-def]
    return func.coalesce(
        func.sum(ledger_entries.c.amount).filter(ledger_entries.c.kind == kind), 0
    ).label(kind)


def ledger_totals(conn: Connection, start: datetime, end: datetime) -> list[StreamCurrencyTotals]:
    """Sums of the ledger booked in [start, end), signed as stored (refunds, disputes, fees < 0)."""
    le = ledger_entries.c
    query = (
        select(
            le.stream,
            le.currency,
            _sum_of("charge"),
            _sum_of("refund"),
            _sum_of("dispute"),
            _sum_of("fee"),
        )
        .where(le.booked_at >= start, le.booked_at < end)
        .group_by(le.stream, le.currency)
        .order_by(le.stream, le.currency)
    )
    return [
        StreamCurrencyTotals(
            stream=row.stream,
            currency=row.currency,
            gross=int(row.charge),
            refunds=int(row.refund),
            disputes=int(row.dispute),
            fees=int(row.fee),
        )
        for row in conn.execute(query)
    ]


def event_counts(conn: Connection, start: datetime, end: datetime) -> dict[str, int]:
    """Failed and ignored Stripe events created in [start, end)."""
    ev = stripe_events.c
    rows = conn.execute(
        select(ev.status, func.count())
        .where(ev.created >= start, ev.created < end, ev.status.in_(("failed", "ignored")))
        .group_by(ev.status)
    ).all()
    counts = {"failed": 0, "ignored": 0}
    counts.update({status: int(n) for status, n in rows})
    return counts
