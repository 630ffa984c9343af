"""`roi import-tasks FILE`: tasks from a CSV or JSON Lines file, streamed, in batches.

The file is read twice, streaming, never whole in memory:
1. check: every row is validated exactly like `POST /api/tasks`; if any row is bad, every
   problem (line, field, reason) is reported and nothing is written;
2. import: batches of `batch_size` tasks, one transaction each, through the same upsert as
   the API. A task already stored as sent is not touched, so an interrupted import is resumed
   by running it again, and a rerun of a finished one changes nothing.

CSV: a header row naming the fields of `POST /api/tasks` (any order, optional ones may be left
out); an empty cell is an absent value. JSON Lines: one task object per line, blank lines
skipped. A file in which one external_id appears twice is written in order, the later row
winning (a rerun then rewrites that task, to the same end state).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO, Literal, TypeVar

import orjson
from sqlalchemy import Engine
from tqdm import tqdm

from app.fields import BadLine, RowError
from ingest.tasks import FIELDS, MAX_BATCH, REQUIRED_FIELDS, UpsertResult, upsert_tasks
from ingest.tasks import validate_batch as validate_tasks

Format = Literal["csv", "jsonl"]
SUFFIXES: dict[str, Format] = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
DEFAULT_BATCH = 5_000
T = TypeVar("T")


class TaskFileError(ValueError):
    """The file cannot be imported as it is; `errors` says where (line), what and why."""

    def __init__(self, errors: list[RowError]) -> None:
        super().__init__(f"{len(errors)} problem(s)")
        self.errors = errors


@dataclass
class ImportReport:
    rows: int = 0
    batches: int = 0
    result: UpsertResult = field(default_factory=UpsertResult)


def batched(rows: Iterable[T], size: int) -> Iterator[tuple[T, ...]]:
    """itertools.batched, which Python 3.11 does not have yet."""
    iterator = iter(rows)
    while chunk := tuple(islice(iterator, size)):
        yield chunk


def file_format(path: Path, given: str | None) -> Format:
    if given is not None:
        if given not in ("csv", "jsonl"):
            raise TaskFileError([RowError(0, "--format", f"expected csv or jsonl, got {given}")])
        return "csv" if given == "csv" else "jsonl"
    found = SUFFIXES.get(path.suffix.lower())
    if found is None:
        raise TaskFileError(
            [RowError(0, "--format", f"cannot tell the format of {path.name}; say --format")]
        )
    return found


def read_rows(handle: BinaryIO, fmt: Format, bar: Any) -> Iterator[tuple[int, object]]:
    """(line number, raw task) for each row; `bar` is advanced by the bytes read."""
    lines = _decoded_lines(handle, bar)
    if fmt == "jsonl":
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                yield number, orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                yield number, BadLine(f"not valid JSON: {exc}")
        return
    reader = csv.DictReader(lines)
    header = reader.fieldnames or []
    problems = [RowError(1, name, "unknown column") for name in header if name not in FIELDS]
    problems += [
        RowError(1, name, "missing column") for name in REQUIRED_FIELDS if name not in header
    ]
    if problems:
        raise TaskFileError(problems)
    for row in reader:
        if None in row:
            yield reader.line_num, BadLine("more cells than the header has columns")
            continue
        yield reader.line_num, {k: v for k, v in row.items() if v is not None and v.strip()}


def _decoded_lines(handle: BinaryIO, bar: Any) -> Iterator[str]:
    for number, raw in enumerate(handle, start=1):
        bar.update(len(raw))
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TaskFileError([RowError(number, "(line)", f"not valid UTF-8: {exc}")]) from None
        yield line.removeprefix("\ufeff") if number == 1 else line


def _validate(rows: tuple[tuple[int, object], ...]) -> tuple[list[Any], list[RowError]]:
    return validate_tasks(rows)


def _progress(path: Path, label: str, show: bool) -> Any:
    return tqdm(
        total=path.stat().st_size,
        unit="B",
        unit_scale=True,
        desc=label,
        disable=None if show else True,  # None: only on a terminal
        leave=False,
    )


def check_file(
    path: Path, fmt: Format, *, batch_size: int = DEFAULT_BATCH, progress: bool = True
) -> tuple[int, list[RowError]]:
    """Pass 1: how many rows, and every problem of every row."""
    rows = 0
    errors: list[RowError] = []
    with path.open("rb") as handle, _progress(path, "checking", progress) as bar:
        for chunk in batched(read_rows(handle, fmt, bar), batch_size):
            rows += len(chunk)
            errors += _validate(chunk)[1]
    return rows, errors


def import_file(
    engine: Engine,
    path: Path,
    fmt: Format,
    *,
    batch_size: int = DEFAULT_BATCH,
    progress: bool = True,
) -> ImportReport:
    """Check the whole file, then write it batch by batch (one transaction per batch).
    Raises TaskFileError, with nothing written, when any row is bad."""
    if not 1 <= batch_size <= MAX_BATCH:
        raise TaskFileError([RowError(0, "--batch-size", f"must be in 1..{MAX_BATCH}")])
    rows, errors = check_file(path, fmt, batch_size=batch_size, progress=progress)
    if errors:
        raise TaskFileError(errors)
    report = ImportReport(rows=rows)
    with path.open("rb") as handle, _progress(path, "importing", progress) as bar:
        for chunk in batched(read_rows(handle, fmt, bar), batch_size):
            tasks, errors = _validate(chunk)
            if errors:  # the file changed since it was checked
                raise TaskFileError(errors)
            with engine.begin() as conn:
                report.result.add(upsert_tasks(conn, tasks))
            report.batches += 1
    return report
