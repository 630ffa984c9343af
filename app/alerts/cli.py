"""`roi alerts check` and `roi alerts list` (added to `roi` by `register`)."""

from __future__ import annotations

from datetime import date
from typing import Annotated

import typer

from app.alerts.store import StoredAlert, recent_alerts
from app.settings import get_settings

alerts_cli = typer.Typer(help="Trend alerts per stream (docs/alerts.md).", no_args_is_help=True)


def register(cli: typer.Typer) -> None:
    """Add `alerts check` and `alerts list` to the `roi` command."""
    cli.add_typer(alerts_cli, name="alerts")


def _show(alert: StoredAlert) -> str:
    sent = f"sent {alert.sent_at.isoformat(timespec='seconds')}" if alert.sent_at else "not sent"
    return f"#{alert.id} {alert.detected_on.isoformat()} [{sent}] {alert.message}"


@alerts_cli.command("check")
def check(
    today: Annotated[
        str | None,
        typer.Option(help="Judge the days before this one (YYYY-MM-DD); default: now."),
    ] = None,
) -> None:
    """Evaluate now: store and send (ROI_ALERT_WEBHOOK_URL) new alerts, and print them."""
    from app.alerts.evaluate import evaluate_alerts, today_in
    from app.database import make_engine

    settings = get_settings()
    try:
        day = date.fromisoformat(today) if today else today_in(settings)
    except ValueError:
        typer.secho(f"--today: expected YYYY-MM-DD, got {today!r}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    engine = make_engine(settings)
    try:
        result = evaluate_alerts(engine, settings, day)
    finally:
        engine.dispose()
    for alert in result.new:
        typer.echo(_show(alert))
    typer.echo(f"{len(result.new)} new alert(s) for the days before {day.isoformat()}")
    if settings.alert_webhook_url:
        typer.echo(f"{result.sent} sent, {result.unsent} left for the next evaluation")
    if result.unsent:
        raise typer.Exit(1)


@alerts_cli.command("list")
def list_alerts(
    limit: Annotated[int, typer.Option(min=1, help="How many, newest first.")] = 20,
) -> None:
    """The newest stored alerts."""
    from app.database import make_engine

    engine = make_engine(get_settings())
    try:
        with engine.connect() as conn:
            found = recent_alerts(conn, limit)
    finally:
        engine.dispose()
    for alert in found:
        typer.echo(_show(alert))
    if not found:
        typer.echo("no alerts")
