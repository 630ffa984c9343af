"""FX rates by day: list them, and add or correct them (a JSON list; CSV files: `roi fx import`)."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Body, HTTPException, Query, Request
from pydantic import BaseModel, Field

from app.audit import record_audit
from app.auth.dependencies import current_principal
from app.fields import format_decimal
from app.fx import FxRateIn, list_rates, upsert_rates, validate_rates

router = APIRouter(prefix="/api/fx-rates", tags=["fx"])

MAX_RATES = 10_000


class FxRateOut(BaseModel):
    day: date
    currency: str
    quote_currency: str
    rate: str = Field(description="Decimal string: 1 currency = rate quote_currency.")


class FxImportOut(BaseModel):
    inserted: int
    updated: int = Field(description="Rates that existed with another value.")
    unchanged: int = Field(description="Rates sent again with the same value: not touched.")


@router.get("", summary="FX rates by day", response_model=list[FxRateOut])
def get_rates(
    request: Request,
    currency: Annotated[str | None, Query(description="Converted from, e.g. eur.")] = None,
    quote_currency: Annotated[str | None, Query(description="Converted into.")] = None,
    start: Annotated[date | None, Query(description="First day, inclusive.")] = None,
    end: Annotated[date | None, Query(description="Last day, exclusive.")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> list[FxRateOut]:
    with request.app.state.engine.connect() as conn:
        rows = list_rates(
            conn,
            currency=currency.lower() if currency else None,
            quote_currency=quote_currency.lower() if quote_currency else None,
            start=start,
            end=end,
            limit=limit,
        )
    return [
        FxRateOut(
            day=r.day,
            currency=r.currency,
            quote_currency=r.quote_currency,
            rate=format_decimal(r.rate) or "0",
        )
        for r in rows
    ]


@router.post(
    "",
    summary="Add or correct FX rates",
    description=(
        "A JSON list of daily rates; `quote_currency` defaults to REPORTING_CURRENCY. A rate "
        "is a decimal string (a float is refused naming the field). Rates already stored "
        "are replaced when different and left untouched when equal. Any invalid row refuses "
        "the whole list (422, every problem listed as `detail[].loc`) and nothing is written."
    ),
    response_model=FxImportOut,
)
def post_rates(
    request: Request, body: Annotated[list[FxRateIn], Body(max_length=MAX_RATES)]
) -> FxImportOut:
    default_quote = request.app.state.settings.reporting_currency
    rows, errors = validate_rates(
        ((i, item.model_dump(exclude_none=True)) for i, item in enumerate(body)),
        default_quote=default_quote,
    )
    if errors:
        raise HTTPException(
            status_code=422,
            detail=[{"loc": ["body", e.index, e.field], "msg": e.reason} for e in errors],
        )
    principal = current_principal(request)
    with request.app.state.engine.begin() as conn:
        counts = upsert_rates(conn, rows)
        if counts.inserted or counts.updated:
            record_audit(conn, principal, "fx_rates.upsert", "fx_rates", {
                "inserted": counts.inserted,
                "updated": counts.updated,
                "unchanged": counts.unchanged,
                "rates": [
                    [r.day.isoformat(), r.currency, r.quote_currency, format_decimal(r.rate)]
                    for r in rows
                ],
            })  # fmt: skip
    return FxImportOut(inserted=counts.inserted, updated=counts.updated, unchanged=counts.unchanged)
