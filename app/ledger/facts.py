"""Stripe event -> facts: a pure function of the payload, no database, no network.

A fact is what one event says about one Stripe object (a charge, refund, dispute, balance
transaction, or a hint of which stream a charge belongs to). Facts about the same object are
merged in the database by rules that do not depend on arrival order (app/ledger/store.py), and
the ledger entries are rebuilt from the merged facts. That is how any permutation or
duplication of the same events gives the same ledger.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

CHARGE_EVENTS = frozenset(
    {
        "charge.succeeded",
        "charge.captured",
        "charge.updated",
        "charge.refunded",
        "charge.failed",
        "charge.pending",
        "charge.expired",
    }
)
REFUND_EVENTS = frozenset(
    {"refund.created", "refund.updated", "refund.failed", "charge.refund.updated"}
)
DISPUTE_EVENTS = frozenset(
    {
        "charge.dispute.created",
        "charge.dispute.updated",
        "charge.dispute.closed",
        "charge.dispute.funds_withdrawn",
        "charge.dispute.funds_reinstated",
    }
)
POINTER_EVENTS = frozenset(
    {
        "payment_intent.succeeded",
        "invoice.paid",
        "invoice.payment_succeeded",
        "checkout.session.completed",
        "checkout.session.async_payment_succeeded",
    }
)
HANDLED_EVENTS = CHARGE_EVENTS | REFUND_EVENTS | DISPUTE_EVENTS | POINTER_EVENTS

# Refund statuses in the only order a refund moves through them.
REFUND_STATUS_RANK = {
    "pending": 0,
    "requires_action": 0,
    "succeeded": 1,
    "failed": 2,
    "canceled": 2,
}
REVERSED_REFUND_RANK = 2

# Which source's metadata wins when several name a stream (accounting.md, attribution step 2).
HINT_PRIORITY = {
    "payment_intent": 1,
    "invoice": 2,
    "checkout_session": 3,
    "subscription": 4,
    "price": 5,
    "product": 6,
}

# Dispute statuses of a real dispute (funds withdrawn), as opposed to an inquiry (warning_*).
WITHDRAWN_DISPUTE_STATUSES = frozenset({"needs_response", "under_review", "won", "lost"})


class EventShapeError(ValueError):
    """The payload lacks a field the ledger needs, or has it in the wrong type."""


@dataclass(frozen=True, slots=True)
class ChargeFact:
    id: str
    event_id: str | None = None  # None when the event only points at the charge
    currency: str | None = None
    amount: int | None = None
    amount_captured: int | None = None
    captured: bool = False
    succeeded: bool = False
    created: int | None = None
    payment_intent: str | None = None
    invoice: str | None = None
    customer: str | None = None
    balance_transaction: str | None = None
    # Set when the event carried the charge itself, so its metadata is an observation.
    meta_stream: str | None = None
    meta_event_created: int | None = None
    meta_event_id: str | None = None
    amount_refunded: int = 0
    amount_refunded_at: int | None = None


@dataclass(frozen=True, slots=True)
class RefundFact:
    id: str
    charge_id: str
    amount: int
    currency: str
    created: int
    status: str
    status_rank: int
    reversed_at: int | None
    balance_transaction: str | None
    event_id: str


@dataclass(frozen=True, slots=True)
class DisputeFact:
    id: str
    charge_id: str
    amount: int
    currency: str
    created: int
    withdrawn: bool
    withdrawn_at: int | None
    reinstated: bool
    reinstated_at: int | None
    event_id: str


@dataclass(frozen=True, slots=True)
class BalanceTransactionFact:
    id: str
    charge_id: str
    source_id: str
    type: str
    amount: int
    fee: int
    net: int
    currency: str
    exchange_rate: str | None  # decimal string, never float
    created: int


@dataclass(frozen=True, slots=True)
class HintFact:
    anchor_id: str
    source_id: str
    priority: int
    stream: str | None
    event_created: int
    event_id: str


@dataclass(slots=True)
class EventFacts:
    charges: list[ChargeFact] = field(default_factory=list)
    refunds: list[RefundFact] = field(default_factory=list)
    disputes: list[DisputeFact] = field(default_factory=list)
    balance_transactions: list[BalanceTransactionFact] = field(default_factory=list)
    hints: list[HintFact] = field(default_factory=list)

    @property
    def anchors(self) -> set[str]:
        """Ids whose charges' ledger entries this event can change (charge, PI, invoice ids)."""
        ids: set[str] = set()
        for c in self.charges:
            ids.add(c.id)
            if c.payment_intent:
                ids.add(c.payment_intent)
            if c.invoice:
                ids.add(c.invoice)
        ids.update(r.charge_id for r in self.refunds)
        ids.update(d.charge_id for d in self.disputes)
        ids.update(b.charge_id for b in self.balance_transactions)
        ids.update(h.anchor_id for h in self.hints)
        return ids


