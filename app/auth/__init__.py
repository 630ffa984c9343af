"""Access control: roles, API tokens, dashboard sessions, and the one policy table.

How it fits: `AccessControl` (middleware.py) applies `POLICY` (policy.py) to every request and
puts the `Principal` (principal.py) in `request.state.principal`; handlers that change or
export something pass it to `app.audit.record_audit`.
"""

from __future__ import annotations

from fastapi import HTTPException, Request

from app.auth.principal import Principal, Role


def current_principal(request: Request) -> Principal:
    """FastAPI dependency: who is asking. AccessControl has already checked the role; a route
    the policy leaves open has no principal, and asking for one there is a bug (401)."""
    principal = getattr(request.state, "principal", None)
    if not isinstance(principal, Principal):
        raise HTTPException(status_code=401, detail="authentication required")
    return principal


__all__ = ["Principal", "Role", "current_principal"]
