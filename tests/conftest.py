"""Shared fixtures: a real PostgreSQL database at the migration head, the real app served over
HTTP by uvicorn, and a client that posts signed Stripe events to it.

The database server is the one `DATABASE_URL` names; when it is unset, an embedded pgserver
PostgreSQL is started in a temporary directory (the app's own default, `embedded_database_url`),
and stopped at the end. Either way a fresh database `roi_test_<pid>` is created, migrated with
`app.schema.upgrade`, emptied (TRUNCATE) before each test that uses it, and dropped at the end.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import uvicorn
from alembic.config import Config
from alembic.script import ScriptDirectory
from fastapi import FastAPI
from sqlalchemy import Connection, Engine, create_engine, text
from typer.testing import CliRunner, Result

from app import main as app_main
from app import schema
from app.auth.principal import Role
from app.auth.tokens import hash_token
from app.cli import cli
from app.database import embedded_database_url, sqlalchemy_url
from app.main import create_app
from app.metrics.rollups import COMPACTION_LOCK_KEY
from app.models import metadata
from app.settings import Settings, get_settings
from tests.stripe_events import encode, signature_header

PRIMARY_SECRET = "whsec_test_primary"
ROTATED_SECRET = "whsec_test_rotated"
WEBHOOK_SECRETS = f"{PRIMARY_SECRET},{ROTATED_SECRET}"

APP_TABLES = [table.name for table in metadata.sorted_tables]

# Access control: one API token per role, stored (as hashes) in the test database after every
# TRUNCATE, so a test can call the API as any role. Clients of the live app send AUTH (admin)
# unless a test says otherwise; tests/app/auth/ checks who may do what.
TEST_TOKENS = {role: f"roi_test-{role.value}-token-{'0' * 24}" for role in Role}
TEST_TOKEN_IDS = {role: i for i, role in enumerate(Role, start=1)}


def auth_header(role: Role = Role.ADMIN) -> dict[str, str]:
    return {"Authorization": f"Bearer {TEST_TOKENS[role]}"}


AUTH = auth_header(Role.ADMIN)


def add_test_tokens(conn: Connection) -> None:
    """TEST_TOKENS, named test-<role>, with the same ids (TEST_TOKEN_IDS) every time, so a
    session cookie signed in by one stays valid across tests."""
    for role, token in TEST_TOKENS.items():
        conn.execute(
            text(
                "INSERT INTO api_tokens (id, name, role, token_hash, prefix, created_by)"
                " VALUES (:id, :name, :role, :hash, :prefix, 'tests/conftest.py')"
            ),
            {"id": TEST_TOKEN_IDS[role], "name": f"test-{role.value}", "role": role.value,
             "hash": hash_token(token), "prefix": token[:12]},
        )  # fmt: skip
    conn.execute(
        text("SELECT setval(pg_get_serial_sequence('api_tokens', 'id'), :n)"),
        {"n": len(TEST_TOKENS)},
    )


def _migrations() -> ScriptDirectory:
    config = Config()
    config.set_main_option("script_location", str(schema.MIGRATIONS_DIR))
    return ScriptDirectory.from_config(config)


# Every migration revision, oldest first, and the heads (tests/app/test_schema.py checks there
# is exactly one): the tests follow the migrations as they are added.
REVISIONS = [rev.revision for rev in reversed(list(_migrations().walk_revisions()))]
HEADS = tuple(_migrations().get_heads())
HEAD = REVISIONS[-1]

LEDGER_COLUMNS = (
    "entry_key, kind, charge_id, object_id, stream, amount, currency, booked_at, "
    "balance_transaction, event_id"
)


# ---------------------------------------------------------------------------------------------
# The PostgreSQL server and databases


def with_database(url: str, name: str) -> str:
    """The same server URL, naming another database."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def engine_for(url: str, **kwargs: Any) -> Engine:
    return create_engine(sqlalchemy_url(Settings(database_url=url)), **kwargs)