def is_handled(event_type: str) -> bool:
    return event_type in HANDLED_EVENTS


def facts_from_event(event: Mapping[str, Any], stream_key: str) -> EventFacts:
    """What one Stripe event says, as facts. Raises EventShapeError on a payload it cannot use."""
    event_type = _str(event, "type", "event")
    event_id = _str(event, "id", "event")
    created = _int(event, "created", "event")
    data = event.get("data")
    if not isinstance(data, Mapping) or not isinstance(data.get("object"), Mapping):
        raise EventShapeError("data.object: expected an object")
    obj: Mapping[str, Any] = data["object"]
    facts = EventFacts()
    if event_type in CHARGE_EVENTS:
        _charge(facts, obj, event_id, created, stream_key)
    elif event_type in REFUND_EVENTS:
        facts.refunds.append(_refund(obj, event_id, created))
        facts.charges.append(ChargeFact(id=facts.refunds[-1].charge_id))
    elif event_type in DISPUTE_EVENTS:
        _dispute(facts, obj, event_type, event_id, created)
    elif event_type == "payment_intent.succeeded":
        _payment_intent(facts, obj, event_id, created, stream_key)
    elif event_type.startswith("invoice."):
        _invoice(facts, obj, event_id, created, stream_key)
    elif event_type.startswith("checkout.session."):
        _checkout_session(facts, obj, event_id, created, stream_key)
    return facts


def _charge(
    facts: EventFacts, obj: Mapping[str, Any], event_id: str, created: int, stream_key: str
) -> None:
    charge_id = _str(obj, "id", "data.object")
    status = _str(obj, "status", "data.object")
    amount = _int(obj, "amount", "data.object")
    refunded = _opt_int(obj, "amount_refunded", "data.object") or 0
    captured = bool(obj.get("captured", False))
    amount_captured = _opt_int(obj, "amount_captured", "data.object")
    if amount_captured is None and captured:
        amount_captured = amount  # API versions before amount_captured existed
    facts.charges.append(
        ChargeFact(
            id=charge_id,
            event_id=event_id,
            currency=_currency(obj, "data.object"),
            amount=amount,
            amount_captured=amount_captured,
            captured=captured,
            succeeded=status == "succeeded",
            created=_int(obj, "created", "data.object"),
            payment_intent=_ref(obj.get("payment_intent")),
            invoice=_ref(obj.get("invoice")),
            customer=_ref(obj.get("customer")),
            balance_transaction=_ref(obj.get("balance_transaction")),
            meta_stream=_stream(obj, stream_key),
            meta_event_created=created,
            meta_event_id=event_id,
            amount_refunded=refunded,
            amount_refunded_at=created if refunded > 0 else None,
        )
    )
    refunds = obj.get("refunds")
    if isinstance(refunds, Mapping) and isinstance(refunds.get("data"), list):
        for refund in refunds["data"]:
            if isinstance(refund, Mapping):
                facts.refunds.append(_refund(refund, event_id, created, charge_id=charge_id))


def _refund(
    obj: Mapping[str, Any], event_id: str, created: int, charge_id: str | None = None
) -> RefundFact:
    where = "data.object"
    status = _str(obj, "status", where)
    if status not in REFUND_STATUS_RANK:
        raise EventShapeError(f"{where}.status: unknown refund status {status!r}")
    rank = REFUND_STATUS_RANK[status]
    charge = charge_id or _ref(obj.get("charge"))
    if not charge:
        raise EventShapeError(f"{where}.charge: a refund without a charge id")
    return RefundFact(
        id=_str(obj, "id", where),
        charge_id=charge,
        amount=_int(obj, "amount", where),
        currency=_currency(obj, where),
        created=_int(obj, "created", where),
        status=status,
        status_rank=rank,
        reversed_at=created if rank == REVERSED_REFUND_RANK else None,
        balance_transaction=_ref(obj.get("balance_transaction")),
        event_id=event_id,
    )


