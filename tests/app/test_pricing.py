"""Model prices: pricing at task start, recomputing on every change, the audit log, over HTTP
and the CLI, against the real database."""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, TestDatabase, run_roi
from tests.task_costs import client, price, task, tasks_by_id, xmins


@pytest.fixture
def api(live_server: LiveServer, db: TestDatabase) -> Iterator[httpx.Client]:
    yield from client(live_server)


def set_price(api: httpx.Client, **fields: Any) -> dict[str, Any]:
    response = api.post("/api/prices", json=price(**fields))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def post_tasks(api: httpx.Client, *tasks: dict[str, Any]) -> None:
    response = api.post("/api/tasks", json=list(tasks))
    assert response.status_code == 200, response.text


def priced(db: TestDatabase) -> dict[str, tuple[Decimal | None, str | None, int | None]]:
    return {
        k: (r["priced_amount"], r["priced_currency"], r["price_id"])
        for k, r in tasks_by_id(db).items()
    }


def changes(db: TestDatabase) -> list[dict[str, Any]]:
    return db.rows(
        "SELECT price_id, ai_model, action, old_values, new_values, tasks_recomputed, actor"
        " FROM model_price_changes ORDER BY id"
    )


BOUNDARY_TASKS = [
    task(external_id="before", started_at="2024-02-29T23:59:59.999999Z", tokens_in=1_000_000),
    task(external_id="at", started_at="2024-03-01T00:00:00Z", tokens_in=1_000_000),
    # The same instant as "at", written with an offset.
    task(external_id="at-cet", started_at="2024-03-01T01:00:00+01:00", tokens_in=1_000_000),
    task(external_id="too-early", started_at="2023-12-31T23:59:59Z", tokens_in=1_000_000),
]


@pytest.mark.parametrize("prices_first", [True, False], ids=["priced-at-write", "recomputed"])
def test_the_price_valid_at_task_start_applies_across_a_boundary(
    api: httpx.Client, db: TestDatabase, prices_first: bool
) -> None:
    if not prices_first:
        post_tasks(api, *BOUNDARY_TASKS)
    old = set_price(api, valid_from="2024-01-01T00:00:00Z", per_million_in="2")["price"]
    new = set_price(api, valid_from="2024-03-01T00:00:00Z", per_million_in="3")["price"]
    if prices_first:
        post_tasks(api, *BOUNDARY_TASKS)

    assert priced(db) == {
        "before": (Decimal("200.000000"), "usd", old["id"]),
        "at": (Decimal("300.000000"), "usd", new["id"]),
        "at-cet": (Decimal("300.000000"), "usd", new["id"]),
        "too-early": (None, None, None),
    }
    prices = api.get("/api/prices").json()
    assert [(p["id"], p["valid_to"]) for p in prices] == [
        (old["id"], "2024-03-01T00:00:00Z"),
        (new["id"], None),
    ]


def test_cost_rule_components_units_and_rounding(api: httpx.Client, db: TestDatabase) -> None:
    set_price(
        api,
        ai_model="full",
        per_million_in="2.5",
        per_million_out="10",
        per_gpu_second="0.0005",
    )
    set_price(api, ai_model="gpu", per_gpu_second="0.000000025")  # 2.5e-6 cents per second
    set_price(api, ai_model="yen", currency="jpy", per_million_in="300")
    set_price(api, ai_model="dinar", currency="kwd", per_million_out="1.5")
    post_tasks(
        api,
        task(external_id="full", ai_model="full", tokens_in=1234, tokens_out=56, gpu_seconds="2"),
        task(external_id="full-no-gpu", ai_model="full", tokens_in=1, tokens_out=1),
        task(external_id="half", ai_model="gpu", gpu_seconds="1", tokens_in=999),
        task(external_id="yen", ai_model="yen", tokens_in=1000),
        task(external_id="dinar", ai_model="dinar", tokens_out=3, tokens_in=5),
        task(external_id="zero", ai_model="yen", tokens_in=0),
    )
    assert priced(db) == {
        # (1234 * 2.5 + 56 * 10) / 1e6 + 2 * 0.0005 usd = 0.004645 usd = 0.4645 cents
        "full": (Decimal("0.464500"), "usd", 1),
        # the price charges GPU-seconds and the task has none: unpriced, not 0
        "full-no-gpu": (None, None, None),
        # 2.5e-6 cents rounds half away from zero; tokens are not charged by this price
        "half": (Decimal("0.000003"), "usd", 2),
        "yen": (Decimal("0.300000"), "jpy", 3),
        # 3 * 1.5 / 1e6 kwd = 4.5e-6 kwd = 0.0045 fils
        "dinar": (Decimal("0.004500"), "kwd", 4),
        "zero": (Decimal("0.000000"), "jpy", 3),  # priced at 0 because it used nothing
    }
    assert {k: r["cost_source"] for k, r in tasks_by_id(db).items()} == {
        "full": "priced",
        "full-no-gpu": "unpriced",
        "half": "priced",
        "yen": "priced",
        "dinar": "priced",
        "zero": "priced",
    }


