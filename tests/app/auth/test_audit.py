"""The audit log: written with the change it describes, readable by finance and admin."""

from __future__ import annotations

import getpass

import httpx
import pytest

from app.audit import list_audit, record_audit
from app.auth.principal import Principal, Role
from tests.conftest import TEST_TOKEN_IDS, LiveServer, TestDatabase, auth_header, run_roi

EXPORTER = Principal(
    token_id=TEST_TOKEN_IDS[Role.FINANCE],
    name="test-finance",
    role=Role.FINANCE,
    via="bearer",
    client_address="10.0.0.7",
)


def audit_rows(db: TestDatabase) -> list[dict[str, object]]:
    return db.rows(
        "SELECT token_id, actor, role, action, target, details, client_address"
        " FROM audit_log ORDER BY id"
    )


def test_record_audit_writes_in_the_callers_transaction(db: TestDatabase) -> None:
    """How an export records itself: the principal from request.state, the filters."""
    filters = {"start": "2024-03-01", "end": "2024-04-01", "stream": ["api"], "tz": "UTC"}
    with db.engine.begin() as conn:
        row_id = record_audit(conn, EXPORTER, "export.streams", "/api/export/streams.csv", filters)
    assert audit_rows(db) == [
        {
            "token_id": TEST_TOKEN_IDS[Role.FINANCE],
            "actor": "test-finance",
            "role": "finance",
            "action": "export.streams",
            "target": "/api/export/streams.csv",
            "details": filters,
            "client_address": "10.0.0.7",
        }
    ]
    with db.engine.connect() as conn:
        assert [e.id for e in list_audit(conn)] == [row_id]
    # Rolled back with the change: no row for what did not happen.
    with pytest.raises(RuntimeError), db.engine.begin() as conn:
        record_audit(conn, EXPORTER, "price.set", "price:1", {})
        raise RuntimeError("the change failed")
    assert len(audit_rows(db)) == 1


def test_price_and_fx_changes_over_the_api_are_audited(
    live_server: LiveServer, db: TestDatabase
) -> None:
    with httpx.Client(base_url=live_server.url, headers=auth_header(Role.ADMIN)) as http:
        price = {"ai_model": "gpt-x", "currency": "usd", "per_million_in": "2.50",
                 "valid_from": "2024-03-01T00:00:00Z"}  # fmt: skip
        made = http.post("/api/prices", json=price)
        assert made.status_code == 200, made.text
        price_id = made.json()["price"]["id"]
        assert http.post("/api/prices", json=price).status_code == 200  # same terms: no change
        ended = http.post(f"/api/prices/{price_id}/end", json={"valid_to": "2024-04-01T00:00:00Z"})
        assert ended.status_code == 200
        rates = [{"day": "2024-03-01", "currency": "eur", "rate": "1.0850"}]
        assert http.post("/api/fx-rates", json=rates).status_code == 200
    rows = audit_rows(db)
    assert [(r["action"], r["target"], r["actor"], r["client_address"]) for r in rows] == [
        ("price.set", f"price:{price_id}", "test-admin", "127.0.0.1"),
        ("price.end", f"price:{price_id}", "test-admin", "127.0.0.1"),
        ("fx_rates.upsert", "fx_rates", "test-admin", "127.0.0.1"),
    ]
    assert rows[0]["details"]["sent"]["per_million_in"] == "2.50"  # type: ignore[index]
    assert rows[2]["details"]["rates"] == [["2024-03-01", "eur", "usd", "1.085"]]  # type: ignore[index]


def test_cli_changes_are_audited_as_the_os_user(db: TestDatabase) -> None:
    result = run_roi("streams", "map", "prod_123", "chatbot", database_url=db.url)
    assert result.exit_code == 0, result.output
    set_price = run_roi("prices", "set", "gpt-x", "--currency", "usd", "--from", "2024-03-01",
                        "--in", "1.00", database_url=db.url)  # fmt: skip
    assert set_price.exit_code == 0, set_price.output
    rows = audit_rows(db)
    assert [(r["action"], r["target"]) for r in rows] == [
        ("stream_mapping.set", "stream_mapping:prod_123"),
        ("price.set", "price:1"),
    ]
    assert {r["actor"] for r in rows} == {f"cli:{getpass.getuser()}"}
    assert rows[0]["details"] == {"stripe_id": "prod_123", "stream": "chatbot",
                                  "charges_reattributed": 0}  # fmt: skip
    assert rows[0]["token_id"] is None and rows[0]["role"] == "admin"


def test_the_audit_view_is_newest_first_paged_and_for_finance_up(
    live_server: LiveServer, db: TestDatabase
) -> None:
    with db.engine.begin() as conn:
        for n in range(5):
            record_audit(conn, EXPORTER, "export.streams", f"/api/export/{n}.csv")
        record_audit(conn, EXPORTER, "export.models", "/api/export/models.csv")
    with httpx.Client(base_url=live_server.url, headers=auth_header(Role.FINANCE)) as http:
        first = http.get("/api/audit", params={"limit": 4}).json()
        assert [e["target"] for e in first["entries"]] == [
            "/api/export/models.csv", "/api/export/4.csv", "/api/export/3.csv",
            "/api/export/2.csv",
        ]  # fmt: skip
        rest = http.get("/api/audit", params={"limit": 4, "before_id": first["next_before_id"]})
        assert [e["target"] for e in rest.json()["entries"]] == [
            "/api/export/1.csv",
            "/api/export/0.csv",
        ]
        assert rest.json()["next_before_id"] is None
        only = http.get("/api/audit", params={"action": "export.models"}).json()["entries"]
        assert [e["action"] for e in only] == ["export.models"]
    for role, status in ((Role.VIEWER, 403), (Role.INGEST, 403), (Role.ADMIN, 200)):
        response = httpx.get(f"{live_server.url}/api/audit", headers=auth_header(role))
        assert response.status_code == status, role
