"""Stripe webhook events as Stripe sends them: for `roi demo`, the tests and the benchmarks.

Small keyword-only factories with sensible defaults: objects (`charge`, `refund`, `dispute`,
...) and the full event envelopes that carry them (`charge_succeeded`, `refund_created`, ...).
Shapes follow API version 2024-06-20: charges carry `payment_intent` and `invoice`, invoices
carry `charge`, `payment_intent` and `subscription_details`, and a charge's `refunds` list is
only present when a test asks for it (older versions embedded it, newer ones do not).
Payloads are signed with the real scheme (`stripe.WebhookSignature`).
"""

from __future__ import annotations

import copy
import json
import secrets
import time
from typing import Any

import stripe

API_VERSION = "2024-06-20"

Obj = dict[str, Any]


def revise(obj: Obj, **changes: Any) -> Obj:
    """A later version of a Stripe object: a deep copy with some fields changed."""
    return {**copy.deepcopy(obj), **changes}


def now() -> int:
    return int(time.time())


def new_id(prefix: str) -> str:
    """A Stripe-looking id: prefix, underscore, 24 alphanumerics."""
    return f"{prefix}_{secrets.token_hex(12)}"


# ---------------------------------------------------------------------------------------------
# Signing


def encode(event: Obj) -> str:
    """The body as Stripe sends it (pretty-printed JSON)."""
    return json.dumps(event, indent=2)


def signature_header(payload: str, *, secret: str, timestamp: int | None = None) -> str:
    """`Stripe-Signature: t=...,v1=...`, computed by the stripe library itself."""
    header: str = stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp)
    return header


# ---------------------------------------------------------------------------------------------
# Objects


def balance_transaction(
    *,
    source: str,
    amount: int,
    created: int,
    fee: int = 0,
    currency: str = "usd",
    id: str | None = None,
    type: str = "adjustment",
    reporting_category: str = "dispute",
    description: str | None = None,
    fee_description: str = "Dispute fee",
    exchange_rate: float | None = None,
) -> Obj:
    return {
        "id": id or new_id("txn"),
        "object": "balance_transaction",
        "amount": amount,
        "available_on": created + 7 * 86_400,
        "created": created,
        "currency": currency,
        "description": description,
        "exchange_rate": exchange_rate,
        "fee": fee,
        "fee_details": (
            [
                {
                    "amount": fee,
                    "application": None,
                    "currency": currency,
                    "description": fee_description,
                    "type": "stripe_fee",
                }
            ]
            if fee
            else []
        ),
        "net": amount - fee,
        "reporting_category": reporting_category,
        "source": source,
        "status": "pending",
        "type": type,
    }