def test_a_price_change_recomputes_exactly_the_tasks_it_covers_and_is_audited(
    api: httpx.Client, db: TestDatabase
) -> None:
    march = set_price(api, valid_from="2024-01-01T00:00:00Z", per_million_in="1")["price"]
    later = set_price(api, valid_from="2024-03-01T00:00:00Z", per_million_in="2")["price"]
    post_tasks(
        api,
        task(external_id="feb", started_at="2024-02-01T00:00:00Z", tokens_in=10**6),
        task(external_id="mar", started_at="2024-03-15T00:00:00Z", tokens_in=10**6, tokens_out=0),
        task(
            external_id="apr",
            started_at="2024-04-15T00:00:00Z",
            tokens_in=10**6,
            tokens_out=250_000,
        ),
        task(external_id="other-model", ai_model="llama-x", tokens_in=10**6),
        task(external_id="sent", started_at="2024-03-15T00:00:00Z", cost="1", cost_currency="usd"),
        task(external_id="no-usage", started_at="2024-03-15T00:00:00Z"),
    )
    before = xmins(db)
    audit_before = len(changes(db))

    terms = {
        "currency": "usd",
        "per_million_in": "2.25",
        "per_million_out": "4",
        "valid_from": "2024-03-01T00:00:00Z",
        "valid_to": None,
    }
    response = api.put(f"/api/prices/{later['id']}", json=terms)
    assert response.status_code == 200, response.text
    [change] = response.json()["changes"]
    assert (change["action"], change["tasks_recomputed"], change["actor"]) == ("update", 2, "api")

    after = xmins(db)
    assert sorted(k for k in before if before[k] != after[k]) == ["apr", "mar"]
    assert priced(db)["mar"] == (Decimal("225.000000"), "usd", later["id"])
    # 2.25 usd + 0.25 million output tokens at 4 usd
    assert priced(db)["apr"] == (Decimal("325.000000"), "usd", later["id"])
    assert priced(db)["feb"] == (Decimal("100.000000"), "usd", march["id"])
    assert priced(db)["no-usage"] == (None, None, None)  # needs tokens_out now as well

    audit = changes(db)
    assert len(audit) == audit_before + 1
    row = audit[-1]
    assert (row["price_id"], row["ai_model"], row["action"]) == (later["id"], "gpt-x", "update")
    assert (row["old_values"]["per_million_in"], row["new_values"]["per_million_in"]) == (
        "2",
        "2.25",
    )
    assert (row["old_values"]["per_million_out"], row["new_values"]["per_million_out"]) == (
        None,
        "4",
    )
    assert (row["tasks_recomputed"], row["actor"]) == (2, "api")

    # The same terms again: nothing changes, nothing is audited.
    same = api.put(f"/api/prices/{later['id']}", json=terms)
    assert same.status_code == 200
    assert same.json()["changes"] == []
    assert xmins(db) == after
    assert len(changes(db)) == audit_before + 1

    log = api.get("/api/prices/changes", params={"price_id": later["id"]}).json()
    assert [c["action"] for c in log] == ["update", "create"]  # newest first


