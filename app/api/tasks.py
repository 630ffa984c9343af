"""POST /api/tasks: a batch of AI tasks with their usage or cost; GET /api/tasks/unpriced."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from app.fields import RowError
from app.observability.prometheus import count_tasks
from app.periods import instant, zone
from app.pricing import unpriced_tasks
from ingest.tasks import MAX_BATCH, TaskIn, upsert_tasks, validate_batch

router = APIRouter(prefix="/api/tasks", tags=["tasks"])

# 10,000 tasks of about 1 KiB each fit well under this; it only stops runaway bodies.
MAX_BODY_BYTES = 32 * 1024 * 1024


class UnpricedCount(BaseModel):
    ai_model: str | None
    tasks: int


class TaskBatchResult(BaseModel):
    received: int = Field(description="Tasks in the batch.")
    inserted: int = Field(description="New tasks.")
    updated: int = Field(description="Known tasks that changed.")
    unchanged: int = Field(description="Known tasks sent again exactly as stored: not touched.")
    superseded: int = Field(
        description="Tasks followed, in the same batch, by a later one with the same "
        "external_id (the later one is written)."
    )
    unpriced: int = Field(
        description="Tasks of the batch with neither a sent cost nor an applicable price. "
        "They are stored with no cost (never 0) until a price covers them."
    )
    unpriced_by_model: list[UnpricedCount]


class BatchRowError(BaseModel):
    index: int = Field(description="0-based position of the task in the batch.")
    field: str = Field(description="The field at fault, or (task) for the whole task.")
    reason: str


class TaskBatchRejected(BaseModel):
    detail: str
    errors: list[BatchRowError] = Field(description="Every problem of every invalid task.")


class Message(BaseModel):
    detail: str


class UnpricedModelOut(BaseModel):
    ai_model: str | None
    tasks: int
    first_started_at: datetime
    last_started_at: datetime


async def batch_body(request: Request) -> bytes:
    """The raw body, refused with 413 beyond MAX_BODY_BYTES without reading all of it."""
    too_large = HTTPException(413, f"the body is over {MAX_BODY_BYTES // 2**20} MiB")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _body_error(message: str) -> JSONResponse:
    return JSONResponse(status_code=422, content={"detail": [{"loc": ["body"], "msg": message}]})


_BATCH_SCHEMA = {
    "type": "array",
    "maxItems": MAX_BATCH,
    "items": TaskIn.model_json_schema(),
    "description": f"Up to {MAX_BATCH} tasks.",
}


@router.post(
    "",
    summary="Record a batch of AI tasks (idempotent by external_id)",
    description=(
        f"A JSON array of up to {MAX_BATCH} tasks. Each task is inserted, or updated in place "
        "when its `external_id` is known; a task sent again unchanged is not touched. If any "
        "task is invalid the whole batch is refused (422) with every problem of every task, "
        "and nothing is written. Money and GPU-seconds are decimal strings: a JSON number "
        "with a fraction (a float) is refused naming the field. A task without `cost` is "
        "priced from the model price valid at `started_at`; one with neither stays unpriced "
        "and is counted in the answer."
    ),
    response_model=TaskBatchResult,
    responses={
        413: {"model": Message, "description": f"More than {MAX_BATCH} tasks, or body too big."},
        422: {
            "model": TaskBatchRejected,
            "description": "Invalid tasks (every one listed), or a body that is not a JSON "
            'array (then `detail` is a list of {"loc", "msg"}).',
        },
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _BATCH_SCHEMA}},
        }
    },
)
def post_tasks(
    request: Request, body: Annotated[bytes, Depends(batch_body)]
) -> TaskBatchResult | JSONResponse:
    try:
        raws: Any = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return _body_error(f"not valid JSON: {exc}")
    if not isinstance(raws, list):
        return _body_error("expected a JSON array of tasks")
    if len(raws) > MAX_BATCH:
        return JSONResponse(
            status_code=413,
            content={
                "detail": f"a batch holds at most {MAX_BATCH} tasks; this one has {len(raws)}. "
                "Split it; nothing was written."
            },
        )
    tasks, errors = validate_batch(enumerate(raws))
    if errors:
        count_tasks(rejected=len(raws))
        return _rejected(errors, len(raws))
    with request.app.state.engine.begin() as conn:
        result = upsert_tasks(conn, tasks)
    count_tasks(
        inserted=result.inserted,
        updated=result.updated,
        unchanged=result.unchanged,
        superseded=result.superseded,
    )
    return TaskBatchResult(
        received=result.received,
        inserted=result.inserted,
        updated=result.updated,
        unchanged=result.unchanged,
        superseded=result.superseded,
        unpriced=result.unpriced,
        unpriced_by_model=[
            UnpricedCount(ai_model=model, tasks=count)
            for model, count in result.unpriced_by_model.items()
        ],
    )


def _rejected(errors: list[RowError], total: int) -> JSONResponse:
    bad = len({error.index for error in errors})
    return JSONResponse(
        status_code=422,
        content={
            "detail": f"{bad} of {total} tasks are invalid; nothing of the batch was written",
            "errors": [error.as_json() for error in errors],
        },
    )


@router.get(
    "/unpriced",
    summary="Unpriced tasks per model",
    description=(
        "Tasks with neither a sent cost nor an applicable model price (missing price, or the "
        "price needs usage the task lacks), per `ai_model`, started in [start, end) when "
        "given. Add a price covering them and they are priced at once."
    ),
    response_model=list[UnpricedModelOut],
)
def get_unpriced(
    request: Request,
    start: Annotated[str | None, Query(description="YYYY-MM-DD or ISO datetime")] = None,
    end: Annotated[str | None, Query(description="YYYY-MM-DD or ISO datetime, exclusive")] = None,
) -> list[UnpricedModelOut]:
    tz = zone(request.app.state.settings.timezone)
    lo = instant(start, tz, "start") if start else None
    hi = instant(end, tz, "end") if end else None
    with request.app.state.engine.connect() as conn:
        rows = unpriced_tasks(conn, start=lo, end=hi)
    return [UnpricedModelOut(**vars(row)) for row in rows]
