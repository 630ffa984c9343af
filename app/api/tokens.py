"""API tokens over HTTP (admin): list, create (the token is in the answer, once), revoke."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field

from app.audit import record_audit
from app.auth import Principal, Role
from app.auth.dependencies import current_principal
from app.auth.tokens import TokenError, TokenInfo, create_token, list_tokens, revoke_token

router = APIRouter(prefix="/api/tokens", tags=["access"])


class TokenOut(BaseModel):
    id: int
    name: str
    role: Role
    prefix: str = Field(description="The token's first characters, to recognise it.")
    created_by: str
    created_at: datetime
    last_used_at: datetime | None = Field(description="Within a minute; null: never used.")
    revoked_at: datetime | None

    @classmethod
    def of(cls, info: TokenInfo) -> TokenOut:
        return cls(**vars(info))


class TokenIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    role: Role


class NewTokenOut(BaseModel):
    token: str = Field(description="Shown only in this answer; only its hash is stored.")
    info: TokenOut


@router.get("", summary="API tokens (never their secret)", response_model=list[TokenOut])
def get_tokens(
    request: Request, include_revoked: Annotated[bool, Query()] = False
) -> list[TokenOut]:
    with request.app.state.engine.connect() as conn:
        return [TokenOut.of(t) for t in list_tokens(conn, include_revoked=include_revoked)]


@router.post("", summary="Create a token", status_code=201, response_model=NewTokenOut)
def post_token(
    request: Request, body: TokenIn, principal: Annotated[Principal, Depends(current_principal)]
) -> NewTokenOut:
    try:
        with request.app.state.engine.begin() as conn:
            info, token = create_token(
                conn, name=body.name, role=body.role, created_by=principal.name
            )
            record_audit(conn, principal, "token.create", f"token:{info.id}",
                         {"name": info.name, "role": info.role.value})  # fmt: skip
    except TokenError as exc:
        raise HTTPException(409, detail=[{"loc": ["body", "name"], "msg": str(exc)}]) from exc
    return NewTokenOut(token=token, info=TokenOut.of(info))


@router.post("/{token_id}/revoke", summary="Revoke a token, at once", response_model=TokenOut)
def post_revoke(
    request: Request,
    token_id: Annotated[int, Path()],
    principal: Annotated[Principal, Depends(current_principal)],
) -> TokenOut:
    try:
        with request.app.state.engine.begin() as conn:
            info = revoke_token(conn, str(token_id))
            record_audit(conn, principal, "token.revoke", f"token:{info.id}", {"name": info.name})
    except TokenError as exc:
        raise HTTPException(404, detail=[{"loc": ["path", "token_id"], "msg": str(exc)}]) from exc
    return TokenOut.of(info)
