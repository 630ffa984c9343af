"""POST /webhooks/stripe over real HTTP: verification, what is kept, what is answered."""

from __future__ import annotations

import json
import socket
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from app.main import create_app
from ingest.stripe_webhook import MAX_BODY_BYTES
from tests import stripe_events as se
from tests.conftest import (
    AUTH,
    PRIMARY_SECRET,
    ROTATED_SECRET,
    LiveServer,
    TestDatabase,
    WebhookClient,
    app_settings,
)

T = 1_710_072_000  # 2024-03-10 12:00:00 UTC


def assert_nothing_stored(db: TestDatabase) -> None:
    assert db.count("stripe_events") == 0
    assert db.count("charges") == 0
    assert db.count("ledger_entries") == 0


# --- a delivered event is kept raw and booked --------------------------------------------------


def test_known_event_is_kept_raw_and_booked(webhook: WebhookClient, db: TestDatabase) -> None:
    ch = se.charge(amount=4200, created=T, metadata={"stream": "api"})
    event = se.charge_succeeded(charge=ch, created=T + 1)
    before = datetime.now(UTC)

    response = webhook.post(event)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"received": True, "id": event["id"], "status": "processed"}
    row = db.event(event["id"])
    assert row is not None
    assert row["payload"] == event  # JSONB, exactly what was posted
    assert row["type"] == "charge.succeeded"
    assert row["api_version"] == se.API_VERSION
    assert row["created"] == datetime.fromtimestamp(T + 1, UTC)
    assert row["livemode"] is False
    assert (row["status"], row["error"], row["attempts"]) == ("processed", None, 1)
    assert before - timedelta(seconds=5) <= row["received_at"] <= datetime.now(UTC)
    assert row["processed_at"] is not None
    assert db.entries() == {ch["id"]: ("charge", "api", 4200, "usd")}


def test_unhandled_type_is_kept_raw_as_ignored(webhook: WebhookClient, db: TestDatabase) -> None:
    event = se.customer_created(created=T)
    response = webhook.post(event)
    assert response.status_code == 200
    assert response.json()["status"] == "ignored"
    row = db.event(event["id"])
    assert row is not None
    assert (row["status"], row["type"], row["payload"]) == ("ignored", "customer.created", event)
    assert db.count("charges") == db.count("ledger_entries") == 0


def test_livemode_and_api_version_are_kept_as_sent(
    webhook: WebhookClient, db: TestDatabase
) -> None:
    event = se.event(
        type="customer.created", object=se.customer(), livemode=True, api_version="2025-03-31.basil"
    )
    webhook.deliver(event)
    row = db.event(event["id"])
    assert row is not None
    assert (row["livemode"], row["api_version"]) == (True, "2025-03-31.basil")


# --- signatures -------------------------------------------------------------------------------


def _expired(payload: str) -> str:
    return se.signature_header(payload, secret=PRIMARY_SECRET, timestamp=int(time.time()) - 301)


BAD_SIGNATURES = [
    # (case, header or how to make it from the payload, what the error must say)
    ("missing", None, "missing Stripe-Signature header"),
    ("empty", "", "missing Stripe-Signature header"),
    ("malformed", "this is not a signature", "Unable to extract timestamp and signatures"),
    ("no-v1", lambda p: f"t={int(time.time())},v0=abc", "expected scheme v1"),
    (
        "wrong-secret",
        lambda p: se.signature_header(p, secret="whsec_someone_else"),
        "No signatures found matching the expected signature",
    ),
    (
        "other-body",
        lambda p: se.signature_header(p + " ", secret=PRIMARY_SECRET),
        "No signatures found matching the expected signature",
    ),
    # Signed with a configured secret, but 301 s ago: the answer must say it is too old.
    ("expired", _expired, "Timestamp outside the tolerance zone"),
]


@pytest.mark.parametrize(
    ("case", "make_header", "says"), [pytest.param(*bad, id=bad[0]) for bad in BAD_SIGNATURES]
)
def test_bad_signature_is_400_saying_why_and_nothing_is_stored(
    webhook: WebhookClient, db: TestDatabase, case: str, make_header: object, says: str
) -> None:
    payload = se.encode(se.charge_succeeded(charge=se.charge(created=T), created=T))
    header = make_header(payload) if callable(make_header) else make_header

    response = webhook.post_body(payload, signature=header)

    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    assert_nothing_stored(db)
    error = response.json()["error"]
    assert error.startswith(("invalid Stripe-Signature header", "missing Stripe-Signature"))
    assert says in error


