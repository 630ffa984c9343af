"""Catch-up from the Stripe API: events the webhook missed, and the fees of charges.

Events. `reconcile_events` lists events through the API, oldest first, and feeds those not
stored yet (or stored as failed) through the webhook's own path: `parse_event`,
`stored_event`, `write_now` (the idempotent, concurrency-safe `roi_ingest_events`). A webhook
delivering the same event at the same moment is harmless: one of the two finds it stored.

Oldest first, in bounded memory: Stripe lists newest first. Rather than page through
everything and reverse it (memory, or a spool, growing with the events of 30 days, and nothing
booked before the last page arrives), the walk pages *up* with `ending_before`, which answers
the page just newer than a cursor. Each page is booked before the next is asked for, so memory
holds one page and an interrupted run keeps what it booked. The starting cursor is the newest
event created before `since` (one request); when Stripe keeps none (since predates its 30 days
of events), the oldest second that has events is found by bisecting on `created` (about 22
one-event requests) and the events of that second start the walk.

High-water mark. After each page, `stripe_catchup_state.high_water` moves to the newest event
up to which every listed event is stored as processed or ignored. An event that fails holds
the mark before it, so `roi reconcile` without --since starts again there and retries it. A run
that starts after the mark (leaving a gap) does not move it.

Fees. `fetch_fees` fetches the balance transaction of every charge and refund in the ledger
whose settlement is not known yet (`settlement_amount IS NULL` with a `txn_` id known) and
books it with the same function as a balance transaction embedded in an event. A fetch that
gives up is kept in `stripe_fee_fetches` with its error and ends the round (Stripe is
struggling; the next round starts over); one that fails for good (404) is retried with a
backoff. The web app runs `fetch_fees_forever` when STRIPE_API_KEY is set.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
import stripe
from tqdm import tqdm

from app.changes import ANNOUNCE_SQL
from app.database import libpq_url
from app.ledger.facts import EventShapeError, fetched_balance_transaction
from app.ledger.store import record_failure, write_events
from app.settings import Settings
from ingest.event_writer import Outcome, write_now
from ingest.stripe_api import PAGE_SIZE, StripeApi, StripeGaveUp, describe
from ingest.stripe_webhook import parse_event, stored_event

log = logging.getLogger(__name__)

Conn = psycopg.AsyncConnection[Any]

STORED_STATUSES = ("processed", "ignored")


class NoStartingPoint(ValueError):
    """Neither --since nor a previous run's high-water mark says where to start."""


# ---------------------------------------------------------------------------------------------
# Events


@dataclass
class EventCatchup:
    """What one `roi reconcile` run did with the events it listed."""

    listed: int = 0
    already_stored: int = 0
    processed: int = 0
    ignored: int = 0
    failed: int = 0
    high_water: datetime | None = None
    gave_up: str | None = None

    def summary(self) -> str:
        return (
            f"listed {self.listed}, already stored {self.already_stored}, "
            f"processed {self.processed}, ignored {self.ignored}, failed {self.failed}"
        )


@dataclass(frozen=True)
class Mark:
    created: int
    event_id: str


async def reconcile_events(
    settings: Settings,
    *,
    since: datetime | None,
    until: datetime | None = None,
    progress: bool | None = None,
) -> EventCatchup:
    """Book the events Stripe has in [since, until) that are not stored yet, oldest first.

    Without `since`, start from the high-water mark of the previous run. `progress`: show a
    tqdm bar (None: only on a terminal)."""
    api = StripeApi(settings)
    result = EventCatchup()
    async with await psycopg.AsyncConnection.connect(libpq_url(settings), autocommit=True) as conn:
        previous = await _high_water(conn)
        start = since or previous
        if start is None:
            raise NoStartingPoint(
                "no previous run to continue from: say where to start with --since DATE"
            )
        # Moving the mark past a gap would skip the events in it on the next run.
        contiguous = previous is None or start <= previous
        end = until or datetime.now(UTC)
        bar = tqdm(
            total=max(1, int((end - start).total_seconds())),
            disable=None if progress is None else not progress,
            unit="s",
            bar_format="{l_bar}{bar}| {postfix}",
            desc="events",
        )
        walk = _EventWalk(settings, conn, result, start, bar)
        try:
            first, cursor = await _starting_point(api, start, until)
            if first:
                await walk.book(first)
            while cursor is not None:
                params: dict[str, Any] = {"limit": PAGE_SIZE, "ending_before": cursor}
                if until is not None:
                    params["created"] = {"lt": _ts(until)}
                page = await api.list_events(params)
                if not page.events:
                    break
                await walk.book(list(reversed(page.events)))
                if contiguous:
                    await _save_high_water(conn, walk.mark, None)
                cursor = page.events[0]["id"] if page.has_more else None
        except StripeGaveUp as exc:
            result.gave_up = str(exc)
        finally:
            bar.close()
            if contiguous:
                await _save_high_water(conn, walk.mark, result.gave_up)
            else:
                await _save_high_water(conn, None, result.gave_up)
            if result.processed or result.ignored or result.failed:
                await conn.execute(ANNOUNCE_SQL)  # open dashboards redraw
        result.high_water = await _high_water(conn)
    return result


