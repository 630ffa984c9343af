"""Who may use what: every route of the real app, asked over HTTP with no token and with each
role's token. A route that only the default rule covers fails here: add it to POLICY."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

import httpx
import pytest
import websockets.sync.client
from starlette.routing import BaseRoute, Mount, WebSocketRoute

from app.auth.policy import DEFAULT, Open, requirement, rule_for
from app.auth.principal import Role, role_allows
from tests.conftest import LiveServer, TestDatabase, auth_header

# Values for path parameters: ids that do not exist, so an allowed request changes nothing.
SAMPLES = {"price_id": "999999", "token_id": "999999", "path": "nowhere",
           "package_name": "dash", "fingerprinted_path": "nowhere.js"}  # fmt: skip


def walk(routes: Iterable[BaseRoute], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(path template, method) of every route, through included routers and mounts; websocket
    routes as WEBSOCKET."""
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI's included routers
        if included is not None:
            inner = prefix + route.include_context.prefix  # type: ignore[attr-defined]
            yield from walk(included.routes, inner)
        elif isinstance(route, Mount):
            yield prefix + route.path + "/{path}", "GET"
        elif isinstance(route, WebSocketRoute) or type(route).__name__ == "APIWebSocketRoute":
            yield prefix + route.path, "WEBSOCKET"  # type: ignore[attr-defined]
        else:
            for method in sorted(set(route.methods or ()) - {"HEAD"}):  # type: ignore[attr-defined]
                yield prefix + route.path, method  # type: ignore[attr-defined]


def concrete(template: str) -> str:
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: SAMPLES[m.group(1)], template)


@pytest.fixture(scope="module")
def routes(live_server: LiveServer) -> list[tuple[str, str]]:
    found = sorted(set(walk(live_server.app.routes)))
    assert len(found) > 25  # the walk reaches into routers, Dash and mounts
    return found


def test_every_route_has_a_rule_of_its_own(routes: list[tuple[str, str]]) -> None:
    uncovered = [(m, p) for p, m in routes if rule_for(concrete(p), m) is DEFAULT]
    assert uncovered == [], "add these to app/auth/policy.py POLICY"


CALLERS: list[Role | None] = [None, *Role]


def expected_status_class(caller: Role | None, needs: Role | Open) -> str:
    if needs is Open.PUBLIC:
        return "allowed"
    if caller is None:
        return "401"
    assert isinstance(needs, Role)
    return "allowed" if role_allows(caller, needs) else "403"


def test_each_role_on_each_route(
    routes: list[tuple[str, str]], live_server: LiveServer, db: TestDatabase
) -> None:
    mismatches: list[str] = []
    with httpx.Client(base_url=live_server.url, timeout=30) as http:
        for template, method in routes:
            path = concrete(template)
            needs = requirement(rule_for(path, method), metrics_public=True)
            for caller in CALLERS:
                expected = expected_status_class(caller, needs)
                if method == "WEBSOCKET" and expected != "allowed":
                    expected = "refused"  # a refused handshake is a 403 either way
                got = ask(http, live_server, method, path, caller)
                if got != expected:
                    mismatches.append(f"{method} {path} as {caller}: {got}, expected {expected}")
    assert mismatches == []
    assert db.count("model_prices") == db.count("fx_rates") == 0  # nothing was changed


def ask(http: httpx.Client, server: LiveServer, method: str, path: str, caller: Role | None) -> str:
    headers = auth_header(caller) if caller else {}
    if method == "WEBSOCKET":
        url = server.url.replace("http://", "ws://") + path
        try:
            # Dash refuses websockets from other origins (hijacking): say it is our page.
            with websockets.sync.client.connect(
                url, additional_headers=headers, origin=server.url, open_timeout=10
            ):
                return "allowed"
        except websockets.InvalidStatus as exc:
            assert exc.response.status_code == 403
            return "refused"
    body: dict[str, Any] = {"json": {}} if method in ("POST", "PUT") else {}
    response = http.request(method, path, headers=headers, **body, follow_redirects=False)
    refused = response.headers.get("content-type", "").startswith("application/json") and (
        "required_role" in response.json()
    )
    # (a handler's own 401, e.g. the sign-in form's for a wrong token, is not the policy's)
    return str(response.status_code) if refused else "allowed"


# The roles as the product defines them, spelled out (the matrix above checks the app follows
# the table; this checks the table says what was asked for).
@pytest.mark.parametrize(
    ("method", "path", "lowest"),
    [
        ("GET", "/dashboard/", Role.VIEWER),
        ("POST", "/dashboard/_dash-update-component", Role.VIEWER),
        ("GET", "/api/metrics/streams", Role.VIEWER),
        ("GET", "/api/ledger/totals", Role.VIEWER),
        ("GET", "/docs", Role.VIEWER),
        ("GET", "/openapi.json", Role.VIEWER),
        ("GET", "/api/export/streams.csv", Role.FINANCE),
        ("GET", "/api/audit", Role.FINANCE),
        ("POST", "/api/prices", Role.ADMIN),
        ("PUT", "/api/prices/1", Role.ADMIN),
        ("POST", "/api/fx-rates", Role.ADMIN),
        ("POST", "/api/tokens", Role.ADMIN),
        ("GET", "/api/tokens", Role.ADMIN),
        ("POST", "/api/streams/mappings", Role.ADMIN),
        ("GET", "/some/route/nobody/classified", Role.ADMIN),
    ],
)
def test_the_role_ladder(method: str, path: str, lowest: Role) -> None:
    needs = requirement(rule_for(path, method), metrics_public=True)
    ladder = [Role.VIEWER, Role.FINANCE, Role.ADMIN]
    assert [role_allows(r, needs) for r in ladder] == [
        ladder.index(r) >= ladder.index(lowest) for r in ladder
    ]
    assert not role_allows(Role.INGEST, needs)


def test_ingest_may_only_post_tasks() -> None:
    post_tasks = requirement(rule_for("/api/tasks", "POST"), metrics_public=True)
    assert [role_allows(r, post_tasks) for r in Role] == [False, False, True, True]
    assert rule_for("/api/tasks", "GET") is DEFAULT


@pytest.mark.parametrize(
    "path", ["/webhooks/stripe", "/healthz", "/readyz", "/signin", "/favicon.ico"]
)
def test_open_paths(path: str) -> None:
    assert requirement(rule_for(path, "POST" if "webhook" in path else "GET"),
                       metrics_public=False) is Open.PUBLIC  # fmt: skip


def test_metrics_is_open_unless_the_setting_closes_it() -> None:
    rule = rule_for("/metrics", "GET")
    assert requirement(rule, metrics_public=True) is Open.PUBLIC
    assert requirement(rule, metrics_public=False) is Role.ADMIN


def test_prefixes_stop_at_a_path_segment() -> None:
    assert rule_for("/api/metricsx", "GET") is DEFAULT
    assert rule_for("/healthz/more", "GET") is DEFAULT
    assert rule_for("/webhooks/stripe/x", "POST") is DEFAULT
    assert rule_for("/dashboard/anything/new", "GET").needs is Role.VIEWER