def _dispute(
    facts: EventFacts, obj: Mapping[str, Any], event_type: str, event_id: str, created: int
) -> None:
    where = "data.object"
    dispute_id = _str(obj, "id", where)
    charge_id = _ref(obj.get("charge"))
    if not charge_id:
        raise EventShapeError(f"{where}.charge: a dispute without a charge id")
    status = _str(obj, "status", where)
    dispute_created = _int(obj, "created", where)
    withdrawal_at: int | None = None
    reinstatement_at: int | None = None
    txns = obj.get("balance_transactions")
    for txn in txns if isinstance(txns, list) else []:
        if not isinstance(txn, Mapping):
            continue  # an id only: its amounts come from the Stripe API
        fact = _balance_transaction(txn, charge_id, dispute_id)
        facts.balance_transactions.append(fact)
        if fact.amount < 0:
            withdrawal_at = min(fact.created, withdrawal_at or fact.created)
        elif fact.amount > 0:
            reinstatement_at = min(fact.created, reinstatement_at or fact.created)
    withdrawn = withdrawal_at is not None or event_type.endswith("funds_withdrawn")
    if withdrawal_at is None and event_type.endswith("funds_withdrawn"):
        withdrawal_at = created
    if not withdrawn and txns is None and status in WITHDRAWN_DISPUTE_STATUSES:
        # A payload without its balance transactions: a real dispute withdraws on creation.
        withdrawn, withdrawal_at = True, dispute_created
    reinstated = (
        reinstatement_at is not None or event_type.endswith("funds_reinstated") or status == "won"
    )
    if reinstated and reinstatement_at is None:
        reinstatement_at = created
    if reinstated and not withdrawn:
        withdrawn, withdrawal_at = True, dispute_created
    facts.disputes.append(
        DisputeFact(
            id=dispute_id,
            charge_id=charge_id,
            amount=_int(obj, "amount", where),
            currency=_currency(obj, where),
            created=dispute_created,
            withdrawn=withdrawn,
            withdrawn_at=withdrawal_at,
            reinstated=reinstated,
            reinstated_at=reinstatement_at,
            event_id=event_id,
        )
    )
    facts.charges.append(ChargeFact(id=charge_id))


def fetched_balance_transaction(
    txn: Mapping[str, Any], *, charge_id: str, source_id: str
) -> EventFacts:
    """What a balance transaction fetched from the Stripe API says, as the facts an event
    embedding it would give: the fee and settlement amount of `source_id` (a charge or refund
    of `charge_id`). Raises EventShapeError on a payload it cannot use."""
    if txn.get("object") != "balance_transaction":
        raise EventShapeError("balance_transaction.object: expected 'balance_transaction'")
    facts = EventFacts(balance_transactions=[_balance_transaction(txn, charge_id, source_id)])
    facts.charges.append(ChargeFact(id=charge_id))
    return facts


def _balance_transaction(
    txn: Mapping[str, Any], charge_id: str, source_id: str
) -> BalanceTransactionFact:
    where = "balance_transaction"
    rate = txn.get("exchange_rate")
    return BalanceTransactionFact(
        id=_str(txn, "id", where),
        charge_id=charge_id,
        source_id=source_id,
        type=str(txn.get("type") or "unknown"),
        amount=_int(txn, "amount", where),
        fee=_opt_int(txn, "fee", where) or 0,
        net=_int(txn, "net", where),
        currency=_currency(txn, where),
        # Stripe's rates have at most ~10 significant digits, so the shortest repr of the
        # parsed float is exactly the decimal Stripe sent; it is stored as numeric.
        exchange_rate=None if rate is None else str(rate),
        created=_int(txn, "created", where),
    )


def _payment_intent(
    facts: EventFacts, obj: Mapping[str, Any], event_id: str, created: int, stream_key: str
) -> None:
    pi = _str(obj, "id", "data.object")
    charge_id = _ref(obj.get("latest_charge"))
    if charge_id is None:
        legacy = obj.get("charges")
        if isinstance(legacy, Mapping) and legacy.get("data"):
            charge_id = _ref(legacy["data"][-1])
    if charge_id:
        facts.charges.append(
            ChargeFact(
                id=charge_id,
                payment_intent=pi,
                invoice=_ref(obj.get("invoice")),
                customer=_ref(obj.get("customer")),
            )
        )
    _hint(facts, [pi, charge_id], pi, "payment_intent", obj, event_id, created, stream_key)


