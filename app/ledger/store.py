"""Facts -> database: order-independent merges, then the ledger entries rebuilt from them.

Every merge below is commutative and idempotent (flags OR-ed, amounts by high-water mark,
times by earliest, mutable metadata by the newest (event created, event id)), so the merged
facts, and the ledger derived from them, are the same for any order or duplication of events.

Concurrency: a batch first takes transaction-level advisory locks, in sorted order, on every
event id and every charge, payment intent or invoice id it touches, then on the charges it will
rebuild. Two transactions that could see each other's half-written state therefore run one
after the other; deadlocks that remain possible between those two steps are retried by the
caller. The caller owns the transaction: nothing here commits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection

from app.ledger.facts import EventFacts

LOCK_KEYS_SQL = """
SELECT pg_advisory_xact_lock(k)
FROM (SELECT DISTINCT hashtextextended(x, 0) AS k FROM unnest(%(keys)s::text[]) AS x ORDER BY 1) s
"""

# New events, and events that failed before, are (re)processed; anything else is a duplicate.
# The payloads go in binary (%(payload)b): escaping JSON into a text-array literal costs more
# CPU than everything else the webhook does.
INSERT_EVENTS_SQL = """
INSERT INTO stripe_events AS e (id, type, api_version, created, livemode, payload, status,
                                processed_at)
SELECT id, type, api_version, to_timestamp(created), livemode, payload::jsonb, status, now()
FROM unnest(%(id)s::text[], %(type)s::text[], %(api_version)s::text[], %(created)s::bigint[],
            %(livemode)s::bool[], %(payload)b::text[], %(status)s::text[])
     AS t(id, type, api_version, created, livemode, payload, status)
ORDER BY id
ON CONFLICT (id) DO UPDATE
   SET status = EXCLUDED.status, error = NULL, attempts = e.attempts + 1,
       processed_at = now(), received_at = now()
 WHERE e.status = 'failed'
RETURNING id
"""

RECORD_FAILURE_SQL = """
INSERT INTO stripe_events AS e (id, type, api_version, created, livemode, payload, status, error)
VALUES (%(id)s, %(type)s, %(api_version)s, to_timestamp(%(created)s), %(livemode)s,
        %(payload)s::jsonb, 'failed', %(error)s)
ON CONFLICT (id) DO UPDATE
   SET error = EXCLUDED.error, attempts = e.attempts + 1, received_at = now()
 WHERE e.status = 'failed'
"""

UPSERT_CHARGE_SQL = """
INSERT INTO charges AS c (id, currency, amount, amount_captured, captured, succeeded, created,
    payment_intent, invoice, customer, balance_transaction, meta_stream, meta_event_created,
    meta_event_id, amount_refunded, amount_refunded_at, event_id)
VALUES (%(id)s, %(currency)s, %(amount)s, %(amount_captured)s, %(captured)s, %(succeeded)s,
    to_timestamp(%(created)s), %(payment_intent)s, %(invoice)s, %(customer)s,
    %(balance_transaction)s, %(meta_stream)s, to_timestamp(%(meta_event_created)s),
    %(meta_event_id)s, %(amount_refunded)s, to_timestamp(%(amount_refunded_at)s), %(event_id)s)
