"""The revenue rules of accounting.md, checked on the ledger the real app books from signed
events posted over HTTP (app/ledger/store.py, through ingest/stripe_webhook.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from tests import stripe_events as se
from tests.conftest import TestDatabase, WebhookClient

T = 1_710_072_000  # 2024-03-10 12:00:00 UTC
DAY = 86_400


def at(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def booked_at(db: TestDatabase, entry_key: str) -> datetime:
    return db.scalar("SELECT booked_at FROM ledger_entries WHERE entry_key = :k", k=entry_key)


def totals(webhook: WebhookClient, *, start: str = "2024-03-01", end: str = "2024-05-01") -> dict:
    response = webhook.totals(start=start, end=end)
    assert response.status_code == 200, response.text
    return {(row["stream"], row["currency"]): row for row in response.json()["totals"]}


# --- charges ----------------------------------------------------------------------------------


@pytest.mark.parametrize("pointers_first", [False, True], ids=["charge-first", "pointers-first"])
def test_captured_amount_counts_once_however_many_events_announce_the_charge(
    webhook: WebhookClient, db: TestDatabase, pointers_first: bool
) -> None:
    ch_id, pi_id, in_id = se.new_id("ch"), se.new_id("pi"), se.new_id("in")
    ch = se.charge(
        id=ch_id, amount=2500, created=T, payment_intent=pi_id, invoice=in_id, customer="cus_roi1"
    )
    charge_events = [
        se.charge_succeeded(charge=ch, created=T),
        se.charge_updated(
            charge=se.revise(ch, balance_transaction="txn_roi1"),
            previous_attributes={"balance_transaction": None},
            created=T + 2,
        ),
    ]
    pointer_events = [
        se.payment_intent_succeeded(
            payment_intent=se.payment_intent(
                id=pi_id, amount=2500, latest_charge=ch_id, invoice=in_id
            ),
            created=T + 1,
        ),
        se.invoice_paid(
            invoice=se.invoice(id=in_id, charge=ch_id, payment_intent=pi_id, amount_paid=2500),
            created=T + 1,
        ),
        se.invoice_paid(  # Stripe also sends invoice.payment_succeeded for the same payment
            invoice=se.invoice(id=in_id, charge=ch_id, payment_intent=pi_id, amount_paid=2500),
            created=T + 1,
        )
        | {"type": "invoice.payment_succeeded"},
        se.checkout_session_completed(
            session=se.checkout_session(payment_intent=pi_id, amount_total=2500), created=T + 1
        ),
    ]
    events = pointer_events + charge_events if pointers_first else charge_events + pointer_events

    assert webhook.deliver(*events) == ["processed"] * len(events)

    assert db.entries() == {ch_id: ("charge", "unattributed", 2500, "usd")}
    assert booked_at(db, ch_id) == at(T)
    (row,) = totals(webhook).values()
    assert (row["gross"], row["net"]) == (2500, 2500)


def test_charge_updated_brings_the_balance_transaction_and_newer_metadata(
    webhook: WebhookClient, db: TestDatabase
) -> None:
    ch = se.charge(amount=2000, created=T, balance_transaction=None, metadata={"stream": "trial"})
    updated = se.revise(ch, balance_transaction="txn_1PqR", metadata={"stream": "pro"})
    succeeded = se.charge_succeeded(charge=ch, created=T)
    update = se.charge_updated(
        charge=updated,
        previous_attributes={"balance_transaction": None, "metadata": {"stream": "trial"}},
        created=T + 30,
    )
    late = se.charge_succeeded(charge=ch, created=T - 1)  # an older view, arriving last
    webhook.deliver(succeeded, update, late)

    assert db.entries() == {ch["id"]: ("charge", "pro", 2000, "usd")}
    (entry,) = db.ledger()
    assert entry["balance_transaction"] == "txn_1PqR"
    # The entry names the smallest id of the events that announced the charge.
    assert entry["event_id"] == min(succeeded["id"], update["id"], late["id"])


def test_uncaptured_charge_is_revenue_only_once_captured(
    webhook: WebhookClient, db: TestDatabase
) -> None:
    auth = se.charge(amount=4000, captured=False, created=T)
    webhook.deliver(se.charge_succeeded(charge=auth, created=T))
    assert db.entries() == {}

    captured = se.revise(auth, captured=True, amount_captured=4000, balance_transaction="txn_c")
    webhook.deliver(se.charge_captured(charge=captured, created=T + 3600))
    assert db.entries() == {auth["id"]: ("charge", "unattributed", 4000, "usd")}
    assert booked_at(db, auth["id"]) == at(T)  # booked at the charge's created


def test_failed_and_pending_charges_are_not_revenue(
    webhook: WebhookClient, db: TestDatabase
) -> None:
    failed = se.charge(status="failed", captured=False, created=T)
    pending = se.charge(status="pending", created=T)  # e.g. ACH debit, not settled yet
    webhook.deliver(
        se.charge_failed(charge=failed, created=T),
        se.charge_pending(charge=pending, created=T),
    )
    assert db.count("charges") == 2
    assert db.entries() == {}

    webhook.deliver(se.charge_succeeded(charge=se.revise(pending, status="succeeded"), created=T))
    assert db.entries() == {pending["id"]: ("charge", "unattributed", 2000, "usd")}


@pytest.mark.parametrize("release_event", ["charge.expired", "charge.refunded"])
def test_released_authorization_books_nothing(
    webhook: WebhookClient, db: TestDatabase, release_event: str
) -> None:
    """An authorization that expires, or whose payment intent is canceled, is never captured:
    Stripe marks the charge refunded (amount_refunded = amount) though no money moved. It is
    neither revenue nor a refund."""
    auth = se.charge(amount=5000, captured=False, created=T)
    released = se.revise(auth, amount_refunded=5000, refunded=True)
    webhook.deliver(
        se.charge_succeeded(charge=auth, created=T),
        se.event(
            type=release_event,
            object=released,
            created=T + 7 * DAY,
            previous_attributes={"amount_refunded": 0, "refunded": False},
        ),
    )
    assert db.entries() == {}


def test_partial_capture_releases_the_rest_without_booking_a_refund(
    webhook: WebhookClient, db: TestDatabase
) -> None:
    """Capturing 30.00 of a 50.00 authorization releases 20.00, which Stripe reports in
    amount_refunded. Revenue is the 30.00 captured; a later 5.00 refund is the only refund."""
    auth = se.charge(amount=5000, captured=False, created=T)
    captured = se.revise(auth, captured=True, amount_captured=3000, amount_refunded=2000)
    webhook.deliver(
        se.charge_succeeded(charge=auth, created=T),
        se.charge_captured(charge=captured, created=T + 600),
    )
    assert db.entries() == {auth["id"]: ("charge", "unattributed", 3000, "usd")}

    re = se.refund(charge=auth["id"], amount=500, created=T + DAY)
    webhook.deliver(
        se.charge_refunded(
            charge=se.revise(captured, amount_refunded=2500),
            previous_amount_refunded=2000,
            created=T + DAY,
        ),
        se.refund_created(refund=re, created=T + DAY),
    )
    assert db.entries() == {
        auth["id"]: ("charge", "unattributed", 3000, "usd"),
        re["id"]: ("refund", "unattributed", -500, "usd"),
    }


# --- refunds ----------------------------------------------------------------------------------


def test_refund_seen_only_as_amount_refunded_is_booked_then_replaced_by_its_refund(
    webhook: WebhookClient, db: TestDatabase
) -> None:
    ch = se.charge(amount=3000, created=T, metadata={"stream": "api"})
    ch_id = ch["id"]
    webhook.deliver(se.charge_succeeded(charge=ch, created=T))

    webhook.deliver(se.charge_refunded(charge=se.revise(ch, amount_refunded=1000), created=T + 100))
    assert db.entries() == {
        ch_id: ("charge", "api", 3000, "usd"),
        f"{ch_id}:refunded": ("refund", "api", -1000, "usd"),
    }
    assert booked_at(db, f"{ch_id}:refunded") == at(T + 100)

    re1 = se.refund(charge=ch_id, amount=1000, created=T + 99)
    webhook.deliver(se.refund_created(refund=re1, created=T + 100))
    assert db.entries() == {  # replaced, not added to
        ch_id: ("charge", "api", 3000, "usd"),
        re1["id"]: ("refund", "api", -1000, "usd"),
    }
    assert booked_at(db, re1["id"]) == at(T + 99)

    # A second refund, known only through the cumulative amount so far.
    webhook.deliver(
        se.charge_refunded(
            charge=se.revise(ch, amount_refunded=1800),
            previous_amount_refunded=1000,
            created=T + 200,
        )
    )
    assert db.entries() == {
        ch_id: ("charge", "api", 3000, "usd"),
        re1["id"]: ("refund", "api", -1000, "usd"),
        f"{ch_id}:refunded": ("refund", "api", -800, "usd"),
    }
    row = totals(webhook)[("api", "usd")]
    assert (row["gross"], row["refunds"], row["net"]) == (3000, -1800, 1200)

    # An older charge.refunded arriving late does not lower what is known.
    webhook.deliver(se.charge_refunded(charge=se.revise(ch, amount_refunded=1000), created=T + 100))
    assert totals(webhook)[("api", "usd")]["refunds"] == -1800


def test_charge_refunded_with_embedded_refunds_list_books_each_refund_once(
    webhook: WebhookClient, db: TestDatabase
) -> None:
    ch = se.charge(amount=5000, created=T)
    ch_id = ch["id"]
    r1 = se.refund(charge=ch_id, amount=500, created=T + 10)
    r2 = se.refund(charge=ch_id, amount=1000, created=T + 20)
    refunded = se.revise(ch, amount_refunded=1500)
    refunded["refunds"] = {
        "object": "list",
        "data": [r1, r2],
        "has_more": False,
        "total_count": 2,
        "url": f"/v1/charges/{ch_id}/refunds",
    }
    webhook.deliver(
        se.charge_succeeded(charge=ch, created=T),
        se.event(
            type="charge.refunded",
            object=refunded,
            created=T + 20,
            api_version="2020-08-27",
            previous_attributes={"amount_refunded": 500},
        ),
        se.refund_updated(refund=r2, created=T + 21),  # the same refund again, on its own
    )
    assert db.entries() == {
        ch_id: ("charge", "unattributed", 5000, "usd"),
        r1["id"]: ("refund", "unattributed", -500, "usd"),
        r2["id"]: ("refund", "unattributed", -1000, "usd"),
    }


def test_refund_arriving_before_its_charge_follows_the_charge_once_it_arrives(
    webhook: WebhookClient, db: TestDatabase
) -> None:
    ch_id = se.new_id("ch")
    re = se.refund(charge=ch_id, amount=700, created=T + 50)
    webhook.deliver(se.refund_created(refund=re, created=T + 50))
    assert db.entries() == {re["id"]: ("refund", "unattributed", -700, "usd")}

    ch = se.charge(id=ch_id, amount=2000, created=T, metadata={"stream": "api"})
    webhook.deliver(se.charge_succeeded(charge=ch, created=T))
    assert db.entries() == {
        ch_id: ("charge", "api", 2000, "usd"),
        re["id"]: ("refund", "api", -700, "usd"),
    }


@pytest.mark.parametrize(
    ("event_type", "status"),
    [
        ("refund.failed", "failed"),
        ("refund.updated", "canceled"),
        ("charge.refund.updated", "failed"),
    ],
)
@pytest.mark.parametrize("failure_first", [False, True], ids=["in-order", "failure-first"])
def test_failed_or_canceled_refund_is_reversed(
    webhook: WebhookClient, db: TestDatabase, event_type: str, status: str, failure_first: bool
) -> None:
    ch = se.charge(amount=2000, created=T, metadata={"stream": "api"})
    re = se.refund(charge=ch["id"], amount=600, created=T + 100)
    created = se.refund_created(refund=re, created=T + 100)
    failure = se.refund_updated(
        refund=se.revise(re, status=status),
        created=T + 500,
        type=event_type,
        previous_attributes={"status": "succeeded"},
    )
    refund_events = [failure, created] if failure_first else [created, failure]
    webhook.deliver(se.charge_succeeded(charge=ch, created=T), *refund_events)

    assert db.entries() == {
        ch["id"]: ("charge", "api", 2000, "usd"),
        re["id"]: ("refund", "api", -600, "usd"),
        f"{re['id']}:reversal": ("refund", "api", 600, "usd"),
    }
    assert booked_at(db, f"{re['id']}:reversal") == at(T + 500)
    row = totals(webhook)[("api", "usd")]
    assert (row["refunds"], row["net"]) == (0, 2000)


# --- disputes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("final_type", "final_status"),
    [("charge.dispute.funds_reinstated", "under_review"), ("charge.dispute.closed", "won")],
)
def test_dispute_withdrawn_then_reinstated_nets_to_zero_and_its_fee_stays(
    webhook: WebhookClient, db: TestDatabase, final_type: str, final_status: str
) -> None:
    ch = se.charge(amount=5000, created=T, metadata={"stream": "api"})
    dp_id = se.new_id("dp")
    out = se.dispute_withdrawal(dispute_id=dp_id, amount=5000, fee=1500, created=T + 1000)
    out["exchange_rate"] = 1.083412  # settled from another currency
    dp = se.dispute(
        id=dp_id, charge=ch["id"], amount=5000, created=T + 1000, balance_transactions=[out]
    )
    webhook.deliver(
        se.charge_succeeded(charge=ch, created=T),
        se.dispute_event(type="charge.dispute.created", dispute=dp, created=T + 1000),
        se.dispute_event(type="charge.dispute.funds_withdrawn", dispute=dp, created=T + 1000),
    )
    assert db.entries() == {
        ch["id"]: ("charge", "api", 5000, "usd"),
        dp_id: ("dispute", "api", -5000, "usd"),
        out["id"]: ("fee", "api", -1500, "usd"),
    }
    assert booked_at(db, dp_id) == at(T + 1000)
    rate = db.scalar("SELECT exchange_rate FROM balance_transactions WHERE id = :id", id=out["id"])
    assert rate == Decimal("1.083412")  # exact, never a float

    back = se.dispute_reinstatement(dispute_id=dp_id, amount=5000, created=T + 9 * DAY)
    won = se.revise(dp, status=final_status, balance_transactions=[out, back])
    webhook.deliver(se.dispute_event(type=final_type, dispute=won, created=T + 9 * DAY))

    assert db.entries() == {
        ch["id"]: ("charge", "api", 5000, "usd"),
        dp_id: ("dispute", "api", -5000, "usd"),
        f"{dp_id}:reinstated": ("dispute", "api", 5000, "usd"),
        out["id"]: ("fee", "api", -1500, "usd"),
    }
    assert booked_at(db, f"{dp_id}:reinstated") == at(T + 9 * DAY)
    row = totals(webhook)[("api", "usd")]
    assert (row["gross"], row["disputes"], row["fees"], row["net"]) == (5000, 0, -1500, 5000)


def test_dispute_lost_keeps_the_withdrawal_and_the_fee(
    webhook: WebhookClient, db: TestDatabase
) -> None:
    ch = se.charge(amount=5000, created=T)
    dp_id = se.new_id("dp")
    out = se.dispute_withdrawal(dispute_id=dp_id, amount=5000, fee=1500, created=T + 1000)
    dp = se.dispute(
        id=dp_id, charge=ch["id"], amount=5000, created=T + 1000, balance_transactions=[out]
    )
    webhook.deliver(
        se.charge_succeeded(charge=ch, created=T),
        se.dispute_event(type="charge.dispute.created", dispute=dp, created=T + 1000),
        se.dispute_event(
            type="charge.dispute.closed", dispute=se.revise(dp, status="lost"), created=T + 20 * DAY
        ),
    )
    row = totals(webhook)[("unattributed", "usd")]
    assert (row["gross"], row["disputes"], row["fees"], row["net"]) == (5000, -5000, -1500, 0)


def test_inquiry_books_nothing(webhook: WebhookClient, db: TestDatabase) -> None:
    ch = se.charge(amount=5000, created=T)
    inquiry = se.dispute(charge=ch["id"], status="warning_needs_response", created=T + 100)
    webhook.deliver(
        se.charge_succeeded(charge=ch, created=T),
        se.dispute_event(type="charge.dispute.created", dispute=inquiry, created=T + 100),
    )
    assert db.entries() == {ch["id"]: ("charge", "unattributed", 5000, "usd")}


def test_dispute_before_its_charge_takes_the_charge_stream(
    webhook: WebhookClient, db: TestDatabase
) -> None:
    ch_id, dp_id = se.new_id("ch"), se.new_id("dp")
    out = se.dispute_withdrawal(dispute_id=dp_id, amount=900, fee=1500, created=T + 50)
    dp = se.dispute(id=dp_id, charge=ch_id, amount=900, created=T + 50, balance_transactions=[out])
    webhook.deliver(se.dispute_event(type="charge.dispute.created", dispute=dp, created=T + 50))
    assert {k: v[1] for k, v in db.entries().items()} == {
        dp_id: "unattributed",
        out["id"]: "unattributed",
    }
    webhook.deliver(
        se.charge_succeeded(
            charge=se.charge(id=ch_id, amount=900, created=T, metadata={"stream": "agents"}),
            created=T,
        )
    )
    assert db.entries() == {
        ch_id: ("charge", "agents", 900, "usd"),
        dp_id: ("dispute", "agents", -900, "usd"),
        out["id"]: ("fee", "agents", -1500, "usd"),
    }


# --- currencies -------------------------------------------------------------------------------


def test_zero_and_three_decimal_currencies_stay_integer_minor_units(
    webhook: WebhookClient, db: TestDatabase
) -> None:
    yen = se.charge(amount=5000, currency="jpy", created=T, metadata={"stream": "jp"})  # ¥5,000
    dinar = se.charge(amount=12345, currency="KWD", created=T, metadata={"stream": "kw"})
    yen_refund = se.refund(charge=yen["id"], amount=1001, currency="jpy", created=T + 1)
    dinar_refund = se.refund(charge=dinar["id"], amount=2345, currency="kwd", created=T + 1)
    webhook.deliver(
        se.charge_succeeded(charge=yen, created=T),
        se.charge_succeeded(charge=dinar, created=T),
        se.refund_created(refund=yen_refund, created=T + 1),
        se.refund_created(refund=dinar_refund, created=T + 1),
    )
    assert db.entries() == {
        yen["id"]: ("charge", "jp", 5000, "jpy"),
        yen_refund["id"]: ("refund", "jp", -1001, "jpy"),
        dinar["id"]: ("charge", "kw", 12345, "kwd"),
        dinar_refund["id"]: ("refund", "kw", -2345, "kwd"),
    }
    by_key = totals(webhook)
    assert by_key[("jp", "jpy")] == {
        "stream": "jp",
        "currency": "jpy",
        "exponent": 0,
        "gross": 5000,
        "refunds": -1001,
        "disputes": 0,
        "fees": 0,
        "net": 3999,
    }
    assert by_key[("kw", "kwd")] == {
        "stream": "kw",
        "currency": "kwd",
        "exponent": 3,
        "gross": 12345,
        "refunds": -2345,
        "disputes": 0,
        "fees": 0,
        "net": 10000,
    }
    for row in by_key.values():
        for key in ("gross", "refunds", "disputes", "fees", "net"):
            assert type(row[key]) is int  # never a float or a scaled decimal


# --- stream attribution -----------------------------------------------------------------------

# Every source of a stream, strongest first (accounting.md, "Stream attribution").
ATTRIBUTION_ORDER = [
    "charge",
    "payment_intent",
    "invoice",
    "checkout_session",
    "subscription",
    "price",
    "product",
    "price_mapping",
    "product_mapping",
    "customer_mapping",
    "unattributed",
]


@pytest.mark.parametrize("winner", ATTRIBUTION_ORDER)
def test_stream_comes_from_the_strongest_source_present(
    webhook: WebhookClient, db: TestDatabase, winner: str
) -> None:
    """Every source from `winner` down names a stream of its own; `winner` must decide, and the
    charge's refund, dispute and dispute fee must follow it."""
    present = set(ATTRIBUTION_ORDER[ATTRIBUTION_ORDER.index(winner) :])

    def meta(source: str) -> dict[str, str]:
        return {"stream": source} if source in present else {}

    ch_id, pi_id, in_id, sub_id = (se.new_id(p) for p in ("ch", "pi", "in", "sub"))
    cus_id, price_id, prod_id, dp_id = (se.new_id(p) for p in ("cus", "price", "prod", "dp"))
    for source, stripe_id in [
        ("price_mapping", price_id),
        ("product_mapping", prod_id),
        ("customer_mapping", cus_id),
    ]:
        if source in present:
            db.map_stream(stripe_id, source)

    ch = se.charge(
        id=ch_id,
        amount=2900,
        created=T,
        payment_intent=pi_id,
        invoice=in_id,
        customer=cus_id,
        metadata=meta("charge"),
    )
    price = se.price(
        id=price_id,
        unit_amount=2900,
        product=se.product(id=prod_id, metadata=meta("product")),
        metadata=meta("price"),
    )
    out = se.dispute_withdrawal(dispute_id=dp_id, amount=2900, fee=1500, created=T + 900)
    refund = se.refund(charge=ch_id, amount=400, created=T + 800)
    webhook.deliver(
        se.checkout_session_completed(
            session=se.checkout_session(
                invoice=in_id,
                subscription=sub_id,
                customer=cus_id,
                metadata=meta("checkout_session"),
            ),
            created=T + 2,
        ),
        se.invoice_paid(
            invoice=se.invoice(
                id=in_id,
                charge=ch_id,
                payment_intent=pi_id,
                customer=cus_id,
                subscription=sub_id,
                subscription_metadata=meta("subscription"),
                lines=[se.invoice_line(price=price, subscription=sub_id)],
                amount_paid=2900,
                metadata=meta("invoice"),
            ),
            created=T + 1,
        ),
        se.payment_intent_succeeded(
            payment_intent=se.payment_intent(
                id=pi_id,
                latest_charge=ch_id,
                invoice=in_id,
                customer=cus_id,
                metadata=meta("payment_intent"),
            ),
            created=T + 1,
        ),
        se.charge_succeeded(charge=ch, created=T),
        se.refund_created(refund=refund, created=T + 800),
        se.dispute_event(
            type="charge.dispute.created",
            dispute=se.dispute(
                id=dp_id, charge=ch_id, amount=2900, created=T + 900, balance_transactions=[out]
            ),
            created=T + 900,
        ),
    )

    assert db.entries() == {
        ch_id: ("charge", winner, 2900, "usd"),
        refund["id"]: ("refund", winner, -400, "usd"),
        dp_id: ("dispute", winner, -2900, "usd"),
        out["id"]: ("fee", winner, -1500, "usd"),
    }