class _EventWalk:
    """Books pages of listed events, oldest first, and keeps the high-water mark."""

    def __init__(
        self, settings: Settings, conn: Conn, result: EventCatchup, start: datetime, bar: tqdm[Any]
    ) -> None:
        self.settings = settings
        self.conn = conn
        self.result = result
        self.start = _ts(start)
        self.bar = bar
        self.mark: Mark | None = None
        self.blocked = False  # an event failed: the mark stays before it

    async def book(self, events: list[dict[str, Any]]) -> None:
        ids = [e.get("id") for e in events]
        rows = await (
            await self.conn.execute(
                "SELECT id, status FROM stripe_events WHERE id = ANY(%s)", (ids,)
            )
        ).fetchall()
        status = dict(rows)
        for listed in events:
            self.result.listed += 1
            if status.get(listed.get("id")) in STORED_STATUSES:
                outcome = Outcome.DUPLICATE
            else:
                outcome = await self._write(listed)
            if outcome is Outcome.DUPLICATE:
                self.result.already_stored += 1
            elif outcome is Outcome.PROCESSED:
                self.result.processed += 1
            elif outcome is Outcome.IGNORED:
                self.result.ignored += 1
            else:
                self.result.failed += 1
                self.blocked = True
            created = listed.get("created")
            if not isinstance(created, int):
                continue  # not an event (counted as failed above): nothing to mark
            if not self.blocked:
                self.mark = Mark(created=created, event_id=listed["id"])
            self.bar.n = max(self.bar.n, created - self.start)
            self.bar.set_postfix_str(_iso(created), refresh=True)

    async def _write(self, listed: dict[str, Any]) -> Outcome:
        payload = orjson.dumps(listed).decode()
        try:
            event = parse_event(payload)
        except ValueError as exc:
            log.error("Stripe listed something that is not an event: %s", exc)
            return Outcome.FAILED
        try:
            return await write_now(self.conn, stored_event(event, payload, self.settings))
        except EventShapeError as exc:
            # As the webhook does: kept raw with its error, counted as failed, replayable.
            unusable = stored_event(event, payload, self.settings, facts=False)
            log.error("event %s (%s) failed: %s", event["id"], event["type"], exc)
            async with self.conn.transaction():
                await record_failure(self.conn, unusable, str(exc))
            return Outcome.FAILED


async def _starting_point(
    api: StripeApi, start: datetime, until: datetime | None
) -> tuple[list[dict[str, Any]], str | None]:
    """The events to book first (oldest first) and the cursor to page up from."""
    before = await api.list_events({"limit": 1, "created": {"lt": _ts(start)}})
    if before.events:
        return [], before.events[0]["id"]
    # Stripe keeps nothing before `start`: find the oldest second that has events.
    window: dict[str, int] = {"gte": _ts(start)}
    if until is not None:
        window["lt"] = _ts(until)
    newest = await api.list_events({"limit": 1, "created": window})
    if not newest.events:
        return [], None
    low, high = _ts(start), int(newest.events[0]["created"])
    while low < high:  # no events before `low`; some at `high`
        middle = (low + high) // 2
        found = await api.list_events({"limit": 1, "created": {"gte": low, "lte": middle}})
        if found.events:
            high = int(found.events[0]["created"])
        else:
            low = middle + 1
    # Every event of that second, newest first (few: one second of an account's events).
    oldest: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": PAGE_SIZE, "created": low}
    while True:
        page = await api.list_events(params)
        oldest += page.events
        if not page.has_more or not page.events:
            break
        params = {**params, "starting_after": page.events[-1]["id"]}
    return list(reversed(oldest)), (oldest[0]["id"] if oldest else None)


