"""The audit log: who changed or exported what, when, from where.

`record_audit` writes one row on the caller's connection, so it commits or rolls back with the
change it describes: there is never a change without its row, nor a row for a change that did
not happen. Exports call it too (the export is the event: what was read, with which filters).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb
from sqlalchemy import Connection, insert, select

from app.auth.principal import Principal
from app.models import audit_log


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    token_id: int | None
    actor: str
    role: str
    action: str
    target: str
    details: dict[str, Any]
    client_address: str | None


def audit_values(
    principal: Principal, action: str, target: str, details: dict[str, Any] | None
) -> dict[str, Any]:
    """The row `record_audit` writes, for writers that are not on a SQLAlchemy connection."""
    return {
        "token_id": principal.token_id,
        "actor": principal.name,
        "role": principal.role.value,
        "action": action,
        "target": target,
        "details": details or {},
        "client_address": principal.client_address,
    }


def record_audit(
    conn: Connection,
    principal: Principal,
    action: str,
    target: str,
    details: dict[str, Any] | None = None,
) -> int:
    """Write an audit row in the caller's transaction; returns its id.

    `action` is a dotted verb (`price.create`, `export.streams`), `target` what it acted on
    (`price:12`, `/api/export/streams.csv`), `details` the change or the filters, as JSON
    (decimals as strings, as everywhere else). Never put a secret in `details`."""
    return int(
        conn.execute(
            insert(audit_log)
            .values(**audit_values(principal, action, target, details))
            .returning(audit_log.c.id)
        ).scalar_one()
    )


async def record_audit_async(
    conn: AsyncConnection[Any],
    principal: Principal,
    action: str,
    target: str,
    details: dict[str, Any] | None = None,
) -> None:
    """`record_audit` for code on a psycopg async connection (the ledger's, e.g. stream
    mappings), in that connection's transaction."""
    values = audit_values(principal, action, target, details)
    await conn.execute(
        "INSERT INTO audit_log (token_id, actor, role, action, target, details, client_address)"
        " VALUES (%(token_id)s, %(actor)s, %(role)s, %(action)s, %(target)s, %(details)s,"
        " %(client_address)s)",
        {**values, "details": Jsonb(values["details"])},
    )


def list_audit(
    conn: Connection,
    *,
    limit: int = 100,
    before_id: int | None = None,
    action: str | None = None,
    actor: str | None = None,
) -> list[AuditEntry]:
    """Newest first; page on with `before_id` = the last id of the previous page."""
    query = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
    if before_id is not None:
        query = query.where(audit_log.c.id < before_id)
    if action is not None:
        query = query.where(audit_log.c.action == action)
    if actor is not None:
        query = query.where(audit_log.c.actor == actor)
    return [AuditEntry(**row._mapping) for row in conn.execute(query)]