ON CONFLICT (id) DO UPDATE SET
    currency = COALESCE(c.currency, EXCLUDED.currency),
    amount = GREATEST(c.amount, EXCLUDED.amount),
    amount_captured = GREATEST(c.amount_captured, EXCLUDED.amount_captured),
    captured = c.captured OR EXCLUDED.captured,
    succeeded = c.succeeded OR EXCLUDED.succeeded,
    created = COALESCE(c.created, EXCLUDED.created),
    payment_intent = COALESCE(c.payment_intent, EXCLUDED.payment_intent),
    invoice = COALESCE(c.invoice, EXCLUDED.invoice),
    customer = COALESCE(c.customer, EXCLUDED.customer),
    balance_transaction = COALESCE(c.balance_transaction, EXCLUDED.balance_transaction),
    meta_stream = CASE WHEN (EXCLUDED.meta_event_created, EXCLUDED.meta_event_id)
                            > (c.meta_event_created, c.meta_event_id)
                         OR (c.meta_event_created IS NULL
                             AND EXCLUDED.meta_event_created IS NOT NULL)
                       THEN EXCLUDED.meta_stream ELSE c.meta_stream END,
    meta_event_id = CASE WHEN (EXCLUDED.meta_event_created, EXCLUDED.meta_event_id)
                              > (c.meta_event_created, c.meta_event_id)
                           OR (c.meta_event_created IS NULL
                               AND EXCLUDED.meta_event_created IS NOT NULL)
                         THEN EXCLUDED.meta_event_id ELSE c.meta_event_id END,
    meta_event_created = GREATEST(c.meta_event_created, EXCLUDED.meta_event_created),
    amount_refunded = GREATEST(c.amount_refunded, EXCLUDED.amount_refunded),
    amount_refunded_at = CASE
        WHEN EXCLUDED.amount_refunded > c.amount_refunded THEN EXCLUDED.amount_refunded_at
        WHEN EXCLUDED.amount_refunded = c.amount_refunded
            THEN LEAST(c.amount_refunded_at, EXCLUDED.amount_refunded_at)
        ELSE c.amount_refunded_at END,
    event_id = LEAST(c.event_id, EXCLUDED.event_id)
"""

UPSERT_REFUND_SQL = """
INSERT INTO refunds AS r (id, charge_id, amount, currency, created, status, status_rank,
    reversed_at, balance_transaction, event_id)
VALUES (%(id)s, %(charge_id)s, %(amount)s, %(currency)s, to_timestamp(%(created)s), %(status)s,
    %(status_rank)s, to_timestamp(%(reversed_at)s), %(balance_transaction)s, %(event_id)s)
ON CONFLICT (id) DO UPDATE SET
    status = CASE WHEN (EXCLUDED.status_rank, EXCLUDED.status) > (r.status_rank, r.status)
                  THEN EXCLUDED.status ELSE r.status END,
    status_rank = GREATEST(r.status_rank, EXCLUDED.status_rank),
    reversed_at = LEAST(r.reversed_at, EXCLUDED.reversed_at),
    balance_transaction = COALESCE(r.balance_transaction, EXCLUDED.balance_transaction),
    event_id = LEAST(r.event_id, EXCLUDED.event_id)
"""

UPSERT_DISPUTE_SQL = """
INSERT INTO disputes AS d (id, charge_id, amount, currency, created, withdrawn, withdrawn_at,
    reinstated, reinstated_at, event_id)
VALUES (%(id)s, %(charge_id)s, %(amount)s, %(currency)s, to_timestamp(%(created)s),
    %(withdrawn)s, to_timestamp(%(withdrawn_at)s), %(reinstated)s,
    to_timestamp(%(reinstated_at)s), %(event_id)s)
ON CONFLICT (id) DO UPDATE SET
    amount = GREATEST(d.amount, EXCLUDED.amount),
    withdrawn = d.withdrawn OR EXCLUDED.withdrawn,
    withdrawn_at = LEAST(d.withdrawn_at, EXCLUDED.withdrawn_at),
    reinstated = d.reinstated OR EXCLUDED.reinstated,
    reinstated_at = LEAST(d.reinstated_at, EXCLUDED.reinstated_at),
    event_id = LEAST(d.event_id, EXCLUDED.event_id)
"""

UPSERT_BALANCE_TRANSACTION_SQL = """
INSERT INTO balance_transactions (id, charge_id, source_id, type, amount, fee, net, currency,
    exchange_rate, created)
VALUES (%(id)s, %(charge_id)s, %(source_id)s, %(type)s, %(amount)s, %(fee)s, %(net)s,
    %(currency)s, %(exchange_rate)s::numeric, to_timestamp(%(created)s))
ON CONFLICT (id) DO NOTHING
"""

UPSERT_HINT_SQL = """
INSERT INTO attribution_hints AS h (anchor_id, source_id, priority, stream, event_created, event_id)
VALUES (%(anchor_id)s, %(source_id)s, %(priority)s, %(stream)s, to_timestamp(%(event_created)s),
    %(event_id)s)
ON CONFLICT (anchor_id, source_id) DO UPDATE SET
    priority = EXCLUDED.priority, stream = EXCLUDED.stream,
    event_created = EXCLUDED.event_created, event_id = EXCLUDED.event_id
