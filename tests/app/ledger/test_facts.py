"""app.ledger.facts.facts_from_event: Stripe payload -> facts, a pure function (no database)."""

from __future__ import annotations

import pytest

from app.ledger.facts import (
    HINT_PRIORITY,
    BalanceTransactionFact,
    ChargeFact,
    EventShapeError,
    HintFact,
    RefundFact,
    facts_from_event,
    is_handled,
)
from tests import stripe_events as se

T = 1_710_072_000  # 2024-03-10 12:00:00 UTC


def facts(event: dict, stream_key: str = "stream"):  # type: ignore[no-untyped-def]
    return facts_from_event(event, stream_key)


# --- charges ----------------------------------------------------------------------------------


def test_charge_succeeded_is_one_charge_fact_with_its_own_metadata_stream() -> None:
    ch = se.charge(
        id="ch_1",
        amount=2000,
        currency="USD",
        created=T - 3,
        payment_intent="pi_1",
        customer="cus_1",
        metadata={"stream": " api "},
    )
    result = facts(se.charge_succeeded(charge=ch, id="evt_1", created=T))

    assert result.charges == [
        ChargeFact(
            id="ch_1",
            event_id="evt_1",
            currency="usd",
            amount=2000,
            amount_captured=2000,
            captured=True,
            succeeded=True,
            created=T - 3,
            payment_intent="pi_1",
            invoice=None,
            customer="cus_1",
            balance_transaction=None,
            meta_stream="api",
            meta_event_created=T,
            meta_event_id="evt_1",
            amount_refunded=0,
            amount_refunded_at=None,
        )
    ]
    assert result.refunds == result.disputes == result.balance_transactions == []
    assert result.hints == []
    assert result.anchors == {"ch_1", "pi_1"}


def test_expanded_references_are_read_as_their_ids() -> None:
    ch = se.charge(id="ch_1", balance_transaction="txn_1")
    ch["customer"] = se.customer(id="cus_9")
    ch["payment_intent"] = {"id": "pi_9", "object": "payment_intent"}
    (fact,) = facts(se.charge_succeeded(charge=ch)).charges
    assert (fact.customer, fact.payment_intent, fact.balance_transaction) == (
        "cus_9",
        "pi_9",
        "txn_1",
    )


def test_uncaptured_and_failed_charges_are_marked_so() -> None:
    auth = se.charge(id="ch_auth", captured=False)
    (auth_fact,) = facts(se.charge_succeeded(charge=auth)).charges
    assert (auth_fact.succeeded, auth_fact.captured, auth_fact.amount_captured) == (True, False, 0)

    failed = se.charge(id="ch_failed", status="failed", captured=False)
    (failed_fact,) = facts(se.charge_failed(charge=failed)).charges
    assert (failed_fact.succeeded, failed_fact.captured) == (False, False)


def test_api_versions_without_amount_captured_use_the_amount_when_captured() -> None:
    ch = se.charge(id="ch_old", amount=1234)
    del ch["amount_captured"]
    (fact,) = facts(se.charge_succeeded(charge=ch)).charges
    assert fact.amount_captured == 1234


def test_charge_refunded_records_the_cumulative_amount_and_when_it_was_seen() -> None:
    ch = se.charge(id="ch_1", amount=2000, amount_refunded=700)
    result = facts(se.charge_refunded(charge=ch, id="evt_r", created=T + 50))
    (fact,) = result.charges
    assert (fact.amount_refunded, fact.amount_refunded_at) == (700, T + 50)
    assert result.refunds == []  # API versions since 2022-11-15 do not embed the list


def test_charge_refunded_with_embedded_refunds_list_gives_refund_facts() -> None:
    r1 = se.refund(id="re_1", charge="ch_1", amount=300, created=T + 10)
    r2 = se.refund(id="re_2", charge="ch_1", amount=400, created=T + 20, status="pending")
    ch = se.charge(id="ch_1", amount=2000, amount_refunded=700, refunds=[r1, r2])
    result = facts(se.charge_refunded(charge=ch, id="evt_r", created=T + 30))
    assert [
        (r.id, r.charge_id, r.amount, r.created, r.status, r.status_rank) for r in result.refunds
    ] == [
        ("re_1", "ch_1", 300, T + 10, "succeeded", 1),
        ("re_2", "ch_1", 400, T + 20, "pending", 0),
    ]
    assert {r.event_id for r in result.refunds} == {"evt_r"}


# --- refunds ----------------------------------------------------------------------------------


