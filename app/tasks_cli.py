"""CLI for task costs: `roi import-tasks`, `roi prices ...`, `roi fx ...` (see `register`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar, cast

import typer
from pydantic import ValidationError
from sqlalchemy import Connection, Engine

from app.audit import record_audit
from app.auth.principal import cli_principal
from app.fields import RowError, error_reasons, format_decimal
from app.periods import BadParameter, instant, zone
from app.pricing import (
    Price,
    PriceChange,
    PriceIn,
    PriceResult,
    PriceRuleError,
    end_price,
    list_changes,
    list_prices,
    reprice_tasks,
    set_price,
    unpriced_tasks,
)
from app.settings import get_settings

T = TypeVar("T")

prices = typer.Typer(help="Model prices: per million tokens in/out, per GPU-second.")
fx = typer.Typer(help="FX rates by day, used to convert into REPORTING_CURRENCY.")


def register(cli: typer.Typer) -> None:
    """Add `import-tasks`, `prices` and `fx` to the `roi` command."""
    cli.command("import-tasks")(import_tasks)
    cli.add_typer(prices, name="prices")
    cli.add_typer(fx, name="fx")


# --- plumbing ---------------------------------------------------------------------------------


def _fail(message: str) -> NoReturn:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def _fail_rows(errors: list[RowError], what: str, place: str = "line") -> NoReturn:
    for error in errors:
        where = f"{place} {error.index}: " if error.index else ""
        typer.secho(f"{where}{error.field}: {error.reason}", fg=typer.colors.RED, err=True)
    rows = len({e.index for e in errors})
    _fail(f"{what}: {len(errors)} problem(s) in {rows} {place}(s); nothing was written")


@contextmanager
def _engine() -> Iterator[Engine]:
    from app.database import make_engine

    engine = make_engine(get_settings())
    try:
        yield engine
    finally:
        engine.dispose()


def _in_transaction(work: Callable[[Connection], T]) -> T:
    with _engine() as engine, engine.begin() as conn:
        return work(conn)


def _when(value: str | None, field: str) -> datetime | None:
    """A date (midnight in ROI_TIMEZONE) or an ISO datetime (without offset: ROI_TIMEZONE)."""
    if value is None:
        return None
    try:
        return instant(value, zone(get_settings().timezone), field)
    except BadParameter as exc:
        _fail(str(exc))


def _show_price(price: Price) -> str:
    components = ", ".join(
        f"{label} {format_decimal(value)}"
        for label, value in (
            ("in/M", price.per_million_in),
            ("out/M", price.per_million_out),
            ("gpu/s", price.per_gpu_second),
        )
        if value is not None
    )
    return f"#{price.id} {price.ai_model}: {price.currency} {components}, valid {price.period()}"


def _show_change(change: PriceChange) -> str:
    target = f"price #{change.price_id}" if change.price_id else "all prices"
    return (
        f"{change.changed_at.isoformat()} {change.actor}: {change.action} {target}"
        f"{f' ({change.ai_model})' if change.ai_model else ''}, "
        f"{change.tasks_recomputed} task(s) re-priced"
    )


def _apply(work: Callable[[Connection], PriceResult], action: str, sent: dict[str, Any]) -> None:
    def audited(conn: Connection) -> PriceResult:
        result = work(conn)
        if result.changes:
            record_audit(conn, cli_principal(), action, f"price:{result.price.id}", {
                "sent": sent,
                "ai_model": result.price.ai_model,
                "price_changes": [c.id for c in result.changes],
            })  # fmt: skip
        return result

    try:
        result = _in_transaction(audited)
    except PriceRuleError as exc:
        _fail(f"{exc.field}: {exc.message}")
    for change in result.changes:
        typer.echo(_show_change(change))
    if not result.changes:
        typer.echo("no change")
    typer.echo(_show_price(result.price))


# --- roi import-tasks -------------------------------------------------------------------------


def import_tasks(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="CSV or JSONL file.")],
    fmt: Annotated[
        str | None,
        typer.Option("--format", help="csv or jsonl; default: from the file name's extension."),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Tasks per transaction (at most 10000).")] = 5_000,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on a terminal.")] = True,
) -> None:
    """Import AI tasks from a CSV or JSON Lines file (safe to rerun).

    The file is checked whole first: if any row is bad, every problem is listed and nothing is
    written. Then it is written in batches; tasks already stored as sent are left untouched.
    """
    from ingest.task_import import TaskFileError, file_format, import_file

    try:
        chosen = file_format(file, fmt)
        with _engine() as engine:
            report = import_file(engine, file, chosen, batch_size=batch_size, progress=progress)
    except TaskFileError as exc:
        _fail_rows(exc.errors, str(file))
    result = report.result
    typer.echo(
        f"{report.rows} task(s) in {report.batches} batch(es): {result.inserted} inserted, "
        f"{result.updated} updated, {result.unchanged} unchanged"
        + (f", {result.superseded} superseded by a later row" if result.superseded else "")
    )
    if result.unpriced:
        by_model = ", ".join(f"{m}: {n}" for m, n in result.unpriced_by_model.items())
        typer.secho(
            f"{result.unpriced} task(s) unpriced (no cost sent, no price): {by_model}",
            fg=typer.colors.YELLOW,
        )


# --- roi prices -------------------------------------------------------------------------------


@prices.command("list")
def prices_list(
    model: Annotated[str | None, typer.Option(help="Only this ai_model.")] = None,
    at: Annotated[str | None, typer.Option(help="Only prices valid at this date/time.")] = None,
) -> None:
    """List prices by model and start."""
    found = _in_transaction(lambda c: list_prices(c, ai_model=model, at=_when(at, "at")))
    for price in found:
        typer.echo(_show_price(price))
    if not found:
        typer.echo("no prices")


@prices.command("set")
def prices_set(
    model: Annotated[str, typer.Argument(help="The ai_model, exactly as tasks name it.")],
    currency: Annotated[str, typer.Option(help="e.g. usd")],
    valid_from: Annotated[
        str, typer.Option("--from", help="YYYY-MM-DD (in ROI_TIMEZONE) or ISO datetime.")
    ],
    valid_to: Annotated[
        str | None, typer.Option("--to", help="Exclusive end; default open-ended.")
    ] = None,
    per_million_in: Annotated[
        str | None, typer.Option("--in", help="Per million input tokens, e.g. 2.50.")
    ] = None,
    per_million_out: Annotated[
        str | None, typer.Option("--out", help="Per million output tokens.")
    ] = None,
    per_gpu_second: Annotated[str | None, typer.Option("--gpu", help="Per GPU-second.")] = None,
) -> None:
    """Set MODEL's price from --from on; covered tasks are re-priced.

    An open-ended price of MODEL that started earlier is ended at --from; a price starting at
    the same instant is corrected. Any other overlap is refused.
    """
    raw: dict[str, Any] = {
        "ai_model": model,
        "currency": currency,
        "per_million_in": per_million_in,
        "per_million_out": per_million_out,
        "per_gpu_second": per_gpu_second,
        "valid_from": _when(valid_from, "valid_from"),
        "valid_to": _when(valid_to, "valid_to"),
    }
    try:
        spec = PriceIn.model_validate(raw)
    except ValidationError as exc:
        problems = error_reasons(cast(list[Any], exc.errors(include_url=False)))
        _fail("\n".join(f"{name}: {reason}" for name, reason in problems))
    _apply(
        lambda conn: set_price(conn, spec, actor="cli"), "price.set", spec.model_dump(mode="json")
    )


@prices.command("end")
def prices_end(
    price_id: Annotated[int, typer.Argument(help="The price's id (see `roi prices list`).")],
    at: Annotated[str, typer.Option(help="First date/time the price no longer applies.")],
) -> None:
    """End a price; tasks started from then on lose it."""
    valid_to = _when(at, "valid_to")
    assert valid_to is not None
    _apply(
        lambda conn: end_price(conn, price_id, valid_to, actor="cli"),
        "price.end",
        {"price_id": price_id, "valid_to": valid_to.isoformat()},
    )


@prices.command("changes")
def prices_changes(
    model: Annotated[str | None, typer.Option(help="Only this ai_model.")] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 50,
) -> None:
    """The audit log of price changes, newest first."""
    for change in _in_transaction(lambda c: list_changes(c, ai_model=model, limit=limit)):
        typer.echo(_show_change(change))


@prices.command("unpriced")
def prices_unpriced() -> None:
    """Tasks with no sent cost and no price, per model."""
    found = _in_transaction(unpriced_tasks)
    for row in found:
        typer.echo(
            f"{row.ai_model or '(no model)'}: {row.tasks} task(s), started "
            f"{row.first_started_at.isoformat()} .. {row.last_started_at.isoformat()}"
        )
    if not found:
        typer.echo("no unpriced tasks")


@prices.command("reprice")
def prices_reprice(
    model: Annotated[str | None, typer.Option(help="Only tasks of this ai_model.")] = None,
) -> None:
    """Price every task again from the current prices.

    For rows written straight into execution_tasks (docs/tasks.md). Changes nothing when all
    are up to date.
    """

    def audited(conn: Connection) -> int:
        count = reprice_tasks(conn, actor="cli", ai_model=model)
        if count:
            record_audit(conn, cli_principal(), "price.reprice", f"ai_model:{model or '*'}",
                         {"ai_model": model, "tasks_recomputed": count})  # fmt: skip
        return count

    count = _in_transaction(audited)
    typer.echo(f"{count} task(s) re-priced")


# --- roi fx -----------------------------------------------------------------------------------


@fx.command("import")
def fx_import(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="CSV file.")],
    quote_currency: Annotated[
        str | None,
        typer.Option(help="For rows without quote_currency; default REPORTING_CURRENCY."),
    ] = None,
) -> None:
    """Import daily FX rates from a CSV (day,currency,rate[,quote_currency]).

    1 currency = rate quote_currency. The file is checked whole first; nothing is written if
    any row is bad. Equal rates are left untouched, different ones replaced.
    """
    from app.fields import parse_currency
    from app.fx import FxImportError, import_csv

    try:
        default_quote = parse_currency(quote_currency or get_settings().reporting_currency)
    except ValueError as exc:
        _fail(f"--quote-currency: {exc}")
    try:
        with file.open(encoding="utf-8-sig", newline="") as handle:

            def audited(conn: Connection) -> Any:
                counts = import_csv(conn, handle, default_quote=default_quote)
                if counts.inserted or counts.updated:
                    record_audit(conn, cli_principal(), "fx_rates.import", "fx_rates", {
                        "file": str(file), "inserted": counts.inserted,
                        "updated": counts.updated, "unchanged": counts.unchanged,
                    })  # fmt: skip
                return counts

            counts = _in_transaction(audited)
    except FxImportError as exc:
        _fail_rows(exc.errors, str(file))
    except UnicodeDecodeError as exc:
        _fail(f"{file}: not valid UTF-8 ({exc})")
    typer.echo(
        f"{counts.inserted} rate(s) inserted, {counts.updated} updated, "
        f"{counts.unchanged} unchanged"
    )


@fx.command("list")
def fx_list(
    currency: Annotated[str | None, typer.Option(help="Converted from.")] = None,
    quote_currency: Annotated[str | None, typer.Option(help="Converted into.")] = None,
    start: Annotated[str | None, typer.Option(help="First day, YYYY-MM-DD.")] = None,
    end: Annotated[str | None, typer.Option(help="Day after the last, YYYY-MM-DD.")] = None,
) -> None:
    """List rates: day, currency, quote currency, rate."""
    from app.fx import list_rates

    def day(value: str | None, name: str) -> date | None:
        try:
            return date.fromisoformat(value) if value else None
        except ValueError:
            _fail(f"{name}: expected YYYY-MM-DD, got {value!r}")

    lo, hi = day(start, "start"), day(end, "end")
    rows = _in_transaction(
        lambda c: list_rates(
            c,
            currency=currency.lower() if currency else None,
            quote_currency=quote_currency.lower() if quote_currency else None,
            start=lo,
            end=hi,
            limit=100_000,
        )
    )
    for row in rows:
        typer.echo(f"{row.day} {row.currency} {row.quote_currency} {format_decimal(row.rate)}")
    if not rows:
        typer.echo("no rates")
