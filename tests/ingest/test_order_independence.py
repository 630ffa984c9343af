"""Any order, any duplication of the same Stripe events gives the same ledger (accounting.md).

A fixed, realistic set of events about four charges (updates, cumulative refunds, a refund
that fails, a full dispute lifecycle, pointer events, several events in the same second) is
posted over HTTP in a canonical order once, and then in permutations with duplicates; the
ledger_entries rows, every column, must be identical.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import stripe_events as se
from tests.conftest import TestDatabase, WebhookClient

T = 1_710_072_000  # 2024-03-10 12:00:00 UTC
DAY = 86_400

CH_A, PI_A, CUS_A = "ch_3OrderAaaaaaaaaaaaaaaaa1", "pi_3OrderAaaaaaaaaaaaaaaaa1", "cus_OrderA1"
CH_B, PI_B, IN_B = "ch_3OrderBbbbbbbbbbbbbbbbb1", "pi_3OrderBbbbbbbbbbbbbbbbb1", "in_1OrderB1"
SUB_B, PRICE_B, PROD_B = "sub_1OrderB1", "price_1OrderB1", "prod_OrderB1"
CH_C, PI_C, CS_C = "ch_3OrderCccccccccccccccccc1", "pi_3OrderCccccccccccccccccc1", "cs_test_OrderC1"
CH_D, CUS_D = "ch_3OrderDddddddddddddddddd1", "cus_OrderD1"
CH_E = "ch_3OrderEeeeeeeeeeeeeeeeee1"
RE_A1, RE_A2 = "re_3OrderAaaaaaaaaaaaaaaaa1", "re_3OrderAaaaaaaaaaaaaaaaa2"
RE_C1, RE_C2 = "re_3OrderCccccccccccccccccc1", "re_3OrderCccccccccccccccccc2"
DP_B = "dp_1OrderBbbbbbbbbbbbbbbbb1"


def event_set() -> list[dict[str, Any]]:
    """The events, in the canonical order (roughly as Stripe would send them)."""
    # A: usd card payment, stream from its own metadata (changed by an update); refunded in two
    # steps, the second refund known first only through the cumulative amount_refunded.
    a = se.charge(
        id=CH_A,
        amount=5000,
        created=T,
        payment_intent=PI_A,
        customer=CUS_A,
        metadata={"stream": "api"},
    )
    a_updated = se.revise(
        a, balance_transaction="txn_3OrderAaaaaaaaaaaaaaaa1", metadata={"stream": "api-pro"}
    )
    re_a1 = se.refund(id=RE_A1, charge=CH_A, amount=1500, created=T + 99, payment_intent=PI_A)
    re_a2 = se.refund(
        id=RE_A2, charge=CH_A, amount=1000, created=T + 199, status="pending", payment_intent=PI_A
    )
    # B: jpy subscription invoice, stream from the subscription; disputed, then won.
    b = se.charge(
        id=CH_B, amount=3000, currency="jpy", created=T + 10, payment_intent=PI_B, invoice=IN_B
    )
    price_b = se.price(id=PRICE_B, product=PROD_B, unit_amount=3000, currency="jpy")
    inv_b = se.invoice(
        id=IN_B,
        charge=CH_B,
        payment_intent=PI_B,
        subscription=SUB_B,
        subscription_metadata={"stream": "subs"},
        amount_paid=3000,
        currency="jpy",
        lines=[se.invoice_line(price=price_b, subscription=SUB_B)],
    )
    out_b = se.dispute_withdrawal(
        dispute_id=DP_B, amount=3000, fee=1500, currency="jpy", created=T + 300
    )
    back_b = se.dispute_reinstatement(dispute_id=DP_B, amount=3000, currency="jpy", created=T + 400)
    dp_b = se.dispute(
        id=DP_B,
        charge=CH_B,
        amount=3000,
        currency="jpy",
        created=T + 300,
        balance_transactions=[out_b],
        payment_intent=PI_B,
    )
    dp_b_won = se.revise(dp_b, status="won", balance_transactions=[out_b, back_b])
    # C: kwd checkout payment, a refund seen before the charge, which then fails; a second one.
    c = se.charge(id=CH_C, amount=12345, currency="kwd", created=T + 20, payment_intent=PI_C)
    re_c1 = se.refund(
        id=RE_C1, charge=CH_C, amount=2345, currency="kwd", created=T + 50, status="pending"
    )
    re_c2 = se.refund(id=RE_C2, charge=CH_C, amount=1000, currency="kwd", created=T + 60)
    cs_c = se.checkout_session(
        id=CS_C,
        payment_intent=PI_C,
        amount_total=12345,
        currency="kwd",
        metadata={"stream": "checkout"},
    )
    # D: authorized, then captured; stream from the customer mapping. E: declined.
    d = se.charge(id=CH_D, amount=4000, captured=False, created=T + 30, customer=CUS_D)
    e = se.charge(id=CH_E, amount=999, status="failed", captured=False, created=T + 31)

    def ev(n: int, make: Any, created: int, **kwargs: Any) -> dict[str, Any]:
        return make(id=f"evt_1Order{n:020d}", created=created, **kwargs)

    return [
        ev(1, se.charge_succeeded, T, charge=a),
        ev(
            2,
            se.payment_intent_succeeded,
            T,
            payment_intent=se.payment_intent(
                id=PI_A,
                latest_charge=CH_A,
                amount=5000,
                customer=CUS_A,
                metadata={"stream": "pi-loses"},
            ),
        ),
        ev(
            3,
            se.charge_updated,
            T + 1,
            charge=a_updated,
            previous_attributes={"balance_transaction": None, "metadata": {"stream": "api"}},
        ),
        ev(4, se.charge_refunded, T + 100, charge=se.revise(a_updated, amount_refunded=1500)),
        ev(5, se.refund_created, T + 100, refund=re_a1),
        ev(
            6,
            se.charge_refunded,
            T + 200,
            charge=se.revise(a_updated, amount_refunded=2500),
            previous_amount_refunded=1500,
        ),
        ev(7, se.refund_updated, T + 200, refund=se.revise(re_a2, status="succeeded")),
        ev(8, se.invoice_paid, T + 10, invoice=inv_b),
        ev(9, se.charge_succeeded, T + 10, charge=b),
        ev(10, se.dispute_event, T + 300, type="charge.dispute.created", dispute=dp_b),
        ev(11, se.dispute_event, T + 300, type="charge.dispute.funds_withdrawn", dispute=dp_b),
        ev(
            12,
            se.dispute_event,
            T + 400,
            type="charge.dispute.funds_reinstated",
            dispute=se.revise(dp_b_won, status="under_review"),
        ),
        ev(13, se.dispute_event, T + 400, type="charge.dispute.closed", dispute=dp_b_won),
        ev(14, se.refund_created, T + 50, refund=re_c1),
        ev(15, se.refund_failed, T + 60, refund=se.revise(re_c1, status="failed")),
        ev(16, se.charge_succeeded, T + 20, charge=c),
        ev(17, se.checkout_session_completed, T + 20, session=cs_c),
        ev(18, se.refund_created, T + 60, refund=re_c2),
        ev(19, se.charge_succeeded, T + 30, charge=d),
        ev(
            20, se.charge_captured, T + 31, charge=se.revise(d, captured=True, amount_captured=4000)
        ),
        ev(21, se.charge_failed, T + 31, charge=e),
        ev(22, se.customer_created, T + 31),
    ]


EVENTS = event_set()

# What the canonical order must give (accounting.md), so the comparison is not vacuous.
EXPECTED_ENTRIES = {
    CH_A: ("charge", "api-pro", 5000, "usd"),
    RE_A1: ("refund", "api-pro", -1500, "usd"),
    RE_A2: ("refund", "api-pro", -1000, "usd"),
    CH_B: ("charge", "subs", 3000, "jpy"),
    DP_B: ("dispute", "subs", -3000, "jpy"),
    f"{DP_B}:reinstated": ("dispute", "subs", 3000, "jpy"),
    EVENTS[9]["data"]["object"]["balance_transactions"][0]["id"]: ("fee", "subs", -1500, "jpy"),
    CH_C: ("charge", "checkout", 12345, "kwd"),
    RE_C1: ("refund", "checkout", -2345, "kwd"),
    f"{RE_C1}:reversal": ("refund", "checkout", 2345, "kwd"),
    RE_C2: ("refund", "checkout", -1000, "kwd"),
    CH_D: ("charge", "mapped", 4000, "usd"),
}


def reset(db: TestDatabase) -> None:
    db.truncate()
    db.map_stream(CUS_D, "mapped")


@pytest.fixture(scope="module")
def canonical(database: TestDatabase, session_webhook: WebhookClient) -> list[dict[str, Any]]:
    reset(database)
    session_webhook.deliver(*EVENTS)
    return database.ledger()


def test_canonical_order_books_what_accounting_says(canonical: list[dict[str, Any]]) -> None:
    assert {
        r["entry_key"]: (r["kind"], r["stream"], r["amount"], r["currency"]) for r in canonical
    } == EXPECTED_ENTRIES
    # Several events share a second: the tie-breaks are part of what must not depend on order.
    seconds = Counter(e["created"] for e in EVENTS)
    assert sum(n for n in seconds.values() if n > 1) >= 12


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_any_order_and_any_duplication_give_the_same_ledger(
    data: st.DataObject,
    canonical: list[dict[str, Any]],
    database: TestDatabase,
    session_webhook: WebhookClient,
) -> None:
    duplicates = data.draw(
        st.lists(st.integers(0, len(EVENTS) - 1), max_size=len(EVENTS)), label="duplicates"
    )
    order = data.draw(st.permutations(list(range(len(EVENTS))) + duplicates), label="order")
    reset(database)

    session_webhook.deliver(*(EVENTS[i] for i in order))

    assert database.ledger() == canonical
    assert database.count("stripe_events") == len(EVENTS)


def test_shuffled_duplicated_events_posted_concurrently_give_the_same_ledger(
    canonical: list[dict[str, Any]], webhook: WebhookClient, db: TestDatabase
) -> None:
    rng = random.Random(20240310)
    events = EVENTS * 2 + rng.sample(EVENTS, 8)
    rng.shuffle(events)
    db.map_stream(CUS_D, "mapped")

    outcomes = webhook.deliver_concurrently(events, threads=6)

    assert Counter(outcomes)["duplicate"] == len(events) - len(EVENTS)
    assert db.ledger() == canonical