WHERE (EXCLUDED.event_created, EXCLUDED.event_id) > (h.event_created, h.event_id)
"""

CHARGES_TO_REBUILD_SQL = """
SELECT id FROM charges
WHERE id = ANY(%(anchors)s) OR payment_intent = ANY(%(anchors)s) OR invoice = ANY(%(anchors)s)
"""

# The ledger rules of accounting.md ("Revenue" and "Stream attribution") for a set of charges:
# the entries are computed from the merged facts, upserted, and entries no longer implied are
# removed. Amounts are signed: charges positive; refunds, disputes and fees negative;
# reversals (failed refunds, reinstated disputes) positive.
REBUILD_LEDGER_SQL = """
WITH targets AS (
    SELECT c.*,
        COALESCE(
            c.meta_stream,
            (SELECT h.stream FROM attribution_hints h
              WHERE h.anchor_id IN (c.id, c.payment_intent, c.invoice) AND h.stream IS NOT NULL
              ORDER BY h.priority, h.source_id LIMIT 1),
            (SELECT m.stream FROM attribution_hints h JOIN stream_mappings m
                ON m.stripe_id = h.source_id
              WHERE h.anchor_id IN (c.id, c.payment_intent, c.invoice)
              ORDER BY h.priority, h.source_id LIMIT 1),
            (SELECT m.stream FROM stream_mappings m WHERE m.stripe_id = c.customer),
            'unattributed') AS resolved_stream
    FROM charges c WHERE c.id = ANY(%(ids)s)
),
known_refunds AS (
    SELECT r.charge_id, sum(r.amount) AS amount
    FROM refunds r WHERE r.charge_id = ANY(%(ids)s) GROUP BY r.charge_id
),
-- settlement_amount/currency: what the movement settled as in the Stripe balance, from its
-- balance transaction when that is known (the first choice for converting to the reporting
-- currency). A fee is itself in the settlement currency.
movements (entry_key, kind, charge_id, object_id, amount, currency, booked_at,
           balance_transaction, event_id, settlement_amount, settlement_currency) AS (
    SELECT t.id, 'charge', t.id, t.id, COALESCE(t.amount_captured, t.amount), t.currency,
           t.created, t.balance_transaction, t.event_id, bt.amount, bt.currency
    FROM targets t LEFT JOIN balance_transactions bt ON bt.id = t.balance_transaction
    WHERE t.succeeded AND t.captured AND t.created IS NOT NULL
  UNION ALL
    SELECT r.id, 'refund', r.charge_id, r.id, -r.amount, r.currency, r.created,
           r.balance_transaction, r.event_id, bt.amount, bt.currency
    FROM refunds r LEFT JOIN balance_transactions bt ON bt.id = r.balance_transaction
    WHERE r.charge_id = ANY(%(ids)s)
  UNION ALL
    SELECT r.id || ':reversal', 'refund', r.charge_id, r.id, r.amount, r.currency, r.reversed_at,
           NULL, r.event_id, NULL, NULL
    FROM refunds r
    WHERE r.charge_id = ANY(%(ids)s) AND r.status_rank = 2 AND r.reversed_at IS NOT NULL
  UNION ALL
    -- A refund seen only as a rise of the charge's cumulative amount_refunded; it shrinks to
    -- nothing as the refund objects themselves arrive. Only captured money can be refunded:
    -- the released part of an authorization (uncaptured, expired, or the remainder of a
    -- partial capture) also shows in amount_refunded but was never revenue.
    SELECT t.id || ':refunded', 'refund', t.id, t.id,
           -(t.refunded_of_captured - COALESCE(k.amount, 0)), t.currency, t.amount_refunded_at,
           NULL, t.event_id, NULL, NULL
    FROM (SELECT *, amount_refunded - (amount - COALESCE(amount_captured, amount))
                    AS refunded_of_captured
          FROM targets WHERE succeeded AND captured) t
    LEFT JOIN known_refunds k ON k.charge_id = t.id
    WHERE t.refunded_of_captured > COALESCE(k.amount, 0) AND t.currency IS NOT NULL
  UNION ALL
    SELECT d.id, 'dispute', d.charge_id, d.id, -d.amount, d.currency,
           COALESCE(d.withdrawn_at, d.created), bt.id, d.event_id, bt.amount, bt.currency
    FROM disputes d
    LEFT JOIN LATERAL (SELECT * FROM balance_transactions b
                       WHERE b.source_id = d.id AND b.amount < 0
                       ORDER BY b.created, b.id LIMIT 1) bt ON true
    WHERE d.charge_id = ANY(%(ids)s) AND d.withdrawn
  UNION ALL
    SELECT d.id || ':reinstated', 'dispute', d.charge_id, d.id, d.amount, d.currency,
           COALESCE(d.reinstated_at, d.created), bt.id, d.event_id, bt.amount, bt.currency
    FROM disputes d
    LEFT JOIN LATERAL (SELECT * FROM balance_transactions b
                       WHERE b.source_id = d.id AND b.amount > 0
                       ORDER BY b.created, b.id LIMIT 1) bt ON true
    WHERE d.charge_id = ANY(%(ids)s) AND d.withdrawn AND d.reinstated
  UNION ALL
    -- Fees are booked with their movement: a charge's or refund's at its time, a dispute's at
    -- the withdrawal or reinstatement it belongs to.
    SELECT b.id, 'fee', b.charge_id, b.id, -b.fee, b.currency,
           COALESCE(ch.created, rf.created, b.created), b.id, NULL, -b.fee, b.currency
    FROM balance_transactions b
    LEFT JOIN charges ch ON ch.id = b.source_id
    LEFT JOIN refunds rf ON rf.id = b.source_id
    WHERE b.charge_id = ANY(%(ids)s) AND b.fee <> 0
),
entries AS (
    SELECT m.*, t.resolved_stream AS stream FROM movements m JOIN targets t ON t.id = m.charge_id
),
upserted AS (
    INSERT INTO ledger_entries AS le (entry_key, kind, charge_id, object_id, stream, amount,
        currency, booked_at, balance_transaction, event_id, settlement_amount,
        settlement_currency)
    SELECT entry_key, kind, charge_id, object_id, stream, amount, currency, booked_at,
           balance_transaction, event_id, settlement_amount, settlement_currency
    FROM entries
    ON CONFLICT (entry_key) DO UPDATE SET
        kind = EXCLUDED.kind, charge_id = EXCLUDED.charge_id, object_id = EXCLUDED.object_id,
        stream = EXCLUDED.stream, amount = EXCLUDED.amount, currency = EXCLUDED.currency,
        booked_at = EXCLUDED.booked_at, balance_transaction = EXCLUDED.balance_transaction,
        event_id = EXCLUDED.event_id, settlement_amount = EXCLUDED.settlement_amount,
        settlement_currency = EXCLUDED.settlement_currency
    WHERE (le.kind, le.charge_id, le.object_id, le.stream, le.amount, le.currency, le.booked_at,
           le.balance_transaction, le.event_id, le.settlement_amount, le.settlement_currency)
          IS DISTINCT FROM
          (EXCLUDED.kind, EXCLUDED.charge_id, EXCLUDED.object_id, EXCLUDED.stream,
           EXCLUDED.amount, EXCLUDED.currency, EXCLUDED.booked_at,
           EXCLUDED.balance_transaction, EXCLUDED.event_id, EXCLUDED.settlement_amount,
           EXCLUDED.settlement_currency)
    RETURNING 1
)
DELETE FROM ledger_entries le
WHERE le.charge_id = ANY(%(ids)s)
  AND NOT EXISTS (SELECT 1 FROM entries e WHERE e.entry_key = le.entry_key)
