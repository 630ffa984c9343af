"""`roi`: serve the app, migrate the schema, replay failed events, catch up from Stripe."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import typer
from sqlalchemy import Engine

from app.alerts.cli import register as register_alert_commands
from app.demo_cli import register as register_demo_command
from app.export_cli import register as register_export_commands
from app.ledger.store import set_stream_mapping
from app.settings import get_settings
from app.tasks_cli import register as register_task_cost_commands
from app.tokens_cli import register as register_token_commands

T = TypeVar("T")

cli = typer.Typer(
    help="ROI analytics: revenue from Stripe joined with AI task costs.",
    no_args_is_help=True,
    add_completion=False,
)


def _engine() -> Engine:
    from app.database import make_engine

    return make_engine(get_settings())


def _fail(message: str) -> None:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
) -> None:
    """Run the web app (webhook, API) after checking the schema."""
    import logging.config

    import uvicorn

    from app.observability.logs import logging_config
    from app.observability.prometheus import prepare_multiprocess_dir, remove_multiprocess_dir
    from app.schema import SchemaMismatch, ensure_schema

    settings = get_settings()
    log_config = logging_config(settings)
    logging.config.dictConfig(log_config)
    try:
        status = ensure_schema(_engine(), settings)
    except SchemaMismatch as exc:
        _fail(str(exc))
    from app.auth.setup import announce_first_admin

    announce_first_admin(_engine())  # on the very first start only; stderr, never the log
    where = "embedded PostgreSQL" if settings.uses_embedded_database else "DATABASE_URL"
    typer.echo(f"schema at {status.head} on the {where}; serving on http://{host}:{port}/")
    if not settings.webhook_secrets:
        typer.secho(
            "STRIPE_WEBHOOK_SECRET is not set: the webhook answers 503 until it is.",
            fg=typer.colors.YELLOW,
            err=True,
        )
    # Before the workers start: each worker writes its metrics there, a scrape sums them.
    metrics_dir, made_here = prepare_multiprocess_dir(workers)
    try:
        uvicorn.run(
            "app.main:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_config=log_config,  # applied again in each worker process
            log_level=settings.log_level.lower(),
            access_log=False,  # RequestContext writes the access lines, with the request id
            # On SIGTERM: stop accepting, let requests in flight finish (up to 20 s), then the
            # lifespan shutdown drains the event writer's queue.
            timeout_graceful_shutdown=20,
        )
    finally:
        if metrics_dir is not None and made_here:
            remove_multiprocess_dir(metrics_dir)


@cli.command()
def migrate(
    check: Annotated[
        bool, typer.Option("--check", help="Fail when the models and the migrations differ.")
    ] = False,
) -> None:
    """Upgrade the database to the newest migration (or, with --check, verify only)."""
    from app.schema import ModelsDiffer, check_models_match_migrations, schema_status, upgrade

    engine = _engine()
    if check:
        status = schema_status(engine)
        if not status.at_head:
            _fail(
                f"database is not at head; pending: {', '.join(status.pending)}. "
                "Run `roi migrate` first."
            )
        try:
            check_models_match_migrations(engine)
        except ModelsDiffer as exc:
            _fail(f"app/models.py and migrations/ differ:\n{exc}")
        typer.echo(f"models and migrations agree (head {status.head})")
        return
    before = schema_status(engine)
    upgrade(engine)
    applied = ", ".join(before.pending) or "nothing to apply"
    typer.echo(f"database at {before.head} ({applied})")


@cli.command()
def downgrade(
    to: Annotated[str, typer.Option(help="Target revision; -1 rolls back one.")] = "-1",
) -> None:
    """Roll the schema back (one revision by default)."""
    from app.schema import downgrade as run_downgrade
    from app.schema import schema_status

    engine = _engine()
    run_downgrade(engine, to)
    current = ", ".join(schema_status(engine).current) or "base (empty)"
    typer.echo(f"database now at {current}")


@cli.command("schema-status")
def schema_status_command() -> None:
    """Show the database revision, the head, and what is pending."""
    from app.schema import schema_status

    status = schema_status(_engine())
    typer.echo(
        f"current: {', '.join(status.current) or 'none'}\nhead: {status.head}\n"
        f"pending: {', '.join(status.pending) or 'none'}"
    )


@cli.command()
def replay(
    failed: Annotated[bool, typer.Option("--failed", help="Reprocess every failed event.")] = False,
    event_id: Annotated[
        list[str] | None, typer.Option("--id", help="Reprocess this event.")
    ] = None,
) -> None:
    """Reprocess stored Stripe events through the same path as the webhook."""
    if not failed and not event_id:
        _fail("say which events: --failed, or --id EVENT_ID (repeatable)")
    counts = asyncio.run(_replay(failed, event_id or []))
    typer.echo(
        ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
        or "no events to replay"
    )
    if counts.get("failed"):
        raise typer.Exit(1)


async def _replay(failed: bool, ids: list[str]) -> dict[str, int]:
    import psycopg

    from app.changes import ANNOUNCE_SQL
    from app.database import libpq_url
    from ingest.event_writer import write_now
    from ingest.stripe_webhook import parse_event, stored_event

    settings = get_settings()
    counts: dict[str, int] = {}
    async with await psycopg.AsyncConnection.connect(libpq_url(settings)) as conn:
        rows: list[Any] = await (
            await conn.execute(
                "SELECT id, payload::text FROM stripe_events"
                " WHERE (%(failed)s AND status = 'failed') OR id = ANY(%(ids)s)"
                " ORDER BY created, id",
                {"failed": failed, "ids": ids},
            )
        ).fetchall()
        await conn.commit()
        for _, payload in rows:
            event = parse_event(payload)
            try:
                stored = stored_event(event, payload, settings)
            except ValueError as exc:
                typer.secho(f"{event['id']}: {exc}", err=True)
                counts["failed"] = counts.get("failed", 0) + 1
                continue
            outcome = await write_now(conn, stored)
            counts[outcome.value] = counts.get(outcome.value, 0) + 1
        if rows:
            await conn.execute(ANNOUNCE_SQL)  # open dashboards redraw
            await conn.commit()
    return counts


def _moment(value: str | None, option: str) -> datetime | None:
    """A date (midnight UTC) or an ISO datetime (UTC unless it says otherwise)."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        _fail(f"{option}: expected a date (2026-11-01) or an ISO datetime, got {value!r}")
        raise  # unreachable: _fail exits
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@cli.command()
def reconcile(
    since: Annotated[
        str | None,
        typer.Option(
            help="Catch up events from this date or datetime (default: where the last run stopped)."
        ),
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Stop before this date or datetime (default: now).")
    ] = None,
    fees: Annotated[
        bool,
        typer.Option(
            "--fees",
            help="Fetch the fees of charges whose balance transaction is not known yet "
            "(alone: only that).",
        ),
    ] = False,
) -> None:
    """Catch up from the Stripe API: book events the webhook missed, and fees."""
    import stripe

    from ingest.stripe_api import MissingApiKey, describe
    from ingest.stripe_catchup import NoStartingPoint, fetch_fees, reconcile_events

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    settings = get_settings()
    start, end = _moment(since, "--since"), _moment(until, "--until")
    if start and end and end <= start:
        _fail("--until must be after --since")
    problem = False
    try:
        if not fees or since or until:
            events = asyncio.run(reconcile_events(settings, since=start, until=end))
            typer.echo(events.summary())
            mark = events.high_water.isoformat() if events.high_water else "none yet"
            typer.echo(f"high-water mark: {mark}")
            if events.gave_up:
                typer.secho(f"{events.gave_up}; run again to continue", fg="red", err=True)
            problem = bool(events.gave_up or events.failed)
        if fees:
            fee_round = asyncio.run(fetch_fees(settings, everything=True))
            typer.echo(fee_round.summary())
            problem = problem or bool(fee_round.gave_up or fee_round.failed)
    except (MissingApiKey, NoStartingPoint) as exc:
        _fail(str(exc))
    except stripe.StripeError as exc:  # not worth retrying: a bad key, a bad request
        _fail(f"the Stripe API refused: {describe(exc)}")
    if problem:
        raise typer.Exit(1)


