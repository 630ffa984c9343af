"""Model prices: list, set, correct, end, and the audit log of their changes."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import Connection

from app.audit import record_audit
from app.auth.dependencies import current_principal
from app.fields import format_decimal
from app.periods import instant, zone
from app.pricing import (
    Price,
    PriceChange,
    PriceEnd,
    PriceIn,
    PriceResult,
    PriceRuleError,
    PriceTerms,
    end_price,
    list_changes,
    list_prices,
    set_price,
    update_price,
)

router = APIRouter(prefix="/api/prices", tags=["prices"])


class PriceOut(BaseModel):
    id: int
    ai_model: str
    currency: str
    per_million_in: str | None = Field(
        description="Decimal string, major units; null: not charged."
    )
    per_million_out: str | None
    per_gpu_second: str | None
    valid_from: datetime
    valid_to: datetime | None = Field(description="Exclusive; null: open-ended.")
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, price: Price) -> PriceOut:
        return cls(
            id=price.id,
            ai_model=price.ai_model,
            currency=price.currency,
            per_million_in=format_decimal(price.per_million_in),
            per_million_out=format_decimal(price.per_million_out),
            per_gpu_second=format_decimal(price.per_gpu_second),
            valid_from=price.valid_from,
            valid_to=price.valid_to,
            created_at=price.created_at,
            updated_at=price.updated_at,
        )


class PriceChangeOut(BaseModel):
    id: int
    price_id: int | None
    ai_model: str | None
    action: str = Field(description="create, update, end, or reprice (all tasks re-priced).")
    old_values: dict[str, Any] | None = Field(description="The price before; null on create.")
    new_values: dict[str, Any] | None
    tasks_recomputed: int = Field(description="Tasks whose priced cost changed with it.")
    actor: str = Field(description="Where the change came from: api or cli.")
    changed_at: datetime

    @classmethod
    def of(cls, change: PriceChange) -> PriceChangeOut:
        return cls(**vars(change))


class PriceResultOut(BaseModel):
    price: PriceOut
    changes: list[PriceChangeOut] = Field(
        description="The audited changes this request made, oldest first; empty when the "
        "price already had these terms."
    )


_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such price."},
    409: {"description": "The period overlaps another price of the model (named in `msg`)."},
    422: {"description": "Invalid field (floats are refused for money), as `detail[].loc`."},
}


def _apply(
    request: Request,
    change: Callable[[Connection], PriceResult],
    action: str,
    sent: dict[str, Any],
) -> PriceResultOut:
    principal = current_principal(request)
    try:
        with request.app.state.engine.begin() as conn:
            result = change(conn)
            if result.changes:  # sending a price's own terms again changes nothing
                record_audit(conn, principal, action, f"price:{result.price.id}", {
                    "sent": sent,
                    "ai_model": result.price.ai_model,
                    "price_changes": [c.id for c in result.changes],
                })  # fmt: skip
    except PriceRuleError as exc:
        where = "path" if exc.status == 404 else "body"
        raise HTTPException(
            status_code=exc.status, detail=[{"loc": [where, exc.field], "msg": exc.message}]
        ) from exc
    return PriceResultOut(
        price=PriceOut.of(result.price), changes=[PriceChangeOut.of(c) for c in result.changes]
    )


@router.get("", summary="Model prices", response_model=list[PriceOut])
def get_prices(
    request: Request,
    ai_model: Annotated[str | None, Query(description="Only this model.")] = None,
    at: Annotated[
        str | None,
        Query(
            description="Only prices valid at this instant: ISO datetime, or a date (its "
            "midnight in ROI_TIMEZONE)."
        ),
    ] = None,
) -> list[PriceOut]:
    when = instant(at, zone(request.app.state.settings.timezone), "at") if at else None
    with request.app.state.engine.connect() as conn:
        return [PriceOut.of(p) for p in list_prices(conn, ai_model=ai_model, at=when)]


@router.post(
    "",
    summary="Set the price of a model from valid_from on",
    description=(
        "Prices of one model must not overlap. If a price of the model starts at the same "
        "instant, it is corrected to these terms. Otherwise a new price is created; when it is "
        "open-ended, the model's open-ended price that started earlier is ended at "
        "`valid_from` (a price change from that instant on). Any other overlap is refused with "
        "409. Every task the change covers is re-priced in the same transaction and each step "
        "is written to the audit log (`GET /api/prices/changes`)."
    ),
    response_model=PriceResultOut,
    responses=_ERRORS,
)
def post_price(request: Request, body: PriceIn) -> PriceResultOut:
    return _apply(
        request,
        lambda conn: set_price(conn, body, actor="api"),
        "price.set",
        body.model_dump(mode="json"),
    )


@router.get(
    "/changes",
    summary="Audit log of price changes, newest first",
    response_model=list[PriceChangeOut],
)
def get_changes(
    request: Request,
    ai_model: Annotated[str | None, Query()] = None,
    price_id: Annotated[int | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[PriceChangeOut]:
    with request.app.state.engine.connect() as conn:
        changes = list_changes(conn, ai_model=ai_model, price_id=price_id, limit=limit)
    return [PriceChangeOut.of(c) for c in changes]


@router.put(
    "/{price_id}",
    summary="Correct a price (terms and period; the model stays)",
    description=(
        "Replaces the price's currency, components and period. Overlaps are refused with 409. "
        "Tasks covered by the old or the new period are re-priced; the change is audited. "
        "Sending the same terms again changes nothing."
    ),
    response_model=PriceResultOut,
    responses=_ERRORS,
)
def put_price(
    request: Request, price_id: Annotated[int, Path()], body: PriceTerms
) -> PriceResultOut:
    return _apply(
        request,
        lambda conn: update_price(conn, price_id, body, actor="api"),
        "price.update",
        body.model_dump(mode="json"),
    )


@router.post(
    "/{price_id}/end",
    summary="End a price at valid_to",
    description="Tasks started from `valid_to` on lose this price (they become unpriced "
    "unless another price covers them). Audited.",
    response_model=PriceResultOut,
    responses=_ERRORS,
)
def post_price_end(
    request: Request, price_id: Annotated[int, Path()], body: PriceEnd
) -> PriceResultOut:
    return _apply(
        request,
        lambda conn: end_price(conn, price_id, body.valid_to, actor="api"),
        "price.end",
        body.model_dump(mode="json"),
    )
