"""Durable writes of Stripe events, with group commit.

Requests hand their verified event to `EventWriter.submit` and wait. A few writer tasks take
whatever has queued up meanwhile and write it in one transaction: one fsync and one round trip
for many events instead of one each, so throughput rises with load while a lone event still
goes straight through. A request is answered only after its transaction committed.

If a batch fails for a reason other than the database being unreachable, its events are
written one by one, so one bad event cannot fail its neighbours; an event that fails alone is
stored raw with its error and reported as failed (the webhook answers 500 and Stripe retries).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_delay,
    wait_exponential_jitter,
)

from app.changes import ANNOUNCE_SQL
from app.ledger.store import StoredEvent, record_failure, write_events
from app.observability.prometheus import count_db_retry

log = logging.getLogger(__name__)

MAX_BATCH = 64


class Outcome(enum.StrEnum):
    PROCESSED = "processed"
    IGNORED = "ignored"
    DUPLICATE = "duplicate"
    FAILED = "failed"  # kept with its error, to be processed again
    UNSTORED = "unstored"  # could not even be kept; only Stripe's redelivery will bring it back
    UNAVAILABLE = "unavailable"


# Outcomes that changed what the dashboards show (figures, or failed and ignored counts).
STORED = {Outcome.PROCESSED, Outcome.IGNORED, Outcome.FAILED}


class _Unavailable(Exception):
    pass


# Conflicts between concurrent batches: the batch is simply run again.
RETRYABLE = (pg_errors.DeadlockDetected, pg_errors.SerializationFailure)


def _count_retry(state: RetryCallState) -> None:
    failure = state.outcome.exception() if state.outcome else None
    if isinstance(failure, pg_errors.DeadlockDetected):
        count_db_retry("deadlock")
    elif isinstance(failure, pg_errors.SerializationFailure):
        count_db_retry("serialization")
    else:
        count_db_retry("connection")


def _is_transient(exc: BaseException) -> bool:
    """Worth another try within the writer's bound: a conflict between batches, or a lost or
    refused connection (a restarting database). A batch whose connection broke after its
    commit is safe to write again: its events come back as duplicates."""
    return isinstance(exc, RETRYABLE) or _is_unreachable(exc)


def _is_unreachable(exc: BaseException) -> bool:
    return isinstance(exc, PoolTimeout | psycopg.OperationalError) and not isinstance(
        exc, RETRYABLE
    )


class EventWriter:
    def __init__(self, conninfo: str, *, writers: int = 2, timeout: float = 2.0) -> None:
        self._pool = AsyncConnectionPool(
            conninfo,
            min_size=1,
            max_size=writers + 1,
            timeout=timeout,
            open=False,
            # Each write is one statement, atomic on its own: no BEGIN/COMMIT round trips.
            kwargs={"connect_timeout": max(1, round(timeout)), "autocommit": True},
            reconnect_timeout=timeout,
        )
        self._writers = writers
        self._timeout = timeout
        self._queue: asyncio.Queue[tuple[StoredEvent, asyncio.Future[Outcome]]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self._pool.open(wait=False)
        self._tasks = [asyncio.create_task(self._run()) for _ in range(self._writers)]

    async def stop(self, grace: float = 10.0) -> None:
        """Finish every event already submitted (within `grace` seconds), then close."""
        try:
            await asyncio.wait_for(self._queue.join(), timeout=grace)
        except TimeoutError:
            log.error("stopping with events still queued after %.0f s", grace)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._pool.close()

    async def submit(self, event: StoredEvent) -> Outcome:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        await self._queue.put((event, future))
        return await future

    async def record_failed(self, event: StoredEvent, error: str) -> Outcome:
        """Keep an event whose payload could not be turned into facts, with its error."""
        return await self._record_failure(event, ValueError(error))

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                outcomes = await self._write_batch([event for event, _ in batch])
            except Exception:  # never let a writer die; the events are answered as failed
                log.exception("writing a batch of %d events failed", len(batch))
                outcomes = [Outcome.FAILED] * len(batch)
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if not future.done():
                    future.set_result(outcome)
                self._queue.task_done()
            if not STORED.isdisjoint(outcomes):
                await self._announce()

    async def _announce(self) -> None:
        """Tell open dashboards (app/changes.py), after commit and after answering Stripe."""
        try:
            async with self._pool.connection() as conn:
                await conn.execute(ANNOUNCE_SQL)
        except Exception as exc:  # figures are safe in the database; only the redraw waits
            log.warning("could not announce new events to dashboards: %s", exc)

    async def _write_batch(self, events: Sequence[StoredEvent]) -> list[Outcome]:
        unique: dict[str, StoredEvent] = {}
        for event in events:
            unique.setdefault(event.id, event)
        try:
            new_ids = await self._transaction(list(unique.values()))
        except _Unavailable:
            return [Outcome.UNAVAILABLE] * len(events)
        except Exception as exc:
            if len(unique) == 1:
                return [await self._record_failure(events[0], exc)] + [Outcome.FAILED] * (
                    len(events) - 1
                )
            log.warning("batch of %d events failed (%s); writing them one by one", len(unique), exc)
            return [o for event in events for o in await self._write_batch([event])]
        outcomes: list[Outcome] = []
        for event in events:
            if event.id in new_ids:
                new_ids.discard(event.id)  # a second copy in the same batch is a duplicate
                outcomes.append(Outcome(event.status))
            else:
                outcomes.append(Outcome.DUPLICATE)
        return outcomes

    async def _transaction(self, events: list[StoredEvent]) -> set[str]:
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(_is_transient),
                stop=stop_after_delay(self._timeout * 2),
                wait=wait_exponential_jitter(multiplier=0.005, max=0.2),
                before_sleep=_count_retry,
                reraise=True,
            ):
                with attempt:
                    async with self._pool.connection() as conn:
                        return await write_events(conn, events)
        except Exception as exc:
            if _is_unreachable(exc):
                log.warning("database unreachable while writing events: %s", exc)
                raise _Unavailable from exc
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _record_failure(self, event: StoredEvent, exc: Exception) -> Outcome:
        error = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
        log.error("event %s (%s) failed: %s", event.id, event.type, error)
        try:
            async with self._pool.connection() as conn:
                await record_failure(conn, event, error)
        except Exception as store_exc:
            if _is_unreachable(store_exc):
                return Outcome.UNAVAILABLE
            log.exception("event %s could not be stored as failed either", event.id)
            return Outcome.UNSTORED
        return Outcome.FAILED


async def write_now(conn: psycopg.AsyncConnection[Any], event: StoredEvent) -> Outcome:
    """Write one event on a caller's connection (CLI replay): same rules, no batching."""
    try:
        async with conn.transaction():
            new_ids = await write_events(conn, [event])
    except Exception as exc:
        if _is_unreachable(exc):
            raise
        async with conn.transaction():
            await record_failure(conn, event, f"{type(exc).__name__}: {exc}")
        return Outcome.FAILED
    return Outcome(event.status) if event.id in new_ids else Outcome.DUPLICATE
