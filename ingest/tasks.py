"""AI task costs coming in: validate tasks and upsert them into `execution_tasks`.

Shared by `POST /api/tasks` and `roi import-tasks`, so both accept and refuse the same rows.

- `validate_task` turns one raw task (a JSON object, or a CSV row of strings) into a `Task`
  or the list of (field, reason) that are wrong with it.
- `upsert_tasks` writes a batch in the caller's transaction: COPY into a temporary table, then
  one INSERT ... ON CONFLICT (external_id) DO UPDATE that prices each task as it goes (the
  LATERAL join of app/pricing.py) and only touches rows that actually differ, so a resend
  changes nothing, not even `updated_at`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal, NamedTuple, cast

import psycopg
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import Connection, text

from app.fields import (
    AwareDatetime,
    BadLine,
    Count,
    Currency,
    GpuSeconds,
    MajorAmount,
    Name,
    RowError,
    error_reasons,
)
from app.money import exponent
from app.pricing import lock_prices, price_lateral

MAX_BATCH = 10_000
STATUSES = ("queued", "running", "succeeded", "failed", "canceled")
FINISHED_STATUSES = ("succeeded", "failed")
COST_PLACES = 6  # decimals kept in the minor unit (numeric(24,6))
MINOR_LIMIT = Decimal(10) ** 18

Status = Literal["queued", "running", "succeeded", "failed", "canceled"]


class TaskIn(BaseModel):
    """One AI task as sent: what ran, for which stream, when, and what it used or cost."""

    model_config = ConfigDict(extra="forbid")

    external_id: Name = Field(description="Your id of the task; a resend updates it in place.")
    stream: Name = Field(description="Income stream the task's cost is booked to.")
    task_type: Name
    ai_model: Name = Field(description="Model name; prices are looked up by it.")
    status: Status = Field(
        description="queued, running, succeeded, failed or canceled. Success rate = "
        "succeeded / (succeeded + failed)."
    )
    started_at: AwareDatetime = Field(description="When the task started; costs are booked then.")
    finished_at: AwareDatetime | None = Field(
        default=None, description="When it finished; >= started_at."
    )
    duration_ms: Count | None = Field(
        default=None,
        description="Run time in ms; with started_at alone it sets finished_at. "
        "Succeeded and failed tasks need finished_at or duration_ms.",
    )
    tokens_in: Count | None = None
    tokens_out: Count | None = None
    gpu_seconds: GpuSeconds | None = None
    cost: MajorAmount | None = Field(
        default=None,
        description="The task's cost as a decimal string in MAJOR units of cost_currency "
        '("0.0042" usd). Used as sent; without it the task is priced from model prices.',
    )
    cost_currency: Currency | None = Field(default=None, description="Required with cost.")


FIELDS = tuple(TaskIn.model_fields)
REQUIRED_FIELDS = tuple(name for name, info in TaskIn.model_fields.items() if info.is_required())


class Task(NamedTuple):
    """A valid task, in the units of `execution_tasks` (cost in minor units)."""

    external_id: str
    stream: str
    task_type: str
    ai_model: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    duration_ms: int | None
    tokens_in: int | None
    tokens_out: int | None
    gpu_seconds: Decimal | None
    cost_amount: Decimal | None
    cost_currency: str | None


COLUMNS = Task._fields


def validate_task(raw: object) -> Task | list[tuple[str, str]]:
    """A `Task`, or every (field, reason) that is wrong with `raw`."""
    if not isinstance(raw, Mapping):
        return [("(task)", f"expected a JSON object, got {type(raw).__name__}")]
    try:
        task = TaskIn.model_validate(raw)
    except ValidationError as exc:
        return error_reasons(cast(list[Any], exc.errors(include_url=False)))
    return _normalise(task)


def _normalise(task: TaskIn) -> Task | list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    finished_at, duration_ms = task.finished_at, task.duration_ms
    if finished_at is not None:
        if finished_at < task.started_at:
            problems.append(("finished_at", "is before started_at"))
        else:
            elapsed = (finished_at - task.started_at) // timedelta(milliseconds=1)
            if duration_ms is not None and duration_ms != elapsed:
                problems.append(
                    (
                        "duration_ms",
                        f"{duration_ms} disagrees with finished_at - started_at ({elapsed} ms); "
                        "send one of them, or both in agreement",
                    )
                )
            duration_ms = elapsed
    elif duration_ms is not None:
        finished_at = task.started_at + timedelta(milliseconds=duration_ms)
    elif task.status in FINISHED_STATUSES:
        problems.append(("finished_at", f"a {task.status} task needs finished_at or duration_ms"))

    cost_amount = None
    if (task.cost is None) != (task.cost_currency is None):
        missing = "cost_currency" if task.cost_currency is None else "cost"
        problems.append((missing, "cost and cost_currency go together"))
    elif task.cost is not None and task.cost_currency is not None:
        cost_amount = task.cost.scaleb(exponent(task.cost_currency))
        if cost_amount != cost_amount.quantize(Decimal(1).scaleb(-COST_PLACES)):
            places = exponent(task.cost_currency) + COST_PLACES
            problems.append(
                (
                    "cost",
                    f"more than {places} decimals for {task.cost_currency} (costs are kept to "
                    "a millionth of the minor unit); it is never rounded silently",
                )
            )
        elif cost_amount >= MINOR_LIMIT:
            problems.append(("cost", "too large"))
    if problems:
        return problems
    return Task(
        external_id=task.external_id,
        stream=task.stream,
        task_type=task.task_type,
        ai_model=task.ai_model,
        status=task.status,
        started_at=task.started_at,
        finished_at=finished_at,
        duration_ms=duration_ms,
        tokens_in=task.tokens_in,
        tokens_out=task.tokens_out,
        gpu_seconds=task.gpu_seconds,
        cost_amount=cost_amount,
        cost_currency=task.cost_currency,
    )


def validate_batch(raws: Iterable[tuple[int, object]]) -> tuple[list[Task], list[RowError]]:
    """Every valid task, and every error of every invalid one: (index, raw) in, in order."""
    tasks: list[Task] = []
    errors: list[RowError] = []
    for index, raw in raws:
        if isinstance(raw, BadLine):
            errors.append(RowError(index, "(line)", raw.reason))
            continue
        checked = validate_task(raw)
        if isinstance(checked, Task):
            tasks.append(checked)
        else:
            errors.extend(RowError(index, name, reason) for name, reason in checked)
    return tasks, errors


# --- writing ----------------------------------------------------------------------------------

_STAGE_SQL = """
CREATE TEMPORARY TABLE IF NOT EXISTS task_intake (
    external_id text, stream text, task_type text, ai_model text, status text,
    started_at timestamptz, finished_at timestamptz, duration_ms bigint, tokens_in bigint,
    tokens_out bigint, gpu_seconds numeric, cost_amount numeric, cost_currency text
) ON COMMIT DROP
"""

_COLUMN_LIST = ", ".join(COLUMNS)
_TASK_COLUMNS = (*COLUMNS, "priced_amount", "priced_currency", "price_id")

# Rows are taken in external_id order, so concurrent batches lock shared rows in one order.
UPSERT_SQL = f"""
INSERT INTO execution_tasks AS t ({", ".join(_TASK_COLUMNS)})
SELECT {", ".join(f"i.{c}" for c in COLUMNS)}, price.amount, price.currency, price.id
FROM task_intake AS i
{price_lateral("i")}
ORDER BY i.external_id
ON CONFLICT (external_id) DO UPDATE
   SET {", ".join(f"{c} = EXCLUDED.{c}" for c in _TASK_COLUMNS[1:])}, updated_at = now()
 WHERE ({", ".join(f"t.{c}" for c in _TASK_COLUMNS[1:])})
       IS DISTINCT FROM ({", ".join(f"EXCLUDED.{c}" for c in _TASK_COLUMNS[1:])})