def test_a_hint_arriving_late_re_attributes_the_charge_and_its_refunds(
    webhook: WebhookClient, db: TestDatabase
) -> None:
    ch_id, pi_id = se.new_id("ch"), se.new_id("pi")
    ch = se.charge(id=ch_id, created=T, payment_intent=pi_id)
    re = se.refund(charge=ch_id, amount=100, created=T + 5)
    webhook.deliver(se.charge_succeeded(charge=ch, created=T), se.refund_created(refund=re))
    assert {v[1] for v in db.entries().values()} == {"unattributed"}

    session = se.checkout_session(payment_intent=pi_id, metadata={"stream": "shop"})
    webhook.deliver(se.checkout_session_completed(session=session, created=T + 1))
    assert {v[1] for v in db.entries().values()} == {"shop"}
    assert len(db.entries()) == 2


def test_the_configured_metadata_key_names_the_stream(
    webhook: WebhookClient, db: TestDatabase
) -> None:
    ch = se.charge(created=T, metadata={"product_line": "api", "stream_name": "nope"})
    webhook.deliver(se.charge_succeeded(charge=ch, created=T))
    # The live app runs with the default key, `stream`: other keys are not streams.
    assert db.entries() == {ch["id"]: ("charge", "unattributed", 2000, "usd")}
