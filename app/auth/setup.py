"""Putting access control on the app, and the first admin token."""

from __future__ import annotations

import sys

from fastapi import FastAPI
from sqlalchemy import Engine

from app.audit import record_audit
from app.auth import signin
from app.auth.middleware import AccessControl
from app.auth.principal import Principal, Role
from app.auth.sessions import SessionSigner
from app.auth.tokens import FIRST_ADMIN_NAME, FIRST_ADMIN_NOTICE, create_first_admin
from app.settings import Settings

FIRST_START = Principal(token_id=None, name="system:first-start", role=Role.ADMIN, via="cli")


def install_access_control(app: FastAPI, settings: Settings, engine: Engine) -> None:
    """Add the sign-in routes and the AccessControl middleware. Call it after every other
    middleware is added: the last added runs first, and nothing may run before it decides."""
    from app.api import audit, tokens  # the admin APIs over what this package keeps
    from app.auth.tokens import TokenVerifier

    app.state.token_verifier = TokenVerifier(engine)
    app.state.session_signer = SessionSigner(settings, engine)
    app.include_router(signin.router)
    app.include_router(audit.router)
    app.include_router(tokens.router)
    app.add_middleware(
        AccessControl,
        verifier=app.state.token_verifier,
        signer=app.state.session_signer,
        metrics_public=settings.metrics_public,
    )


def announce_first_admin(engine: Engine) -> str | None:
    """On the very first start, create the first admin token and print it once to stderr
    (the console of whoever started the app; never the log, which is kept and shipped)."""
    with engine.begin() as conn:
        token = create_first_admin(conn)
        if token is not None:
            record_audit(conn, FIRST_START, "token.create", f"token:{FIRST_ADMIN_NAME}",
                         {"name": FIRST_ADMIN_NAME, "role": Role.ADMIN.value})  # fmt: skip
    if token is not None:
        print(FIRST_ADMIN_NOTICE.format(name=FIRST_ADMIN_NAME, token=token), file=sys.stderr)
    return token