def charge(
    *,
    id: str | None = None,
    amount: int = 2000,
    currency: str = "usd",
    created: int | None = None,
    status: str = "succeeded",
    captured: bool = True,
    amount_captured: int | None = None,
    amount_refunded: int = 0,
    refunds: list[Obj] | None = None,
    balance_transaction: str | None = None,
    payment_intent: str | None = None,
    invoice: str | None = None,
    customer: str | None = None,
    metadata: dict[str, str] | None = None,
) -> Obj:
    charge_id = id or new_id("ch")
    if amount_captured is None:
        amount_captured = amount if captured and status != "failed" else 0
    failed = status == "failed"
    obj: Obj = {
        "id": charge_id,
        "object": "charge",
        "amount": amount,
        "amount_captured": amount_captured,
        "amount_refunded": amount_refunded,
        "application": None,
        "application_fee": None,
        "application_fee_amount": None,
        "balance_transaction": balance_transaction,
        "billing_details": {
            "address": {
                "city": None,
                "country": "US",
                "line1": None,
                "line2": None,
                "postal_code": "94103",
                "state": None,
            },
            "email": "jenny.rosen@example.com",
            "name": "Jenny Rosen",
            "phone": None,
        },
        "calculated_statement_descriptor": "ROI ANALYTICS",
        "captured": captured,
        "created": created if created is not None else now() - 5,
        "currency": currency,
        "customer": customer,
        "description": None,
        "destination": None,
        "dispute": None,
        "disputed": False,
        "failure_balance_transaction": None,
        "failure_code": "card_declined" if failed else None,
        "failure_message": "Your card was declined." if failed else None,
        "fraud_details": {},
        "invoice": invoice,
        "livemode": False,
        "metadata": dict(metadata or {}),
        "on_behalf_of": None,
        "outcome": {
            "network_status": "declined_by_network" if failed else "approved_by_network",
            "reason": "generic_decline" if failed else None,
            "risk_level": "normal",
            "risk_score": 32,
            "seller_message": "The bank did not return any further details with this decline."
            if failed
            else "Payment complete.",
            "type": "issuer_declined" if failed else "authorized",
        },
        "paid": status == "succeeded",
        "payment_intent": payment_intent,
        "payment_method": "pm_1PaymentMethodVisa4242xx",
        "payment_method_details": {
            "card": {
                "amount_authorized": amount,
                "brand": "visa",
                "checks": {
                    "address_line1_check": None,
                    "address_postal_code_check": "pass",
                    "cvc_check": "pass",
                },
                "country": "US",
                "exp_month": 12,
                "exp_year": 2030,
                "fingerprint": "Xt5EWLLDS7FJjR1c",
                "funding": "credit",
                "last4": "4242",
                "network": "visa",
            },
            "type": "card",
        },
        "receipt_email": None,
        "receipt_number": None,
        "refunded": amount_refunded > 0 and amount_refunded >= amount,
        "review": None,
        "shipping": None,
        "source_transfer": None,
        "statement_descriptor": None,
        "statement_descriptor_suffix": None,
        "status": status,
        "transfer_data": None,
        "transfer_group": None,
    }
    if refunds is not None:
        obj["refunds"] = {
            "object": "list",
            "data": refunds,
            "has_more": False,
            "total_count": len(refunds),
            "url": f"/v1/charges/{charge_id}/refunds",
        }
    return obj


def refund(
    *,
    charge: str,
    id: str | None = None,
    amount: int = 500,
    currency: str = "usd",
    created: int | None = None,
    status: str = "succeeded",
    payment_intent: str | None = None,
    balance_transaction: str | None = None,
    failure_reason: str | None = None,
    metadata: dict[str, str] | None = None,
) -> Obj:
    reversed_ = status in ("failed", "canceled")
    return {
        "id": id or new_id("re"),
        "object": "refund",
        "amount": amount,
        "balance_transaction": balance_transaction,
        "charge": charge,
        "created": created if created is not None else now() - 5,
        "currency": currency,
        "destination_details": {"card": {"reference_status": "pending", "type": "refund"}},
        "failure_balance_transaction": new_id("txn") if status == "failed" else None,
        "failure_reason": failure_reason or ("expired_or_canceled_card" if reversed_ else None),
        "metadata": dict(metadata or {}),
        "payment_intent": payment_intent,
        "reason": "requested_by_customer",
        "receipt_number": None,
        "source_transfer_reversal": None,
        "status": status,
        "transfer_reversal": None,
    }


def dispute(
    *,
    charge: str,
    id: str | None = None,
    amount: int = 2000,
    currency: str = "usd",
    created: int | None = None,
    status: str = "needs_response",
    balance_transactions: list[Obj] | None = None,
    payment_intent: str | None = None,
    reason: str = "fraudulent",
) -> Obj:
    """A dispute. `balance_transactions` defaults to [] (an inquiry, or no money moved yet)."""
    created = created if created is not None else now() - 5
    return {
        "id": id or new_id("dp"),
        "object": "dispute",
        "amount": amount,
        "balance_transactions": list(balance_transactions or []),
        "charge": charge,
        "created": created,
        "currency": currency,
        "evidence": {
            "customer_email_address": None,
            "customer_name": None,
            "product_description": None,
            "uncategorized_text": None,
        },
        "evidence_details": {
            "due_by": created + 21 * 86_400,
            "has_evidence": False,
            "past_due": False,
            "submission_count": 0,
        },
        "is_charge_refundable": False,
        "livemode": False,
        "metadata": {},
        "payment_intent": payment_intent,
        "payment_method_details": {"card": {"brand": "visa", "network_reason_code": "10.4"}},
        "reason": reason,
        "status": status,
    }