def test_refund_created_is_a_refund_and_a_pointer_at_its_charge() -> None:
    re = se.refund(
        id="re_1",
        charge="ch_1",
        amount=500,
        currency="EUR",
        created=T - 1,
        balance_transaction="txn_re",
    )
    result = facts(se.refund_created(refund=re, id="evt_1", created=T))
    assert result.refunds == [
        RefundFact(
            id="re_1",
            charge_id="ch_1",
            amount=500,
            currency="eur",
            created=T - 1,
            status="succeeded",
            status_rank=1,
            reversed_at=None,
            balance_transaction="txn_re",
            event_id="evt_1",
        )
    ]
    # The pointer carries no observation of its own: no event id, no metadata, no amounts.
    assert result.charges == [ChargeFact(id="ch_1")]


@pytest.mark.parametrize(
    ("event_type", "status"),
    [
        ("refund.failed", "failed"),
        ("refund.updated", "canceled"),
        ("charge.refund.updated", "failed"),
    ],
)
def test_failed_or_canceled_refunds_are_reversed_when_the_event_says_so(
    event_type: str, status: str
) -> None:
    re = se.refund(id="re_1", charge="ch_1", created=T - 100, status=status)
    event = se.refund_updated(refund=re, created=T, type=event_type)
    (fact,) = facts(event).refunds
    assert (fact.status, fact.status_rank, fact.reversed_at) == (status, 2, T)


def test_unknown_refund_status_is_a_shape_error_naming_it() -> None:
    re = se.refund(charge="ch_1", status="teleported")
    with pytest.raises(EventShapeError, match="teleported"):
        facts(se.refund_created(refund=re))


def test_refund_without_charge_is_a_shape_error() -> None:
    re = se.refund(charge="ch_1")
    re["charge"] = None
    with pytest.raises(EventShapeError, match=r"data\.object\.charge"):
        facts(se.refund_created(refund=re))


# --- disputes ---------------------------------------------------------------------------------


def test_dispute_created_with_withdrawal_and_fee() -> None:
    txn = se.dispute_withdrawal(dispute_id="dp_1", amount=2000, created=T + 5, fee=1500)
    txn["exchange_rate"] = 1.0834  # as the webhook's JSON parser gives it
    dp = se.dispute(id="dp_1", charge="ch_1", amount=2000, created=T, balance_transactions=[txn])
    result = facts(se.dispute_event(type="charge.dispute.created", dispute=dp, id="evt_d"))

    (d,) = result.disputes
    assert (d.id, d.charge_id, d.amount, d.currency, d.created) == ("dp_1", "ch_1", 2000, "usd", T)
    assert (d.withdrawn, d.withdrawn_at, d.reinstated, d.reinstated_at) == (
        True,
        T + 5,
        False,
        None,
    )
    assert result.balance_transactions == [
        BalanceTransactionFact(
            id=txn["id"],
            charge_id="ch_1",
            source_id="dp_1",
            type="adjustment",
            amount=-2000,
            fee=1500,
            net=-3500,
            currency="usd",
            exchange_rate="1.0834",
            created=T + 5,
        )
    ]
    assert result.charges == [ChargeFact(id="ch_1")]


def test_dispute_won_with_reinstatement_transaction() -> None:
    out = se.dispute_withdrawal(dispute_id="dp_1", amount=2000, created=T + 5)
    back = se.dispute_reinstatement(dispute_id="dp_1", amount=2000, created=T + 900)
    dp = se.dispute(
        id="dp_1", charge="ch_1", created=T, status="won", balance_transactions=[out, back]
    )
    (d,) = facts(
        se.dispute_event(type="charge.dispute.closed", dispute=dp, created=T + 901)
    ).disputes
    assert (d.withdrawn, d.withdrawn_at, d.reinstated, d.reinstated_at) == (
        True,
        T + 5,
        True,
        T + 900,
    )


def test_dispute_lost_is_withdrawn_and_not_reinstated() -> None:
    out = se.dispute_withdrawal(dispute_id="dp_1", amount=2000, created=T + 5)
    dp = se.dispute(id="dp_1", charge="ch_1", status="lost", balance_transactions=[out])
    (d,) = facts(se.dispute_event(type="charge.dispute.closed", dispute=dp)).disputes
    assert (d.withdrawn, d.reinstated) == (True, False)


def test_inquiry_moves_no_money() -> None:
    dp = se.dispute(id="du_1", charge="ch_1", status="warning_needs_response")
    (d,) = facts(se.dispute_event(type="charge.dispute.created", dispute=dp)).disputes
    assert (d.withdrawn, d.reinstated) == (False, False)


