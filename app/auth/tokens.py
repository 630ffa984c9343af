"""API tokens: created once, shown once, stored as a hash, revoked for good.

A token is `roi_` followed by 32 random bytes from `secrets` (43 URL-safe characters). Only its
SHA-256 is stored, with its first 12 characters as a visible prefix, so a list of tokens says
which is which without holding anything that authenticates.

Why plain SHA-256 and not bcrypt/argon2: slow hashes exist to make guessing low-entropy
passwords expensive. A token has 256 bits from a CSPRNG, so nobody can guess it from its hash
whatever the hash costs, while a slow hash would add ~100 ms to every API request. A fast hash
also lets the database find a token by an indexed equality on its hash: no per-token loop.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass, replace
from datetime import datetime
from threading import Lock

from sqlalchemy import Connection, Engine, func, insert, select, text, update
from sqlalchemy.exc import DBAPIError

from app.auth.principal import Principal, Role
from app.models import api_tokens

TOKEN_PREFIX = "roi_"
VISIBLE_CHARS = 12  # "roi_" and 8 random characters: enough to tell tokens apart
FIRST_ADMIN_NAME = "first-admin"
# last_used_at is a hint for people pruning tokens, not an access log: written at most once a
# minute per token, whatever the number of requests and processes.
LAST_USED_RESOLUTION_SECONDS = 60
# While the database is unreachable, a token verified this recently still passes: nothing can
# be revoked meanwhile (revoking writes to that database), and what it then reaches can only say
# "database unavailable" (e.g. the dashboard's banner) instead of signing everyone out.
STALE_IF_ERROR_SECONDS = 300
# Serialises the first-admin check across web workers starting at once.
FIRST_ADMIN_LOCK_KEY = 7_311_402_008


class TokenError(ValueError):
    """A token command that cannot be done, saying why (e.g. the name is taken)."""


@dataclass(frozen=True)
class TokenInfo:
    id: int
    name: str
    role: Role
    prefix: str
    created_by: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _info(row: object) -> TokenInfo:
    m = row._mapping  # type: ignore[attr-defined]
    return TokenInfo(
        id=m["id"],
        name=m["name"],
        role=Role(m["role"]),
        prefix=m["prefix"],
        created_by=m["created_by"],
        created_at=m["created_at"],
        last_used_at=m["last_used_at"],
        revoked_at=m["revoked_at"],
    )


_INFO_COLUMNS = [
    api_tokens.c.id,
    api_tokens.c.name,
    api_tokens.c.role,
    api_tokens.c.prefix,
    api_tokens.c.created_by,
    api_tokens.c.created_at,
    api_tokens.c.last_used_at,
    api_tokens.c.revoked_at,
]


def create_token(
    conn: Connection, *, name: str, role: Role, created_by: str
) -> tuple[TokenInfo, str]:
    """A new token; returns its row and the token itself, which is never available again."""
    name = name.strip()
    if not name:
        raise TokenError("name: must not be empty")
    taken = conn.execute(
        select(api_tokens.c.id).where(api_tokens.c.name == name, api_tokens.c.revoked_at.is_(None))
    ).first()
    if taken:
        raise TokenError(f"name: an active token is already named {name!r}; revoke it first")
    token = new_token()
    row = conn.execute(
        insert(api_tokens)
        .values(
            name=name,
            role=role.value,
            token_hash=hash_token(token),
            prefix=token[:VISIBLE_CHARS],
            created_by=created_by,
        )
        .returning(*_INFO_COLUMNS)
    ).one()
    return _info(row), token


def find_token(conn: Connection, id_or_name: str) -> TokenInfo | None:
    """A token by id, else the active token of that name."""
    if id_or_name.isdigit():
        where = api_tokens.c.id == int(id_or_name)
    else:
        where = (api_tokens.c.name == id_or_name) & api_tokens.c.revoked_at.is_(None)
    row = conn.execute(select(*_INFO_COLUMNS).where(where)).first()
    return _info(row) if row else None


def revoke_token(conn: Connection, id_or_name: str) -> TokenInfo:
    """Revoke at once: the next request with it, or with a session signed in by it, is refused."""
    found = find_token(conn, id_or_name)
    if found is None:
        raise TokenError(f"no active token with id or name {id_or_name!r}")
    if found.revoked_at is not None:
        raise TokenError(f"token {found.id} ({found.name}) is already revoked")
    row = conn.execute(
        update(api_tokens)
        .where(api_tokens.c.id == found.id)
        .values(revoked_at=func.now())
        .returning(*_INFO_COLUMNS)
    ).one()
    return _info(row)


def list_tokens(conn: Connection, *, include_revoked: bool = False) -> list[TokenInfo]:
    query = select(*_INFO_COLUMNS).order_by(api_tokens.c.id)
    if not include_revoked:
        query = query.where(api_tokens.c.revoked_at.is_(None))
    return [_info(row) for row in conn.execute(query)]


class TokenVerifier:
    """Turns a bearer token or a session's token id into a principal, per request.

    Every request reads the token row (one indexed lookup), so a revocation counts from the
    next request on, in every worker. Only the last_used_at write is rationed (_LOOKUP_SQL)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._verified: dict[tuple[str, str | int], tuple[Principal, float]] = {}
        self._lock = Lock()

    def by_token(self, token: str, *, via: str, client: str | None) -> Principal | None:
        if not token.startswith(TOKEN_PREFIX):
            return None
        return self._checked("token_hash", hash_token(token), via, client)

    def by_id(self, token_id: int, *, via: str, client: str | None) -> Principal | None:
        return self._checked("id", token_id, via, client)

    def _checked(
        self, column: str, value: str | int, via: str, client: str | None
    ) -> Principal | None:
        key = (column, value)
        try:
            found = self._lookup(column, value, via, client)
        except DBAPIError:
            with self._lock:
                recent = self._verified.get(key)
            if recent is None or time.monotonic() - recent[1] > STALE_IF_ERROR_SECONDS:
                raise
            return replace(recent[0], via=via, client_address=client)
        with self._lock:
            if found is None:
                self._verified.pop(key, None)
            else:
                self._verified[key] = (found, time.monotonic())
        return found

    def _lookup(
        self, column: str, value: str | int, via: str, client: str | None
    ) -> Principal | None:
        with self._engine.begin() as conn:
            row = conn.execute(
                text(_LOOKUP_SQL.format(column=column)),
                {"value": value, "every": LAST_USED_RESOLUTION_SECONDS},
            ).first()
        if row is None:
            return None
        return Principal(
            token_id=row.id, name=row.name, role=Role(row.role), via=via, client_address=client
        )


