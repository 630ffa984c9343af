"""GET /api/metrics/*: figures over real HTTP after real webhook events and task posts."""

from __future__ import annotations

from typing import Any

import pytest

from app.api.metrics import timeseries_json, timeseries_report
from app.metrics.filters import build_filter
from tests import stripe_events as se
from tests.conftest import TestDatabase, WebhookClient
from tests.task_costs import task

T = 1_710_072_000  # 2024-03-10 12:00:00 UTC (New York switched to daylight time at 07:00 UTC)
PERIOD = {"start": "2024-03-10", "end": "2024-03-11", "tz": "UTC"}


def streams(webhook: WebhookClient, **params: Any) -> dict[str, Any]:
    response = webhook.http.get("/api/metrics/streams", params={**PERIOD, **params})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_a_paid_charge_and_its_tasks_give_margin_and_roi_at_once(
    webhook: WebhookClient, db: TestDatabase
) -> None:
    charge = se.charge(amount=10_000, created=T, metadata={"stream": "api"})
    assert webhook.post(se.charge_succeeded(charge=charge, created=T)).status_code == 200
    refund = se.refund(charge=charge["id"], amount=1_000, created=T + 60)
    assert webhook.post(se.refund_created(refund=refund, created=T + 60)).status_code == 200
    tasks = [
        task(stream="api", started_at="2024-03-10T12:05:00Z", cost="12.50", cost_currency="usd"),
        task(stream="api", started_at="2024-03-10T13:00:00Z", cost="7.50", cost_currency="usd"),
        task(stream="api", started_at="2024-03-10T14:00:00Z", ai_model="unpriced-model"),
    ]
    assert webhook.http.post("/api/tasks", json=tasks).status_code == 200

    # No waiting: figures are read from the rollups plus whatever is not yet compacted.
    body = streams(webhook)

    (api,) = body["streams"]
    assert api == {
        "stream": "api",
        "gross": "100.00",
        "refunds": "10.00",
        "disputes": "0.00",
        "fees": "0.00",
        "net_revenue": "90.00",
        "task_cost": "20.00",
        "cost": "20.00",
        "margin": "70.00",
        "margin_pct": "0.7778",
        "roi": "3.5000",
        "tasks": 3,
        "unpriced_tasks": 1,
    }
    assert body["total"]["margin"] == "70.00"
    assert body["currency"] == "usd"
    assert body["trust"]["unpriced_tasks"] == 1
    assert body["trust"]["as_of"] is not None
    assert body["previous_period"]["end"] == body["period"]["start"]


def test_undefined_ratios_are_null_and_losses_negative(
    webhook: WebhookClient, db: TestDatabase
) -> None:
    costly = [task(stream="lab", started_at="2024-03-10T09:00:00Z", cost="3", cost_currency="usd")]
    assert webhook.http.post("/api/tasks", json=costly).status_code == 200

    (lab,) = streams(webhook)["streams"]

    assert (lab["net_revenue"], lab["margin"], lab["margin_pct"], lab["roi"]) == (
        "0.00",
        "-3.00",
        None,
        "-1.0000",
    )


def test_timeseries_buckets_are_cut_in_the_requested_zone(
    webhook: WebhookClient, db: TestDatabase
) -> None:
    # 03:30 UTC on March 10 is still March 9 in New York.
    for created, amount in ((T - 8 * 3600 - 1800, 500), (T, 700)):
        charge = se.charge(amount=amount, created=created, metadata={"stream": "api"})
        webhook.post(se.charge_succeeded(charge=charge, created=created))

    response = webhook.http.get(
        "/api/metrics/timeseries",
        params={"start": "2024-03-09", "end": "2024-03-11", "tz": "America/New_York"},
    )

    assert response.status_code == 200, response.text
    points = [(p["bucket"], p["gross"]) for p in response.json()["points"]]
    assert points == [("2024-03-09T00:00:00-05:00", "5.00"), ("2024-03-10T00:00:00-05:00", "7.00")]


