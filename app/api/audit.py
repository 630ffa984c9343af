"""GET /api/audit: the audit log, newest first (finance and admin: the ledger audit view)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from app.audit import list_audit

router = APIRouter(prefix="/api/audit", tags=["access"])


class AuditEntryOut(BaseModel):
    id: int
    at: datetime
    token_id: int | None = Field(description="The token that acted; null for the CLI.")
    actor: str = Field(description="The token's name then, or `cli:<os user>`.")
    role: str
    action: str = Field(description="e.g. price.create, fx_rates.upsert, token.revoke, export.*")
    target: str
    details: dict[str, Any] = Field(description="The change, or the filters of an export.")
    client_address: str | None


class AuditPage(BaseModel):
    entries: list[AuditEntryOut]
    next_before_id: int | None = Field(
        description="Pass as `before_id` for the next (older) page; null: this is the last."
    )


@router.get("", summary="The audit log, newest first", response_model=AuditPage)
def get_audit(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before_id: Annotated[int | None, Query(description="Only entries older than this id.")] = None,
    action: Annotated[str | None, Query(description="Only this action.")] = None,
    actor: Annotated[str | None, Query(description="Only this actor.")] = None,
) -> AuditPage:
    with request.app.state.engine.connect() as conn:
        entries = list_audit(conn, limit=limit + 1, before_id=before_id, action=action, actor=actor)
    more = len(entries) > limit
    entries = entries[:limit]
    return AuditPage(
        entries=[AuditEntryOut(**vars(e)) for e in entries],
        next_before_id=entries[-1].id if more else None,
    )
