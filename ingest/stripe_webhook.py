"""POST /webhooks/stripe: verify, keep the raw event, book it, and only then answer 2xx.

Answers, as Stripe reads them: 2xx = delivered, anything else = retry later (for up to three
days). So 400/413 are for requests that can never succeed, 500 for an event we failed to
process (kept raw with its error), and 503 when the database cannot be reached.
"""

from __future__ import annotations

import re
import time
from typing import Any

import orjson
import stripe
from starlette.types import ASGIApp, Receive, Scope, Send

from app.ledger.facts import EventShapeError, facts_from_event, is_handled
from app.ledger.store import StoredEvent
from app.observability.prometheus import (
    WEBHOOK_DURATION,
    count_webhook_outcome,
    count_webhook_received,
    count_webhook_rejected,
)
from app.settings import Settings
from ingest.event_writer import EventWriter, Outcome

MAX_BODY_BYTES = 1024 * 1024

PATH = "/webhooks/stripe"

_STATUS_FOR = {
    Outcome.PROCESSED: 200,
    Outcome.IGNORED: 200,
    Outcome.DUPLICATE: 200,
    Outcome.FAILED: 500,
    Outcome.UNSTORED: 500,
    Outcome.UNAVAILABLE: 503,
}

Answer = tuple[int, dict[str, Any]]


def _verify(payload: str, header: str | None, secrets: list[str], tolerance: int) -> str | None:
    """None when the header is valid for one of the secrets, else why not."""
    if not header:
        return "missing Stripe-Signature header"
    reasons: list[str] = []
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(payload, header, secret, tolerance=tolerance)
            return None
        except stripe.SignatureVerificationError as exc:
            reasons.append(str(exc.user_message or exc))
    # A secret whose signature matched says the most (e.g. the timestamp is too old).
    mismatch = "No signatures found matching"
    reasons.sort(key=lambda reason: reason.startswith(mismatch))
    return f"invalid Stripe-Signature header: {reasons[0]}"


def parse_event(payload: str) -> dict[str, Any]:
    """The event envelope, checked; raises ValueError naming the field that is wrong."""
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
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
        payload=storable_json(payload),
        facts=event_facts,
    )


# A JSON \u0000 escape preceded by an even number of backslashes (so not itself escaped).
_NUL_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


def storable_json(payload: str) -> str:
    """The payload as PostgreSQL's jsonb can store it: jsonb rejects the NUL character
    (valid JSON, e.g. in a typed billing name), so it becomes U+FFFD. Everything else is
    kept exactly as received."""
    if "\\u0000" not in payload:
        return payload
    return _NUL_ESCAPE.sub(lambda m: m.group(1) + "\\ufffd", payload)


async def receive_event(
    body: bytes, signature: str | None, settings: Settings, writer: EventWriter
) -> Answer:
    """Everything the endpoint does, given the request body and its Stripe-Signature header."""
    secrets = settings.webhook_secrets
    if not secrets:
        count_webhook_rejected("not_configured")
        return 503, {"error": "webhook secret not configured (set STRIPE_WEBHOOK_SECRET)"}
    if len(body) > MAX_BODY_BYTES:
        count_webhook_rejected("too_large")
        return 413, {"error": f"body exceeds {MAX_BODY_BYTES} bytes"}
    try:
        payload = body.decode("utf-8")
    except UnicodeDecodeError:
        count_webhook_rejected("bad_body")
        return 400, {"error": "body is not UTF-8"}
    problem = _verify(payload, signature, secrets, settings.webhook_tolerance_seconds)
    if problem:
        count_webhook_rejected("bad_signature")
        return 400, {"error": problem}
    try:
        event = parse_event(payload)
    except ValueError as exc:
        count_webhook_rejected("bad_body")
        return 400, {"error": str(exc)}
    count_webhook_received(event["type"])
    try:
        outcome = await writer.submit(stored_event(event, payload, settings))
    except EventShapeError as exc:
        unusable = stored_event(event, payload, settings, facts=False)
        outcome = await writer.record_failed(unusable, str(exc))
    count_webhook_outcome(event["type"], outcome.value)
    status = _STATUS_FOR[outcome]
    if outcome is Outcome.UNAVAILABLE:
        return status, {"error": "database unavailable, retry later", "id": event["id"]}
    if outcome is Outcome.FAILED:
        message = "event could not be processed; it is kept and will be retried"
        return status, {"error": message, "id": event["id"]}
    if outcome is Outcome.UNSTORED:
        message = "event could not be processed nor kept; Stripe will deliver it again"
        return status, {"error": message, "id": event["id"]}
    return status, {"received": True, "id": event["id"], "status": outcome.value}


class StripeWebhookEndpoint:
    """ASGI middleware that answers POST /webhooks/stripe itself and passes everything else on.

    The webhook is the one hot path (thousands of events a second at peak), so it skips the
    framework's routing, dependency and exception layers: about half of the CPU per request.
    """

    def __init__(self, app: ASGIApp, settings: Settings, writer: EventWriter) -> None:
        self.app = app
        self.settings = settings
        self.writer = writer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            await self._answer(scope, receive, send)
        finally:
            WEBHOOK_DURATION.observe(time.perf_counter() - started)

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            await _send(send, 405, {"error": "method not allowed: POST only"}, allow=True)
            return
        signature: str | None = None
        declared = 0
        for name, value in scope["headers"]:
            if name == b"stripe-signature":
                signature = value.decode("latin-1")
            elif name == b"content-length" and value.isdigit():
                declared = int(value)
        if declared > MAX_BODY_BYTES:
            count_webhook_rejected("too_large")
            await _send(send, 413, {"error": f"body exceeds {MAX_BODY_BYTES} bytes"})
            return
        body = await _read_body(receive)
        if body is None:
            count_webhook_rejected("too_large")
            await _send(send, 413, {"error": f"body exceeds {MAX_BODY_BYTES} bytes"})
            return
        status, answer = await receive_event(body, signature, self.settings, self.writer)
        await _send(send, status, answer)


async def _read_body(receive: Receive) -> bytes | None:
    """The request body, or None as soon as it exceeds MAX_BODY_BYTES."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send(send: Send, status: int, answer: dict[str, Any], allow: bool = False) -> None:
    body = orjson.dumps(answer)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    if allow:
        headers.append((b"allow", b"POST"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
