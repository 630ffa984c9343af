"""Where the database is and how to reach it.

`DATABASE_URL` names a server. When it is unset, an embedded PostgreSQL from the `pgserver`
wheel is started on demand with its data under `ROI_DATA_DIR`, and left running so the next
run (or another worker process) reuses it.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import Engine, create_engine

from app.settings import Settings

log = logging.getLogger(__name__)


class DatabaseUnavailable(RuntimeError):
    """The database cannot be reached; callers answer 503 so the sender retries."""


def embedded_database_url(settings: Settings) -> str:
    import pgserver  # imported here: only the embedded default needs it

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = settings.data_dir / "pgdata"
    server = pgserver.get_server(pgdata, cleanup_mode=None)  # type: ignore[attr-defined]
    server.psql("SELECT 1;")
    url: str = server.get_uri()
    log.info("using the embedded PostgreSQL in %s", pgdata)
    return url


_embedded_urls: dict[str, str] = {}


def libpq_url(settings: Settings) -> str:
    """A URL psycopg understands (`postgresql://...`)."""
    if settings.database_url:
        raw = settings.database_url
    else:
        key = str(settings.data_dir)
        if key not in _embedded_urls:
            _embedded_urls[key] = embedded_database_url(settings)
        raw = _embedded_urls[key]
    parts = urlsplit(raw)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme == "postgres":
        scheme = "postgresql"
    if scheme != "postgresql":
        raise ValueError(f"DATABASE_URL must be a postgresql:// URL, not {parts.scheme}://")
    return urlunsplit((scheme, *parts[1:]))


def sqlalchemy_url(settings: Settings) -> str:
    return libpq_url(settings).replace("postgresql://", "postgresql+psycopg://", 1)


def make_engine(settings: Settings) -> Engine:
    return create_engine(
        sqlalchemy_url(settings),
        pool_pre_ping=True,
        pool_size=settings.db_pool_size,
        connect_args={
            "connect_timeout": max(1, int(settings.db_timeout_seconds)),
            # Metrics queries group tens of thousands of rollup rows; the default 4 MB of
            # work_mem sends those sorts to disk.
            "options": "-c work_mem=32MB",
        },
    )