streams = typer.Typer(help="Map Stripe product, price or customer ids to streams.")
cli.add_typer(streams, name="streams")


@streams.command("map")
def map_stream(
    stripe_id: Annotated[str, typer.Argument(help="prod_..., price_... or cus_...")],
    stream: Annotated[str, typer.Argument(help="The stream name.")],
) -> None:
    """Attribute revenue of this product, price or customer to a stream (history included)."""
    _set_mapping(stripe_id, stream.strip())


@streams.command("unmap")
def unmap_stream(
    stripe_id: Annotated[str, typer.Argument(help="prod_..., price_... or cus_...")],
) -> None:
    """Remove a mapping; the charges it reached are attributed again without it."""
    _set_mapping(stripe_id, None)


def _set_mapping(stripe_id: str, stream: str | None) -> None:
    if not stripe_id.startswith(("prod_", "price_", "cus_")):
        _fail(f"stripe_id: expected a prod_, price_ or cus_ id, got {stripe_id!r}")
    if stream == "":
        _fail("stream: must not be empty")
    count = asyncio.run(_with_connection(lambda conn: _audited_mapping(conn, stripe_id, stream)))
    verb = f"mapped to {stream!r}" if stream else "unmapped"
    typer.echo(f"{stripe_id} {verb}; {count} charge(s) re-attributed")


async def _audited_mapping(conn: Any, stripe_id: str, stream: str | None) -> int:
    from app.audit import record_audit_async
    from app.auth.principal import cli_principal

    count = await set_stream_mapping(conn, stripe_id, stream)
    action = "stream_mapping.set" if stream else "stream_mapping.remove"
    details = {"stripe_id": stripe_id, "stream": stream, "charges_reattributed": count}
    await record_audit_async(conn, cli_principal(), action, f"stream_mapping:{stripe_id}", details)
    return count


async def _with_connection(work: Callable[[Any], Awaitable[T]]) -> T:
    import psycopg

    from app.database import libpq_url

    url = libpq_url(get_settings())
    async with await psycopg.AsyncConnection.connect(url) as conn, conn.transaction():
        return await work(conn)


register_task_cost_commands(cli)
register_demo_command(cli)
register_export_commands(cli)
register_token_commands(cli)
register_alert_commands(cli)


def main() -> None:
    try:
        cli()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
