"""`roi export ledger|streams|tasks --output FILE`: the same bytes as the API, or a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.app.export.test_export_api import DAY, a_day_of_movements, export
from tests.conftest import TestDatabase, WebhookClient, run_roi
from tests.task_costs import task


@pytest.mark.parametrize("name", ["ledger", "streams", "tasks"])
def test_the_cli_writes_the_bytes_the_api_answers(
    webhook: WebhookClient, db: TestDatabase, tmp_path: Path, name: str
) -> None:
    a_day_of_movements(webhook)
    batch = [
        task(stream="=cmd", started_at="2024-03-10T12:30:00Z", cost="0.42", cost_currency="eur"),
        task(stream="api", started_at="2024-03-10T20:00:00Z", ai_model="nobody-prices-me"),
    ]
    assert webhook.http.post("/api/tasks", json=batch).status_code == 200
    params = {**DAY, "tz": "America/New_York", "granularity": "hour"}
    output = tmp_path / f"{name}.csv"

    result = run_roi(
        "export", name,
        "--start", params["start"], "--end", params["end"], "--tz", params["tz"],
        "--granularity", params["granularity"], "--output", str(output), "--no-progress",
        database_url=db.url,
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    written = output.read_bytes()
    assert written == export(webhook, name, **params)
    assert written.count(b"\n") > 2  # a header and rows, not an empty file
    assert not output.with_name(output.name + ".partial").exists()


def test_the_cli_takes_the_repeatable_filters(
    webhook: WebhookClient, db: TestDatabase, tmp_path: Path
) -> None:
    a_day_of_movements(webhook)
    batch = [
        task(external_id="a", ai_model="m1", cost="1", cost_currency="usd"),
        task(external_id="b", ai_model="m2", cost="1", cost_currency="usd"),
        task(external_id="c", ai_model="m3", cost="1", cost_currency="usd"),
    ]
    assert webhook.http.post("/api/tasks", json=batch).status_code == 200
    output = tmp_path / "tasks.csv"

    result = run_roi(
        "export", "tasks", "--start", DAY["start"], "--end", DAY["end"],
        "--ai-model", "m1", "--ai-model", "m3", "--output", str(output),
        database_url=db.url,
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert output.read_bytes() == export(webhook, "tasks", **DAY, ai_model=["m1", "m3"])
    assert [line.split(b",")[2] for line in output.read_bytes().splitlines()[1:]] == [b"a", b"c"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tz", "Mars/Olympus"], "--tz: unknown time zone 'Mars/Olympus'"),
        (["--granularity", "fortnight"], "--granularity: must be one of"),
        (["--stream", " "], "--stream: must not be empty"),
    ],
)
def test_a_bad_option_fails_naming_it_and_writes_nothing(
    db: TestDatabase, tmp_path: Path, args: list[str], message: str
) -> None:
    output = tmp_path / "ledger.csv"

    result = run_roi(
        "export", "ledger", "--start", "2024-03-10", "--end", "2024-03-11", *args,
        "--output", str(output),
        database_url=db.url,
    )  # fmt: skip

    assert result.exit_code == 1
    assert message in result.output
    assert list(tmp_path.iterdir()) == []
