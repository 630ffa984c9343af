"""Signing in to the dashboard over HTTP: the form, the cookie, redirects, expiry, revocation,
and forged cross-site posts."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
import websockets.sync.client

from app.auth.principal import Role
from app.auth.sessions import COOKIE_NAME, SessionSigner
from app.auth.signin import local_path
from tests.conftest import (
    TEST_TOKEN_IDS,
    TEST_TOKENS,
    LiveServer,
    TestDatabase,
    app_settings,
    run_roi,
)

PAGE = {"Accept": "text/html,application/xhtml+xml"}  # what a browser sends for a page


@pytest.fixture
def browser(live_server: LiveServer, db: TestDatabase) -> Iterator[httpx.Client]:
    """A cookie-keeping client that asks for pages like a browser, without following
    redirects (the tests look at each one)."""
    with httpx.Client(base_url=live_server.url, headers=PAGE, timeout=30) as client:
        yield client


def sign_in(
    client: httpx.Client, token: str, next_path: str = "/dashboard/", **headers: str
) -> httpx.Response:
    return client.post(
        "/signin",
        data={"token": token, "next": next_path},
        headers={"Origin": str(client.base_url).rstrip("/"), **headers},
    )


def set_cookie_attributes(response: httpx.Response) -> set[str]:
    (header,) = response.headers.get_list("set-cookie")
    return {part.strip().split("=")[0].lower() for part in header.split(";")[1:]}


def test_a_page_without_a_session_redirects_to_signin_with_next(browser: httpx.Client) -> None:
    response = browser.get("/dashboard/models?period=7d&tz=UTC")
    assert response.status_code == 303
    assert (
        response.headers["location"]
        == "/signin?next=%2Fdashboard%2Fmodels%3Fperiod%3D7d%26tz%3DUTC"
    )
    form = browser.get(response.headers["location"])
    assert form.status_code == 200
    assert 'name="token"' in form.text and 'type="password"' in form.text
    assert 'value="/dashboard/models?period=7d&amp;tz=UTC"' in form.text


def test_signing_in_sets_a_signed_httponly_lax_cookie_and_goes_to_next(
    browser: httpx.Client, db: TestDatabase
) -> None:
    response = sign_in(browser, TEST_TOKENS[Role.VIEWER], "/dashboard/models?period=7d")
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard/models?period=7d"
    attributes = set_cookie_attributes(response)
    assert {"httponly", "samesite", "path", "max-age"} <= attributes
    assert "samesite=lax" in response.headers["set-cookie"].lower()
    assert "secure" not in attributes  # plain HTTP here; see the proxy test below
    value = browser.cookies[COOKIE_NAME]
    assert TEST_TOKENS[Role.VIEWER] not in value and value.startswith(
        f"{TEST_TOKEN_IDS[Role.VIEWER]}."
    )
    page = browser.get("/dashboard/models?period=7d")
    assert page.status_code == 200 and "_dash-config" in page.text
    assert (
        browser.get(
            "/api/metrics/models", params={"start": "2024-03-01", "end": "2024-03-02"}
        ).status_code
        == 200
    )
    (signin,) = db.rows("SELECT action, actor, role FROM audit_log")
    assert signin == {"action": "session.signin", "actor": "test-viewer", "role": "viewer"}


def test_behind_an_https_proxy_the_cookie_is_secure(browser: httpx.Client) -> None:
    response = sign_in(browser, TEST_TOKENS[Role.VIEWER], **{"X-Forwarded-Proto": "https"})
    assert "secure" in set_cookie_attributes(response)


@pytest.mark.parametrize(
    "next_path",
    ["https://evil.example/", "//evil.example/x", "/\\evil.example", "\\\\evil.example",
     "javascript:alert(1)", "/dash\nboard", "dashboard", ""],
)  # fmt: skip
def test_next_must_be_a_local_path(browser: httpx.Client, next_path: str) -> None:
    response = sign_in(browser, TEST_TOKENS[Role.VIEWER], next_path)
    assert response.headers["location"] == "/dashboard/"
    assert local_path(next_path) == "/dashboard/"


def test_a_wrong_token_shows_the_form_again(browser: httpx.Client) -> None:
    response = sign_in(browser, "roi_wrong", "/dashboard/models")
    assert response.status_code == 401
    assert "Unknown or revoked token" in response.text
    assert 'value="/dashboard/models"' in response.text
    assert COOKIE_NAME not in browser.cookies


def test_an_ingest_token_cannot_open_the_dashboard(browser: httpx.Client) -> None:
    response = sign_in(browser, TEST_TOKENS[Role.INGEST])
    assert response.status_code == 403
    assert COOKIE_NAME not in browser.cookies


def test_a_signed_in_role_without_access_gets_a_403_page(browser: httpx.Client) -> None:
    sign_in(browser, TEST_TOKENS[Role.VIEWER])
    page = browser.get("/api/audit")
    assert page.status_code == 403
    assert page.json() == {
        "error": "role viewer may not GET /api/audit",
        "required_role": "finance",
    }
    unknown_page = browser.get("/admin/settings")  # not in the policy: admin only
    assert unknown_page.status_code == 403
    assert "test-viewer" in unknown_page.text and "needs the role admin" in unknown_page.text


def test_revoking_the_token_ends_its_sessions_at_once(
    browser: httpx.Client, db: TestDatabase
) -> None:
    made = run_roi("tokens", "create", "--role", "finance", "--name", "alice", database_url=db.url)
    sign_in(browser, made.stdout.strip())
    assert browser.get("/dashboard/").status_code == 200
    assert run_roi("tokens", "revoke", "alice", database_url=db.url).exit_code == 0
    assert browser.get("/dashboard/").status_code == 303
    api = browser.get("/api/audit", headers={"Accept": "application/json"})
    assert api.status_code == 401
    assert api.json()["error"] == "session's token was revoked"


def test_an_expired_or_forged_session_is_refused(
    browser: httpx.Client, live_server: LiveServer
) -> None:
    signer: SessionSigner = live_server.app.state.session_signer
    admin = TEST_TOKEN_IDS[Role.ADMIN]
    lifetime = signer.lifetime_seconds
    expired, _ = signer.issue(admin, now=time.time() - lifetime - 1)
    fresh, _ = signer.issue(admin)
    token_id, expiry, mac = fresh.split(".")
    for value in (expired, f"{token_id}.{int(expiry) + 3600}.{mac}", f"1.{expiry}.{mac}"):
        browser.cookies.set(COOKIE_NAME, value)
        assert browser.get("/dashboard/").status_code == 303, value
    browser.cookies.set(COOKIE_NAME, fresh)
    assert browser.get("/dashboard/").status_code == 200
    assert signer.check(fresh, now=time.time() + lifetime + 1) is None  # it expires too


def test_sign_in_and_out_refuse_cross_site_posts(browser: httpx.Client) -> None:
    forged = sign_in(browser, TEST_TOKENS[Role.ADMIN], Origin="https://evil.example")
    assert forged.status_code == 403 and COOKIE_NAME not in browser.cookies
    sign_in(browser, TEST_TOKENS[Role.FINANCE])
    assert browser.post("/signout", headers={"Origin": "https://evil.example"}).status_code == 403
    assert browser.get("/dashboard/").status_code == 200  # still signed in
    out = browser.post("/signout", headers={"Origin": str(browser.base_url).rstrip("/")})
    assert out.status_code == 303 and out.headers["location"] == "/signin"
    assert COOKIE_NAME not in browser.cookies
    assert browser.get("/dashboard/").status_code == 303


def test_a_session_may_not_change_things_from_another_site(browser: httpx.Client) -> None:
    sign_in(browser, TEST_TOKENS[Role.ADMIN])
    forged = browser.post(
        "/api/fx-rates", json=[], headers={"Origin": "https://evil.example", "Accept": "*/*"}
    )
    assert forged.status_code == 403
    assert forged.json()["error"].startswith("cross-origin request refused")
    ours = browser.post(
        "/api/fx-rates", json=[], headers={"Origin": str(browser.base_url).rstrip("/")}
    )
    assert ours.status_code == 200


def test_an_open_dashboard_websocket_closes_once_its_token_is_revoked(
    live_server: LiveServer, db: TestDatabase
) -> None:
    token = run_roi("tokens", "create", "--role", "viewer", "--name", "tv", database_url=db.url)
    url = live_server.url.replace("http://", "ws://") + "/dashboard/_dash-ws-callback"
    with websockets.sync.client.connect(
        url,
        additional_headers={"Authorization": f"Bearer {token.stdout.strip()}"},
        origin=live_server.url,
        open_timeout=10,
    ) as socket:
        assert run_roi("tokens", "revoke", "tv", database_url=db.url).exit_code == 0
        socket.send("{}")  # the next message from the page re-reads the token
        with pytest.raises(websockets.ConnectionClosed) as closed:
            socket.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


def test_without_roi_secret_key_every_worker_shares_the_databases_key(db: TestDatabase) -> None:
    one, two = (SessionSigner(app_settings(db.url), db.engine) for _ in range(2))
    value, _ = one.issue(7)
    assert two.check(value) is not None  # another worker, or after a restart
    assert db.count("app_secrets") == 1
    configured = SessionSigner(app_settings(db.url, secret_key="s3cret-from-env"), db.engine)
    assert configured.check(value) is None
    assert configured.check(configured.issue(7)[0]) is not None
