"""`roi reconcile`: events and fees caught up from the Stripe API (a local fake of it, in
Stripe's shapes), booked by the webhook's own path, exactly once, with bounded retries."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import REGISTRY

from app.main import create_app
from ingest.stripe_catchup import fetch_fees, fetch_fees_forever
from tests import stripe_events as se
from tests.conftest import LiveServer, TestDatabase, WebhookClient, app_settings, run_roi
from tests.fake_stripe import API_KEY, FakeStripe

Obj = dict[str, Any]

T = 1_710_072_000  # 2024-03-10 12:00:00 UTC
SINCE = "2024-03-10T11:00:00"  # an hour before the history below starts
PERIOD = {"start": "2024-03-10", "end": "2024-03-11", "tz": "UTC"}


@pytest.fixture
def fake() -> Iterator[FakeStripe]:
    with FakeStripe() as stripe_api:
        yield stripe_api


def api_env(fake: FakeStripe, give_up: float = 10.0) -> dict[str, str | None]:
    return {
        "STRIPE_API_KEY": API_KEY,
        "STRIPE_API_BASE": fake.url,
        "ROI_STRIPE_GIVE_UP_SECONDS": str(give_up),
    }


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def history(base: int = T, charges: int = 6) -> tuple[list[Obj], dict[str, Obj]]:
    """An account's events in the order Stripe created them, and each charge's balance
    transaction id -> its charge. Each charge succeeds before its balance transaction is known
    and is updated with it a second later; every other one gets its stream from its payment
    intent (same second as the update); some are refunded; the last one is disputed, its fee
    embedded; a customer.created is ignored by the ledger."""
    events: list[Obj] = [se.customer_created(created=base + 5)]
    charge_of_txn: dict[str, Obj] = {}
    for i in range(charges):
        at = base + 120 * i
        pi = se.new_id("pi")
        meta = {"stream": "api"} if i % 2 == 0 else {}
        ch = se.charge(created=at, amount=1000 + 100 * i, payment_intent=pi, metadata=meta)
        txn = se.new_id("txn")
        charge_of_txn[txn] = ch
        events.append(se.charge_succeeded(charge=ch, created=at))
        events.append(
            se.charge_updated(
                charge=se.revise(ch, balance_transaction=txn),
                previous_attributes={"balance_transaction": None},
                created=at + 1,
            )
        )
        if i % 2 == 1:
            intent = se.payment_intent(id=pi, latest_charge=ch["id"], metadata={"stream": "app"})
            events.append(se.payment_intent_succeeded(payment_intent=intent, created=at + 1))
        if i % 3 == 0:
            refund = se.refund(charge=ch["id"], amount=300, created=at + 60)
            events.append(se.refund_created(refund=refund, created=at + 60))
        if i == charges - 1:
            dispute_id = se.new_id("dp")
            withdrawal = se.dispute_withdrawal(
                dispute_id=dispute_id, amount=ch["amount"], created=at + 90
            )
            dispute = se.dispute(
                id=dispute_id,
                charge=ch["id"],
                amount=ch["amount"],
                created=at + 90,
                balance_transactions=[withdrawal],
            )
            events.append(
                se.dispute_event(type="charge.dispute.created", dispute=dispute, created=at + 90)
            )
    events.sort(key=lambda e: e["created"])  # stable: same-second events keep their order
    return events, charge_of_txn


def webhook_ledger(webhook: WebhookClient, db: TestDatabase, events: list[Obj]) -> list[Obj]:
    """The ledger the webhook alone books from these events; the database is emptied after."""
    webhook.deliver(*events)
    ledger = db.ledger()
    db.truncate()
    return ledger


def stored_order(db: TestDatabase) -> list[str]:
    """Event ids in the order they were written (each write is its own transaction)."""
    return [r["id"] for r in db.rows("SELECT id FROM stripe_events ORDER BY processed_at, id")]


def high_water(db: TestDatabase) -> Obj:
    rows = db.rows("SELECT * FROM stripe_catchup_state WHERE name = 'events'")
    assert len(rows) == 1
    return rows[0]


# ---------------------------------------------------------------------------------------------
# Events


def test_missing_events_are_booked_once_oldest_first_and_stored_ones_are_left_alone(
    webhook: WebhookClient, db: TestDatabase, fake: FakeStripe
) -> None:
    events, _ = history()
    reference = webhook_ledger(webhook, db, events)
    # Older than --since: Stripe still lists it, the catch-up must not book it.
    too_old = se.charge_succeeded(charge=se.charge(created=T - 7200), created=T - 7200)
    fake.add_events(too_old, *events)
    fake.max_page = 4  # several pages
    delivered = [e for e in events[::3] if e["type"] != "refund.created"]
    webhook.deliver(*delivered)
    refund_event = next(e for e in events if e["type"] == "refund.created")
    with db.failing_refunds():  # kept as failed: the catch-up processes it again
        assert webhook.post(refund_event).status_code == 500
    before = {r["id"]: r for r in db.rows("SELECT id, attempts, processed_at FROM stripe_events")}

    result = run_roi("reconcile", "--since", SINCE, database_url=db.url, env=api_env(fake))

    assert result.exit_code == 0, result.output
    ignored = sum(e["type"] == "customer.created" for e in events if e not in delivered)
    processed = len(events) - len(delivered) - ignored
    assert result.stdout.splitlines()[0] == (
        f"listed {len(events)}, already stored {len(delivered)}, processed {processed}, "
        f"ignored {ignored}, failed 0"
    )
    assert db.ledger() == reference
    assert db.event(too_old["id"]) is None
    statuses = db.rows("SELECT status, count(*) AS n FROM stripe_events GROUP BY 1 ORDER BY 1")
    assert statuses == [
        {"status": "ignored", "n": 1},
        {"status": "processed", "n": len(events) - 1},
    ]
    for row in db.rows("SELECT id, attempts, processed_at FROM stripe_events"):
        if row["id"] in before and row["id"] != refund_event["id"]:
            assert row == before[row["id"]]  # not written again
    assert db.event(refund_event["id"])["attempts"] == 2  # type: ignore[index]
    caught_up = [e["id"] for e in events if e not in delivered]
    assert [i for i in stored_order(db) if i in caught_up] == caught_up
    pages = [r for r in fake.requests_to("/v1/events") if "ending_before" in r.query]
    assert len(pages) >= len(events) // fake.max_page
    assert high_water(db)["high_water"] == datetime.fromtimestamp(events[-1]["created"], UTC)

    again = run_roi("reconcile", database_url=db.url, env=api_env(fake))

    assert again.exit_code == 0, again.output
    at_mark = sum(e["created"] == events[-1]["created"] for e in events)
    assert again.stdout.splitlines()[0] == (
        f"listed {at_mark}, already stored {at_mark}, processed 0, ignored 0, failed 0"
    )

    # Stored events are not fed again: no fact row is even rewritten (xmin is unchanged).
    versions = db.rows("SELECT id, xmin::text AS v FROM charges ORDER BY id")
    everything = run_roi("reconcile", "--since", SINCE, database_url=db.url, env=api_env(fake))

    assert everything.stdout.splitlines()[0] == (
        f"listed {len(events)}, already stored {len(events)}, processed 0, ignored 0, failed 0"
    )
    assert db.rows("SELECT id, xmin::text AS v FROM charges ORDER BY id") == versions
    assert db.ledger() == reference


def test_when_stripe_keeps_nothing_before_since_the_walk_starts_at_its_oldest_event(
    webhook: WebhookClient, db: TestDatabase, fake: FakeStripe
) -> None:
    events, _ = history()
    until = T + 240  # the first two charges' events, not the third charge's
    kept = [e for e in events if e["created"] < until]
    reference = webhook_ledger(webhook, db, kept)
    fake.add_events(*events)
    fake.max_page = 2

    result = run_roi(
        "reconcile",
        "--since",
        "2024-02-01",
        "--until",
        datetime.fromtimestamp(until, UTC).isoformat(),
        database_url=db.url,
        env=api_env(fake),
    )

    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"listed {len(kept)}, already stored 0,")
    assert db.ledger() == reference
    assert stored_order(db) == [e["id"] for e in kept]
    # Bisecting 39 days of seconds: about log2(3.4M) one-event requests, not a full listing.
    assert len(fake.requests_to("/v1/events")) < 40


def test_catch_up_while_the_webhook_delivers_the_same_events(
    webhook: WebhookClient, db: TestDatabase, fake: FakeStripe
) -> None:
    events, _ = history(charges=10)
    reference = webhook_ledger(webhook, db, events)
    too_old = se.charge_succeeded(charge=se.charge(created=T - 7200), created=T - 7200)
    fake.add_events(too_old, *events)
    fake.max_page = 3
    fake.page_delay = 0.02
    # Requests: the starting cursor, pages 1 and 2 (booked by the catch-up alone), then page 3
    # waits until the webhook deliveries have started: from there both write the same events.
    fake.pause_events_request(4)
    outcome: dict[str, Any] = {}

    def catch_up() -> None:
        outcome["result"] = run_roi(
            "reconcile", "--since", SINCE, database_url=db.url, env=api_env(fake)
        )

    def deliver() -> None:
        # Newest first, from four threads: they meet the catch-up, which goes oldest first.
        outcome["statuses"] = webhook.deliver_concurrently(events[::-1], threads=4)

    reconciling = threading.Thread(target=catch_up)
    reconciling.start()
    assert fake.paused.wait(timeout=30)
    delivering = threading.Thread(target=deliver)
    delivering.start()
    fake.resume.set()
    delivering.join(timeout=60)
    reconciling.join(timeout=60)

    result, statuses = outcome["result"], outcome["statuses"]
    assert result.exit_code == 0, result.output
    assert db.ledger() == reference
    assert db.count("stripe_events") == len(events)
    assert db.scalar("SELECT max(attempts) FROM stripe_events") == 1  # each written once
    listed, stored, processed, ignored, failed = (
        int(part.split()[-1]) for part in result.stdout.splitlines()[0].split(", ")
    )
    assert (listed, failed) == (len(events), 0)
    webhook_wrote = sum(s != "duplicate" for s in statuses)
    assert processed + ignored == len(events) - webhook_wrote
    assert stored == webhook_wrote
    assert processed + ignored >= 2 * fake.max_page  # the pages booked before the webhook


def test_429_with_retry_after_and_500_are_retried_and_counted(
    webhook: WebhookClient, db: TestDatabase, fake: FakeStripe
) -> None:
    events, _ = history(charges=2)
    fake.add_events(*events)
    fake.fail("/v1/events", status=429, retry_after="1")
    fake.fail("/v1/events", status=500)
    retries = counter("roi_stripe_api_retries_total", operation="list_events")
    successes = counter("roi_stripe_api_calls_total", operation="list_events", outcome="success")

    result = run_roi("reconcile", "--since", SINCE, database_url=db.url, env=api_env(fake))

    assert result.exit_code == 0, result.output
    first, second, third = fake.requests_to("/v1/events")[:3]
    assert (first.status, second.status, third.status) == (429, 500, 200)
    assert second.at - first.at >= 1.0  # Retry-After honoured
    assert counter("roi_stripe_api_retries_total", operation="list_events") == retries + 2
    calls = len([r for r in fake.requests_to("/v1/events") if r.status == 200])
    assert (
        counter("roi_stripe_api_calls_total", operation="list_events", outcome="success")
        == successes + calls
    )
    assert db.count("stripe_events") == len(events)


def test_a_listing_that_gives_up_keeps_its_progress_and_the_next_run_continues(
    webhook: WebhookClient, db: TestDatabase, fake: FakeStripe
) -> None:
    events, _ = history()
    reference = webhook_ledger(webhook, db, events)
    too_old = se.charge_succeeded(charge=se.charge(created=T - 7200), created=T - 7200)
    fake.add_events(too_old, *events)
    fake.max_page = 4
    # The starting cursor and two pages go through, then Stripe fails past the bound.
    fake.fail("/v1/events", status=500, times=None, after=3)
    gave_up = counter("roi_stripe_api_calls_total", operation="list_events", outcome="gave_up")

    failed = run_roi(
        "reconcile", "--since", SINCE, database_url=db.url, env=api_env(fake, give_up=1.5)
    )

    assert failed.exit_code == 1
    assert "Stripe API list_events gave up after" in failed.stderr
    assert failed.stdout.startswith("listed 8, already stored 0, processed")
    assert db.count("stripe_events") == 8
    mark = high_water(db)
    assert mark["high_water"] == datetime.fromtimestamp(events[7]["created"], UTC)
    assert "HTTP 500" in mark["last_error"]
    assert (
        counter("roi_stripe_api_calls_total", operation="list_events", outcome="gave_up")
        == gave_up + 1
    )

    fake.heal()
    resumed = run_roi("reconcile", database_url=db.url, env=api_env(fake))

    assert resumed.exit_code == 0, resumed.output
    assert db.ledger() == reference
    assert db.count("stripe_events") == len(events)
    mark = high_water(db)
    assert mark["last_error"] is None
    assert mark["high_water"] == datetime.fromtimestamp(events[-1]["created"], UTC)


def test_without_since_or_a_previous_run_or_a_key_the_command_says_what_to_set(
    db: TestDatabase, fake: FakeStripe
) -> None:
    no_start = run_roi("reconcile", database_url=db.url, env=api_env(fake))
    assert no_start.exit_code == 1
    assert "--since" in no_start.output

    no_key = run_roi("reconcile", "--since", SINCE, database_url=db.url, env={"STRIPE_API_KEY": ""})
    assert no_key.exit_code == 1
    assert "STRIPE_API_KEY is not set" in no_key.output
    assert fake.requests == []

    wrong_key = run_roi(
        "reconcile",
        "--since",
        SINCE,
        database_url=db.url,
        env={**api_env(fake), "STRIPE_API_KEY": "sk_test_revoked"},
    )
    assert wrong_key.exit_code == 1
    assert "the Stripe API refused: AuthenticationError: HTTP 401" in wrong_key.output
    assert len(fake.requests) == 1  # not retried: it cannot get better


# ---------------------------------------------------------------------------------------------
# Fees


def settled(txn: str, charge: Obj, *, fee: int, amount: int | None = None) -> Obj:
    """The charge's balance transaction as the API returns it (settled in usd)."""
    return se.balance_transaction(
        id=txn,
        source=charge["id"],
        amount=amount if amount is not None else charge["amount"],
        fee=fee,
        created=charge["created"],
        type="charge",
        reporting_category="charge",
        fee_description="Stripe processing fees",
        exchange_rate=None if amount is None else 1.085,
    )


