"""The ledger rules as two database functions, so a batch of webhook events is one call.

`roi_ingest_events` stores a batch of raw events and merges their facts (app/ledger/facts.py
turns payloads into facts; this function applies the order-independent merges of
docs/ledger.md) and `roi_rebuild_ledger` recomputes the ledger entries of a set of charges
from the merged facts. They were SQL statements sent one by one from app/ledger/store.py; the
bench showed the per-statement overhead (client and server) costing more than the work, so
the same statements now run inside the server in one round trip.

Changing a ledger rule means a new revision that replaces these functions (CREATE OR
REPLACE), like any other schema change.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 06:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REBUILD_LEDGER = """
CREATE FUNCTION roi_rebuild_ledger(ids text[]) RETURNS void LANGUAGE sql AS $fn$
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
    FROM charges c WHERE c.id = ANY(ids)
),
known_refunds AS (
    SELECT r.charge_id, sum(r.amount) AS amount
    FROM refunds r WHERE r.charge_id = ANY(ids) GROUP BY r.charge_id
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
    WHERE r.charge_id = ANY(ids)
  UNION ALL
    SELECT r.id || ':reversal', 'refund', r.charge_id, r.id, r.amount, r.currency, r.reversed_at,
           NULL, r.event_id, NULL, NULL
    FROM refunds r
    WHERE r.charge_id = ANY(ids) AND r.status_rank = 2 AND r.reversed_at IS NOT NULL
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
    WHERE d.charge_id = ANY(ids) AND d.withdrawn
  UNION ALL
    SELECT d.id || ':reinstated', 'dispute', d.charge_id, d.id, d.amount, d.currency,
           COALESCE(d.reinstated_at, d.created), bt.id, d.event_id, bt.amount, bt.currency
    FROM disputes d
    LEFT JOIN LATERAL (SELECT * FROM balance_transactions b
                       WHERE b.source_id = d.id AND b.amount > 0
                       ORDER BY b.created, b.id LIMIT 1) bt ON true
    WHERE d.charge_id = ANY(ids) AND d.withdrawn AND d.reinstated
  UNION ALL
    -- Fees are booked with their movement: a charge's or refund's at its time, a dispute's at
    -- the withdrawal or reinstatement it belongs to.
    SELECT b.id, 'fee', b.charge_id, b.id, -b.fee, b.currency,
           COALESCE(ch.created, rf.created, b.created), b.id, NULL, -b.fee, b.currency
    FROM balance_transactions b
    LEFT JOIN charges ch ON ch.id = b.source_id
    LEFT JOIN refunds rf ON rf.id = b.source_id
    WHERE b.charge_id = ANY(ids) AND b.fee <> 0
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
WHERE le.charge_id = ANY(ids)
  AND NOT EXISTS (SELECT 1 FROM entries e WHERE e.entry_key = le.entry_key)
$fn$;
"""

INGEST_EVENTS = """
CREATE FUNCTION roi_ingest_events(
    p_event_ids text[], p_types text[], p_api_versions text[], p_created bigint[],
    p_livemodes boolean[], p_payloads text[], p_statuses text[],
    p_charges jsonb, p_refunds jsonb, p_disputes jsonb, p_balance_transactions jsonb,
    p_hints jsonb, p_anchors text[]
) RETURNS SETOF text LANGUAGE plpgsql AS $fn$
DECLARE
    f record;
    new_ids text[];
    targets text[];
BEGIN
    -- Every event id and every charge, payment intent or invoice id the batch touches, in
    -- one sorted order, so concurrent batches cannot deadlock on them.
    PERFORM pg_advisory_xact_lock(k)
    FROM (SELECT DISTINCT hashtextextended(x, 0) AS k
          FROM unnest(p_event_ids || p_anchors) AS x ORDER BY 1) s;

    -- New events, and events that failed before, are (re)processed; others are duplicates.
    WITH inserted AS (
        INSERT INTO stripe_events AS e (id, type, api_version, created, livemode, payload, status,
                                        processed_at)
        SELECT id, type, api_version, to_timestamp(created), livemode, payload::jsonb, status, now()
        FROM unnest(p_event_ids, p_types, p_api_versions, p_created,
                    p_livemodes, p_payloads, p_statuses)
             AS t(id, type, api_version, created, livemode, payload, status)
        ORDER BY id
        ON CONFLICT (id) DO UPDATE
           SET status = EXCLUDED.status, error = NULL, attempts = e.attempts + 1,
               processed_at = now(), received_at = now()
         WHERE e.status = 'failed'
        RETURNING e.id
    )
    SELECT array_agg(id) INTO new_ids FROM inserted;

    -- Facts merged one by one: the same id may come twice in a batch, and every merge is
    -- commutative and idempotent, so duplicates are harmless.
    FOR f IN SELECT * FROM jsonb_to_recordset(p_charges) AS x(id text, event_id text,
        currency text, amount bigint, amount_captured bigint, captured boolean, succeeded boolean,
        created bigint, payment_intent text, invoice text, customer text, balance_transaction text,
        meta_stream text, meta_event_created bigint, meta_event_id text, amount_refunded bigint,
        amount_refunded_at bigint) LOOP
        INSERT INTO charges AS c (id, currency, amount, amount_captured, captured, succeeded,
            created,
            payment_intent, invoice, customer, balance_transaction, meta_stream, meta_event_created,
            meta_event_id, amount_refunded, amount_refunded_at, event_id)
        VALUES (f.id, f.currency, f.amount, f.amount_captured, f.captured, f.succeeded,
            to_timestamp(f.created), f.payment_intent, f.invoice, f.customer,
            f.balance_transaction, f.meta_stream, to_timestamp(f.meta_event_created),
            f.meta_event_id, f.amount_refunded, to_timestamp(f.amount_refunded_at), f.event_id)
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
            event_id = LEAST(c.event_id, EXCLUDED.event_id);
    END LOOP;
    FOR f IN SELECT * FROM jsonb_to_recordset(p_refunds) AS x(id text, charge_id text,
        amount bigint, currency text, created bigint, status text, status_rank bigint,
        reversed_at bigint, balance_transaction text, event_id text) LOOP
        INSERT INTO refunds AS r (id, charge_id, amount, currency, created, status, status_rank,
            reversed_at, balance_transaction, event_id)
        VALUES (f.id, f.charge_id, f.amount, f.currency, to_timestamp(f.created), f.status,
            f.status_rank, to_timestamp(f.reversed_at), f.balance_transaction, f.event_id)
        ON CONFLICT (id) DO UPDATE SET
            status = CASE WHEN (EXCLUDED.status_rank, EXCLUDED.status) > (r.status_rank, r.status)
                          THEN EXCLUDED.status ELSE r.status END,
            status_rank = GREATEST(r.status_rank, EXCLUDED.status_rank),
            reversed_at = LEAST(r.reversed_at, EXCLUDED.reversed_at),
            balance_transaction = COALESCE(r.balance_transaction, EXCLUDED.balance_transaction),
            event_id = LEAST(r.event_id, EXCLUDED.event_id);
    END LOOP;
    FOR f IN SELECT * FROM jsonb_to_recordset(p_disputes) AS x(id text, charge_id text,
        amount bigint, currency text, created bigint, withdrawn boolean, withdrawn_at bigint,
        reinstated boolean, reinstated_at bigint, event_id text) LOOP
        INSERT INTO disputes AS d (id, charge_id, amount, currency, created, withdrawn,
            withdrawn_at,
            reinstated, reinstated_at, event_id)
        VALUES (f.id, f.charge_id, f.amount, f.currency, to_timestamp(f.created),
            f.withdrawn, to_timestamp(f.withdrawn_at), f.reinstated,
            to_timestamp(f.reinstated_at), f.event_id)
        ON CONFLICT (id) DO UPDATE SET
            amount = GREATEST(d.amount, EXCLUDED.amount),
            withdrawn = d.withdrawn OR EXCLUDED.withdrawn,
            withdrawn_at = LEAST(d.withdrawn_at, EXCLUDED.withdrawn_at),
            reinstated = d.reinstated OR EXCLUDED.reinstated,
            reinstated_at = LEAST(d.reinstated_at, EXCLUDED.reinstated_at),
            event_id = LEAST(d.event_id, EXCLUDED.event_id);
    END LOOP;
    FOR f IN SELECT * FROM jsonb_to_recordset(p_balance_transactions) AS x(id text, charge_id text,
        source_id text, type text, amount bigint, fee bigint, net bigint, currency text,
        exchange_rate text, created bigint) LOOP
        INSERT INTO balance_transactions (id, charge_id, source_id, type, amount, fee, net,
            currency,
            exchange_rate, created)
        VALUES (f.id, f.charge_id, f.source_id, f.type, f.amount, f.fee, f.net,
            f.currency, f.exchange_rate::numeric, to_timestamp(f.created))
        ON CONFLICT (id) DO NOTHING;
    END LOOP;
    FOR f IN SELECT * FROM jsonb_to_recordset(p_hints) AS x(anchor_id text, source_id text,
        priority bigint, stream text, event_created bigint, event_id text) LOOP
        INSERT INTO attribution_hints AS h (anchor_id, source_id, priority, stream, event_created,
            event_id)
        VALUES (f.anchor_id, f.source_id, f.priority, f.stream, to_timestamp(f.event_created),
            f.event_id)
        ON CONFLICT (anchor_id, source_id) DO UPDATE SET
            priority = EXCLUDED.priority, stream = EXCLUDED.stream,
            event_created = EXCLUDED.event_created, event_id = EXCLUDED.event_id
        WHERE (EXCLUDED.event_created, EXCLUDED.event_id) > (h.event_created, h.event_id);
    END LOOP;

    -- The charges whose ledger entries these facts can change, locked too, then rebuilt.
    SELECT array_agg(id ORDER BY id) INTO targets FROM charges
    WHERE id = ANY(p_anchors) OR payment_intent = ANY(p_anchors) OR invoice = ANY(p_anchors);
    IF targets IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(k)
        FROM (SELECT DISTINCT hashtextextended(x, 0) AS k
              FROM unnest(targets) AS x WHERE x <> ALL(p_anchors) ORDER BY 1) s;
        PERFORM roi_rebuild_ledger(targets);
    END IF;
    RETURN QUERY SELECT unnest(new_ids);
END
$fn$;
"""


def upgrade() -> None:
    # exec_driver_sql: the bodies hold ':reversal'-style literals that text() would read as
    # bind parameters.
    op.get_bind().exec_driver_sql(REBUILD_LEDGER)
    op.get_bind().exec_driver_sql(INGEST_EVENTS)


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION roi_ingest_events(text[], text[], text[], bigint[], boolean[], text[], "
        "text[], jsonb, jsonb, jsonb, jsonb, jsonb, text[])"
    )
    op.execute("DROP FUNCTION roi_rebuild_ledger(text[])")