def dispute_withdrawal(
    *,
    dispute_id: str,
    amount: int,
    created: int,
    fee: int = 1500,
    currency: str = "usd",
    id: str | None = None,
) -> Obj:
    """The balance transaction that takes a disputed amount (and the dispute fee) back."""
    return balance_transaction(
        id=id,
        source=dispute_id,
        amount=-amount,
        fee=fee,
        currency=currency,
        created=created,
        description=f"Chargeback withdrawal for {dispute_id}",
    )


def dispute_reinstatement(
    *,
    dispute_id: str,
    amount: int,
    created: int,
    fee: int = 0,
    currency: str = "usd",
    id: str | None = None,
) -> Obj:
    """The balance transaction that gives a disputed amount back (dispute won)."""
    return balance_transaction(
        id=id,
        source=dispute_id,
        amount=amount,
        fee=fee,
        currency=currency,
        created=created,
        description=f"Chargeback reversal for {dispute_id}",
    )


def payment_intent(
    *,
    latest_charge: str | None,
    id: str | None = None,
    amount: int = 2000,
    currency: str = "usd",
    created: int | None = None,
    customer: str | None = None,
    invoice: str | None = None,
    metadata: dict[str, str] | None = None,
    status: str = "succeeded",
) -> Obj:
    pi = id or new_id("pi")
    return {
        "id": pi,
        "object": "payment_intent",
        "amount": amount,
        "amount_capturable": 0,
        "amount_received": amount if status == "succeeded" else 0,
        "application": None,
        "application_fee_amount": None,
        "automatic_payment_methods": {"allow_redirects": "always", "enabled": True},
        "canceled_at": None,
        "cancellation_reason": None,
        "capture_method": "automatic_async",
        "client_secret": f"{pi}_secret_{secrets.token_hex(8)}",
        "confirmation_method": "automatic",
        "created": created if created is not None else now() - 10,
        "currency": currency,
        "customer": customer,
        "description": None,
        "invoice": invoice,
        "last_payment_error": None,
        "latest_charge": latest_charge,
        "livemode": False,
        "metadata": dict(metadata or {}),
        "next_action": None,
        "on_behalf_of": None,
        "payment_method": "pm_1PaymentMethodVisa4242xx",
        "payment_method_types": ["card"],
        "receipt_email": None,
        "setup_future_usage": None,
        "shipping": None,
        "statement_descriptor": None,
        "status": status,
        "transfer_data": None,
        "transfer_group": None,
    }


def price(
    *,
    id: str | None = None,
    product: str | Obj | None = None,
    unit_amount: int = 2000,
    currency: str = "usd",
    metadata: dict[str, str] | None = None,
    recurring: bool = True,
) -> Obj:
    """A price; `product` is an id (as in webhooks) or, expanded, a product object."""
    return {
        "id": id or new_id("price"),
        "object": "price",
        "active": True,
        "billing_scheme": "per_unit",
        "created": now() - 86_400 * 30,
        "currency": currency,
        "livemode": False,
        "lookup_key": None,
        "metadata": dict(metadata or {}),
        "nickname": None,
        "product": product if product is not None else new_id("prod"),
        "recurring": (
            {"interval": "month", "interval_count": 1, "usage_type": "licensed"}
            if recurring
            else None
        ),
        "tax_behavior": "unspecified",
        "type": "recurring" if recurring else "one_time",
        "unit_amount": unit_amount,
        "unit_amount_decimal": str(unit_amount),
    }


def product(*, id: str | None = None, metadata: dict[str, str] | None = None) -> Obj:
    return {
        "id": id or new_id("prod"),
        "object": "product",
        "active": True,
        "metadata": dict(metadata or {}),
        "name": "Pro plan",
    }