def test_signature_within_the_tolerance_is_accepted(
    webhook: WebhookClient, db: TestDatabase
) -> None:
    event = se.charge_succeeded(charge=se.charge(created=T), created=T)
    response = webhook.post(event, timestamp=int(time.time()) - 240)
    assert response.status_code == 200
    assert db.event(event["id"]) is not None


@pytest.mark.parametrize("secret", [PRIMARY_SECRET, ROTATED_SECRET])
def test_either_configured_secret_is_accepted(
    webhook: WebhookClient, db: TestDatabase, secret: str
) -> None:
    event = se.charge_succeeded(charge=se.charge(created=T), created=T)
    response = webhook.post(event, secret=secret)
    assert response.status_code == 200
    assert response.json()["status"] == "processed"


def test_header_with_several_signatures_is_accepted_when_one_matches(
    webhook: WebhookClient, db: TestDatabase
) -> None:
    """While a secret is rolled, Stripe signs with the old and the new secret."""
    event = se.charge_succeeded(charge=se.charge(created=T), created=T)
    payload = se.encode(event)
    stamp = int(time.time())
    unknown = se.signature_header(payload, secret="whsec_retired", timestamp=stamp)
    known = se.signature_header(payload, secret=ROTATED_SECRET, timestamp=stamp)
    header = f"{unknown},{known.split(',', 1)[1]}"  # t=...,v1=<unknown>,v1=<known>
    response = webhook.post_body(payload, signature=header)
    assert response.status_code == 200
    assert db.event(event["id"]) is not None


def test_no_secret_configured_is_503(db: TestDatabase) -> None:
    app = create_app(app_settings(db.url, stripe_webhook_secret=" , "))
    event = se.charge_succeeded(charge=se.charge(created=T), created=T)
    with LiveServer(app) as server:
        client = WebhookClient(server.url)
        try:
            response = client.post(event)
        finally:
            client.close()
    assert response.status_code == 503
    assert "webhook secret not configured" in response.json()["error"]
    assert_nothing_stored(db)


# --- bodies that can never be an event ---------------------------------------------------------


def _padded_event(size: int) -> str:
    """A valid event whose JSON body is exactly `size` bytes."""
    event = se.charge_succeeded(charge=se.charge(created=T, metadata={"note": ""}), created=T)
    payload = se.encode(event)
    event["data"]["object"]["metadata"]["note"] = "x" * (size - len(payload.encode()))
    payload = se.encode(event)
    assert len(payload.encode()) == size
    return payload


def test_body_of_exactly_1_mib_is_accepted(webhook: WebhookClient, db: TestDatabase) -> None:
    payload = _padded_event(MAX_BODY_BYTES)
    header = se.signature_header(payload, secret=PRIMARY_SECRET)
    response = webhook.post_body(payload, signature=header)
    assert response.status_code == 200, response.text
    assert db.count("stripe_events") == 1


def test_body_over_1_mib_is_413(webhook: WebhookClient, db: TestDatabase) -> None:
    payload = _padded_event(MAX_BODY_BYTES + 1)
    header = se.signature_header(payload, secret=PRIMARY_SECRET)
    response = webhook.post_body(payload, signature=header)
    assert response.status_code == 413
    assert "exceeds" in response.json()["error"]
    assert_nothing_stored(db)


def test_chunked_body_over_1_mib_is_413(webhook: WebhookClient, db: TestDatabase) -> None:
    """Without a Content-Length, the size is checked while reading."""
    payload = _padded_event(MAX_BODY_BYTES + 10).encode()
    header = se.signature_header(payload.decode(), secret=PRIMARY_SECRET)

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(payload), 64 * 1024):
            yield payload[i : i + 64 * 1024]

    response = webhook.http.post(
        "/webhooks/stripe",
        content=chunks(),
        headers={"Content-Type": "application/json", "Stripe-Signature": header},
    )
    assert response.status_code == 413
    assert_nothing_stored(db)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"id": "evt_1", "object": "event",', "not valid JSON"),
        ("[]", "not a Stripe event"),
        ('{"id": "ch_1", "object": "charge", "amount": 100}', "object must be 'event'"),
        ('{"object": "event", "id": 17, "type": "charge.succeeded", "created": 1, '
         '"data": {"object": {}}}', "id must be a str"),
        ('{"object": "event", "id": "evt_1", "type": "charge.succeeded", "created": true, '
         '"data": {"object": {}}}', "created must be a int"),
        ('{"object": "event", "id": "evt_1", "type": "charge.succeeded", "created": 1, '
         '"data": {}}', "data.object must be an object"),
    ],
)  # fmt: skip
def test_signed_body_that_is_not_an_event_is_400(
    webhook: WebhookClient, db: TestDatabase, body: str, message: str
) -> None:
    response = webhook.post_body(body, signature=se.signature_header(body, secret=PRIMARY_SECRET))
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert_nothing_stored(db)