def fees_unknown(webhook: WebhookClient, db: TestDatabase, **params: str) -> int:
    """The metrics API's count, as an app with STRIPE_API_KEY reports it (the session app has
    none, so it reports null: checked here too)."""
    response = webhook.http.get("/api/metrics/streams", params={**PERIOD, **params})
    assert response.status_code == 200, response.text
    assert response.json()["trust"]["fees_unknown"] is None
    from app.api.metrics import streams_report
    from app.metrics.filters import build_filter

    f = build_filter(start=PERIOD["start"], end=PERIOD["end"], tz=PERIOD.get("tz", "UTC"),
                     streams=[params["stream"]] if "stream" in params else None)  # fmt: skip
    with db.engine.connect() as conn:
        count = streams_report(conn, f, "usd", count_unknown_fees=True).trust.fees_unknown
    assert count is not None
    return count


def test_fees_and_settlement_amounts_are_booked_from_fetched_balance_transactions(
    webhook: WebhookClient, db: TestDatabase, fake: FakeStripe
) -> None:
    in_eur = se.charge(amount=2000, currency="eur", created=T, metadata={"stream": "api"})
    in_usd = se.charge(amount=5000, created=T + 60, metadata={"stream": "app"})
    not_known_yet = se.charge(amount=700, created=T + 120)  # no charge.updated yet
    eur_txn, usd_txn = se.new_id("txn"), se.new_id("txn")
    webhook.deliver(
        se.charge_succeeded(charge=in_eur, created=T),
        se.charge_succeeded(charge=se.revise(in_usd, balance_transaction=usd_txn), created=T + 60),
        se.charge_updated(
            charge=se.revise(in_eur, balance_transaction=eur_txn),
            previous_attributes={"balance_transaction": None},
            created=T + 2,
        ),
        se.charge_succeeded(charge=not_known_yet, created=T + 120),
    )
    fake.add_balance_transactions(
        settled(eur_txn, in_eur, fee=93, amount=2170), settled(usd_txn, in_usd, fee=175)
    )
    assert fees_unknown(webhook, db) == 3

    result = run_roi("reconcile", "--fees", database_url=db.url, env=api_env(fake))

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "fees: 2 booked, 0 failed"
    assert fake.requests_to("/v1/events") == []  # --fees alone: only fees
    assert db.entries() == {
        in_eur["id"]: ("charge", "api", 2000, "eur"),
        eur_txn: ("fee", "api", -93, "usd"),
        in_usd["id"]: ("charge", "app", 5000, "usd"),
        usd_txn: ("fee", "app", -175, "usd"),
        not_known_yet["id"]: ("charge", "unattributed", 700, "usd"),
    }
    settlement = {
        r["entry_key"]: (r["settlement_amount"], r["settlement_currency"], r["booked_at"])
        for r in db.rows("SELECT * FROM ledger_entries")
    }
    at = datetime.fromtimestamp
    assert settlement[in_eur["id"]] == (2170, "usd", at(T, UTC))
    assert settlement[eur_txn] == (-93, "usd", at(T, UTC))  # booked with its charge
    assert settlement[in_usd["id"]] == (5000, "usd", at(T + 60, UTC))
    assert settlement[not_known_yet["id"]] == (None, None, at(T + 120, UTC))
    assert fees_unknown(webhook, db) == 1
    assert fees_unknown(webhook, db, stream="api") == 0

    again = run_roi("reconcile", "--fees", database_url=db.url, env=api_env(fake))

    assert again.stdout.strip() == "fees: 0 booked, 0 failed"
    assert len(fake.requests_to("/v1/balance_transactions")) == 2


