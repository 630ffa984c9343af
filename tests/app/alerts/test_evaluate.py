"""Trend alerts against the real app: signed Stripe events and tasks over HTTP, figures read
through the metrics layer, each alert stored once and sent once to a local Slack-like receiver.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, time, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from app.alerts.evaluate import Evaluation, evaluate_alerts, today_in
from app.alerts.notify import AlertWebhook
from app.main import create_app
from app.settings import Settings
from tests import stripe_events as se
from tests.conftest import LiveServer, TestDatabase, WebhookClient, app_settings, run_roi
from tests.task_costs import task

FIRST_DAY = date(2024, 1, 1)
DAYS = 70
TODAY = FIRST_DAY + timedelta(days=DAYS)  # judged: the days before it
COLLAPSE_DAYS = 3  # the last days, when the task costs of stream "api" triple


class Receiver:
    """A Slack-like incoming webhook on 127.0.0.1: records each POST and answers with the next
    scripted status (then 200)."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.requests: list[tuple[int, dict[str, Any]]] = []
        lock = self._arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    receiver.requests.append((status, body))
                    lock.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.timeout = 5
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def wait_for_deliveries(self, count: int, timeout: float) -> bool:
        with self._arrived:
            return self._arrived.wait_for(lambda: len(self.delivered) >= count, timeout)

    @property
    def delivered(self) -> list[dict[str, Any]]:
        return [body for status, body in self.requests if status == 200]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()
        r.thread.join(timeout=10)


def fast_webhook(url: str) -> AlertWebhook:
    """The real sender with millisecond waits and two attempts per evaluation."""
    return AlertWebhook(url, attempts=2, initial_wait=0.01, max_wait=0.02, timeout=5)


def settings_for(db: TestDatabase, **overrides: Any) -> Settings:
    return app_settings(db.url, **overrides)


def post_history(webhook: WebhookClient, first_day: date = FIRST_DAY) -> None:
    """70 days of stream "api": about 100.00 of charges and 30.00 of task costs a day (a weekly
    wobble of +-10 %), costs tripling over the last three days; stream "docs" steady."""
    tasks = []
    for i in range(DAYS):
        day = first_day + timedelta(days=i)
        noon = int(datetime.combine(day, time(12), tzinfo=UTC).timestamp())
        wobble = (i * 3) % 7 - 3  # -3..3
        for stream, amount in (("api", 10_000 + wobble * 300), ("docs", 5_000 - wobble * 100)):
            charge = se.charge(amount=amount, created=noon, metadata={"stream": stream})
            webhook.deliver(se.charge_succeeded(charge=charge, created=noon))
        cost = 30 + wobble if i < DAYS - COLLAPSE_DAYS else 90
        started = f"{day.isoformat()}T13:00:00Z"
        tasks.append(task(stream="api", started_at=started, cost=str(cost), cost_currency="usd"))
        tasks.append(task(stream="docs", started_at=started, cost="10", cost_currency="usd"))
    response = webhook.http.post("/api/tasks", json=tasks)
    assert response.status_code == 200, response.text


@pytest.fixture
def history(webhook: WebhookClient, db: TestDatabase) -> TestDatabase:
    post_history(webhook)
    return db


def kinds(evaluation: Evaluation) -> set[tuple[str, str, str]]:
    return {(a.stream, a.metric, a.direction) for a in evaluation.new}


EXPECTED = {("api", "margin", "drop"), ("api", "roi", "drop")}


def test_a_margin_collapse_is_stored_once_and_sent_once(
    history: TestDatabase, receiver: Receiver
) -> None:
    settings = settings_for(history)

    first = evaluate_alerts(history.engine, settings, TODAY, webhook=fast_webhook(receiver.url))

    # Net revenue did not move; margin and ROI did, in stream "api" only.
    assert kinds(first) == EXPECTED
    margin = next(a for a in first.new if a.metric == "margin")
    assert margin.detected_on < TODAY
    assert (TODAY - margin.change_started_on).days <= COLLAPSE_DAYS
    assert margin.currency == "usd" and margin.relative_change is not None
    assert margin.relative_change < -0.5
    assert (first.sent, first.unsent) == (2, 0)
    assert history.count("alerts") == 2

    again = evaluate_alerts(history.engine, settings, TODAY, webhook=fast_webhook(receiver.url))
    next_day = evaluate_alerts(
        history.engine, settings, TODAY + timedelta(days=1), webhook=fast_webhook(receiver.url)
    )

    assert (again.new, again.sent, next_day.new, next_day.sent) == ([], 0, [], 0)
    assert history.count("alerts") == 2
    assert len(receiver.requests) == 2
    texts = sorted(body["text"] for body in receiver.delivered)
    assert texts == sorted(a.message for a in first.new)
    for body in receiver.delivered:
        assert body["blocks"][0]["type"] == "section"
        assert body["text"] in body["blocks"][0]["text"]["text"]
    sent = history.rows("SELECT sent_at, send_attempts, last_error FROM alerts")
    assert all(r["sent_at"] is not None and r["send_attempts"] == 1 for r in sent)
    assert all(r["last_error"] is None for r in sent)


