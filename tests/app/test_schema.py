"""Migrations and the schema guard, on a scratch database of their own."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import DBAPIError

from app.main import create_app
from app.models import ledger_entries, metadata
from app.schema import (
    ModelsDiffer,
    SchemaMismatch,
    check_models_match_migrations,
    downgrade,
    ensure_schema,
    schema_status,
    upgrade,
)
from app.settings import PROJECT_ROOT
from tests.conftest import (
    HEAD,
    HEADS,
    REVISIONS,
    app_settings,
    create_database,
    drop_database,
    engine_for,
    run_roi,
)

APP_TABLES = {table.name for table in metadata.sorted_tables}


def pending_after(revision: str | None) -> str:
    """What the guard must name as pending for a database at `revision` (None: empty)."""
    start = 0 if revision is None else REVISIONS.index(revision) + 1
    return ", ".join(REVISIONS[start:])


@pytest.fixture
def scratch_url(postgres_server: str) -> Iterator[str]:
    """A new, empty database for one test (never the shared test database)."""
    name = f"roi_test_{os.getpid()}_scratch"
    url = create_database(postgres_server, name)
    yield url
    drop_database(postgres_server, name)


@pytest.fixture
def scratch(scratch_url: str) -> Iterator[Engine]:
    engine = engine_for(scratch_url)
    yield engine
    engine.dispose()


def tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def columns(engine: Engine, table: str) -> set[str]:
    return {column["name"] for column in inspect(engine).get_columns(table)}


def revision(engine: Engine) -> tuple[str, ...]:
    return schema_status(engine).current


def test_migrations_form_one_line_starting_at_0001_and_0002() -> None:
    assert HEADS == (HEAD,)
    assert REVISIONS[:2] == ["0001", "0002"]


def test_upgrade_then_downgrade_one_revision_at_a_time_then_upgrade_again(scratch: Engine) -> None:
    assert revision(scratch) == ()

    upgrade(scratch)
    assert revision(scratch) == (HEAD,)
    assert tables(scratch) == APP_TABLES | {"alembic_version"}
    check_models_match_migrations(scratch)  # the migrations build exactly app/models.py

    for below in reversed(REVISIONS[:-1]):  # every revision has a working downgrade
        downgrade(scratch)
        assert revision(scratch) == (below,)
    downgrade(scratch)
    assert revision(scratch) == ()
    assert tables(scratch) <= {"alembic_version"}

    upgrade(scratch)
    assert revision(scratch) == (HEAD,)
    assert tables(scratch) == APP_TABLES | {"alembic_version"}
    check_models_match_migrations(scratch)


@pytest.mark.parametrize(
    ("column", "replace", "by"),
    [
        ("settlement_rate", None, "currency"),  # another expression altogether
        # Only a cast's type modifier: Alembic's comparison drops casts, but `2170` would be
        # written `2170.00`.
        ("settlement_major", "1::numeric", "1::numeric(20,2)"),
    ],
)
def test_a_generated_column_unlike_the_models_fails_the_check(
    scratch: Engine, column: str, replace: str | None, by: str
) -> None:
    # A stored export cell (migration 0015) that computed something else would be written into
    # every ledger export, so the check compares the expressions exactly.
    upgrade(scratch)
    model = str(ledger_entries.c[column].server_default.sqltext)  # type: ignore[union-attr]
    expression = by if replace is None else model.replace(replace, by)
    assert expression != model
    with scratch.begin() as conn:
        conn.execute(
            text(
                f"ALTER TABLE ledger_entries DROP COLUMN {column},"
                f" ADD COLUMN {column} text GENERATED ALWAYS AS ({expression}) STORED"
            )
        )

    with pytest.raises(ModelsDiffer, match=rf"ledger_entries\.{column}\b"):
        check_models_match_migrations(scratch)


def test_0015_gives_up_rather_than_queue_behind_a_long_reader(scratch: Engine) -> None:
    # Its ALTER rewrites the ledger under an exclusive lock; waiting behind a long export, it
    # would hold up every query after it. It fails instead, changing nothing, after 10 s.
    upgrade(scratch, "0014")
    with scratch.connect() as reader:
        reader.execute(text("SELECT count(*) FROM ledger_entries"))  # its lock, until rollback
        with pytest.raises(DBAPIError, match="lock timeout"):
            upgrade(scratch)
        assert revision(scratch) == ("0014",)
        assert "amount_major" not in columns(scratch, "ledger_entries")
        reader.rollback()

    upgrade(scratch)
    assert revision(scratch) == (HEAD,)


def test_downgrading_0002_removes_execution_tasks_ai_model(scratch: Engine) -> None:
    upgrade(scratch, "0002")
    assert "ai_model" in columns(scratch, "execution_tasks")

    downgrade(scratch)  # one revision

    assert revision(scratch) == ("0001",)
    assert "ai_model" not in columns(scratch, "execution_tasks")
    assert "external_id" in columns(scratch, "execution_tasks")


def test_downgrading_0002_keeps_the_other_data(scratch: Engine) -> None:
    upgrade(scratch, "0002")
    with scratch.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO execution_tasks (external_id, stream, task_type, ai_model, status, "
                "started_at) VALUES ('task-1', 'api', 'summarize', 'gpt-x', 'succeeded', now())"
            )
        )
    downgrade(scratch)
    upgrade(scratch, "0002")
    with scratch.connect() as conn:
        row = conn.execute(text("SELECT external_id, ai_model FROM execution_tasks")).one()
    assert tuple(row) == ("task-1", None)


def test_concurrent_migrations_wait_for_each_other(scratch: Engine, scratch_url: str) -> None:
    """Two `roi migrate` processes at once on an empty database: the advisory lock in
    migrations/env.py makes one wait, and both finish without error at the head."""
    env = {**os.environ, "DATABASE_URL": scratch_url}
    command = [sys.executable, "-m", "app.cli", "migrate"]
    runs = [
        subprocess.Popen(
            command,
            env=env,
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=120)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert revision(scratch) == (HEAD,)


# --- the schema guard -------------------------------------------------------------------------


def test_guard_refuses_a_server_database_that_is_behind(scratch: Engine, scratch_url: str) -> None:
    upgrade(scratch, "0001")
    with pytest.raises(SchemaMismatch) as refused:
        ensure_schema(scratch, app_settings(scratch_url))
    message = str(refused.value)
    assert "at 0001" in message
    assert f"pending revisions: {pending_after('0001')}." in message
    assert "roi migrate" in message
    assert revision(scratch) == ("0001",)  # left as it was


def test_guard_refuses_an_empty_server_database_naming_every_revision(
    scratch: Engine, scratch_url: str
) -> None:
    with pytest.raises(SchemaMismatch) as refused:
        ensure_schema(scratch, app_settings(scratch_url))
    assert "an empty database" in str(refused.value)
    assert f"pending revisions: {pending_after(None)}." in str(refused.value)
    assert tables(scratch) <= {"alembic_version"}


def test_app_is_not_built_against_a_schema_it_does_not_expect(
    scratch: Engine, scratch_url: str
) -> None:
    upgrade(scratch, "0001")
    with pytest.raises(SchemaMismatch, match="roi migrate"):
        create_app(app_settings(scratch_url))


def test_guard_upgrades_a_server_database_when_auto_migrate_is_set(
    scratch: Engine, scratch_url: str
) -> None:
    upgrade(scratch, "0001")
    status = ensure_schema(scratch, app_settings(scratch_url, auto_migrate=True))
    assert status.at_head
    assert revision(scratch) == (HEAD,)
    assert "ai_model" in columns(scratch, "execution_tasks")


def test_guard_upgrades_the_embedded_default(scratch: Engine, tmp_path: Path) -> None:
    """Without DATABASE_URL the database is the app's own: it is brought to the head."""
    upgrade(scratch, "0001")
    embedded = app_settings(None, data_dir=tmp_path)
    assert embedded.uses_embedded_database
    status = ensure_schema(scratch, embedded)
    assert (status.current, status.pending) == ((HEAD,), ())


