"""POST /webhooks/stripe: verify, keep the raw event, book it, and only then answer 2xx.

Answers, as Stripe reads them: 2xx = delivered, anything else = retry later (for up to three
days). So 400/413 are for requests that can never succeed, 500 for an event we failed to
process (kept raw with its error), and 503 when the database cannot be reached.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import stripe
from fastapi import APIRouter, Request, Response

from app.ledger.facts import EventShapeError, facts_from_event, is_handled
from app.ledger.store import StoredEvent
from app.settings import Settings
from ingest.event_writer import EventWriter, Outcome

MAX_BODY_BYTES = 1024 * 1024

router = APIRouter()

_STATUS_FOR = {
    Outcome.PROCESSED: 200,
    Outcome.IGNORED: 200,
    Outcome.DUPLICATE: 200,
    Outcome.FAILED: 500,
    Outcome.UNAVAILABLE: 503,
}


def _answer(http_status: int, **body: Any) -> Response:
    return Response(json.dumps(body), status_code=http_status, media_type="application/json")


def _error(status: int, message: str) -> Response:
    return _answer(status, error=message)


async def _read_body(request: Request) -> bytes | None:
    """The body, or None when it exceeds MAX_BODY_BYTES (checked before and while reading)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _verify(payload: str, header: str | None, secrets: list[str], tolerance: int) -> str | None:
    """None when the header is valid for one of the secrets, else why not."""
    if not header:
        return "missing Stripe-Signature header"
    reason = "invalid Stripe-Signature header"
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(payload, header, secret, tolerance=tolerance)
            return None
        except stripe.SignatureVerificationError as exc:
            reason = f"invalid Stripe-Signature header: {exc.user_message or exc}"
    return reason


def parse_event(payload: str) -> dict[str, Any]:
    """The event envelope, checked; raises ValueError naming the field that is wrong."""
    try:
        event = json.loads(payload, parse_float=Decimal)
    except ValueError as exc:
        raise ValueError(f"body is not valid JSON: {exc}") from exc
    if not isinstance(event, dict) or event.get("object") != "event":
        raise ValueError("body is not a Stripe event: object must be 'event'")
    for key, kind in (("id", str), ("type", str), ("created", int)):
        if not isinstance(event.get(key), kind) or isinstance(event.get(key), bool):
            raise ValueError(f"body is not a Stripe event: {key} must be a {kind.__name__}")
    data = event.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
        raise ValueError("body is not a Stripe event: data.object must be an object")
    return event


def stored_event(
    event: dict[str, Any], payload: str, settings: Settings, *, facts: bool = True
) -> StoredEvent:
    """The event with its facts (none for types we do not use, or when `facts` is False).

    Raises EventShapeError when a handled event lacks what the ledger needs."""
    api_version = event.get("api_version")
    event_facts = (
        facts_from_event(event, settings.stream_metadata_key)
        if facts and is_handled(event["type"])
        else None
    )
    return StoredEvent(
        id=event["id"],
        type=event["type"],
        api_version=api_version if isinstance(api_version, str) else None,
        created=event["created"],
        livemode=bool(event.get("livemode", False)),
        payload=payload,
        facts=event_facts,
    )


@router.post(
    "/webhooks/stripe",
    summary="Receive a Stripe webhook event",
    responses={
        400: {"description": "bad signature, or not a Stripe event"},
        413: {"description": "body over 1 MiB"},
        500: {"description": "processing failed; the event is kept and Stripe retries"},
        503: {"description": "no webhook secret configured, or database unreachable"},
    },
)
async def stripe_webhook(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    writer: EventWriter = request.app.state.event_writer
    secrets = settings.webhook_secrets
    if not secrets:
        return _error(503, "webhook secret not configured (set STRIPE_WEBHOOK_SECRET)")
    body = await _read_body(request)
    if body is None:
        return _error(413, f"body exceeds {MAX_BODY_BYTES} bytes")
    try:
        payload = body.decode("utf-8")
    except UnicodeDecodeError:
        return _error(400, "body is not UTF-8")
    problem = _verify(
        payload,
        request.headers.get("stripe-signature"),
        secrets,
        settings.webhook_tolerance_seconds,
    )
    if problem:
        return _error(400, problem)
    try:
        event = parse_event(payload)
    except ValueError as exc:
        return _error(400, str(exc))
    try:
        outcome = await writer.submit(stored_event(event, payload, settings))
    except EventShapeError as exc:
        unusable = stored_event(event, payload, settings, facts=False)
        outcome = await writer.record_failed(unusable, str(exc))
    status = _STATUS_FOR[outcome]
    if status >= 500:
        message = (
            "database unavailable, retry later"
            if outcome is Outcome.UNAVAILABLE
            else "event could not be processed; it is kept and will be retried"
        )
        return _answer(status, error=message, id=event["id"])
    return _answer(200, received=True, id=event["id"], status=outcome.value)