async def _high_water(conn: Conn) -> datetime | None:
    row = await (
        await conn.execute("SELECT high_water FROM stripe_catchup_state WHERE name = 'events'")
    ).fetchone()
    return row[0] if row else None


async def _save_high_water(conn: Conn, mark: Mark | None, error: str | None) -> None:
    await conn.execute(
        """
        INSERT INTO stripe_catchup_state AS s
            (name, high_water, high_water_event_id, last_run_at, last_error)
        VALUES ('events', to_timestamp(%(created)s), %(event_id)s, now(), %(error)s)
        ON CONFLICT (name) DO UPDATE SET
            high_water = GREATEST(s.high_water, EXCLUDED.high_water),
            high_water_event_id = CASE WHEN EXCLUDED.high_water > s.high_water
                                            OR s.high_water IS NULL
                                       THEN EXCLUDED.high_water_event_id
                                       ELSE s.high_water_event_id END,
            last_run_at = now(), last_error = EXCLUDED.last_error
        """,
        {
            "created": mark.created if mark else None,
            "event_id": mark.event_id if mark else None,
            "error": error,
        },
    )


# ---------------------------------------------------------------------------------------------
# Fees


@dataclass
class FeeCatchup:
    """What one round of fee fetching did."""

    booked: int = 0
    failed: int = 0  # permanent errors (e.g. no such balance transaction), retried with backoff
    gave_up: str | None = None  # the round stopped here; retried next round
    busy: bool = False  # another process was fetching

    def summary(self) -> str:
        if self.busy:
            return "fees: another process is fetching them right now"
        gave_up = f", gave up: {self.gave_up}" if self.gave_up else ""
        return f"fees: {self.booked} booked, {self.failed} failed{gave_up}"


# Movements whose balance transaction is known by id but not fetched, in booking order. The
# partial index ix_ledger_entries_settlement_unknown (migration 0010) keeps this cheap.
PENDING_FEES_SQL = """
SELECT le.balance_transaction, le.charge_id, le.object_id, le.booked_at, le.entry_key
FROM ledger_entries le
LEFT JOIN stripe_fee_fetches f ON f.balance_transaction = le.balance_transaction
WHERE le.settlement_amount IS NULL
  AND le.kind IN ('charge', 'refund') AND le.balance_transaction IS NOT NULL
  AND (le.booked_at, le.entry_key) > (%(after_at)s, %(after_key)s)
  AND (%(everything)s OR f.next_attempt_at IS NULL OR f.next_attempt_at <= now())
ORDER BY le.booked_at, le.entry_key
LIMIT %(limit)s
"""

# A failure that is not Stripe struggling (a 404 from another account's id, a payload the
# ledger cannot use) is tried again later and later, up to once a day.
RECORD_FETCH_FAILURE_SQL = """
INSERT INTO stripe_fee_fetches AS f
    (balance_transaction, charge_id, source_id, attempts, last_error, next_attempt_at)
VALUES (%(txn)s, %(charge_id)s, %(source_id)s, 1, %(error)s,
        now() + CASE WHEN %(permanent)s THEN make_interval(secs => %(interval)s) ELSE '0s' END)
ON CONFLICT (balance_transaction) DO UPDATE SET
    attempts = f.attempts + 1, last_error = EXCLUDED.last_error, updated_at = now(),
    next_attempt_at = now() + CASE WHEN %(permanent)s
        THEN make_interval(secs => LEAST(86400, %(interval)s * 2 ^ LEAST(f.attempts, 20)))
        ELSE '0s' END
"""