def create_database(admin_url: str, name: str) -> str:
    admin = engine_for(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
            # Test data is disposable: do not wait for WAL flushes on every commit.
            conn.execute(text(f'ALTER DATABASE "{name}" SET synchronous_commit = off'))
    finally:
        admin.dispose()
    return with_database(admin_url, name)


def drop_database(admin_url: str, name: str) -> None:
    admin = engine_for(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def embedded_pg_ctl(data_dir: Path, action: str) -> None:
    """`pg_ctl -w -m fast <action>` (stop, restart) for the pgserver PostgreSQL whose data is
    under `data_dir`, with pg_ctl from the wheel."""
    from pgserver._commands import pg_ctl

    pgdata = data_dir / "pgdata"
    owner = pwd.getpwuid(pgdata.stat().st_uid).pw_name
    # As root, pgserver runs postgres as a system user of its own; pg_ctl must run as that user.
    user = owner if owner != pwd.getpwuid(os.geteuid()).pw_name else None
    pg_ctl(["-w", "-m", "fast", action], pgdata=pgdata, user=user)


def stop_embedded_postgres(data_dir: Path) -> None:
    """Stop the pgserver PostgreSQL whose data is under `data_dir`, if it runs."""
    if (data_dir / "pgdata" / "postmaster.pid").exists():
        embedded_pg_ctl(data_dir, "stop")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """An admin URL of the PostgreSQL server the tests use."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    data_dir = Path(tempfile.mkdtemp(prefix="roi-test-pg-"))
    try:
        yield embedded_database_url(Settings(database_url=None, data_dir=data_dir))
    finally:
        stop_embedded_postgres(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)


class TestDatabase:
    """The test database: its URL, an engine, and the few queries tests need."""

    __test__ = False  # not a test class

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = engine_for(url)

    def truncate(self) -> None:
        # One transaction: a signed-in browser of the live app never sees its token missing.
        with self.engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {', '.join(APP_TABLES)} RESTART IDENTITY"))
            add_test_tokens(conn)

    def execute(self, sql: str, **params: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(text(sql), params)

    def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(row) for row in conn.execute(text(sql), params).mappings()]

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(text(sql), params).scalar()

    def ledger(self) -> list[dict[str, Any]]:
        """Every ledger row, every column, in a stable order."""
        return self.rows(f"SELECT {LEDGER_COLUMNS} FROM ledger_entries ORDER BY entry_key")

    def entries(self) -> dict[str, tuple[str, str, int, str]]:
        """entry_key -> (kind, stream, amount, currency): what most ledger tests compare."""
        return {
            r["entry_key"]: (r["kind"], r["stream"], r["amount"], r["currency"])
            for r in self.ledger()
        }

    def event(self, event_id: str) -> dict[str, Any] | None:
        found = self.rows("SELECT * FROM stripe_events WHERE id = :id", id=event_id)
        return found[0] if found else None

    def count(self, table: str) -> int:
        assert table in APP_TABLES
        return int(self.scalar(f"SELECT count(*) FROM {table}"))

    @contextmanager
    def failing_refunds(self, *, refund_id: str | None = None) -> Iterator[str]:
        """While open, writing a refund (or only this refund) raises in the database: a real
        processing failure. Yields the error message the database raises."""
        message = "refunds are frozen by the test"
        condition = f"NEW.id = '{refund_id}'" if refund_id else "true"
        self.execute(
            "CREATE FUNCTION roi_test_freeze_refunds() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN IF {condition} THEN RAISE EXCEPTION '{message}'; END IF; RETURN NEW; END $$"
        )
        self.execute(
            "CREATE TRIGGER roi_test_freeze_refunds BEFORE INSERT OR UPDATE ON refunds "
            "FOR EACH ROW EXECUTE FUNCTION roi_test_freeze_refunds()"
        )
        try:
            yield message
        finally:
            self.execute("DROP TRIGGER IF EXISTS roi_test_freeze_refunds ON refunds")
            self.execute("DROP FUNCTION IF EXISTS roi_test_freeze_refunds()")

    def map_stream(self, stripe_id: str, stream: str) -> None:
        self.execute(
            "INSERT INTO stream_mappings (stripe_id, stream) VALUES (:id, :stream)",
            id=stripe_id,
            stream=stream,
        )


@pytest.fixture(scope="session")
def database(postgres_server: str) -> Iterator[TestDatabase]:
    """A fresh database at the migration head, applied by the project's own Alembic code."""
    name = f"roi_test_{os.getpid()}"
    url = create_database(postgres_server, name)
    db = TestDatabase(url)
    try:
        schema.upgrade(db.engine)
        with db.engine.begin() as conn:  # before any app starts: no first-admin token in tests
            add_test_tokens(conn)
        yield db
    finally:
        db.engine.dispose()
        drop_database(postgres_server, name)


@pytest.fixture
def db(database: TestDatabase) -> TestDatabase:
    """The test database, emptied for this test."""
    database.truncate()
    return database


# ---------------------------------------------------------------------------------------------
# The app over real HTTP


class LiveServer:
    """An ASGI app served by uvicorn in a background thread on a free 127.0.0.1 port."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    def start(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("uvicorn stopped during start-up (see the log above)")
            if time.monotonic() > deadline:
                raise TimeoutError("uvicorn did not start within 30 s")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self._socket.close()
        assert not self._thread.is_alive(), "uvicorn did not stop within 30 s"

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def app_settings(url: str | None, **overrides: Any) -> Settings:
    """Settings for an app under test: everything explicit, nothing read from the environment
    that could change what a test sees."""
    values: dict[str, Any] = {
        "database_url": url,
        "stripe_webhook_secret": WEBHOOK_SECRETS,
        "reporting_currency": "usd",
        "timezone": "UTC",
        "stream_metadata_key": "stream",
        "auto_migrate": False,
        "webhook_tolerance_seconds": 300,
        "db_timeout_seconds": 2.0,
        "ingest_writers": 2,
    }
    values.update(overrides)
    return Settings(**values)


class WebhookClient:
    """Posts signed Stripe events to a live app and reads its API."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.http = httpx.Client(base_url=base_url, timeout=30, headers=AUTH)

    def post(
        self, event: dict[str, Any], *, secret: str = PRIMARY_SECRET, timestamp: int | None = None
    ) -> httpx.Response:
        payload = encode(event)
        header = signature_header(payload, secret=secret, timestamp=timestamp)
        return self.post_body(payload, signature=header)

    def post_body(
        self, body: str | bytes, *, signature: str | None, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        all_headers = {"Content-Type": "application/json", "User-Agent": "Stripe/1.0"}
        if signature is not None:
            all_headers["Stripe-Signature"] = signature
        all_headers.update(headers or {})
        content = body.encode() if isinstance(body, str) else body
        return self.http.post("/webhooks/stripe", content=content, headers=all_headers)

    def deliver(self, *events: dict[str, Any]) -> list[str]:
        """Post each event in turn; each must be answered 200. Returns the outcomes."""
        outcomes = []
        for event in events:
            response = self.post(event)
            assert response.status_code == 200, (event["type"], response.text)
            outcomes.append(response.json()["status"])
        return outcomes

    def deliver_concurrently(self, events: list[dict[str, Any]], *, threads: int) -> list[str]:
        """Post all events from `threads` threads at once, each thread its share in order."""
        shares = [events[i::threads] for i in range(threads)]
        barrier = threading.Barrier(threads)

        def run(share: list[dict[str, Any]]) -> list[httpx.Response]:
            with httpx.Client(base_url=self.base_url, timeout=60) as http:
                payloads = [encode(e) for e in share]
                barrier.wait()
                return [
                    http.post(
                        "/webhooks/stripe",
                        content=p.encode(),
                        headers={
                            "Content-Type": "application/json",
                            "Stripe-Signature": signature_header(p, secret=PRIMARY_SECRET),
                        },
                    )
                    for p in payloads
                ]

        with ThreadPoolExecutor(max_workers=threads) as pool:
            responses = [r for rs in pool.map(run, shares) for r in rs]
        assert [r.status_code for r in responses] == [200] * len(responses), [
            r.text for r in responses if r.status_code != 200
        ]
        return [r.json()["status"] for r in responses]

    def totals(self, **params: str) -> httpx.Response:
        return self.http.get("/api/ledger/totals", params=params)

    def close(self) -> None:
        self.http.close()


@pytest.fixture(scope="session")
def live_server(database: TestDatabase) -> Iterator[LiveServer]:
    """The real app (create_app, schema checked) served on a free port for the whole session."""
    server = LiveServer(create_app(app_settings(database.url)))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def no_background_compaction(db: TestDatabase, monkeypatch: pytest.MonkeyPatch) -> None:
    """For a test that compacts itself and looks at what compaction left: `live_server`'s
    compaction loop (every 10 s, days cut in UTC) does nothing during it (the app runs in this
    process), and a round already under way is waited for (it holds the compaction lock)."""
    monkeypatch.setattr(app_main, "compact_now", lambda *args, **kwargs: True)
    with db.engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": COMPACTION_LOCK_KEY})
        conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": COMPACTION_LOCK_KEY})
        conn.commit()


@pytest.fixture(scope="session")
def session_webhook(live_server: LiveServer) -> Iterator[WebhookClient]:
    client = WebhookClient(live_server.url)
    yield client
    client.close()


@pytest.fixture
def webhook(session_webhook: WebhookClient, db: TestDatabase) -> WebhookClient:
    """A client of the live app, with an emptied database."""
    return session_webhook


def run_roi(*args: str, database_url: str, env: dict[str, str | None] | None = None) -> Result:
    """Run a `roi` command in-process against `database_url`. The commands read the one cached
    Settings object, so the cache is cleared around the call."""
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(
            cli, list(args), env={"DATABASE_URL": database_url, **(env or {})}
        )
    finally:
        get_settings.cache_clear()