RETURNING (xmax = 0) AS inserted
"""

UNPRICED_SQL = """
SELECT t.ai_model, count(*) AS tasks
FROM execution_tasks AS t JOIN task_intake AS i USING (external_id)
WHERE t.cost_source = 'unpriced'
GROUP BY t.ai_model ORDER BY count(*) DESC, t.ai_model
"""


@dataclass
class UpsertResult:
    """What a batch did. inserted + updated + unchanged = distinct external ids written."""

    received: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    superseded: int = 0  # tasks followed by a later one with the same external_id in the batch
    unpriced: int = 0
    unpriced_by_model: dict[str, int] = field(default_factory=dict)

    def add(self, other: UpsertResult) -> None:
        for name in ("received", "inserted", "updated", "unchanged", "superseded", "unpriced"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for model, count in other.unpriced_by_model.items():
            self.unpriced_by_model[model] = self.unpriced_by_model.get(model, 0) + count


def upsert_tasks(conn: Connection, tasks: Sequence[Task]) -> UpsertResult:
    """Write valid tasks in the caller's transaction. Within a batch the last task with a
    given external_id wins, as if they had been sent one by one."""
    latest = {task.external_id: task for task in tasks}
    result = UpsertResult(received=len(tasks), superseded=len(tasks) - len(latest))
    if not latest:
        return result
    lock_prices(conn, shared=True)  # no price may change between pricing and commit
    conn.execute(text(_STAGE_SQL))
    conn.execute(text("TRUNCATE task_intake"))  # a second batch in the same transaction
    driver = cast(psycopg.Connection[Any], conn.connection.driver_connection)
    with (
        driver.cursor() as cursor,
        cursor.copy(f"COPY task_intake ({_COLUMN_LIST}) FROM STDIN") as copy,
    ):
        for task in latest.values():
            copy.write_row(task)
    written = conn.execute(text(UPSERT_SQL)).scalars().all()
    result.inserted = sum(1 for inserted in written if inserted)
    result.updated = len(written) - result.inserted
    result.unchanged = len(latest) - len(written)
    for model, count in conn.execute(text(UNPRICED_SQL)).all():
        result.unpriced_by_model[model] = int(count)
    result.unpriced = sum(result.unpriced_by_model.values())
    return result