def test_ending_a_price_leaves_later_tasks_unpriced_not_zero(
    api: httpx.Client, db: TestDatabase
) -> None:
    current = set_price(api, per_million_in="1")["price"]
    post_tasks(
        api,
        task(external_id="kept", started_at="2024-03-31T23:59:59Z", tokens_in=5),
        task(external_id="lost", started_at="2024-04-01T00:00:00Z", tokens_in=5),
    )
    response = api.post(
        f"/api/prices/{current['id']}/end", json={"valid_to": "2024-04-01T00:00:00Z"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["changes"][0]["tasks_recomputed"] == 1
    assert response.json()["price"]["valid_to"] == "2024-04-01T00:00:00Z"
    rows = tasks_by_id(db)
    assert rows["kept"]["priced_amount"] == Decimal("0.000500")
    assert (rows["lost"]["priced_amount"], rows["lost"]["cost_source"]) == (None, "unpriced")
    assert [(u["ai_model"], u["tasks"]) for u in api.get("/api/tasks/unpriced").json()] == [
        ("gpt-x", 1)
    ]


def test_overlapping_prices_are_refused_naming_the_field(
    api: httpx.Client, db: TestDatabase
) -> None:
    first = set_price(api, valid_from="2024-01-01T00:00:00Z", valid_to="2024-03-01T00:00:00Z")
    audit = changes(db)

    inside = api.post("/api/prices", json=price(valid_from="2024-02-01T00:00:00Z"))
    assert inside.status_code == 409
    [error] = inside.json()["detail"]
    assert error["loc"] == ["body", "valid_from"]
    assert f"overlaps price {first['price']['id']}" in error["msg"]

    reaching_in = api.post(
        "/api/prices",
        json=price(valid_from="2023-12-01T00:00:00Z", valid_to="2024-01-02T00:00:00Z"),
    )
    assert reaching_in.status_code == 409
    assert reaching_in.json()["detail"][0]["loc"] == ["body", "valid_to"]

    # A bounded price inside an open-ended one is refused too (it would leave a gap after).
    set_price(api, ai_model="llama-x", valid_from="2024-01-01T00:00:00Z")
    bounded = api.post(
        "/api/prices",
        json=price(
            ai_model="llama-x", valid_from="2024-02-01T00:00:00Z", valid_to="2024-03-01T00:00:00Z"
        ),
    )
    assert bounded.status_code == 409

    assert len(api.get("/api/prices").json()) == 2
    assert len(changes(db)) == len(audit) + 1  # only the llama-x create


@pytest.mark.parametrize("field", ["per_million_in", "per_million_out", "per_gpu_second"])
def test_float_prices_are_refused_naming_the_field(
    api: httpx.Client, db: TestDatabase, field: str
) -> None:
    response = api.post("/api/prices", json=price(**{field: 2.5}))
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", field]
    assert "float" in error["msg"]
    assert db.count("model_prices") == 0


def test_invalid_price_terms_are_refused(api: httpx.Client, db: TestDatabase) -> None:
    no_component = api.post(
        "/api/prices",
        json={"ai_model": "gpt-x", "currency": "usd", "valid_from": "2024-01-01T00:00:00Z"},
    )
    assert no_component.status_code == 422
    assert no_component.json()["detail"][0]["loc"] == ["body", "per_million_in"]

    backwards = api.post(
        "/api/prices",
        json=price(valid_from="2024-02-01T00:00:00Z", valid_to="2024-01-01T00:00:00Z"),
    )
    assert backwards.status_code == 422
    assert backwards.json()["detail"] == [
        {"loc": ["body", "valid_to"], "msg": "must be after valid_from"}
    ]

    naive = api.post("/api/prices", json=price(valid_from="2024-01-01T00:00:00"))
    assert naive.status_code == 422
    assert naive.json()["detail"][0]["loc"] == ["body", "valid_from"]

    missing = api.put("/api/prices/999", json=price(ai_model=None) | {"ai_model": None})
    assert missing.status_code == 422  # ai_model is not a field of PUT: the model stays
    unknown = api.post("/api/prices/999/end", json={"valid_to": "2024-01-01T00:00:00Z"})
    assert unknown.status_code == 404
    assert db.count("model_prices") == 0


def test_cli_set_changes_the_price_from_a_date_and_records_cli_as_actor(
    db: TestDatabase, api: httpx.Client
) -> None:
    post_tasks(
        api,
        task(external_id="feb", started_at="2024-02-10T00:00:00Z", tokens_in=10**6),
        task(external_id="mar", started_at="2024-03-10T00:00:00Z", tokens_in=10**6),
    )
    first = run_roi(
        "prices", "set", "gpt-x", "--currency", "USD", "--in", "2", "--from", "2024-01-01",
        database_url=db.url,
    )  # fmt: skip
    assert first.exit_code == 0, first.output
    assert "create price #1 (gpt-x), 2 task(s) re-priced" in first.output

    second = run_roi(
        "prices", "set", "gpt-x", "--currency", "usd", "--in", "3", "--from", "2024-03-01",
        database_url=db.url,
    )  # fmt: skip
    assert second.exit_code == 0, second.output
    assert "end price #1 (gpt-x), 1 task(s) re-priced" in second.output
    assert "create price #2 (gpt-x), 1 task(s) re-priced" in second.output
    assert priced(db) == {
        "feb": (Decimal("200.000000"), "usd", 1),
        "mar": (Decimal("300.000000"), "usd", 2),
    }
    assert [(c["action"], c["actor"], c["tasks_recomputed"]) for c in changes(db)] == [
        ("create", "cli", 2),
        ("end", "cli", 1),
        ("create", "cli", 1),
    ]

    # Same start again: a correction of that price, not a new one.
    corrected = run_roi(
        "prices", "set", "gpt-x", "--currency", "usd", "--in", "3.5", "--from", "2024-03-01",
        database_url=db.url,
    )  # fmt: skip
    assert corrected.exit_code == 0, corrected.output
    assert "update price #2" in corrected.output
    assert priced(db)["mar"] == (Decimal("350.000000"), "usd", 2)

    listed = run_roi("prices", "list", database_url=db.url)
    assert listed.output.splitlines() == [
        "#1 gpt-x: usd in/M 2, valid [2024-01-01T00:00:00+00:00, 2024-03-01T00:00:00+00:00)",
        "#2 gpt-x: usd in/M 3.5, valid [2024-03-01T00:00:00+00:00, open-ended)",
    ]

    ended = run_roi("prices", "end", "2", "--at", "2024-03-05", database_url=db.url)
    assert ended.exit_code == 0, ended.output
    assert priced(db)["mar"] == (None, None, None)

    unpriced = run_roi("prices", "unpriced", database_url=db.url)
    assert unpriced.output.startswith("gpt-x: 1 task(s)")


def test_cli_refuses_bad_input_naming_the_field(db: TestDatabase) -> None:
    bad = run_roi(
        "prices", "set", "gpt-x", "--currency", "usd", "--in", "1,5", "--from", "2024-01-01",
        database_url=db.url,
    )  # fmt: skip
    assert bad.exit_code == 1
    assert "per_million_in: expected a decimal number" in bad.output
    overlap_base = run_roi(
        "prices", "set", "gpt-x", "--currency", "usd", "--gpu", "1", "--from", "2024-01-01",
        "--to", "2024-02-01", database_url=db.url,
    )  # fmt: skip
    assert overlap_base.exit_code == 0, overlap_base.output
    overlap = run_roi(
        "prices", "set", "gpt-x", "--currency", "usd", "--gpu", "1", "--from", "2023-12-01",
        "--to", "2024-01-15", database_url=db.url,
    )  # fmt: skip
    assert overlap.exit_code == 1
    assert "valid_to: overlaps price 1" in overlap.output


def test_reprice_prices_rows_written_straight_into_the_table(
    api: httpx.Client, db: TestDatabase
) -> None:
    set_price(api, per_million_in="1")
    db.execute(
        "INSERT INTO execution_tasks (external_id, stream, task_type, ai_model, status,"
        " started_at, tokens_in) VALUES ('direct', 'api', 'summarize', 'gpt-x', 'queued',"
        " '2024-03-10T12:00:00Z', 1000000)"
    )
    assert tasks_by_id(db)["direct"]["cost_source"] == "unpriced"

    result = run_roi("prices", "reprice", database_url=db.url)
    assert result.exit_code == 0, result.output
    assert "1 task(s) re-priced" in result.output
    assert priced(db)["direct"] == (Decimal("100.000000"), "usd", 1)
    assert changes(db)[-1]["action"] == "reprice"

    before = xmins(db)
    again = run_roi("prices", "reprice", database_url=db.url)
    assert "0 task(s) re-priced" in again.output
    assert xmins(db) == before
    assert changes(db)[-1]["action"] == "reprice"
    assert len(changes(db)) == 2  # a reprice that changed nothing is not audited


def test_the_table_refuses_rows_that_break_the_contract(db: TestDatabase) -> None:
    insert = (
        "INSERT INTO execution_tasks (external_id, stream, task_type, ai_model, status,"
        " started_at, finished_at, cost_amount, cost_currency) VALUES ('x', 'api', 't', 'm',"
        " :status, '2024-03-10T12:00:00Z', :finished_at, :cost, :currency)"
    )
    ok = {"status": "succeeded", "finished_at": None, "cost": None, "currency": None}
    for broken in (
        {"status": "done"},
        {"finished_at": "2024-03-10T11:00:00Z"},
        {"cost": Decimal("1")},
        {"cost": Decimal("1"), "currency": "USD"},
    ):
        with pytest.raises(Exception, match="violates check constraint"):
            db.execute(insert, **(ok | broken))
    db.execute(insert, **ok)
    assert db.count("execution_tasks") == 1


def test_a_batch_written_during_a_price_change_waits_and_gets_the_new_price(
    api: httpx.Client, db: TestDatabase
) -> None:
    """The intake takes the prices lock shared, a price change exclusively: a batch that
    arrives while a price is being set is priced after that change commits, never before."""
    from concurrent.futures import ThreadPoolExecutor

    from app.pricing import PriceIn
    from app.pricing import set_price as set_price_in

    spec = PriceIn.model_validate(price(per_million_in="7"))
    with ThreadPoolExecutor(max_workers=1) as pool, db.engine.connect() as conn:
        with conn.begin():
            set_price_in(conn, spec, actor="cli")  # holds the lock until this block commits
            pending = pool.submit(
                api.post, "/api/tasks", json=[task(external_id="racing", tokens_in=10**6)]
            )
            deadline = time.monotonic() + 10
            while not db.scalar(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            ):
                assert not pending.done(), pending.result().text  # it must wait for the lock
                assert time.monotonic() < deadline, "the batch never waited for the price lock"
                time.sleep(0.01)
        response = pending.result(timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["unpriced"] == 0
    assert priced(db)["racing"] == (Decimal("700.000000"), "usd", 1)
