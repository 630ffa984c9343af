"""Alembic environment: runs migrations on the connection app/schema.py hands over, or on the
database the settings name, under an advisory lock so concurrent starts cannot race."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine, text

from app.models import metadata

MIGRATION_LOCK_KEY = 7_311_402_001  # arbitrary, constant: one migration at a time per database


def run_on(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_type=True,
        compare_server_default=True,
    )
    # A session-level lock, committed at once so the migrations run in a transaction of their own.
    connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
    connection.commit()
    try:
        with context.begin_transaction():
            context.run_migrations()
    finally:
        if connection.in_transaction():
            connection.rollback()
        connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY})
        connection.commit()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        run_on(connection)
        return
    engine = create_engine(context.config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as conn:
        run_on(conn)
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run `roi migrate`")
run_migrations_online()
