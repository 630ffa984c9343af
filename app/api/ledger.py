"""GET /api/ledger/totals: the ledger summed per stream and currency, to reconcile with Stripe."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from app.ledger.totals import event_counts, ledger_totals
from app.money import exponent
from app.periods import period, zone

router = APIRouter(prefix="/api/ledger", tags=["ledger"])


@router.get(
    "/totals",
    summary="Ledger totals per stream and currency, in minor units",
    description=(
        "Sums of the ledger booked in [start, end). Amounts are integers in the currency's "
        "minor unit, signed as booked: refunds, disputes and fees are negative, reinstated "
        "disputes and failed refunds positive. net = gross + refunds + disputes (fees are a "
        "cost, not deducted from net revenue). Dates are cut in `tz` (default ROI_TIMEZONE)."
    ),
)
def totals(
    request: Request,
    start: Annotated[str, Query(description="YYYY-MM-DD or ISO datetime, inclusive")],
    end: Annotated[str, Query(description="YYYY-MM-DD or ISO datetime, exclusive")],
    tz: Annotated[str | None, Query(description="IANA time zone")] = None,
) -> dict[str, Any]:
    settings = request.app.state.settings
    zone_info = zone(tz or settings.timezone)
    lo, hi = period(start, end, zone_info)
    with request.app.state.engine.connect() as conn:
        rows = ledger_totals(conn, lo, hi)
        counts = event_counts(conn, lo, hi)
    return {
        "start": lo.isoformat(),
        "end": hi.isoformat(),
        "tz": zone_info.key,
        "totals": [
            {
                "stream": r.stream,
                "currency": r.currency,
                "exponent": exponent(r.currency),
                "gross": r.gross,
                "refunds": r.refunds,
                "disputes": r.disputes,
                "fees": r.fees,
                "net": r.net,
            }
            for r in rows
        ],
        "events": counts,
    }