FETCH_LOCK_SQL = "SELECT pg_try_advisory_lock(hashtextextended('roi_fee_fetch', 0))"
FETCH_UNLOCK_SQL = "SELECT pg_advisory_unlock(hashtextextended('roi_fee_fetch', 0))"

PENDING_BATCH = 500


async def fetch_fees(settings: Settings, *, everything: bool) -> FeeCatchup:
    """One round: fetch and book every pending balance transaction.

    `everything`: also those whose last failure asked to wait (the operator asked, `roi
    reconcile --fees`); the background round respects the wait."""
    api = StripeApi(settings)
    result = FeeCatchup()
    async with await psycopg.AsyncConnection.connect(libpq_url(settings), autocommit=True) as conn:
        # One fetcher at a time across processes (several workers, the CLI): the writes are
        # idempotent anyway, this only saves API calls.
        locked = await (await conn.execute(FETCH_LOCK_SQL)).fetchone()
        if not (locked and locked[0]):
            result.busy = True
            return result
        try:
            await _fetch_pending(conn, api, settings, result, everything)
        finally:
            await conn.execute(FETCH_UNLOCK_SQL)
            if result.booked:
                await conn.execute(ANNOUNCE_SQL)
    return result


async def _fetch_pending(
    conn: Conn, api: StripeApi, settings: Settings, result: FeeCatchup, everything: bool
) -> None:
    after: tuple[datetime, str] = (datetime.min.replace(tzinfo=UTC), "")
    while True:
        rows = await (
            await conn.execute(
                PENDING_FEES_SQL,
                {
                    "after_at": after[0],
                    "after_key": after[1],
                    "everything": everything,
                    "limit": PENDING_BATCH,
                },
            )
        ).fetchall()
        if not rows:
            return
        for txn_id, charge_id, source_id, booked_at, entry_key in rows:
            after = (booked_at, entry_key)
            try:
                txn = await api.balance_transaction(txn_id)
                facts = fetched_balance_transaction(txn, charge_id=charge_id, source_id=source_id)
            except StripeGaveUp as exc:
                await _record_fetch_failure(conn, settings, txn_id, charge_id, source_id, exc)
                result.gave_up = str(exc)
                return
            except (EventShapeError, stripe.InvalidRequestError) as exc:
                log.error("balance transaction %s of %s: %s", txn_id, source_id, describe(exc))
                await _record_fetch_failure(conn, settings, txn_id, charge_id, source_id, exc)
                result.failed += 1
                continue
            async with conn.transaction():
                await write_events(conn, [], fetched=facts)
                await conn.execute(
                    "DELETE FROM stripe_fee_fetches WHERE balance_transaction = %s", (txn_id,)
                )
            result.booked += 1


async def _record_fetch_failure(
    conn: Conn,
    settings: Settings,
    txn_id: str,
    charge_id: str,
    source_id: str,
    exc: Exception,
) -> None:
    await conn.execute(
        RECORD_FETCH_FAILURE_SQL,
        {
            "txn": txn_id,
            "charge_id": charge_id,
            "source_id": source_id,
            "error": describe(exc.__cause__ or exc)[:2000],
            "permanent": not isinstance(exc, StripeGaveUp),
            "interval": settings.fee_fetch_interval_seconds,
        },
    )


async def fetch_fees_forever(settings: Settings) -> None:
    """The web app's background fee fetcher: a round every ROI_FEE_FETCH_INTERVAL seconds.
    Without STRIPE_API_KEY it returns at once: fees stay unknown, and are counted as such."""
    if not settings.stripe_api_key:
        log.info("STRIPE_API_KEY is not set: charge fees stay unknown (trust.fees_unknown)")
        return
    while True:
        try:
            result = await fetch_fees(settings, everything=False)
            if result.booked or result.failed or result.gave_up:
                log.info("%s", result.summary())
        except Exception as exc:  # the database or Stripe may be away; next round retries
            log.warning("fee fetching round failed: %s", describe(exc))
        await asyncio.sleep(settings.fee_fetch_interval_seconds)


# ---------------------------------------------------------------------------------------------


def _ts(moment: datetime) -> int:
    return int(moment.timestamp())


def _iso(created: int) -> str:
    return datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%d %H:%M:%S")
