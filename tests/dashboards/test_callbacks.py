"""The dashboard's callbacks over HTTP, against the real app and database: the figures it
shows are the metrics API's, it tells a new user what to do, and it says when it cannot
answer."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from app.auth.principal import Principal, Role
from app.changes import ChangeFeed
from app.main import create_app
from dashboards.data import FigureSource
from dashboards.format import money, percent
from tests import stripe_events as se
from tests.conftest import LiveServer, TestDatabase, WebhookClient, app_settings
from tests.dashboards.conftest import DashClient, view, wait_for_feed
from tests.task_costs import task

T = 1_710_072_000  # 2024-03-10 12:00:00 UTC
KPIS = ["overview-empty.children", "overview-kpis.children", "overview-trust.children",
        "overview-alerts.children"]  # fmt: skip
STATUS = ["as-of.children", "banner.children"]


def seed(webhook: WebhookClient) -> None:
    for stream, amount in (("api", 10_000), ("chatbot", 2_500)):
        charge = se.charge(amount=amount, created=T, metadata={"stream": stream})
        assert webhook.post(se.charge_succeeded(charge=charge, created=T)).status_code == 200
    refund = se.refund(charge=charge["id"], amount=500, created=T + 60)
    assert webhook.post(se.refund_created(refund=refund, created=T + 60)).status_code == 200
    tasks = [
        task(stream="api", started_at="2024-03-10T12:05:00Z", cost="12.50", cost_currency="usd"),
        task(stream="chatbot", started_at="2024-03-10T13:00:00Z", cost="40.00",
             cost_currency="usd"),
    ]  # fmt: skip
    assert webhook.http.post("/api/tasks", json=tasks).status_code == 200


def feed_of(server: LiveServer) -> ChangeFeed:
    return server.app.state.change_feed  # type: ignore[no-any-return]


def kpi_values(response: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """KPI id -> (text shown, exact decimal string)."""
    cards = response["overview-kpis"]["children"]
    values = {}
    for card in cards:
        value = card["props"]["children"][1]["props"]
        values[card["props"]["id"].removeprefix("kpi-")] = (value["children"], value["data-value"])
    return values


def test_the_kpis_are_the_metrics_apis_figures_for_the_same_filters(
    webhook: WebhookClient, db: TestDatabase, dash_client: DashClient, live_server: LiveServer
) -> None:
    seed(webhook)
    wait_for_feed(db, feed_of(live_server))
    api = webhook.http.get(
        "/api/metrics/streams", params={"start": "2024-03-10", "end": "2024-03-11", "tz": "UTC"}
    ).json()["total"]

    shown = kpi_values(dash_client.call(KPIS, view__data=view()))

    assert shown == {
        "net_revenue": (money(api["net_revenue"], "usd"), api["net_revenue"]),
        "cost": (money(api["cost"], "usd"), api["cost"]),
        "margin": (money(api["margin"], "usd"), api["margin"]),
        "margin_pct": (percent(api["margin_pct"]), api["margin_pct"]),
        "roi": (percent(api["roi"]), api["roi"]),
    }
    assert shown["net_revenue"] == ("$120.00", "120.00")
    assert shown["margin"] == ("$67.50", "67.50")


def test_a_losing_stream_is_shown_negative_in_the_stream_table(
    webhook: WebhookClient, db: TestDatabase, dash_client: DashClient, live_server: LiveServer
) -> None:
    seed(webhook)
    wait_for_feed(db, feed_of(live_server))
    response = dash_client.call(
        ["overview-revenue-cost.figure", "overview-roi-margin.figure",
         "overview-streams.children"], view__data=view())  # fmt: skip
    rows = response["overview-streams"]["children"]["props"]["children"][1]["props"]["children"]
    cells = {
        row["props"]["children"][0]["props"]["children"]["props"]["children"]: [
            (c["props"]["children"], c["props"].get("className"))
            for c in row["props"]["children"][1:4]
        ]
        for row in rows
    }
    assert cells["chatbot"] == [("$20.00", "num"), ("$40.00", "num"),
                                ("\u2212$20.00", "num negative")]  # fmt: skip
    link = rows[0]["props"]["children"][0]["props"]["children"]["props"]["href"]
    assert link.startswith("/dashboard/stream?") and "stream=api" in link


def test_a_new_user_is_told_how_to_connect_stripe_until_the_first_event(
    webhook: WebhookClient, db: TestDatabase, dash_client: DashClient, live_server: LiveServer
) -> None:
    wait_for_feed(db, feed_of(live_server))
    empty = dash_client.call(KPIS, view__data=view())["overview-empty"]["children"]
    assert empty["props"]["id"] == "empty-state"
    assert "webhook" in str(empty).lower() and "STRIPE_WEBHOOK_SECRET" in str(empty)

    seed(webhook)
    wait_for_feed(db, feed_of(live_server))
    assert dash_client.call(KPIS, view__data=view())["overview-empty"]["children"] is None


def test_a_shared_link_sets_the_filters_and_a_filter_change_rewrites_the_link(
    dash_client: DashClient,
) -> None:
    outputs = ["url.search", "period.value", "dates.start_date", "dates.end_date",
               "streams.value", "streams.options", "granularity.value", "tz.value",
               "view.data"]  # fmt: skip
    link = (
        "?period=custom&tz=Asia%2FTokyo&granularity=week&start=2024-03-01&end=2024-04-01&stream=api"
    )
    response = dash_client.call(outputs, url__search=link)
    assert response["period"]["value"] == "custom"
    assert response["dates"] == {"start_date": "2024-03-01", "end_date": "2024-03-31"}
    assert response["streams"]["value"] == ["api"]
    assert "api" in response["streams"]["options"]  # kept even if unknown here
    assert response["view"]["data"]["tz"] == "Asia/Tokyo"
    assert "url" not in response  # already canonical: not rewritten

    response = dash_client.call(
        outputs, ["streams.value"], url__search=link, period__value="custom",
        dates__start_date="2024-03-01", dates__end_date="2024-03-31",
        streams__value=["api", "app"], granularity__value="week", tz__value="Asia/Tokyo",
    )  # fmt: skip
    assert response["url"]["search"].endswith("&stream=api&stream=app")


def test_a_bad_view_gets_a_banner_naming_the_field(dash_client: DashClient) -> None:
    response = dash_client.call(
        STATUS, view__data=view(granularity="hour", start="2000-01-01", end="2024-01-01")
    )
    (banner,) = response["banner"]["children"]
    assert banner["props"]["children"].startswith("granularity:")


def test_an_unreachable_database_gets_a_banner_not_a_traceback(
    database: TestDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = app_settings("postgresql://postgres@127.0.0.1:1/nowhere", db_timeout_seconds=0.5)
    app = create_app(settings, check_schema=False)
    # The token was verified before the database went away: TokenVerifier keeps a recent
    # verification while the database is unreachable, which a fresh app cannot have.
    verified = Principal(token_id=1, name="test-admin", role=Role.ADMIN, via="bearer")
    monkeypatch.setattr(app.state.token_verifier, "by_token", lambda *_, **__: verified)
    with LiveServer(app) as server:
        response = DashClient(server).call(STATUS, view__data=view())
    (banner,) = response["banner"]["children"]
    assert "database is unreachable" in banner["props"]["children"]
    assert "as-of" not in response  # the last known "as of" stays


def test_viewers_of_the_same_view_share_one_computation(database: TestDatabase) -> None:
    version = [0]
    source = FigureSource(database.engine, "usd", version=lambda: version[0])
    calls: list[int] = []
    start = threading.Barrier(8)

    def compute(_: Any) -> int:
        calls.append(1)
        return len(calls)

    def viewer() -> None:
        start.wait()
        assert source._cached(("view",), compute) == 1

    threads = [threading.Thread(target=viewer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    version[0] += 1  # a change was announced: the next viewer recomputes
    assert source._cached(("view",), compute) == 2


def test_the_download_buttons_export_exactly_the_view_on_screen(
    webhook: WebhookClient, db: TestDatabase, dash_client: DashClient
) -> None:
    seed(webhook)
    outputs = ["download-ledger.href", "download-streams.href", "download-tasks.href"]
    links = dash_client.call(outputs, view__data=view(streams=["api"]))
    ledger = links["download-ledger"]["href"]
    assert ledger == (
        "/api/export/ledger.csv?start=2024-03-10&end=2024-03-11&tz=UTC&granularity=day&stream=api"
    )
    csv = webhook.http.get(ledger)
    assert csv.status_code == 200
    assert csv.text.count("\n") == 2  # the header and api's one charge
    assert links["download-streams"]["href"].startswith("/api/export/streams.csv?start=")


def test_the_data_health_page_reads_the_same_numbers_as_the_health_api(
    webhook: WebhookClient, db: TestDatabase, dash_client: DashClient, live_server: LiveServer
) -> None:
    seed(webhook)
    wait_for_feed(db, feed_of(live_server))
    cards = dash_client.call(["health.children"], view__data=view())["health"]["children"]
    shown = {}
    for card in cards:
        value = card["props"]["children"][1]["props"]
        shown[value["id"]] = value["children"]
    api = webhook.http.get("/api/health").json()
    assert shown["health-database"] == "reachable"
    assert shown["health-schema"] == ("at head" if api["schema"]["at_head"] else "behind")
    assert shown["health-failed"] == "0"
    assert shown["health-fees"] == "unknown"  # the test app has no STRIPE_API_KEY
    assert shown["health-events-per-minute"] == f"{api['events']['per_minute']:,}"
    assert shown["health-last-event"].startswith(api["events"]["last_received_at"][:10])


def test_trend_alerts_show_on_the_overview_as_soon_as_they_are_stored(
    webhook: WebhookClient, db: TestDatabase, dash_client: DashClient, live_server: LiveServer
) -> None:
    from datetime import date
    from decimal import Decimal

    from app.alerts.detect import Alert
    from app.alerts.store import store_new_alerts

    seed(webhook)
    wait_for_feed(db, feed_of(live_server))
    assert dash_client.call(KPIS, view__data=view())["overview-alerts"]["children"] is None
    drop = Alert(stream="chatbot", metric="margin", direction="drop",
                 detected_on=date(2024, 3, 10), change_started_on=date(2024, 3, 8),
                 baseline_value=Decimal(100), recent_value=Decimal(-20), change=Decimal(-120),
                 relative_change=Decimal("-1.2"), currency="usd",
                 message="chatbot: margin fell from $100.00 to -$20.00 a day")  # fmt: skip
    with db.engine.begin() as conn:
        store_new_alerts(conn, [drop])
    wait_for_feed(db, feed_of(live_server))  # storing an alert announces it
    panel = dash_client.call(KPIS, view__data=view())["overview-alerts"]["children"]
    assert panel["props"]["id"] == "trend-alerts"
    assert "chatbot: margin fell" in str(panel)
    only_api = dash_client.call(KPIS, view__data=view(streams=["api"]))
    assert only_api["overview-alerts"]["children"] is None
