"""GET /api/export/{ledger,streams,tasks}.csv: the CSV exports, streamed.

They take the metrics API's filters (`metrics_filter`: start, end, tz, granularity, stream,
ai_model, task_type; a bad one is a 422 naming it) and write what `app.exports.export_csv`
yields, the same bytes as `roi export`. Format, numbers and formula-injection handling:
`app/exports.py`.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Generator
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from app.api.metrics import Filter
from app.audit import record_audit
from app.auth.dependencies import current_principal
from app.exports import ExportAbandoned, ExportRequest, export_csv
from app.metrics.filters import MetricsFilter

router = APIRouter(prefix="/api/export", tags=["exports"])

CSV = {"content": {"text/csv": {}}, "description": "CSV, UTF-8, with a header row"}


def start_export(request: Request, name: str, f: MetricsFilter) -> CsvResponse:
    """Every export starts here: the one place to check who may export (finance role) and to
    write the audit log entry, before any byte leaves.

    The first chunk is read before answering, so a database that is down or a query that fails
    is still a proper error status (503 / 500) rather than a 200 cut short."""
    export = ExportRequest(
        name=name, filter=f, reporting=request.app.state.settings.reporting_currency
    )
    abandoned = threading.Event()
    chunks = export_csv(request.app.state.engine, export, abandoned=abandoned)
    first = next(chunks)
    # Written once the export has started and before its first byte leaves: no export
    # without its audit row (the role itself was checked by the access policy: finance).
    with request.app.state.engine.begin() as conn:
        record_audit(conn, current_principal(request), f"export.{name}", request.url.path,
                     export_filters(f))  # fmt: skip
    return CsvResponse(
        first,
        chunks,
        abandoned,
        headers={
            "Content-Disposition": f'attachment; filename="{export.filename}"',
            # Finance data: not for shared caches, nor the browser's.
            "Cache-Control": "no-store",
        },
    )


def export_filters(f: MetricsFilter) -> dict[str, Any]:
    """Which filters an export used, as the audit log keeps them."""
    return {
        "start": f.start.isoformat(),
        "end": f.end.isoformat(),
        "tz": f.tz.key,
        "granularity": f.granularity,
        "streams": list(f.streams),
        "ai_models": list(f.ai_models),
        "task_types": list(f.task_types),
    }


class CsvResponse(StreamingResponse):
    """A streamed CSV whose chunk generator is closed as soon as the response ends, however it
    ends: a client that hangs up mid-download must not leave its COPYs running and its pooled
    connections checked out until the garbage collector happens to find the generator.

    Starlette waits for the chunk being read before it stops; a segmented export waiting for
    a later segment's COPY would make that wait as long as the COPY, so a hang-up also sets
    `abandoned`, on which the export stops waiting (ExportAbandoned)."""

    def __init__(
        self,
        first: bytes,
        rest: Generator[bytes],
        abandoned: threading.Event,
        headers: dict[str, str],
    ) -> None:
        super().__init__(
            itertools.chain((first,), rest), media_type="text/csv; charset=utf-8", headers=headers
        )
        self.rest = rest
        self.abandoned = abandoned

    async def listen_for_disconnect(self, receive: Receive) -> None:
        await super().listen_for_disconnect(receive)
        self.abandoned.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except ExportAbandoned:
            pass  # the client is gone: nobody to answer
        finally:
            # No thread is inside the generator any more (Starlette waits for it); closing it
            # cancels the COPY and returns the connection. Shielded: this runs on cancellation.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.rest.close)


@router.get(
    "/ledger.csv",
    response_class=StreamingResponse,
    responses={200: CSV},
    summary="Every ledger movement",
)
def ledger_csv(request: Request, f: Filter) -> StreamingResponse:
    """One row per movement booked in [start, end) (and `stream`): time in `tz`, stream, kind
    (charge, refund, dispute, fee), the Stripe ids, the amount in its currency, the amount in
    the reporting currency (empty when it cannot be converted), the rate and the rule used
    (settlement, same, fx). Model and task-type filters do not apply to revenue."""
    return start_export(request, "ledger", f)


@router.get(
    "/streams.csv",
    response_class=StreamingResponse,
    responses={200: CSV},
    summary="Figures per stream and bucket",
)
def streams_csv(request: Request, f: Filter) -> StreamingResponse:
    """The rows of `GET /api/metrics/timeseries`, as the dashboard shows them."""
    return start_export(request, "streams", f)


@router.get(
    "/tasks.csv",
    response_class=StreamingResponse,
    responses={200: CSV},
    summary="AI tasks with their cost",
)
def tasks_csv(request: Request, f: Filter) -> StreamingResponse:
    """One row per task started in [start, end) (and `stream`, `ai_model`, `task_type`): its
    cost and where it came from (sent, priced, unpriced: then empty), and that cost in the
    reporting currency."""
    return start_export(request, "tasks", f)