def invoice_line(
    *,
    price: Obj,
    amount: int | None = None,
    subscription: str | None = None,
    period_start: int | None = None,
) -> Obj:
    start = period_start if period_start is not None else now() - 60
    return {
        "id": new_id("il"),
        "object": "line_item",
        "amount": amount if amount is not None else price["unit_amount"],
        "currency": price["currency"],
        "description": "1 × Pro plan (at $20.00 / month)",  # noqa: RUF001 (as Stripe writes it)
        "discountable": True,
        "livemode": False,
        "metadata": {},
        "period": {"end": start + 30 * 86_400, "start": start},
        "plan": None,
        "price": price,
        "proration": False,
        "quantity": 1,
        "subscription": subscription,
        "type": "subscription" if subscription else "invoiceitem",
    }


def invoice(
    *,
    id: str | None = None,
    charge: str | None = None,
    payment_intent: str | None = None,
    customer: str | None = None,
    subscription: str | None = None,
    subscription_metadata: dict[str, str] | None = None,
    lines: list[Obj] | None = None,
    amount_paid: int = 2000,
    currency: str = "usd",
    created: int | None = None,
    metadata: dict[str, str] | None = None,
) -> Obj:
    invoice_id = id or new_id("in")
    lines = lines if lines is not None else []
    return {
        "id": invoice_id,
        "object": "invoice",
        "account_country": "US",
        "amount_due": amount_paid,
        "amount_paid": amount_paid,
        "amount_remaining": 0,
        "attempt_count": 1,
        "attempted": True,
        "billing_reason": "subscription_cycle" if subscription else "manual",
        "charge": charge,
        "collection_method": "charge_automatically",
        "created": created if created is not None else now() - 30,
        "currency": currency,
        "customer": customer,
        "customer_email": "jenny.rosen@example.com",
        "lines": {
            "object": "list",
            "data": lines,
            "has_more": False,
            "total_count": len(lines),
            "url": f"/v1/invoices/{invoice_id}/lines",
        },
        "livemode": False,
        "metadata": dict(metadata or {}),
        "number": "ROI-0001",
        "paid": True,
        "paid_out_of_band": False,
        "payment_intent": payment_intent,
        "status": "paid",
        "subscription": subscription,
        "subscription_details": (
            {"metadata": dict(subscription_metadata or {})} if subscription else None
        ),
        "subtotal": amount_paid,
        "total": amount_paid,
    }


def checkout_session(
    *,
    id: str | None = None,
    payment_intent: str | None = None,
    invoice: str | None = None,
    subscription: str | None = None,
    customer: str | None = None,
    amount_total: int = 2000,
    currency: str = "usd",
    created: int | None = None,
    metadata: dict[str, str] | None = None,
) -> Obj:
    return {
        "id": id or f"cs_test_{secrets.token_hex(24)}",
        "object": "checkout.session",
        "amount_subtotal": amount_total,
        "amount_total": amount_total,
        "client_reference_id": None,
        "created": created if created is not None else now() - 120,
        "currency": currency,
        "customer": customer,
        "customer_details": {"email": "jenny.rosen@example.com", "name": "Jenny Rosen"},
        "expires_at": now() + 86_400,
        "invoice": invoice,
        "livemode": False,
        "metadata": dict(metadata or {}),
        "mode": "subscription" if subscription else "payment",
        "payment_intent": payment_intent,
        "payment_status": "paid",
        "status": "complete",
        "subscription": subscription,
        "success_url": "https://example.com/success",
        "url": None,
    }


def customer(*, id: str | None = None, email: str = "jenny.rosen@example.com") -> Obj:
    return {
        "id": id or new_id("cus"),
        "object": "customer",
        "balance": 0,
        "created": now() - 5,
        "currency": None,
        "email": email,
        "livemode": False,
        "metadata": {},
        "name": "Jenny Rosen",
    }


# ---------------------------------------------------------------------------------------------
# Envelopes


