"""`roi import-tasks FILE`: CSV and JSON Lines, checked whole, written in batches, resumable."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from tests.conftest import TestDatabase, run_roi
from tests.task_costs import task, tasks_by_id, xmins

CSV_HEADER = (
    "external_id,stream,task_type,ai_model,status,started_at,duration_ms,tokens_in,cost,"
    "cost_currency\n"
)


def csv_file(tmp_path: Path, rows: list[str], name: str = "tasks.csv") -> Path:
    path = tmp_path / name
    path.write_text(CSV_HEADER + "".join(f"{row}\n" for row in rows), encoding="utf-8")
    return path


def jsonl_file(tmp_path: Path, tasks: list[Any], name: str = "tasks.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(f"{json.dumps(t)}\n" for t in tasks), encoding="utf-8")
    return path


def many_rows(count: int) -> list[str]:
    return [
        f"t{i:04},api,summarize,gpt-x,succeeded,2024-03-10T12:00:00Z,{i},{i * 10},"
        f"{'0.0042,usd' if i % 2 else ','}"
        for i in range(count)
    ]


def test_csv_import_writes_every_task_and_a_rerun_changes_nothing(
    db: TestDatabase, tmp_path: Path
) -> None:
    path = csv_file(tmp_path, many_rows(25))
    first = run_roi("import-tasks", str(path), "--batch-size", "10", database_url=db.url)
    assert first.exit_code == 0, first.output
    assert "25 task(s) in 3 batch(es): 25 inserted, 0 updated, 0 unchanged" in first.output
    assert "13 task(s) unpriced" in first.output
    rows = tasks_by_id(db)
    assert len(rows) == 25
    assert rows["t0001"]["cost_amount"] == Decimal("0.420000")
    assert rows["t0002"]["cost_amount"] is None  # empty cells are absent values
    assert rows["t0002"]["tokens_in"] == 20
    assert rows["t0007"]["duration_ms"] == 7
    before = xmins(db)

    rerun = run_roi("import-tasks", str(path), "--batch-size", "10", database_url=db.url)
    assert rerun.exit_code == 0, rerun.output
    assert "0 inserted, 0 updated, 25 unchanged" in rerun.output
    assert xmins(db) == before


def test_an_interrupted_import_is_finished_by_running_it_again(
    db: TestDatabase, tmp_path: Path
) -> None:
    rows = many_rows(30)
    # The first 12 rows made it before the interruption.
    partial = run_roi(
        "import-tasks", str(csv_file(tmp_path, rows[:12], "part.csv")), database_url=db.url
    )
    assert partial.exit_code == 0, partial.output
    before = xmins(db)

    whole = run_roi(
        "import-tasks", str(csv_file(tmp_path, rows)), "--batch-size", "7", database_url=db.url
    )
    assert whole.exit_code == 0, whole.output
    assert "18 inserted, 0 updated, 12 unchanged" in whole.output
    after = xmins(db)
    assert len(after) == 30
    assert {k: after[k] for k in before} == before  # what was there is not touched


def test_jsonl_import_with_bad_rows_lists_every_one_by_line_and_writes_nothing(
    db: TestDatabase, tmp_path: Path
) -> None:
    path = tmp_path / "tasks.jsonl"
    lines = [
        json.dumps(task(external_id="ok-1")),
        "",
        json.dumps(task(external_id="float", cost=0.25, cost_currency="usd")),
        "{not json",
        json.dumps(task(external_id="ok-2")),
        json.dumps(task(external_id="naive", started_at="2024-03-10 12:00")),
        json.dumps(task(external_id="neg", gpu_seconds="-1")),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    # A batch size of 2 puts the bad rows in different batches: all are still reported.
    result = run_roi("import-tasks", str(path), "--batch-size", "2", database_url=db.url)
    assert result.exit_code == 1
    reported = [line for line in result.output.splitlines() if line.startswith("line ")]
    assert reported[0].startswith("line 3: cost: a JSON number with a fraction is a float")
    assert reported[1].startswith("line 4: (line): not valid JSON")
    assert reported[2].startswith("line 6: started_at: has no UTC offset")
    assert reported[3] == "line 7: gpu_seconds: must not be negative"
    assert len(reported) == 4
    assert "4 problem(s) in 4 line(s); nothing was written" in result.output
    assert db.count("execution_tasks") == 0


def test_jsonl_import_and_format_option(db: TestDatabase, tmp_path: Path) -> None:
    path = jsonl_file(
        tmp_path,
        [task(external_id="a", tokens_in=3), task(external_id="b", status="running")],
        name="tasks.log",
    )
    unknown = run_roi("import-tasks", str(path), database_url=db.url)
    assert unknown.exit_code == 1
    assert "--format: cannot tell the format of tasks.log" in unknown.output

    result = run_roi("import-tasks", str(path), "--format", "jsonl", database_url=db.url)
    assert result.exit_code == 0, result.output
    assert set(tasks_by_id(db)) == {"a", "b"}


def test_a_csv_header_with_unknown_or_missing_columns_is_refused(
    db: TestDatabase, tmp_path: Path
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(
        "external_id,stream,task_type,model,status,started_at\n"
        "t1,api,summarize,gpt-x,queued,2024-03-10T12:00:00Z\n",
        encoding="utf-8",
    )
    result = run_roi("import-tasks", str(path), database_url=db.url)
    assert result.exit_code == 1
    assert "line 1: model: unknown column" in result.output
    assert "line 1: ai_model: missing column" in result.output
    assert db.count("execution_tasks") == 0


def test_csv_rows_are_validated_like_the_api(db: TestDatabase, tmp_path: Path) -> None:
    path = csv_file(
        tmp_path,
        [
            "t1,api,summarize,gpt-x,succeeded,2024-03-10T12:00:00Z,10,5,1.5e3,usd",
            "t2,api,summarize,gpt-x,succeeded,2024-03-10T12:00:00Z,,,,",
            "t3,api,summarize,gpt-x,queued,2024-03-10T12:00:00Z,,12.5,,",
            "t4,api,summarize,gpt-x,queued,2024-03-10T12:00:00Z,,,,,extra",
        ],
    )
    result = run_roi("import-tasks", str(path), database_url=db.url)
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("line ")]
    assert errors == [
        "line 2: cost: expected a decimal number like 12.34 (no exponent, no thousands "
        "separator), got '1.5e3'",
        "line 3: finished_at: a succeeded task needs finished_at or duration_ms",
        "line 4: tokens_in: expected a non-negative integer, got '12.5'",
        "line 5: (line): more cells than the header has columns",
    ]
    assert db.count("execution_tasks") == 0
