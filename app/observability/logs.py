"""Logs: one JSON object per line (or text for a person at a terminal), each with the id of the
request it belongs to, and one access line per request.

The request id is bound in a contextvar by `RequestContext`, a pure ASGI middleware placed in
front of everything (the webhook fast path included), so every record logged while a request
is handled carries it, also from worker threads: asyncio and Starlette copy the context into
the threads they run sync code in.

What is never logged: request or response bodies, and headers (so neither Authorization nor
Stripe-Signature). The access line holds method, path without its query string, status and
duration only.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.observability.prometheus import REQUESTS_IN_FLIGHT
from app.settings import Settings

ACCESS_LOGGER = "roi.access"
REQUEST_ID_HEADER = b"x-request-id"

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

# A caller's id is kept only if it cannot break a log line or a header and stays short: a
# proxy's or Stripe's ids fit, an attacker's megabyte or newline does not.
_SANE_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")

# Attributes every LogRecord has; anything else on a record was passed as `extra=`.
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "request_id",
    "taskName",
}


def request_id_from(header: bytes | None) -> str:
    """The caller's X-Request-ID when it is sane, else a new uuid4."""
    if header is not None:
        value = header.decode("latin-1")
        if _SANE_REQUEST_ID.fullmatch(value):
            return value
    return str(uuid.uuid4())


class RequestIdFilter(logging.Filter):
    """Stamps each record with the current request id (None outside a request), at the moment
    it is logged, so any formatter or queue later on still has it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """time, level, logger, message, request_id, then any `extra=` fields, then the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or request_id.get(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str).decode()


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to sys.stderr as it is when a record is emitted, not as it was when logging was
    configured: a command run in-process by a test runner or a REPL swaps stderr and closes the
    swapped stream afterwards."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def resolved_log_format(settings: Settings) -> str:
    """json or text. `auto` is text on a terminal (a person reads it) and JSON everywhere else
    (a collector parses it), so production needs no setting."""
    if settings.log_format != "auto":
        return settings.log_format
    return "text" if sys.stderr.isatty() else "json"


def logging_config(settings: Settings) -> dict[str, Any]:
    """A `logging.config.dictConfig` for the server. Handed to uvicorn as its `log_config`, so
    each worker process applies it too; uvicorn's own loggers go through the same handler, and
    its access log is off: `RequestContext` writes the one access line per request."""
    level = settings.log_level
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {
            "json": {"()": JsonFormatter},
            "text": {"format": TEXT_FORMAT},
        },
        "handlers": {
            "stderr": {
                "()": StderrHandler,
                "formatter": resolved_log_format(settings),
                "filters": ["request_id"],
            }
        },
        "loggers": {
            "uvicorn": {"handlers": [], "propagate": True, "level": level},
            "uvicorn.error": {"handlers": [], "propagate": True, "level": level},
            "uvicorn.access": {"handlers": [], "propagate": False, "level": "CRITICAL"},
        },
        "root": {"handlers": ["stderr"], "level": level},
    }


access_log = logging.getLogger(ACCESS_LOGGER)
error_log = logging.getLogger("roi.errors")


class RequestContext:
    """Pure ASGI middleware: binds the request id, echoes it in X-Request-ID, counts requests in
    flight, and writes the access line once the response is complete (streaming included)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = next((v for k, v in scope["headers"] if k == REQUEST_ID_HEADER), None)
        rid = request_id_from(incoming)
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering
        echoed = rid.encode("latin-1")

        answered = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status, answered = message["status"], True
                headers = [(k, v) for k, v in message.get("headers", []) if k != REQUEST_ID_HEADER]
                message = {**message, "headers": [*headers, (REQUEST_ID_HEADER, echoed)]}
            await send(message)

        REQUESTS_IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            if answered:  # too late for an error page: the server closes the connection
                raise
            # Answered here rather than by Starlette's outer error handler, so the 500 carries
            # the request id a person can quote and the traceback is logged with it.
            error_log.exception("unhandled error in %s %s", scope["method"], scope["path"])
            body = orjson.dumps({"error": "internal server error", "request_id": rid})
            await send_with_id(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send_with_id({"type": "http.response.body", "body": body})
        finally:
            REQUESTS_IN_FLIGHT.dec()
            duration_ms = round((time.perf_counter() - started) * 1000, 2)
            method, path = scope["method"], scope["path"]
            access_log.info(
                "%s %s %d %.1f ms",
                method,
                path,
                status,
                duration_ms,
                extra={
                    "method": method,
                    "path": path,
                    "status": status,
                    "duration_ms": duration_ms,
                },
            )
            request_id.reset(token)