def test_models_breakdown(webhook: WebhookClient, db: TestDatabase) -> None:
    batch = [
        task(ai_model="gpt-x", status="succeeded", duration_ms=1000, cost="1", cost_currency="usd"),
        task(ai_model="gpt-x", status="failed", duration_ms=3000, cost="1", cost_currency="usd"),
        task(
            ai_model="claude-y", status="succeeded", duration_ms=2000, cost="4", cost_currency="usd"
        ),
    ]
    assert webhook.http.post("/api/tasks", json=batch).status_code == 200
    charge = se.charge(amount=3_000, created=T, metadata={"stream": "api"})
    webhook.post(se.charge_succeeded(charge=charge, created=T))

    response = webhook.http.get("/api/metrics/models", params=PERIOD)

    assert response.status_code == 200, response.text
    models = {m["key"]: m for m in response.json()["ai_models"]}
    assert models["gpt-x"]["success_rate"] == "0.5000"
    assert models["gpt-x"]["avg_duration_ms"] == "2000.0"
    assert models["gpt-x"]["cost_per_successful_task"] == "2.00"
    # The stream's 30.00 of net revenue shared over its 3 tasks.
    assert models["gpt-x"]["net_revenue_per_task"] == "10.00"
    assert models["claude-y"]["p95_duration_ms"] == "2000.0"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"tz": "Mars/Olympus"}, "tz"),
        ({"start": "2024-03-11", "end": "2024-03-10"}, "end"),
        ({"start": "10/03/2024"}, "start"),
        ({"granularity": "fortnight"}, "granularity"),
        ({"stream": ""}, "stream"),
    ],
)
def test_a_bad_parameter_is_422_naming_it(
    webhook: WebhookClient, params: dict[str, str], field: str
) -> None:
    for path in ("/api/metrics/streams", "/api/metrics/timeseries"):
        response = webhook.http.get(path, params={**PERIOD, **params})
        assert response.status_code == 422, response.text
        assert [d["loc"][-1] for d in response.json()["detail"]] == [field]


def test_metrics_are_in_the_openapi_schema(webhook: WebhookClient) -> None:
    paths = webhook.http.get("/openapi.json").json()["paths"]
    for path in ("/api/metrics/streams", "/api/metrics/timeseries", "/api/metrics/models"):
        params = {p["name"] for p in paths[path]["get"]["parameters"]}
        assert {"start", "end", "tz", "stream", "ai_model", "task_type"} <= params


@pytest.mark.parametrize("tz", ["UTC", "America/New_York", "Asia/Kolkata"])
def test_timeseries_body_is_the_models_own_serialisation(
    webhook: WebhookClient, db: TestDatabase, tz: str
) -> None:
    # The route writes its body with orjson (`timeseries_json`); it must be exactly what
    # pydantic writes for the documented model: same keys and order, "Z" for UTC, nulls.
    for created, amount, stream in ((T - 8 * 3600, 500, "api"), (T, 700, "=web"), (T, 1, "api")):
        charge = se.charge(amount=amount, created=created, metadata={"stream": stream})
        webhook.post(se.charge_succeeded(charge=charge, created=created))
    costly = [task(stream="lab", started_at="2024-03-10T09:00:00Z", cost="3", cost_currency="usd")]
    assert webhook.http.post("/api/tasks", json=costly).status_code == 200
    f = build_filter(start="2024-03-09", end="2024-03-11", tz=tz, granularity="hour")

    with db.engine.connect() as conn:
        body = timeseries_json(conn, f, "usd")
        report = timeseries_report(conn, f, "usd")

    assert len(report.points) == 4
    assert any(p.roi is None for p in report.points)
    assert body == report.model_dump_json().encode()
    response = webhook.http.get(
        "/api/metrics/timeseries",
        params={"start": "2024-03-09", "end": "2024-03-11", "tz": tz, "granularity": "hour"},
    )
    assert response.content == body


def test_series_points_are_presented_from_their_current_figures(
    webhook: WebhookClient, db: TestDatabase
) -> None:
    # Points are presented through a memo keyed by their base figures: a point whose figures
    # change must be presented anew, and equal figures in two points give equal figures.
    params = {**PERIOD, "granularity": "hour"}

    def gross_by_hour() -> list[tuple[str, str, str]]:
        response = webhook.http.get("/api/metrics/timeseries", params=params)
        assert response.status_code == 200, response.text
        return [(p["bucket"], p["gross"], p["margin"]) for p in response.json()["points"]]

    for created in (T, T + 3600):
        charge = se.charge(amount=1_000, created=created, metadata={"stream": "api"})
        webhook.post(se.charge_succeeded(charge=charge, created=created))
    assert gross_by_hour() == [
        ("2024-03-10T12:00:00Z", "10.00", "10.00"),
        ("2024-03-10T13:00:00Z", "10.00", "10.00"),
    ]

    charge = se.charge(amount=1_000, created=T + 60, metadata={"stream": "api"})
    webhook.post(se.charge_succeeded(charge=charge, created=T + 60))
    later = task(stream="api", started_at="2024-03-10T13:05:00Z", cost="2.5", cost_currency="usd")
    assert webhook.http.post("/api/tasks", json=[later]).status_code == 200

    assert gross_by_hour() == [
        ("2024-03-10T12:00:00Z", "20.00", "20.00"),
        ("2024-03-10T13:00:00Z", "10.00", "7.50"),
    ]