def test_body_that_is_not_utf8_is_400(webhook: WebhookClient, db: TestDatabase) -> None:
    body = b'{"id": "evt_\xff", "object": "event"}'
    response = webhook.post_body(body, signature=f"t={int(time.time())},v1=00")
    assert response.status_code == 400
    assert response.json()["error"] == "body is not UTF-8"
    assert_nothing_stored(db)


# --- duplicates -------------------------------------------------------------------------------


def test_duplicate_deliveries_are_counted_once(webhook: WebhookClient, db: TestDatabase) -> None:
    ch = se.charge(amount=1500, created=T)
    event = se.charge_succeeded(charge=ch, created=T)

    assert webhook.deliver(event, event, event) == ["processed", "duplicate", "duplicate"]

    row = db.event(event["id"])
    assert row is not None
    assert (row["status"], row["attempts"]) == ("processed", 1)
    assert db.entries() == {ch["id"]: ("charge", "unattributed", 1500, "usd")}


def test_ignored_duplicates_are_answered_200(webhook: WebhookClient, db: TestDatabase) -> None:
    event = se.customer_created(created=T)
    assert webhook.deliver(event, event) == ["ignored", "duplicate"]
    assert db.count("stripe_events") == 1


def test_concurrent_duplicates_are_all_200_and_counted_once(
    webhook: WebhookClient, db: TestDatabase
) -> None:
    threads = 16
    ch = se.charge(amount=1700, created=T, metadata={"stream": "api"})
    event = se.charge_succeeded(charge=ch, created=T)

    outcomes = webhook.deliver_concurrently([event] * threads, threads=threads)

    assert Counter(outcomes) == {"processed": 1, "duplicate": threads - 1}
    assert db.count("stripe_events") == 1
    assert db.event(event["id"])["attempts"] == 1  # type: ignore[index]
    assert db.entries() == {ch["id"]: ("charge", "api", 1700, "usd")}


# --- processing failures ----------------------------------------------------------------------


def test_event_that_fails_is_kept_with_its_error_and_processed_on_redelivery(
    webhook: WebhookClient, db: TestDatabase
) -> None:
    ch = se.charge(amount=2000, created=T)
    webhook.deliver(se.charge_succeeded(charge=ch, created=T))
    re = se.refund(charge=ch["id"], amount=800, created=T + 60)
    event = se.refund_created(refund=re, created=T + 60)

    with db.failing_refunds() as message:
        response = webhook.post(event)
        assert response.status_code == 500
        assert response.json()["id"] == event["id"]
        assert "kept" in response.json()["error"]
        row = db.event(event["id"])
        assert row is not None
        assert (row["status"], row["attempts"], row["payload"]) == ("failed", 1, event)
        assert message in row["error"]
        assert db.count("refunds") == 0
        assert db.entries() == {ch["id"]: ("charge", "unattributed", 2000, "usd")}

        again = webhook.post(event)  # Stripe retries while the cause is still there
        assert again.status_code == 500
        assert db.event(event["id"])["attempts"] == 2  # type: ignore[index]

    # The cause is fixed; Stripe's next retry goes through.
    response = webhook.post(event)
    assert response.status_code == 200
    assert response.json()["status"] == "processed"
    row = db.event(event["id"])
    assert row is not None
    assert (row["status"], row["error"], row["attempts"]) == ("processed", None, 3)
    assert db.entries() == {
        ch["id"]: ("charge", "unattributed", 2000, "usd"),
        re["id"]: ("refund", "unattributed", -800, "usd"),
    }
    assert webhook.post(event).json()["status"] == "duplicate"