def event(
    *,
    type: str,
    object: Obj,
    id: str | None = None,
    created: int | None = None,
    previous_attributes: Obj | None = None,
    api_version: str = API_VERSION,
    livemode: bool = False,
) -> Obj:
    """The envelope Stripe posts: `previous_attributes` only on *.updated-like events."""
    data: Obj = {"object": object}
    if previous_attributes is not None:
        data["previous_attributes"] = previous_attributes
    return {
        "id": id or new_id("evt"),
        "object": "event",
        "api_version": api_version,
        "created": created if created is not None else now(),
        "data": data,
        "livemode": livemode,
        "pending_webhooks": 1,
        "request": {"id": new_id("req"), "idempotency_key": secrets.token_hex(16)},
        "type": type,
    }


def charge_succeeded(*, charge: Obj, id: str | None = None, created: int | None = None) -> Obj:
    return event(type="charge.succeeded", object=charge, id=id, created=created)


def charge_captured(*, charge: Obj, id: str | None = None, created: int | None = None) -> Obj:
    return event(
        type="charge.captured",
        object=charge,
        id=id,
        created=created,
        previous_attributes={"amount_captured": 0, "captured": False},
    )


def charge_updated(
    *, charge: Obj, previous_attributes: Obj, id: str | None = None, created: int | None = None
) -> Obj:
    return event(
        type="charge.updated",
        object=charge,
        id=id,
        created=created,
        previous_attributes=previous_attributes,
    )


def charge_refunded(
    *,
    charge: Obj,
    previous_amount_refunded: int = 0,
    id: str | None = None,
    created: int | None = None,
) -> Obj:
    return event(
        type="charge.refunded",
        object=charge,
        id=id,
        created=created,
        previous_attributes={"amount_refunded": previous_amount_refunded, "refunded": False},
    )


def charge_failed(*, charge: Obj, id: str | None = None, created: int | None = None) -> Obj:
    return event(type="charge.failed", object=charge, id=id, created=created)


def charge_pending(*, charge: Obj, id: str | None = None, created: int | None = None) -> Obj:
    return event(type="charge.pending", object=charge, id=id, created=created)


def charge_expired(*, charge: Obj, id: str | None = None, created: int | None = None) -> Obj:
    return event(type="charge.expired", object=charge, id=id, created=created)


def refund_created(*, refund: Obj, id: str | None = None, created: int | None = None) -> Obj:
    return event(type="refund.created", object=refund, id=id, created=created)


def refund_updated(
    *,
    refund: Obj,
    previous_attributes: Obj | None = None,
    id: str | None = None,
    created: int | None = None,
    type: str = "refund.updated",
) -> Obj:
    return event(
        type=type,
        object=refund,
        id=id,
        created=created,
        previous_attributes=previous_attributes or {"status": "pending"},
    )


def refund_failed(*, refund: Obj, id: str | None = None, created: int | None = None) -> Obj:
    return event(
        type="refund.failed",
        object=refund,
        id=id,
        created=created,
        previous_attributes={"status": "succeeded", "failure_reason": None},
    )


def dispute_event(
    *,
    type: str,
    dispute: Obj,
    id: str | None = None,
    created: int | None = None,
    previous_attributes: Obj | None = None,
) -> Obj:
    """charge.dispute.created / funds_withdrawn / funds_reinstated / updated / closed."""
    return event(
        type=type,
        object=dispute,
        id=id,
        created=created,
        previous_attributes=previous_attributes,
    )


def payment_intent_succeeded(
    *, payment_intent: Obj, id: str | None = None, created: int | None = None
) -> Obj:
    return event(type="payment_intent.succeeded", object=payment_intent, id=id, created=created)


def invoice_paid(*, invoice: Obj, id: str | None = None, created: int | None = None) -> Obj:
    return event(type="invoice.paid", object=invoice, id=id, created=created)


def checkout_session_completed(
    *, session: Obj, id: str | None = None, created: int | None = None
) -> Obj:
    return event(type="checkout.session.completed", object=session, id=id, created=created)


def customer_created(
    *, customer_obj: Obj | None = None, id: str | None = None, created: int | None = None
) -> Obj:
    return event(type="customer.created", object=customer_obj or customer(), id=id, created=created)
