"""Roles, and the principal a request (or a CLI command) acts as."""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    """viewer < finance < admin, each seeing what the one below sees; ingest stands apart: it
    may only post tasks (and admin may post them too)."""

    VIEWER = "viewer"
    FINANCE = "finance"
    ADMIN = "admin"
    INGEST = "ingest"


_RANK = {Role.VIEWER: 1, Role.FINANCE: 2, Role.ADMIN: 3}


def role_allows(role: Role, required: Role) -> bool:
    """Whether a principal of `role` may do what needs `required`."""
    if required is Role.INGEST:
        return role in (Role.INGEST, Role.ADMIN)
    if role is Role.INGEST:
        return False
    return _RANK[role] >= _RANK[required]


@dataclass(frozen=True)
class Principal:
    """Who is acting: a token (over a bearer header or a session cookie) or the CLI.

    Handlers read it from `request.state.principal`; the audit log records it."""

    token_id: int | None
    name: str
    role: Role
    via: str  # "bearer", "session" or "cli"
    client_address: str | None = None

    def may(self, required: Role) -> bool:
        return role_allows(self.role, required)


def cli_principal() -> Principal:
    """Whoever runs `roi` on the server can reach the database directly: they act as admin,
    and are named by their OS user in the audit log."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        user = "unknown"
    return Principal(token_id=None, name=f"cli:{user}", role=Role.ADMIN, via="cli")