def test_a_fee_fetch_that_gives_up_is_kept_and_retried_on_the_next_run(
    webhook: WebhookClient, db: TestDatabase, fake: FakeStripe, caplog: pytest.LogCaptureFixture
) -> None:
    first = se.charge(amount=1000, created=T, balance_transaction=se.new_id("txn"))
    second = se.charge(amount=3000, created=T + 60, balance_transaction=se.new_id("txn"))
    webhook.deliver(
        se.charge_succeeded(charge=first, created=T),
        se.charge_succeeded(charge=second, created=T + 60),
    )
    fake.add_balance_transactions(
        settled(first["balance_transaction"], first, fee=59),
        settled(second["balance_transaction"], second, fee=117),
    )
    fake.fail(f"/v1/balance_transactions/{first['balance_transaction']}", status=500, times=None)
    op = "retrieve_balance_transaction"
    retries = counter("roi_stripe_api_retries_total", operation=op)
    gave_up = counter("roi_stripe_api_calls_total", operation=op, outcome="gave_up")

    failed = run_roi("reconcile", "--fees", database_url=db.url, env=api_env(fake, give_up=1.5))

    assert failed.exit_code == 1
    assert failed.stdout.startswith("fees: 0 booked, 0 failed, gave up: Stripe API " + op)
    [log_line] = [
        r for r in caplog.records if r.levelno == logging.ERROR and "gave up" in r.getMessage()
    ]
    assert log_line.getMessage().startswith(f"Stripe API {op} gave up after ")
    assert "HTTP 500" in log_line.getMessage()
    assert log_line.getMessage().endswith("(bound ROI_STRIPE_GIVE_UP_SECONDS=1.5)")
    # The round stops at a give-up: Stripe is struggling, the rest waits for the next round.
    assert fake.requests_to(f"/v1/balance_transactions/{second['balance_transaction']}") == []
    kept = db.rows("SELECT * FROM stripe_fee_fetches")
    assert [(r["balance_transaction"], r["charge_id"], r["attempts"]) for r in kept] == [
        (first["balance_transaction"], first["id"], 1)
    ]
    assert "HTTP 500" in kept[0]["last_error"]
    assert counter("roi_stripe_api_retries_total", operation=op) > retries
    assert counter("roi_stripe_api_calls_total", operation=op, outcome="gave_up") == gave_up + 1
    assert fees_unknown(webhook, db) == 2

    fake.heal()
    result = run_roi("reconcile", "--fees", database_url=db.url, env=api_env(fake))

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "fees: 2 booked, 0 failed"
    assert db.count("stripe_fee_fetches") == 0
    fees = {k: v for k, v in db.entries().items() if v[0] == "fee"}
    assert fees == {
        first["balance_transaction"]: ("fee", "unattributed", -59, "usd"),
        second["balance_transaction"]: ("fee", "unattributed", -117, "usd"),
    }
    assert fees_unknown(webhook, db) == 0


