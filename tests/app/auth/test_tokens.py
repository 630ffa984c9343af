"""API tokens: created and shown once, stored as hashes, revoked at once, first admin once."""

from __future__ import annotations

import logging

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from app.auth.principal import Role
from app.auth.setup import announce_first_admin
from app.auth.tokens import TOKEN_PREFIX, hash_token
from app.main import create_app
from tests.conftest import (
    AUTH,
    TEST_TOKEN_IDS,
    TEST_TOKENS,
    LiveServer,
    TestDatabase,
    app_settings,
    auth_header,
    run_roi,
)

PERIOD = {"start": "2024-03-01", "end": "2024-04-01"}


def create(db: TestDatabase, role: str, name: str) -> str:
    result = run_roi("tokens", "create", "--role", role, "--name", name, database_url=db.url)
    assert result.exit_code == 0, result.output
    token = result.stdout.strip().splitlines()[-1]
    assert token.startswith(TOKEN_PREFIX) and len(token) >= len(TOKEN_PREFIX) + 43
    return token


def everything_stored(db: TestDatabase) -> str:
    """Every token and audit row as text: what someone with a database dump would see."""
    return "\n".join(
        str(row)
        for table in ("api_tokens", "audit_log")
        for row in db.rows(f"SELECT to_jsonb(t)::text AS row FROM {table} t")
    )


def test_create_prints_the_token_once_and_stores_only_its_hash(db: TestDatabase) -> None:
    token = create(db, "finance", "reconciler")
    (row,) = db.rows("SELECT * FROM api_tokens WHERE name = 'reconciler'")
    assert row["token_hash"] == hash_token(token) != token
    assert row["prefix"] == token[:12] and row["role"] == "finance"
    assert row["created_by"].startswith("cli:")
    assert token not in everything_stored(db)
    assert token[12:] not in everything_stored(db)
    listed = run_roi("tokens", "list", database_url=db.url)
    assert "reconciler\tfinance\troi_" in listed.stdout
    assert token not in listed.stdout


def test_a_created_token_works_and_revoking_it_takes_effect_at_once(
    db: TestDatabase, live_server: LiveServer
) -> None:
    token = create(db, "viewer", "wallboard")
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=live_server.url, headers=headers) as http:
        assert http.get("/api/metrics/streams", params=PERIOD).status_code == 200
        assert http.post("/api/fx-rates", json=[]).status_code == 403
        result = run_roi("tokens", "revoke", "wallboard", database_url=db.url)
        assert result.exit_code == 0, result.output
        refused = http.get("/api/metrics/streams", params=PERIOD)
    assert refused.status_code == 401
    assert refused.json() == {"error": "invalid or revoked token", "required_role": "viewer"}
    assert refused.headers["www-authenticate"] == "Bearer"
    actions = db.rows("SELECT action, actor, role, target FROM audit_log ORDER BY id")
    assert [a["action"] for a in actions] == ["token.create", "token.revoke"]
    assert all(a["actor"].startswith("cli:") and a["role"] == "admin" for a in actions)


def test_a_revoked_name_can_be_reused_but_not_an_active_one(db: TestDatabase) -> None:
    create(db, "ingest", "batch-job")
    taken = run_roi("tokens", "create", "--role", "ingest", "--name", "batch-job",
                    database_url=db.url)  # fmt: skip
    assert taken.exit_code == 1 and "already named 'batch-job'" in taken.output
    assert run_roi("tokens", "revoke", "batch-job", database_url=db.url).exit_code == 0
    create(db, "ingest", "batch-job")
    again = run_roi("tokens", "revoke", "999", database_url=db.url)
    assert again.exit_code == 1 and "no active token" in again.output


def test_bad_credentials_are_401_naming_the_problem(live_server: LiveServer) -> None:
    with httpx.Client(base_url=live_server.url) as http:
        for headers, error in [
            ({}, "authentication required"),
            ({"Authorization": "Basic dXNlcjpwdw=="}, "malformed Authorization header"),
            ({"Authorization": "Bearer roi_not-a-token"}, "invalid or revoked token"),
        ]:
            response = http.get("/api/metrics/streams", params=PERIOD, headers=headers)
            assert response.status_code == 401
            assert response.json()["error"].startswith(error)
            assert response.json()["required_role"] == "viewer"


def test_last_used_at_is_written_at_most_once_a_minute(
    db: TestDatabase, live_server: LiveServer
) -> None:
    token = create(db, "viewer", "chatty")
    with httpx.Client(base_url=live_server.url, headers={"Authorization": f"Bearer {token}"}) as h:
        assert h.get("/api/metrics/streams", params=PERIOD).status_code == 200
        (first,) = db.rows(
            "SELECT last_used_at, xmin::text AS x FROM api_tokens WHERE name = 'chatty'"
        )
        for _ in range(5):
            assert h.get("/api/metrics/streams", params=PERIOD).status_code == 200
    (later,) = db.rows("SELECT last_used_at, xmin::text AS x FROM api_tokens WHERE name = 'chatty'")
    assert first["last_used_at"] is not None
    assert later == first  # not rewritten: same value, same row version