def test_dispute_payload_without_balance_transactions_withdraws_at_creation() -> None:
    dp = se.dispute(id="dp_1", charge="ch_1", created=T, status="needs_response")
    del dp["balance_transactions"]
    (d,) = facts(se.dispute_event(type="charge.dispute.updated", dispute=dp)).disputes
    assert (d.withdrawn, d.withdrawn_at) == (True, T)


def test_funds_reinstated_without_transactions_reinstates_at_the_event() -> None:
    dp = se.dispute(id="dp_1", charge="ch_1", created=T, status="under_review")
    event = se.dispute_event(type="charge.dispute.funds_reinstated", dispute=dp, created=T + 60)
    (d,) = facts(event).disputes
    assert (d.withdrawn, d.withdrawn_at, d.reinstated, d.reinstated_at) == (True, T, True, T + 60)


def test_funds_withdrawn_without_transactions_withdraws_at_the_event() -> None:
    dp = se.dispute(id="dp_1", charge="ch_1", created=T, status="needs_response")
    event = se.dispute_event(type="charge.dispute.funds_withdrawn", dispute=dp, created=T + 7)
    (d,) = facts(event).disputes
    assert (d.withdrawn, d.withdrawn_at) == (True, T + 7)


# --- pointers and attribution hints -----------------------------------------------------------


def test_payment_intent_succeeded_points_at_its_charge_and_hints_its_stream() -> None:
    pi = se.payment_intent(
        id="pi_1", latest_charge="ch_1", customer="cus_1", metadata={"stream": "agents"}
    )
    result = facts(se.payment_intent_succeeded(payment_intent=pi, id="evt_pi", created=T))
    assert result.charges == [ChargeFact(id="ch_1", payment_intent="pi_1", customer="cus_1")]
    assert result.hints == [
        HintFact("pi_1", "pi_1", HINT_PRIORITY["payment_intent"], "agents", T, "evt_pi"),
        HintFact("ch_1", "pi_1", HINT_PRIORITY["payment_intent"], "agents", T, "evt_pi"),
    ]


def test_legacy_payment_intent_names_its_charge_in_the_charges_list() -> None:
    pi = se.payment_intent(id="pi_1", latest_charge=None)
    pi["charges"] = {"object": "list", "data": [se.charge(id="ch_old"), se.charge(id="ch_new")]}
    result = facts(se.payment_intent_succeeded(payment_intent=pi))
    assert [c.id for c in result.charges] == ["ch_new"]


def test_invoice_paid_hints_invoice_subscription_price_and_product() -> None:
    price = se.price(id="price_1", product="prod_1", metadata={"stream": "seats"})
    inv = se.invoice(
        id="in_1",
        charge="ch_1",
        payment_intent="pi_1",
        customer="cus_1",
        subscription="sub_1",
        subscription_metadata={"stream": "subs"},
        lines=[se.invoice_line(price=price, subscription="sub_1")],
        metadata={},
    )
    result = facts(se.invoice_paid(invoice=inv, id="evt_in", created=T))
    assert result.charges == [
        ChargeFact(id="ch_1", invoice="in_1", payment_intent="pi_1", customer="cus_1")
    ]
    by_source = {(h.source_id, h.anchor_id): (h.priority, h.stream) for h in result.hints}
    for anchor in ("in_1", "ch_1", "pi_1"):
        assert by_source[("in_1", anchor)] == (HINT_PRIORITY["invoice"], None)
        assert by_source[("sub_1", anchor)] == (HINT_PRIORITY["subscription"], "subs")
        assert by_source[("price_1", anchor)] == (HINT_PRIORITY["price"], "seats")
        assert by_source[("prod_1", anchor)] == (HINT_PRIORITY["product"], None)
    assert len(result.hints) == 12


def test_invoice_with_expanded_product_hints_the_product_metadata() -> None:
    prod = se.product(id="prod_1", metadata={"stream": "prod-stream"})
    inv = se.invoice(
        id="in_1", charge="ch_1", lines=[se.invoice_line(price=se.price(product=prod))]
    )
    result = facts(se.invoice_paid(invoice=inv))
    assert {h.stream for h in result.hints if h.source_id == "prod_1"} == {"prod-stream"}