def test_a_balance_transaction_stripe_does_not_have_waits_before_the_background_asks_again(
    webhook: WebhookClient, db: TestDatabase, fake: FakeStripe
) -> None:
    missing = se.charge(created=T, balance_transaction=se.new_id("txn"))
    webhook.deliver(se.charge_succeeded(charge=missing, created=T))
    settings = app_settings(
        db.url, stripe_api_key=API_KEY, stripe_api_base=fake.url, fee_fetch_interval_seconds=60
    )

    first = asyncio.run(fetch_fees(settings, everything=False))
    assert (first.booked, first.failed, first.gave_up) == (0, 1, None)
    row = db.rows(
        "SELECT attempts, last_error, next_attempt_at > now() AS waits FROM stripe_fee_fetches"
    )
    assert len(row) == 1 and row[0]["attempts"] == 1 and row[0]["waits"]
    assert "No such balance transaction" in row[0]["last_error"]

    background = asyncio.run(fetch_fees(settings, everything=False))
    assert (background.booked, background.failed) == (0, 0)
    assert len(fake.requests_to("/v1/balance_transactions")) == 1

    on_demand = asyncio.run(fetch_fees(settings, everything=True))  # roi reconcile --fees
    assert on_demand.failed == 1
    assert db.scalar("SELECT attempts FROM stripe_fee_fetches") == 2


