"""`roi demo`: a realistic, repeatable year, sent through the app's real front doors."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from app.demo import plan_year, seed_year
from tests.conftest import PRIMARY_SECRET, TestDatabase, WebhookClient

TODAY = date(2026, 11, 22)


def test_the_year_has_what_a_founder_must_see_and_is_the_same_every_time() -> None:
    year = plan_year(TODAY)

    def money(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [(e["id"], e["type"], e["data"]["object"]["id"], e["data"]["object"]["amount"])
                for e in events]  # fmt: skip

    # Same event and object ids: a rerun sends duplicates, not new money.
    again = plan_year(TODAY)
    assert money(year.events) == money(again.events)
    assert year.tasks == again.tasks
    types = {e["type"] for e in year.events}
    assert types == {"charge.succeeded", "refund.created", "charge.dispute.closed"}
    objects = [e["data"]["object"] for e in year.events]
    assert {o["currency"] for o in objects} == {"usd", "eur"}
    disputes = [o for o in objects if o["object"] == "dispute"]
    assert sorted(d["status"] for d in disputes) == ["lost", "won"]
    assert (
        min(e["created"] for e in year.events)
        >= int((TODAY - timedelta(days=365)).strftime("%s")) - 86_400
    )
    assert len(year.events) < 12_000  # seeding stays under a minute


def test_the_chatbot_turns_unprofitable_at_the_end_of_the_year() -> None:
    """Its AI cost per payment grows past the payment in the last months."""
    year = plan_year(TODAY)
    late = str(TODAY - timedelta(days=30))
    early = str(TODAY - timedelta(days=330))

    def tokens(after: str, before: str) -> float:
        picked = [
            t["tokens_out"]
            for t in year.tasks
            if t["stream"] == "chatbot" and after <= t["started_at"][:10] < before
        ]
        return sum(picked) / len(picked)

    assert tokens(late, str(TODAY)) > 2.5 * tokens(early, str(TODAY - timedelta(days=300)))


def test_seeding_goes_through_the_webhook_and_api_and_a_rerun_counts_nothing_twice(
    webhook: WebhookClient, db: TestDatabase
) -> None:
    events, tasks = seed_year(webhook.http, PRIMARY_SECRET, TODAY, days=4)
    assert db.count("stripe_events") == events
    assert db.count("execution_tasks") == tasks
    ledger = db.ledger()
    period = {"start": str(TODAY - timedelta(days=5)), "end": str(TODAY), "tz": "UTC"}
    body = webhook.http.get("/api/metrics/streams", params=period).json()
    assert {s["stream"] for s in body["streams"]} >= {"api-credits", "saas-pro", "chatbot"}
    assert body["trust"]["unpriced_tasks"] == 0  # the demo's prices cover its models

    seed_year(webhook.http, PRIMARY_SECRET, TODAY, days=4)
    assert db.ledger() == ledger
    assert db.count("stripe_events") == events
