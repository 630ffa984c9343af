"""Facts -> database: order-independent merges, then the ledger entries rebuilt from them.

Every merge is commutative and idempotent (flags OR-ed, amounts by high-water mark,
times by earliest, mutable metadata by the newest (event created, event id)), so the merged
facts, and the ledger derived from them, are the same for any order or duplication of events.

The merges and the ledger rules themselves run in the database, as the functions
`roi_ingest_events` and `roi_rebuild_ledger` (migrations/versions/0005_ledger_functions.py):
one round trip per batch of events.

Concurrency: a batch first takes transaction-level advisory locks, in sorted order, on every
event id and every charge, payment intent or invoice id it touches, then on the charges it will
rebuild. Two transactions that could see each other's half-written state therefore run one
after the other; deadlocks that remain possible between those two steps are retried by the
caller. Nothing here commits: a single statement is atomic on its own, several run in the
caller's transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from psycopg import AsyncConnection

from app.ledger.facts import EventFacts

LOCK_KEYS_SQL = """
SELECT pg_advisory_xact_lock(k)
FROM (SELECT DISTINCT hashtextextended(x, 0) AS k FROM unnest(%(keys)s::text[]) AS x ORDER BY 1) s
"""


RECORD_FAILURE_SQL = """
INSERT INTO stripe_events AS e (id, type, api_version, created, livemode, payload, status, error)
VALUES (%(id)s, %(type)s, %(api_version)s, to_timestamp(%(created)s), %(livemode)s,
        %(payload)s::jsonb, 'failed', %(error)s)
ON CONFLICT (id) DO UPDATE
   SET error = EXCLUDED.error, attempts = e.attempts + 1, received_at = now()
 WHERE e.status = 'failed'
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


INGEST_EVENTS_SQL = """
SELECT * FROM roi_ingest_events(
    %(id)s::text[], %(type)s::text[], %(api_version)s::text[], %(created)s::bigint[],
    %(livemode)s::boolean[], %(payload)b::text[], %(status)s::text[],
    %(charges)s::jsonb, %(refunds)s::jsonb, %(disputes)s::jsonb,
    %(balance_transactions)s::jsonb, %(hints)s::jsonb, %(anchors)s::text[])
"""


async def write_events(
    conn: AsyncConnection[Any], events: Sequence[StoredEvent], *, fetched: EventFacts | None = None
) -> set[str]:
    """Store the events and book their facts; return the ids that were new (or failed before).

    One statement, so one round trip: the database function `roi_ingest_events` (migration
    0005) takes the locks, stores the raw events, merges the facts and rebuilds the ledger
    entries of every charge they touch. Atomic on its own; the events must have distinct ids.
    The payloads go in binary (%(payload)b): escaping JSON into a text-array literal costs more
    CPU than everything else the webhook does.

    `fetched` are facts no event announced (a balance transaction fetched from the Stripe
    API): merged and booked by the same rules, with or without events.
    """
    merged = EventFacts()
    for facts in [fetched, *(event.facts for event in events)]:
        if facts is not None:
            merged.charges += facts.charges
            merged.refunds += facts.refunds
            merged.disputes += facts.disputes
            merged.balance_transactions += facts.balance_transactions
            merged.hints += facts.hints
    cursor = await conn.execute(
        INGEST_EVENTS_SQL,
        {
            "id": [e.id for e in events],
            "type": [e.type for e in events],
            "api_version": [e.api_version for e in events],
            "created": [e.created for e in events],
            "livemode": [e.livemode for e in events],
            "payload": [e.payload for e in events],
            "status": [e.status for e in events],
            # orjson serialises the fact dataclasses directly, field names as JSON keys.
            "charges": orjson.dumps(merged.charges).decode(),
            "refunds": orjson.dumps(merged.refunds).decode(),
            "disputes": orjson.dumps(merged.disputes).decode(),
            "balance_transactions": orjson.dumps(merged.balance_transactions).decode(),
            "hints": orjson.dumps(merged.hints).decode(),
            "anchors": sorted(merged.anchors),
        },
    )
    return {row[0] for row in await cursor.fetchall()}


async def rebuild_ledger(conn: AsyncConnection[Any], charge_ids: Sequence[str]) -> None:
    """Recompute the ledger entries of these charges from their merged facts."""
    await conn.execute(LOCK_KEYS_SQL, {"keys": list(charge_ids)})
    await conn.execute("SELECT roi_rebuild_ledger(%s::text[])", (list(charge_ids),))


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