"""


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One verified Stripe event, ready to be written. `facts` is None for ignored types."""

    id: str
    type: str
    api_version: str | None
    created: int
    livemode: bool
    payload: str  # the raw JSON body, stored as received
    facts: EventFacts | None

    @property
    def status(self) -> str:
        return "ignored" if self.facts is None else "processed"


def _rows(facts: Iterable[Any]) -> list[dict[str, Any]]:
    return [{name: getattr(f, name) for name in f.__slots__} for f in facts]


async def write_events(conn: AsyncConnection[Any], events: Sequence[StoredEvent]) -> set[str]:
    """Store the events and book their facts; return the ids that were new (or failed before).

    The events must have distinct ids. Runs inside the caller's transaction.
    """
    merged = EventFacts()
    for event in events:
        if event.facts is not None:
            merged.charges += event.facts.charges
            merged.refunds += event.facts.refunds
            merged.disputes += event.facts.disputes
            merged.balance_transactions += event.facts.balance_transactions
            merged.hints += event.facts.hints
    anchors = sorted(merged.anchors)
    async with conn.pipeline():
        cur = conn.cursor()
        await cur.execute(LOCK_KEYS_SQL, {"keys": [e.id for e in events] + anchors})
        inserted = conn.cursor()
        await inserted.execute(
            INSERT_EVENTS_SQL,
            {
                "id": [e.id for e in events],
                "type": [e.type for e in events],
                "api_version": [e.api_version for e in events],
                "created": [e.created for e in events],
                "livemode": [e.livemode for e in events],
                "payload": [e.payload for e in events],
                "status": [e.status for e in events],
            },
        )
        # Duplicates are merged again on purpose: every merge is idempotent, and not having to
        # wait for the insert's answer keeps the whole batch to one round trip.
        for sql, facts in (
            (UPSERT_CHARGE_SQL, merged.charges),
            (UPSERT_REFUND_SQL, merged.refunds),
            (UPSERT_DISPUTE_SQL, merged.disputes),
            (UPSERT_BALANCE_TRANSACTION_SQL, merged.balance_transactions),
            (UPSERT_HINT_SQL, merged.hints),
        ):
            if facts:
                await cur.executemany(sql, _rows(facts))
        targets = conn.cursor()
        if anchors:
            await targets.execute(CHARGES_TO_REBUILD_SQL, {"anchors": anchors})
        new_ids = {row[0] for row in await inserted.fetchall()}
        charge_ids = sorted(row[0] for row in await targets.fetchall()) if anchors else []
    if charge_ids:
        await rebuild_ledger(conn, charge_ids, already_locked=set(anchors))
    return new_ids