def test_without_a_webhook_url_alerts_are_only_stored(history: TestDatabase) -> None:
    result = evaluate_alerts(history.engine, settings_for(history), TODAY)

    assert kinds(result) == EXPECTED
    assert (result.sent, result.unsent) == (0, 0)
    assert history.scalar("SELECT count(*) FROM alerts WHERE sent_at IS NULL") == 2


def test_a_receiver_down_past_the_retries_gets_the_alerts_on_the_next_evaluation(
    history: TestDatabase, receiver: Receiver
) -> None:
    settings = settings_for(history)
    receiver.statuses = [500] * 2  # both attempts for the first alert; the second waits

    down = evaluate_alerts(history.engine, settings, TODAY, webhook=fast_webhook(receiver.url))

    assert kinds(down) == EXPECTED
    assert (down.sent, down.unsent) == (0, 2)
    assert receiver.delivered == []
    assert len(receiver.requests) == 2
    failed = history.rows("SELECT sent_at, last_error FROM alerts ORDER BY id")
    assert [(r["sent_at"], r["last_error"]) for r in failed] == [
        (None, "HTTP 500: ok"),
        (None, None),
    ]

    back = evaluate_alerts(history.engine, settings, TODAY, webhook=fast_webhook(receiver.url))
    after = evaluate_alerts(history.engine, settings, TODAY, webhook=fast_webhook(receiver.url))

    assert (back.new, back.sent, back.unsent) == ([], 2, 0)
    assert (after.sent, after.unsent) == (0, 0)
    assert len(receiver.delivered) == 2
    assert len(receiver.requests) == 4


def test_a_500_then_200_within_the_retries_is_one_delivery(
    history: TestDatabase, receiver: Receiver
) -> None:
    receiver.statuses = [500]

    result = evaluate_alerts(
        history.engine, settings_for(history), TODAY, webhook=fast_webhook(receiver.url)
    )

    assert (result.sent, result.unsent) == (2, 0)
    assert [status for status, _ in receiver.requests] == [500, 200, 200]


def test_concurrent_evaluations_store_and_send_each_alert_once(
    history: TestDatabase, receiver: Receiver
) -> None:
    settings = settings_for(history)
    barrier = threading.Barrier(4)

    def evaluate(_: int) -> Evaluation:
        barrier.wait()
        return evaluate_alerts(history.engine, settings, TODAY, webhook=fast_webhook(receiver.url))

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(evaluate, range(4)))

    assert sorted(k for r in results for k in kinds(r)) == sorted(EXPECTED)
    assert sum(r.sent for r in results) == 2
    assert history.count("alerts") == 2
    assert len(receiver.requests) == len(receiver.delivered) == 2


def test_api_and_cli_list_the_alerts_newest_first(
    history: TestDatabase, webhook: WebhookClient
) -> None:
    checked = run_roi("alerts", "check", "--today", TODAY.isoformat(), database_url=history.url)
    assert checked.exit_code == 0, checked.output
    assert "2 new alert(s) for the days before 2024-03-11" in checked.output
    assert "Margin of stream 'api' dropped" in checked.output
    history.execute(
        "INSERT INTO alerts (stream, metric, direction, detected_on, change_started_on,"
        " baseline_value, recent_value, change, relative_change, currency, message)"
        " VALUES ('docs', 'net_revenue', 'rise', '2024-03-20', '2024-03-19', 50, 80, 30, 0.6,"
        " 'usd', 'Net revenue of stream ''docs'' rose')"
    )

    response = webhook.http.get("/api/alerts", params={"limit": 2})

    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body) == 2
    assert (body[0]["stream"], body[0]["detected_on"]) == ("docs", "2024-03-20")
    assert body[0]["baseline_value"] == "50.00" and body[0]["relative_change"] == "0.6000"
    assert body[1]["stream"] == "api"
    roi = webhook.http.get("/api/alerts").json()
    assert {a["metric"]: a["currency"] for a in roi} == {
        "net_revenue": "usd",
        "margin": "usd",
        "roi": None,
    }
    assert webhook.http.get("/api/alerts", params={"limit": 0}).status_code == 422

    listed = run_roi("alerts", "list", database_url=history.url)
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert len(lines) == 3 and "2024-03-20 [not sent]" in lines[0]


def test_alerts_check_rejects_a_bad_date(db: TestDatabase) -> None:
    result = run_roi("alerts", "check", "--today", "yesterday", database_url=db.url)
    assert result.exit_code == 1
    assert "--today: expected YYYY-MM-DD" in result.output


def test_the_apps_background_loop_evaluates_and_sends(
    webhook: WebhookClient, db: TestDatabase, receiver: Receiver
) -> None:
    settings = settings_for(db, alert_interval_seconds=0.2, alert_webhook_url=receiver.url)
    post_history(webhook, first_day=today_in(settings) - timedelta(days=DAYS))

    with LiveServer(create_app(settings)):
        assert receiver.wait_for_deliveries(2, timeout=60)

    assert sorted(body["text"].split(" dropped")[0] for body in receiver.delivered) == [
        "Margin of stream 'api'",
        "ROI of stream 'api'",
    ]
    assert db.scalar("SELECT count(*) FROM alerts WHERE sent_at IS NOT NULL") == 2