def test_background_fee_fetching_runs_with_a_key_and_does_nothing_without_one(
    webhook: WebhookClient, db: TestDatabase, fake: FakeStripe
) -> None:
    ch = se.charge(amount=4000, created=T, balance_transaction=se.new_id("txn"))
    webhook.deliver(se.charge_succeeded(charge=ch, created=T))
    fake.add_balance_transactions(settled(ch["balance_transaction"], ch, fee=146))

    without_key = app_settings(db.url, stripe_api_base=fake.url, fee_fetch_interval_seconds=0.05)
    assert without_key.stripe_api_key == ""
    asyncio.run(asyncio.wait_for(fetch_fees_forever(without_key), timeout=5))  # returns at once
    assert fake.requests == []
    assert fees_unknown(webhook, db) == 1

    with_key = app_settings(
        db.url, stripe_api_key=API_KEY, stripe_api_base=fake.url, fee_fetch_interval_seconds=0.2
    )
    with LiveServer(create_app(with_key)):
        deadline = time.monotonic() + 20
        while db.count("balance_transactions") == 0 and time.monotonic() < deadline:
            time.sleep(0.05)

    assert db.entries()[ch["balance_transaction"]] == ("fee", "unattributed", -146, "usd")
    assert fees_unknown(webhook, db) == 0