async def rebuild_ledger(
    conn: AsyncConnection[Any], charge_ids: Sequence[str], already_locked: set[str] | None = None
) -> None:
    """Recompute the ledger entries of these charges from their merged facts."""
    to_lock = [c for c in charge_ids if c not in (already_locked or set())]
    async with conn.pipeline():
        cur = conn.cursor()
        if to_lock:
            await cur.execute(LOCK_KEYS_SQL, {"keys": to_lock})
        await cur.execute(REBUILD_LEDGER_SQL, {"ids": list(charge_ids)})


async def record_failure(conn: AsyncConnection[Any], event: StoredEvent, error: str) -> None:
    """Keep a raw event that could not be processed, with its error, so it can be retried."""
    await conn.execute(
        RECORD_FAILURE_SQL,
        {
            "id": event.id,
            "type": event.type,
            "api_version": event.api_version,
            "created": event.created,
            "livemode": event.livemode,
            "payload": event.payload,
            "error": error[:2000],
        },
    )


CHARGES_OF_STRIPE_ID_SQL = """
SELECT id FROM charges WHERE customer = %(sid)s
UNION
SELECT c.id FROM attribution_hints h
JOIN charges c ON h.anchor_id IN (c.id, c.payment_intent, c.invoice)
WHERE h.source_id = %(sid)s
"""


async def set_stream_mapping(conn: AsyncConnection[Any], stripe_id: str, stream: str | None) -> int:
    """Map a product, price or customer id to a stream (None removes the mapping), and
    re-attribute the history of every charge it reaches. Returns how many charges."""
    await conn.execute(LOCK_KEYS_SQL, {"keys": [stripe_id]})
    if stream is None:
        await conn.execute("DELETE FROM stream_mappings WHERE stripe_id = %s", (stripe_id,))
    else:
        await conn.execute(
            "INSERT INTO stream_mappings (stripe_id, stream) VALUES (%s, %s)"
            " ON CONFLICT (stripe_id) DO UPDATE SET stream = EXCLUDED.stream, updated_at = now()",
            (stripe_id, stream),
        )
    rows = await (await conn.execute(CHARGES_OF_STRIPE_ID_SQL, {"sid": stripe_id})).fetchall()
    charge_ids = sorted(row[0] for row in rows)
    if charge_ids:
        await rebuild_ledger(conn, charge_ids)
    return len(charge_ids)
