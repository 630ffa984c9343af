"""Factories and queries for the task-cost tests (tasks, prices, FX)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx

from tests.conftest import AUTH, LiveServer, TestDatabase

_counter = iter(range(1, 10**9))


def task(
    *,
    external_id: str | None = None,
    stream: str = "api",
    task_type: str = "summarize",
    ai_model: str = "gpt-x",
    status: str = "succeeded",
    started_at: str = "2024-03-10T12:00:00Z",
    duration_ms: int | None = 1500,
    **usage: Any,
) -> dict[str, Any]:
    """A valid task as POST /api/tasks takes it; `usage` adds or overrides any field."""
    body: dict[str, Any] = {
        "external_id": external_id or f"task-{next(_counter)}",
        "stream": stream,
        "task_type": task_type,
        "ai_model": ai_model,
        "status": status,
        "started_at": started_at,
    }
    if duration_ms is not None:
        body["duration_ms"] = duration_ms
    body.update(usage)
    return body


def price(
    *,
    ai_model: str = "gpt-x",
    currency: str = "usd",
    valid_from: str = "2024-01-01T00:00:00Z",
    valid_to: str | None = None,
    **components: str | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "ai_model": ai_model,
        "currency": currency,
        "valid_from": valid_from,
        "valid_to": valid_to,
    }
    body.update(components or {"per_million_in": "2.50", "per_million_out": "10"})
    return body


def tasks_by_id(db: TestDatabase) -> dict[str, dict[str, Any]]:
    """Every task row, every column but the surrogate id, by external_id."""
    return {row["external_id"]: row for row in db.rows("SELECT * FROM execution_tasks")}


def xmins(db: TestDatabase) -> dict[str, str]:
    """external_id -> xmin: changes whenever the row is rewritten, even to the same values."""
    return {
        row["external_id"]: row["xmin"]
        for row in db.rows("SELECT external_id, xmin::text AS xmin FROM execution_tasks")
    }


def client(server: LiveServer) -> Iterator[httpx.Client]:
    """For a test module's `api` fixture: an HTTP client of the live app."""
    with httpx.Client(base_url=server.url, timeout=60, headers=AUTH) as http:
        yield http