def test_invoice_in_newer_api_shape_reads_parent_and_pricing() -> None:
    """2025 API versions: subscription under parent.subscription_details, prices under
    lines[].pricing.price_details, and no charge or payment intent on the invoice."""
    inv = se.invoice(id="in_1", lines=[])
    for key in ("charge", "payment_intent", "subscription", "subscription_details"):
        del inv[key]
    inv["parent"] = {
        "type": "subscription_details",
        "subscription_details": {"subscription": "sub_1", "metadata": {"stream": "subs"}},
    }
    inv["lines"]["data"] = [
        {
            "id": "il_1",
            "object": "line_item",
            "amount": 2000,
            "pricing": {
                "type": "price_details",
                "price_details": {"price": "price_1", "product": "prod_1"},
            },
        }
    ]
    event = se.event(type="invoice.paid", object=inv, api_version="2025-03-31.basil")
    result = facts(event)
    assert result.charges == []
    assert {(h.anchor_id, h.source_id, h.stream) for h in result.hints} == {
        ("in_1", "in_1", None),
        ("in_1", "sub_1", "subs"),
        ("in_1", "price_1", None),
        ("in_1", "prod_1", None),
    }


def test_checkout_session_hints_through_its_payment_intent() -> None:
    cs = se.checkout_session(id="cs_1", payment_intent="pi_1", metadata={"stream": "shop"})
    result = facts(se.checkout_session_completed(session=cs, id="evt_cs", created=T))
    assert result.charges == []
    assert result.hints == [
        HintFact("pi_1", "cs_1", HINT_PRIORITY["checkout_session"], "shop", T, "evt_cs")
    ]


def test_subscription_checkout_session_hints_through_its_invoice() -> None:
    cs = se.checkout_session(id="cs_1", invoice="in_1", subscription="sub_1")
    result = facts(se.checkout_session_completed(session=cs))
    # No subscription hint: the session carries none of the subscription's metadata, and an
    # empty hint would overwrite the invoice's hint for the same subscription.
    assert {(h.anchor_id, h.source_id, h.priority) for h in result.hints} == {
        ("in_1", "cs_1", HINT_PRIORITY["checkout_session"]),
    }


def test_hint_priorities_follow_accounting_order() -> None:
    order = ["payment_intent", "invoice", "checkout_session", "subscription", "price", "product"]
    assert sorted(HINT_PRIORITY, key=HINT_PRIORITY.__getitem__) == order


def test_stream_key_is_configurable_and_blank_values_are_no_stream() -> None:
    ch = se.charge(metadata={"roi_stream": "custom", "stream": "ignored"})
    (fact,) = facts(se.charge_succeeded(charge=ch), stream_key="roi_stream").charges
    assert fact.meta_stream == "custom"

    blank = se.charge(metadata={"stream": "   "})
    (fact,) = facts(se.charge_succeeded(charge=blank)).charges
    assert fact.meta_stream is None


# --- what is handled, and payloads the ledger cannot use ---------------------------------------


@pytest.mark.parametrize(
    "event_type",
    [
        "charge.succeeded",
        "charge.captured",
        "charge.updated",
        "charge.refunded",
        "charge.failed",
        "refund.created",
        "refund.updated",
        "refund.failed",
        "charge.refund.updated",
        "charge.dispute.created",
        "charge.dispute.funds_withdrawn",
        "charge.dispute.funds_reinstated",
        "charge.dispute.closed",
        "payment_intent.succeeded",
        "invoice.paid",
        "invoice.payment_succeeded",
        "checkout.session.completed",
    ],
)
def test_money_events_are_handled(event_type: str) -> None:
    assert is_handled(event_type)


@pytest.mark.parametrize(
    "event_type", ["customer.created", "invoice.payment_failed", "payment_intent.created", "ping"]
)
def test_other_events_are_not_handled(event_type: str) -> None:
    assert not is_handled(event_type)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda e: e["data"]["object"].pop("amount"), r"data\.object\.amount"),
        (lambda e: e["data"]["object"].update(amount="2000"), r"data\.object\.amount"),
        (lambda e: e["data"]["object"].update(amount=True), r"data\.object\.amount"),
        (lambda e: e["data"]["object"].update(currency="usdollar"), r"data\.object\.currency"),
        (lambda e: e["data"]["object"].update(id=""), r"data\.object\.id"),
        (lambda e: e["data"]["object"].pop("created"), r"data\.object\.created"),
        (lambda e: e["data"].pop("object"), r"data\.object"),
        (lambda e: e.update(created="yesterday"), r"event\.created"),
    ],
)
def test_unusable_payloads_are_shape_errors_naming_the_field(mutate, field: str) -> None:  # type: ignore[no-untyped-def]
    event = se.charge_succeeded(charge=se.charge())
    mutate(event)
    with pytest.raises(EventShapeError, match=field):
        facts(event)


def test_facts_do_not_depend_on_anything_but_the_payload() -> None:
    event = se.invoice_paid(
        invoice=se.invoice(
            charge="ch_1",
            subscription="sub_1",
            lines=[se.invoice_line(price=se.price(metadata={"stream": "x"}))],
        )
    )
    assert facts(event) == facts(event)