def test_tokens_over_the_api_are_audited_with_their_principal(
    db: TestDatabase, live_server: LiveServer
) -> None:
    with httpx.Client(base_url=live_server.url, headers=AUTH) as http:
        made = http.post("/api/tokens", json={"name": "ci", "role": "ingest"})
        assert made.status_code == 201, made.text
        token, info = made.json()["token"], made.json()["info"]
        assert info["prefix"] == token[:12] and "token" not in info
        listed = http.get("/api/tokens").json()
        assert token not in str(listed) and "ci" in [t["name"] for t in listed]
        with httpx.Client(base_url=live_server.url) as ci:
            post = ci.post("/api/tasks", json=[], headers={"Authorization": f"Bearer {token}"})
            assert post.status_code != 401 and post.status_code != 403
            view = ci.get(
                "/api/metrics/streams", params=PERIOD, headers={"Authorization": f"Bearer {token}"}
            )
            assert view.status_code == 403
        assert http.post(f"/api/tokens/{info['id']}/revoke").status_code == 200
    rows = db.rows("SELECT action, actor, token_id, client_address FROM audit_log ORDER BY id")
    assert [(r["action"], r["actor"], r["token_id"]) for r in rows] == [
        ("token.create", "test-admin", TEST_TOKEN_IDS[Role.ADMIN]),
        ("token.revoke", "test-admin", TEST_TOKEN_IDS[Role.ADMIN]),
    ]
    assert rows[0]["client_address"] == "127.0.0.1"


def test_first_admin_is_created_and_printed_once(
    db: TestDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    db.execute("DELETE FROM audit_log")
    db.execute("DELETE FROM api_tokens")  # as on the very first start
    create_app(app_settings(db.url))  # the factory: what every web worker runs
    printed = capsys.readouterr()
    (row,) = db.rows("SELECT name, role, token_hash FROM api_tokens")
    assert (row["name"], row["role"]) == ("first-admin", "admin")
    token = next(w for w in printed.err.split() if w.startswith(TOKEN_PREFIX))
    assert hash_token(token) == row["token_hash"]
    assert token not in printed.out  # stderr only: stdout may go to a log file
    assert "copy it" in printed.err

    with db.engine.begin() as conn:
        conn.execute(text("UPDATE api_tokens SET revoked_at = now()"))
    assert announce_first_admin(db.engine) is None  # never again, even once it is revoked
    create_app(app_settings(db.url))
    assert TOKEN_PREFIX not in capsys.readouterr().err
    assert db.count("api_tokens") == 1


def test_an_unknown_role_is_refused_by_the_cli_and_the_database(db: TestDatabase) -> None:
    result = run_roi("tokens", "create", "--role", "root", "--name", "x", database_url=db.url)
    assert result.exit_code == 2  # typer names the allowed roles
    with pytest.raises(IntegrityError, match="ck_api_tokens_role"):
        db.execute(
            "INSERT INTO api_tokens (name, role, token_hash, prefix, created_by)"
            " VALUES ('x', 'root', :h, 'roi_', 'test')",
            h=hash_token("roi_x"),
        )


def test_no_token_or_signature_reaches_the_logs(
    live_server: LiveServer, db: TestDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secrets = [TEST_TOKENS[Role.VIEWER], "roi_guessed-token-value", "t=1,v1=deadbeef"]
    with httpx.Client(base_url=live_server.url) as http:
        http.get("/api/metrics/streams", params=PERIOD, headers=auth_header(Role.VIEWER))
        http.get("/api/audit", headers={"Authorization": f"Bearer {secrets[1]}"})
        http.post("/signin", data={"token": secrets[1]})
        http.post("/signin", data={"token": secrets[0]})
        http.post("/webhooks/stripe", content=b"{}", headers={"Stripe-Signature": secrets[2]})
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert caplog.records  # the run did log (e.g. the webhook's refusal), just not these
    assert [s for s in secrets if s in logged] == []


def test_each_demo_run_gets_a_fresh_admin_token_and_revokes_the_last(db: TestDatabase) -> None:
    from app.demo import demo_token

    app = create_app(app_settings(db.url))
    first, second = demo_token(app), demo_token(app)
    rows = db.rows("SELECT token_hash, revoked_at FROM api_tokens WHERE name = 'demo' ORDER BY id")
    assert [(r["token_hash"], r["revoked_at"] is None) for r in rows] == [
        (hash_token(first), False),  # revoked
        (hash_token(second), True),
    ]
