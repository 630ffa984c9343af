"""Migration 0003 (task costs, prices, FX) up and down, with data, on a scratch database."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, inspect, text

from app.schema import downgrade, schema_status, upgrade
from tests.conftest import create_database, drop_database, engine_for

NEW_TABLES = {"model_prices", "model_price_changes", "fx_rates"}
NEW_COLUMNS = {"priced_amount", "priced_currency", "price_id", "cost_source"}


@pytest.fixture
def scratch(postgres_server: str) -> Iterator[Engine]:
    name = f"roi_test_{os.getpid()}_costs"
    engine = engine_for(create_database(postgres_server, name))
    try:
        yield engine
    finally:
        engine.dispose()
        drop_database(postgres_server, name)


def columns(engine: Engine, table: str) -> set[str]:
    return {column["name"] for column in inspect(engine).get_columns(table)}


def test_0003_upgrades_existing_tasks_and_downgrades_keeping_them(scratch: Engine) -> None:
    upgrade(scratch, "0002")
    with scratch.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO execution_tasks (external_id, stream, task_type, ai_model, status,"
                " started_at, tokens_in, cost_amount, cost_currency) VALUES"
                " ('sent', 'api', 'summarize', 'gpt-x', 'succeeded', now(), 10, 42.5, 'usd'),"
                " ('bare', 'api', 'summarize', 'gpt-x', 'queued', now(), 10, NULL, NULL)"
            )
        )

    upgrade(scratch, "0003")
    assert schema_status(scratch).current == ("0003",)
    assert set(inspect(scratch).get_table_names()) >= NEW_TABLES
    assert columns(scratch, "execution_tasks") >= NEW_COLUMNS
    with scratch.begin() as conn:
        rows = conn.execute(text("SELECT external_id, cost_source FROM execution_tasks"))
        sources = {external_id: source for external_id, source in rows}
        assert sources == {"sent": "sent", "bare": "unpriced"}
        price_id = conn.execute(
            text(
                "INSERT INTO model_prices (ai_model, currency, per_million_in, valid_from)"
                " VALUES ('gpt-x', 'usd', 1, '2000-01-01') RETURNING id"
            )
        ).scalar()
        conn.execute(
            text(
                "UPDATE execution_tasks SET priced_amount = 0.001, priced_currency = 'usd',"
                " price_id = :p WHERE external_id = 'bare'"
            ),
            {"p": price_id},
        )
        conn.execute(
            text(
                "INSERT INTO model_price_changes (price_id, ai_model, action, tasks_recomputed,"
                " actor) VALUES (:p, 'gpt-x', 'create', 1, 'cli')"
            ),
            {"p": price_id},
        )
        conn.execute(
            text("INSERT INTO fx_rates (day, currency, quote_currency, rate) VALUES"
                 " ('2024-03-10', 'eur', 'usd', 1.09)")
        )  # fmt: skip

    downgrade(scratch, "0002")
    assert schema_status(scratch).current == ("0002",)
    assert not NEW_TABLES & set(inspect(scratch).get_table_names())
    assert not NEW_COLUMNS & columns(scratch, "execution_tasks")
    with scratch.connect() as conn:
        kept = conn.execute(
            text("SELECT external_id, cost_amount FROM execution_tasks ORDER BY external_id")
        ).all()
    assert [(k, str(v) if v is not None else None) for k, v in kept] == [
        ("bare", None),
        ("sent", "42.500000"),
    ]

    upgrade(scratch, "0003")
    assert schema_status(scratch).current == ("0003",)


def test_0003_refuses_existing_rows_that_break_the_contract(scratch: Engine) -> None:
    upgrade(scratch, "0002")
    with scratch.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO execution_tasks (external_id, stream, task_type, status, started_at)"
                " VALUES ('odd', 'api', 'summarize', 'done', now())"
            )
        )
    with pytest.raises(Exception, match="ck_execution_tasks_status"):
        upgrade(scratch, "0003")
    assert schema_status(scratch).current == ("0002",)  # nothing of 0003 was applied
    assert "priced_amount" not in columns(scratch, "execution_tasks")
