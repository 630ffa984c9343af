"""POST /api/tasks over real HTTP, against the real database."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, TestDatabase
from tests.task_costs import client, price, task, tasks_by_id, xmins


@pytest.fixture
def api(live_server: LiveServer, db: TestDatabase) -> Iterator[httpx.Client]:
    yield from client(live_server)


def post(api: httpx.Client, tasks: list[dict[str, Any]]) -> httpx.Response:
    return api.post("/api/tasks", json=tasks)


def test_a_batch_is_stored_with_costs_in_minor_units(api: httpx.Client, db: TestDatabase) -> None:
    batch = [
        task(external_id="usd", cost="0.0042", cost_currency="USD", tokens_in=1200),
        task(external_id="jpy", cost="3", cost_currency="jpy", gpu_seconds="1.25"),
        task(external_id="kwd", cost="0.0015", cost_currency="kwd", tokens_out=7),
        task(external_id="int", cost=2, cost_currency="eur"),
    ]
    response = post(api, batch)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "received": 4,
        "inserted": 4,
        "updated": 0,
        "unchanged": 0,
        "superseded": 0,
        "unpriced": 0,
        "unpriced_by_model": [],
    }
    rows = tasks_by_id(db)
    assert {k: (r["cost_amount"], r["cost_currency"]) for k, r in rows.items()} == {
        "usd": (Decimal("0.420000"), "usd"),
        "jpy": (Decimal("3.000000"), "jpy"),
        "kwd": (Decimal("1.500000"), "kwd"),
        "int": (Decimal("200.000000"), "eur"),
    }
    usd = rows["usd"]
    assert usd["cost_source"] == "sent"
    assert (usd["priced_amount"], usd["priced_currency"], usd["price_id"]) == (None, None, None)
    assert usd["tokens_in"] == 1200 and usd["tokens_out"] is None
    assert rows["jpy"]["gpu_seconds"] == Decimal("1.25")
    assert usd["started_at"] == datetime(2024, 3, 10, 12, tzinfo=UTC)
    assert usd["finished_at"] == datetime(2024, 3, 10, 12, 0, 1, 500_000, tzinfo=UTC)
    assert usd["duration_ms"] == 1500


def test_finished_at_and_duration_complete_each_other(api: httpx.Client, db: TestDatabase) -> None:
    response = post(
        api,
        [
            task(
                external_id="finished",
                started_at="2024-03-10T13:00:00+01:00",
                finished_at="2024-03-10T12:00:02.250Z",
                duration_ms=None,
            ),
            task(external_id="running", status="running", duration_ms=None),
        ],
    )
    assert response.status_code == 200, response.text
    rows = tasks_by_id(db)
    assert rows["finished"]["duration_ms"] == 2250
    assert rows["finished"]["started_at"] == datetime(2024, 3, 10, 12, tzinfo=UTC)
    assert (rows["running"]["finished_at"], rows["running"]["duration_ms"]) == (None, None)


def test_a_resend_changes_nothing_and_an_update_never_duplicates(
    api: httpx.Client, db: TestDatabase
) -> None:
    batch = [
        task(external_id=f"t{i}", tokens_in=i, cost="0.01", cost_currency="usd") for i in range(5)
    ]
    assert post(api, batch).status_code == 200
    before = xmins(db)
    stamps = {r["external_id"]: r["updated_at"] for r in db.rows("SELECT * FROM execution_tasks")}

    again = post(api, batch)
    assert again.status_code == 200
    assert again.json()["unchanged"] == 5
    assert (again.json()["inserted"], again.json()["updated"]) == (0, 0)
    assert xmins(db) == before  # not rewritten at all, not even updated_at

    batch[2] = {**batch[2], "status": "failed", "tokens_out": 9}
    changed = post(api, batch)
    assert (changed.json()["updated"], changed.json()["unchanged"]) == (1, 4)
    assert db.count("execution_tasks") == 5
    after = xmins(db)
    assert [k for k in before if before[k] != after[k]] == ["t2"]
    row = tasks_by_id(db)["t2"]
    assert (row["status"], row["tokens_out"]) == ("failed", 9)
    assert row["updated_at"] > stamps["t2"]
    assert row["created_at"] == tasks_by_id(db)["t2"]["created_at"]


def test_within_a_batch_the_last_task_with_an_id_wins(api: httpx.Client, db: TestDatabase) -> None:
    response = post(
        api,
        [
            task(external_id="same", status="running", duration_ms=None),
            task(external_id="other"),
            task(external_id="same", status="succeeded"),
        ],
    )
    assert response.status_code == 200, response.text
    assert (response.json()["inserted"], response.json()["superseded"]) == (2, 1)
    assert tasks_by_id(db)["same"]["status"] == "succeeded"


def test_a_batch_with_bad_tasks_is_refused_whole_listing_every_problem(
    api: httpx.Client, db: TestDatabase
) -> None:
    batch = [
        task(external_id="good-1"),
        task(external_id="naive", started_at="2024-03-10T12:00:00"),
        task(external_id="good-2"),
        task(external_id="many", status="done", tokens_in=-1, cost="1.00"),
        {"external_id": "bare"},
        task(external_id="backwards", finished_at="2024-03-10T11:00:00Z", duration_ms=None),
        "not an object",
        task(external_id="typo", token_in=5),
    ]
    response = post(api, batch)
    assert response.status_code == 422
    body = response.json()
    assert body["detail"] == "6 of 8 tasks are invalid; nothing of the batch was written"
    problems = {(e["index"], e["field"]) for e in body["errors"]}
    assert problems == {
        (1, "started_at"),
        (3, "status"),
        (3, "tokens_in"),
        (4, "stream"),
        (4, "task_type"),
        (4, "ai_model"),
        (4, "status"),
        (4, "started_at"),
        (5, "finished_at"),
        (6, "(task)"),
        (7, "token_in"),
    }
    reasons = {(e["index"], e["field"]): e["reason"] for e in body["errors"]}
    assert "has no UTC offset" in reasons[(1, "started_at")]
    assert reasons[(3, "tokens_in")] == "must not be negative"
    assert reasons[(4, "stream")] == "is required"
    assert reasons[(5, "finished_at")] == "is before started_at"
    assert reasons[(7, "token_in")] == "unknown field"
    assert db.count("execution_tasks") == 0


def test_cost_currency_is_needed_with_cost_and_is_checked_after_the_fields(
    api: httpx.Client, db: TestDatabase
) -> None:
    response = post(
        api,
        [
            task(cost="1.00"),
            task(cost_currency="usd"),
            task(cost="0.000000001", cost_currency="usd"),
            task(duration_ms=5, finished_at="2024-03-10T12:00:01Z"),
            task(duration_ms=None),
        ],
    )
    assert response.status_code == 422
    assert [(e["index"], e["field"]) for e in response.json()["errors"]] == [
        (0, "cost_currency"),
        (1, "cost"),
        (2, "cost"),
        (3, "duration_ms"),
        (4, "finished_at"),
    ]
    assert db.count("execution_tasks") == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [("cost", 0.5), ("cost", 2.0), ("cost", 1e-3), ("gpu_seconds", 12.5), ("tokens_in", 12.0)],
)
def test_json_floats_are_refused_naming_the_field(
    api: httpx.Client, db: TestDatabase, field: str, value: float
) -> None:
    body = task(**{field: value})
    if field == "cost":
        body["cost_currency"] = "usd"
    response = post(api, [task(), body])
    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert (error["index"], error["field"]) == (1, field)
    assert "float" in error["reason"]
    assert db.count("execution_tasks") == 0


def test_ten_thousand_tasks_are_accepted_and_one_more_is_refused(
    api: httpx.Client, db: TestDatabase
) -> None:
    batch = [
        task(external_id=f"bulk-{i:05}", tokens_in=i, tokens_out=2 * i, gpu_seconds="0.5")
        for i in range(10_000)
    ]
    response = post(api, batch)
    assert response.status_code == 200, response.text
    assert response.json()["inserted"] == 10_000
    assert db.count("execution_tasks") == 10_000

    db.truncate()
    too_many = post(api, [*batch, task(external_id="one-too-many")])
    assert too_many.status_code == 413
    assert "at most 10000 tasks" in too_many.json()["detail"]
    assert db.count("execution_tasks") == 0


def test_a_body_that_is_not_a_json_array_is_refused(api: httpx.Client, db: TestDatabase) -> None:
    not_json = api.post(
        "/api/tasks", content=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert not_json.status_code == 422
    assert not_json.json()["detail"][0]["loc"] == ["body"]
    an_object = api.post("/api/tasks", json=task())
    assert an_object.status_code == 422
    assert an_object.json()["detail"] == [
        {"loc": ["body"], "msg": "expected a JSON array of tasks"}
    ]


def test_tasks_are_priced_as_they_are_written_and_unpriced_ones_reported(
    api: httpx.Client, db: TestDatabase
) -> None:
    assert api.post(
        "/api/prices", json=price(per_million_in="2.5", per_million_out="10")
    ).is_success
    response = post(
        api,
        [
            task(external_id="priced", tokens_in=1000, tokens_out=300),
            task(external_id="no-usage"),
            task(external_id="no-price", ai_model="llama-x", tokens_in=5),
            task(external_id="sent", tokens_in=1000, tokens_out=300, cost="1", cost_currency="usd"),
        ],
    )
    assert response.status_code == 200, response.text
    assert response.json()["unpriced"] == 2
    assert {(u["ai_model"], u["tasks"]) for u in response.json()["unpriced_by_model"]} == {
        ("gpt-x", 1),
        ("llama-x", 1),
    }
    rows = tasks_by_id(db)
    # (1000 * 2.5 + 300 * 10) / 1e6 usd = 0.0055 usd = 0.55 cents
    assert (rows["priced"]["priced_amount"], rows["priced"]["priced_currency"]) == (
        Decimal("0.550000"),
        "usd",
    )
    assert rows["priced"]["cost_source"] == "priced"
    for unpriced in ("no-usage", "no-price"):
        assert rows[unpriced]["priced_amount"] is None  # never 0
        assert rows[unpriced]["cost_source"] == "unpriced"
    assert rows["sent"]["cost_source"] == "sent"
    assert rows["sent"]["priced_amount"] is None

    summary = api.get("/api/tasks/unpriced")
    assert summary.status_code == 200
    assert {(u["ai_model"], u["tasks"]) for u in summary.json()} == {("gpt-x", 1), ("llama-x", 1)}


def test_the_endpoints_are_documented_in_openapi(api: httpx.Client) -> None:
    schema = api.get("/openapi.json").json()
    post_tasks = schema["paths"]["/api/tasks"]["post"]
    body = post_tasks["requestBody"]["content"]["application/json"]["schema"]
    assert body["maxItems"] == 10_000
    assert body["items"]["required"] == [
        "external_id",
        "stream",
        "task_type",
        "ai_model",
        "status",
        "started_at",
    ]
    assert set(post_tasks["responses"]) == {"200", "413", "422"}
    assert {"/api/prices", "/api/prices/changes", "/api/fx-rates"} <= set(schema["paths"])