def test_failing_event_does_not_fail_its_neighbours(
    webhook: WebhookClient, db: TestDatabase
) -> None:
    """Events written in the same group-commit batch as a failing one are still booked."""
    charges = [se.charge(amount=100 + i, created=T) for i in range(12)]
    good = [se.charge_succeeded(charge=ch, created=T) for ch in charges]
    bad_refund = se.refund(id="re_frozen00000000000000001", charge=charges[0]["id"], amount=1)
    bad = se.refund_created(refund=bad_refund, created=T + 1)

    with db.failing_refunds(refund_id=bad_refund["id"]):
        payloads = [(e["id"], se.encode(e)) for e in [*good, bad]]
        with httpx.Client(base_url=webhook.base_url, timeout=60) as http:

            def post(item: tuple[str, str]) -> tuple[str, int]:
                event_id, payload = item
                header = se.signature_header(payload, secret=PRIMARY_SECRET)
                response = http.post(
                    "/webhooks/stripe",
                    content=payload.encode(),
                    headers={"Stripe-Signature": header, "Content-Type": "application/json"},
                )
                return event_id, response.status_code

            with ThreadPoolExecutor(max_workers=len(payloads)) as pool:
                statuses = dict(pool.map(post, payloads))

    assert statuses == {**{e["id"]: 200 for e in good}, bad["id"]: 500}
    assert db.scalar("SELECT count(*) FROM stripe_events WHERE status = 'processed'") == 12
    assert db.event(bad["id"])["status"] == "failed"  # type: ignore[index]
    assert {k: v[2] for k, v in db.entries().items()} == {ch["id"]: ch["amount"] for ch in charges}


def test_handled_event_missing_a_field_is_500_and_kept_with_the_field_named(
    webhook: WebhookClient, db: TestDatabase
) -> None:
    event = se.charge_succeeded(charge=se.charge(created=T), created=T)
    del event["data"]["object"]["amount"]

    response = webhook.post(event)

    assert response.status_code == 500
    row = db.event(event["id"])
    assert row is not None
    assert row["status"] == "failed"
    assert row["error"] == "data.object.amount: expected an integer"
    assert row["payload"] == event
    assert db.count("charges") == 0
    assert webhook.post(event).status_code == 500
    assert db.event(event["id"])["attempts"] == 2  # type: ignore[index]


def test_event_with_a_nul_character_is_kept_and_booked(
    webhook: WebhookClient, db: TestDatabase
) -> None:
    """JSON allows "\u0000" in a string (here, a customer-typed name); PostgreSQL's jsonb does
    not. The NUL is stored as U+FFFD, everything else exactly as sent, and the charge booked."""
    ch = se.charge(amount=1500, created=T, metadata={"stream": "api"})
    ch["billing_details"]["name"] = "Jenny\u0000Rosen"
    event = se.charge_succeeded(charge=ch, created=T)

    response = webhook.post(event)

    assert response.status_code == 200, response.text
    row = db.event(event["id"])
    assert row is not None and row["status"] == "processed"
    assert row["payload"]["data"]["object"]["billing_details"]["name"] == "Jenny\ufffdRosen"
    assert db.entries() == {ch["id"]: ("charge", "api", 1500, "usd")}


# --- the database is unreachable -------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def unreachable_db_server() -> Iterator[LiveServer]:
    url = f"postgresql://postgres@127.0.0.1:{_closed_port()}/roi"
    app = create_app(app_settings(url, db_timeout_seconds=0.5), check_schema=False)
    with LiveServer(app) as server:
        yield server


def test_database_unreachable_is_503_quickly(unreachable_db_server: LiveServer) -> None:
    client = WebhookClient(unreachable_db_server.url)
    try:
        event = se.charge_succeeded(charge=se.charge(created=T), created=T)
        started = time.monotonic()
        response = client.post(event)
        elapsed = time.monotonic() - started
    finally:
        client.close()
    assert response.status_code == 503
    assert response.json() == {"error": "database unavailable, retry later", "id": event["id"]}
    assert elapsed < 5, f"took {elapsed:.1f} s"


def test_api_with_database_unreachable_is_503(unreachable_db_server: LiveServer) -> None:
    started = time.monotonic()
    response = httpx.get(
        f"{unreachable_db_server.url}/api/ledger/totals",
        params={"start": "2024-03-01", "end": "2024-04-01"},
        headers=AUTH,  # checking the token already needs the database
        timeout=30,
    )
    assert response.status_code == 503
    assert response.json() == {"error": "database unavailable"}
    assert time.monotonic() - started < 5


def test_other_methods_are_405(session_webhook: WebhookClient) -> None:
    response = session_webhook.http.get("/webhooks/stripe")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


def test_healthz(session_webhook: WebhookClient) -> None:
    response = session_webhook.http.get("/healthz")
    assert response.status_code == 200
    assert json.loads(response.text) == {"status": "ok"}