def test_guard_refuses_a_zone_postgresql_does_not_know(scratch: Engine, scratch_url: str) -> None:
    """Python's zone database may know a zone PostgreSQL's lacks (or the reverse): compaction
    and every query in that zone would fail, so the app does not start."""
    upgrade(scratch)
    # As if Python knew it: settings validate zones with zoneinfo, so bypass them here.
    settings = app_settings(scratch_url).model_copy(update={"timezone": "Mars/Olympus_Mons"})
    with pytest.raises(SchemaMismatch, match="ROI_TIMEZONE 'Mars/Olympus_Mons' is not in"):
        ensure_schema(scratch, settings)
    assert ensure_schema(scratch, app_settings(scratch_url)).at_head  # a known zone passes


def test_guard_at_head_changes_nothing(scratch: Engine, scratch_url: str) -> None:
    upgrade(scratch)
    status = ensure_schema(scratch, app_settings(scratch_url))
    assert (status.current, status.head, status.pending) == ((HEAD,), HEAD, ())


# --- `roi migrate`, `roi downgrade`, `roi schema-status`, `roi serve` ---------------------------


def test_roi_migrate_check_passes_at_head(scratch: Engine, scratch_url: str) -> None:
    upgrade(scratch)
    result = run_roi("migrate", "--check", database_url=scratch_url)
    assert result.exit_code == 0, result.output
    assert f"models and migrations agree (head {HEAD})" in result.output


def test_roi_migrate_check_fails_when_behind(scratch: Engine, scratch_url: str) -> None:
    upgrade(scratch, "0001")
    result = run_roi("migrate", "--check", database_url=scratch_url)
    assert result.exit_code == 1
    assert f"pending: {pending_after('0001')}." in result.output
    assert revision(scratch) == ("0001",)


def test_roi_migrate_applies_what_is_pending(scratch: Engine, scratch_url: str) -> None:
    result = run_roi("migrate", database_url=scratch_url)
    assert result.exit_code == 0, result.output
    assert f"({pending_after(None)})" in result.output
    assert revision(scratch) == (HEAD,)


def test_roi_downgrade_and_schema_status(scratch: Engine, scratch_url: str) -> None:
    upgrade(scratch)
    result = run_roi("downgrade", database_url=scratch_url)
    assert result.exit_code == 0, result.output
    below = REVISIONS[-2]
    assert f"database now at {below}" in result.output

    status = run_roi("schema-status", database_url=scratch_url)
    assert status.exit_code == 0
    assert status.output.splitlines() == [f"current: {below}", f"head: {HEAD}", f"pending: {HEAD}"]


def test_roi_serve_refuses_a_database_that_is_behind(
    scratch: Engine, scratch_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    served: list[object] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: served.append((a, k)))
    upgrade(scratch, "0001")

    result = run_roi("serve", database_url=scratch_url, env={"ROI_AUTO_MIGRATE": None})

    assert result.exit_code == 1
    assert "roi migrate" in result.output
    assert served == []
    assert revision(scratch) == ("0001",)