def _invoice(
    facts: EventFacts, obj: Mapping[str, Any], event_id: str, created: int, stream_key: str
) -> None:
    invoice = _str(obj, "id", "data.object")
    charge_id = _ref(obj.get("charge"))
    pi = _ref(obj.get("payment_intent"))
    if charge_id:
        facts.charges.append(
            ChargeFact(
                id=charge_id, invoice=invoice, payment_intent=pi, customer=_ref(obj.get("customer"))
            )
        )
    anchors = [invoice, charge_id, pi]
    _hint(facts, anchors, invoice, "invoice", obj, event_id, created, stream_key)
    # Older API versions put subscription_details on the invoice, newer ones under parent.
    details = _obj(obj.get("subscription_details")) or _obj(
        _obj(obj.get("parent")).get("subscription_details")
    )
    subscription = _ref(obj.get("subscription")) or _ref(details.get("subscription"))
    if subscription:
        _hint(facts, anchors, subscription, "subscription", details, event_id, created, stream_key)
    lines = obj.get("lines")
    for line in lines.get("data", []) if isinstance(lines, Mapping) else []:
        if not isinstance(line, Mapping):
            continue
        price = line.get("price")
        if isinstance(price, Mapping):
            price_id, product = _ref(price), _ref(price.get("product"))
            price_meta: Mapping[str, Any] = price
        else:  # newer API versions: line.pricing.price_details
            price_details = _obj(_obj(line.get("pricing")).get("price_details"))
            price_id = _ref(price_details.get("price"))
            product = _ref(price_details.get("product"))
            price_meta = {}
        if price_id:
            _hint(facts, anchors, price_id, "price", price_meta, event_id, created, stream_key)
        if product:
            product_meta = price.get("product") if isinstance(price, Mapping) else None
            holder = product_meta if isinstance(product_meta, Mapping) else {}
            _hint(facts, anchors, product, "product", holder, event_id, created, stream_key)


def _checkout_session(
    facts: EventFacts, obj: Mapping[str, Any], event_id: str, created: int, stream_key: str
) -> None:
    session = _str(obj, "id", "data.object")
    anchors = [_ref(obj.get("payment_intent")), _ref(obj.get("invoice"))]
    # Its subscription is not hinted: the session carries none of the subscription's metadata,
    # and an empty hint would overwrite the one the invoice gives for the same subscription.
    _hint(facts, anchors, session, "checkout_session", obj, event_id, created, stream_key)


def _hint(
    facts: EventFacts,
    anchors: list[str | None],
    source_id: str,
    kind: str,
    holder: Mapping[str, Any],
    event_id: str,
    created: int,
    stream_key: str,
) -> None:
    stream = _stream(holder, stream_key)
    for anchor in dict.fromkeys(a for a in anchors if a):
        facts.hints.append(
            HintFact(
                anchor_id=anchor,
                source_id=source_id,
                priority=HINT_PRIORITY[kind],
                stream=stream,
                event_created=created,
                event_id=event_id,
            )
        )


def _stream(holder: Mapping[str, Any], stream_key: str) -> str | None:
    metadata = holder.get("metadata")
    if not isinstance(metadata, Mapping):
        return None
    value = metadata.get(stream_key)
    if value is None:
        return None
    value = str(value).strip()
    return value or None


def _obj(value: Any) -> Mapping[str, Any]:
    """A nested object, or an empty one when Stripe sent null, an id or nothing."""
    return value if isinstance(value, Mapping) else {}


def _ref(value: Any) -> str | None:
    """A Stripe reference: an id, or an expanded object carrying one."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, Mapping) and isinstance(value.get("id"), str):
        return str(value["id"])
    return None


def _str(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise EventShapeError(f"{where}.{key}: expected a non-empty string")
    return value


def _int(obj: Mapping[str, Any], key: str, where: str) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise EventShapeError(f"{where}.{key}: expected an integer")
    return value


def _opt_int(obj: Mapping[str, Any], key: str, where: str) -> int | None:
    return None if obj.get(key) is None else _int(obj, key, where)


def _currency(obj: Mapping[str, Any], where: str) -> str:
    value = _str(obj, "currency", where).lower()
    if len(value) != 3 or not value.isalpha():
        raise EventShapeError(f"{where}.currency: expected a 3-letter ISO 4217 code")
    return value