# One round trip per request: the active token, and last_used_at refreshed only when it is a
# minute old (the UPDATE rechecks the row after any lock wait, so concurrent requests of one
# token write it once). `column` is token_hash or id, never user input.
_LOOKUP_SQL = """
WITH found AS (
    SELECT id, name, role FROM api_tokens WHERE {column} = :value AND revoked_at IS NULL
), touched AS (
    UPDATE api_tokens SET last_used_at = now() FROM found
    WHERE api_tokens.id = found.id AND (api_tokens.last_used_at IS NULL
        OR api_tokens.last_used_at < now() - make_interval(secs => :every))
)
SELECT id, name, role FROM found
"""


def create_first_admin(conn: Connection) -> str | None:
    """On the very first start (no token has ever existed), an admin token named first-admin;
    returns it so the caller shows it once. None ever after, also once it is revoked."""
    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": FIRST_ADMIN_LOCK_KEY})
    if conn.execute(select(api_tokens.c.id).limit(1)).first() is not None:
        return None
    _, token = create_token(conn, name=FIRST_ADMIN_NAME, role=Role.ADMIN, created_by="first start")
    return token


FIRST_ADMIN_NOTICE = (
    "\n*** First start: an admin API token was created (name {name}). It is shown only now; "
    "copy it:\n\n    {token}\n\n"
    "Use it as `Authorization: Bearer <token>` or sign in at /signin with it. Create more "
    "with `roi tokens create`, and revoke this one once you have your own. ***\n"
)
