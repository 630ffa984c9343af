"""CLI for the CSV exports: `roi export ledger|streams|tasks --output FILE` (see `register`).

The file holds exactly the bytes `GET /api/export/<name>.csv` answers for the same filters:
both write what `app.exports.export_csv` yields.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from tqdm import tqdm

from app.metrics.filters import GRANULARITIES, build_filter
from app.periods import BadParameter
from app.settings import get_settings


class ExportName(StrEnum):
    ledger = "ledger"
    streams = "streams"
    tasks = "tasks"


def register(cli: typer.Typer) -> None:
    """Add `export` to the `roi` command."""
    cli.command("export")(export)


def export(
    name: Annotated[ExportName, typer.Argument(help="ledger, streams or tasks.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The CSV file to write.")],
    start: Annotated[str, typer.Option(help="YYYY-MM-DD or ISO datetime, inclusive.")],
    end: Annotated[str, typer.Option(help="YYYY-MM-DD or ISO datetime, exclusive.")],
    tz: Annotated[str | None, typer.Option(help="IANA zone; default ROI_TIMEZONE.")] = None,
    granularity: Annotated[
        str, typer.Option(help=f"Buckets of the streams export: {', '.join(GRANULARITIES)}.")
    ] = "day",
    stream: Annotated[list[str] | None, typer.Option(help="Only this stream (repeatable).")] = None,
    ai_model: Annotated[
        list[str] | None, typer.Option(help="Only tasks of this AI model (repeatable).")
    ] = None,
    task_type: Annotated[
        list[str] | None, typer.Option(help="Only tasks of this type (repeatable).")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
) -> None:
    """Write a CSV export to a file: the same bytes as GET /api/export/NAME.csv.

    The file appears under its name only once complete (it is written beside it first), so a
    failed or interrupted export never leaves a truncated file that looks whole."""
    from app.database import make_engine
    from app.exports import ExportRequest, export_csv  # the app's stack: only here

    settings = get_settings()
    try:
        f = build_filter(
            start=start,
            end=end,
            tz=tz or settings.timezone,
            granularity=granularity,
            streams=stream,
            ai_models=ai_model,
            task_types=task_type,
        )
    except BadParameter as exc:
        typer.secho(
            f"--{exc.field.replace('_', '-')}: {exc.message}", fg=typer.colors.RED, err=True
        )
        raise typer.Exit(1) from exc
    request = ExportRequest(name=name.value, filter=f, reporting=settings.reporting_currency)
    engine = make_engine(settings)
    partial = output.with_name(output.name + ".partial")
    try:
        with (
            partial.open("wb") as file,
            tqdm(unit=" rows", disable=not progress, leave=False) as bar,
        ):
            header = True
            # The bar's total is PostgreSQL's estimate of the rows, from its statistics (close
            # while autovacuum keeps them fresh): it comes with planning the export for free,
            # where counting first would read an index entry per row (0.1 s per million).
            for chunk in export_csv(engine, request, on_row_estimate=bar.reset):
                file.write(chunk)
                rows = chunk.count(b"\n") - header  # a line break inside a quoted cell, too
                header = False
                bar.update(rows)
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
        engine.dispose()
    typer.echo(f"wrote {output} ({output.stat().st_size:,} bytes)", err=True)
