"""GET /api/alerts: stored trend alerts, newest first (docs/alerts.md)."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from app.alerts.store import recent_alerts
from app.money import exponent

router = APIRouter(prefix="/api/alerts", tags=["alerts"])


class AlertOut(BaseModel):
    id: int
    stream: str
    metric: str = Field(description="net_revenue, margin or roi")
    direction: str = Field(description="drop or rise")
    detected_on: date = Field(description="Last day of data (in ROI_TIMEZONE) that raised it")
    change_started_on: date = Field(description="Estimated first day of the change")
    baseline_value: str = Field(description="Expected value a day over the changed days")
    recent_value: str = Field(description="Observed value a day over the changed days")
    change: str = Field(description="recent_value - baseline_value")
    relative_change: str | None = Field(description="change / |baseline|; null if baseline 0")
    currency: str | None = Field(description="Money metrics' currency; null for ROI")
    message: str
    created_at: datetime
    sent_at: datetime | None = Field(description="When the outgoing webhook accepted it")


def _decimal(value: Decimal, currency: str | None) -> str:
    """Money in its currency's decimals, as the metrics API shows it; ROI with 4."""
    places = exponent(currency) if currency else 4
    return f"{value:.{places}f}"


@router.get("", response_model=list[AlertOut], summary="Recent trend alerts, newest first")
def list_alerts(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=500, description="How many")] = 50,
) -> list[AlertOut]:
    with request.app.state.engine.connect() as conn:
        found = recent_alerts(conn, limit)
    return [
        AlertOut(
            id=a.id,
            stream=a.stream,
            metric=a.metric,
            direction=a.direction,
            detected_on=a.detected_on,
            change_started_on=a.change_started_on,
            baseline_value=_decimal(a.baseline_value, a.currency),
            recent_value=_decimal(a.recent_value, a.currency),
            change=_decimal(a.change, a.currency),
            relative_change=None if a.relative_change is None else f"{a.relative_change:.4f}",
            currency=a.currency,
            message=a.message,
            created_at=a.created_at,
            sent_at=a.sent_at,
        )
        for a in found
    ]
