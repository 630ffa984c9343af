"""Calls to the Stripe API: one client, bounded retries with backoff, every call counted.

Retries are ours (tenacity), not the client's `max_network_retries`: stripe-python 16
(`HTTPClient._should_retry`, `_sleep_time_seconds`) retries connection errors, 409 and 5xx,
but not 429 unless Stripe adds `Stripe-Should-Retry: true`, never reads `Retry-After`, and caps
its backoff at 2 s with no bound on the total time. So the client is built with
`max_network_retries=0` and every call goes through `call_stripe`, which retries network
errors, 429 and 5xx with exponential backoff and jitter, waits at least what `Retry-After`
asks, and gives up (StripeGaveUp, a log line, a metric) rather than start an attempt past
`ROI_STRIPE_GIVE_UP_SECONDS`.

The client is synchronous; each attempt runs in a worker thread so the event loop (the web
app's, or the CLI's) keeps going and a cancelled caller does not wait out a backoff.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import orjson
import stripe
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_before_delay,
    wait_exponential,
    wait_random,
)

from app.observability.prometheus import record_stripe_call, record_stripe_retry
from app.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

# Stripe's own largest page.
PAGE_SIZE = 100

# 0.5 s, 1 s, 2 s ... up to 30 s, plus up to 0.5 s of jitter so clients do not retry in step.
_backoff = wait_exponential(multiplier=0.5, max=30) + wait_random(0, 0.5)


class MissingApiKey(RuntimeError):
    """No STRIPE_API_KEY: nothing can be fetched from Stripe."""


class StripeGaveUp(RuntimeError):
    """A call kept failing transiently until the give-up bound; it is worth trying later."""

    def __init__(self, operation: str, attempts: int, seconds: float, cause: BaseException):
        self.operation = operation
        self.attempts = attempts
        super().__init__(
            f"Stripe API {operation} gave up after {attempts} attempt(s) in {seconds:.1f} s: "
            f"{describe(cause)}"
        )


def describe(exc: BaseException) -> str:
    """A one-line account of a Stripe error, with its HTTP status when there was one."""
    if isinstance(exc, stripe.StripeError):
        status = f"HTTP {exc.http_status}: " if exc.http_status else ""
        return f"{type(exc).__name__}: {status}{exc.user_message or exc}"
    return f"{type(exc).__name__}: {exc}"


def is_transient(exc: BaseException) -> bool:
    """Network errors, 429 and 5xx: the same request may well succeed later."""
    if isinstance(exc, stripe.APIConnectionError):
        return True
    if isinstance(exc, stripe.StripeError) and exc.http_status is not None:
        return exc.http_status == 429 or exc.http_status >= 500
    return False


def retry_after_seconds(exc: BaseException | None, now: datetime | None = None) -> float:
    """What a `Retry-After` header asks for (seconds or an HTTP date), 0 without one."""
    if not isinstance(exc, stripe.StripeError) or not exc.headers:
        return 0.0
    value = next((v for k, v in exc.headers.items() if k.lower() == "retry-after"), None)
    if value is None:
        return 0.0
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 0.0
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _wait(state: RetryCallState) -> float:
    exc = state.outcome.exception() if state.outcome else None
    return max(_backoff(state), retry_after_seconds(exc))


async def call_stripe(operation: str, request: Callable[[], T], *, give_up_seconds: float) -> T:
    """`request()` with retries on transient errors, bounded by `give_up_seconds`.

    Raises StripeGaveUp when the bound is reached, or the Stripe error itself when it is not
    worth retrying (authentication, not found, bad request)."""
    started = time.monotonic()

    def count_retry(state: RetryCallState) -> None:
        record_stripe_retry(operation)
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "Stripe API %s attempt %d failed (%s); retrying in %.2f s",
            operation,
            state.attempt_number,
            describe(exc) if exc else "?",
            state.upcoming_sleep,
        )

    attempts = 0
    try:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(is_transient),
            wait=_wait,
            stop=stop_before_delay(give_up_seconds),
            before_sleep=count_retry,
            reraise=True,
        ):
            with attempt:
                attempts = attempt.retry_state.attempt_number
                result = await asyncio.to_thread(request)
    except Exception as exc:
        if is_transient(exc):
            record_stripe_call(operation, "gave_up")
            gave_up = StripeGaveUp(operation, attempts, time.monotonic() - started, exc)
            log.error("%s (bound ROI_STRIPE_GIVE_UP_SECONDS=%g)", gave_up, give_up_seconds)
            raise gave_up from exc
        record_stripe_call(operation, "error")
        raise
    record_stripe_call(operation, "success")
    return result


@dataclass(frozen=True)
class EventPage:
    """One page of `GET /v1/events`, newest first as Stripe lists them, as plain JSON."""

    events: list[dict[str, Any]]
    has_more: bool


class StripeApi:
    """The few Stripe API calls the catch-up makes, each retried and counted."""

    def __init__(self, settings: Settings) -> None:
        if not settings.stripe_api_key:
            raise MissingApiKey(
                "STRIPE_API_KEY is not set: set a secret or restricted key that can read "
                "events and balance transactions"
            )
        self._give_up = settings.stripe_give_up_seconds
        self._client = stripe.StripeClient(
            settings.stripe_api_key,
            base_addresses={"api": settings.stripe_api_base.rstrip("/")},
            max_network_retries=0,  # see the module docstring: call_stripe retries
            http_client=stripe.RequestsClient(timeout=settings.stripe_api_timeout_seconds),
        )

    async def list_events(self, params: Mapping[str, Any]) -> EventPage:
        client = self._client
        page = await call_stripe(
            "list_events",
            lambda: client.v1.events.list(params=dict(params)),  # type: ignore[arg-type]
            give_up_seconds=self._give_up,
        )
        # The raw body, not the StripeObjects: events are stored and read exactly as the
        # webhook would have received them.
        body = _raw_body(page)
        data = body.get("data")
        if body.get("object") != "list" or not isinstance(data, list):
            raise ValueError("GET /v1/events did not answer a list object")
        return EventPage(events=data, has_more=bool(body.get("has_more")))

    async def balance_transaction(self, txn_id: str) -> dict[str, Any]:
        client = self._client
        txn = await call_stripe(
            "retrieve_balance_transaction",
            lambda: client.v1.balance_transactions.retrieve(txn_id),
            give_up_seconds=self._give_up,
        )
        return _raw_body(txn)


def _raw_body(obj: stripe.StripeObject) -> dict[str, Any]:
    response = obj.last_response
    if response is None:  # pragma: no cover (the client always keeps it)
        raise ValueError("Stripe answered without a response body")
    body = orjson.loads(response.body)
    if not isinstance(body, dict):
        raise ValueError("Stripe answered something other than a JSON object")
    return body
