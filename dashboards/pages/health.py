"""Data health: is the data arriving, complete and current? The same numbers as /metrics and
GET /api/health (app/observability/health.py), plus the trust counts of the metrics API."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from dash import Dash, Input, Output, html

from app.observability import health_snapshot
from dashboards.components import panel
from dashboards.context import DashboardContext, keep_figures_on_error
from dashboards.format import count, money

PATH = "/dashboard/health"
TITLE = "Data health"


def layout() -> html.Div:
    return html.Div(id="health", className="health-grid")


def card(title: str, value: str, note: str = "", *, id: str, bad: bool = False) -> html.Section:
    return panel(
        title,
        html.Div(value, className="kpi-value negative" if bad else "kpi-value", id=id),
        html.Div(note, className="muted"),
    )


def moment(value: str | None, tz: str) -> str:
    if value is None:
        return "never"
    return f"{datetime.fromisoformat(value).astimezone(ZoneInfo(tz)):%Y-%m-%d %H:%M:%S %Z}"


def health_cards(snapshot: dict[str, Any], trust: Any, currency: str, tz: str) -> list[Any]:
    webhooks = snapshot["webhooks"]
    events = snapshot["events"] or {}
    schema = snapshot["schema"]
    lag = snapshot["preaggregation"] or {}
    database = snapshot["database"]
    unconverted = ", ".join(money(v, c) for c, v in sorted(trust.unconverted_revenue.items()))
    return [
        card("Database", "reachable" if database["ok"] else "unreachable",
             database["error"] or "", id="health-database", bad=not database["ok"]),
        card("Migrations", "at head" if schema and schema["at_head"] else "behind",
             f"database {', '.join(schema['current']) or 'empty'}, code {schema['head']}"
             if schema else "unknown", id="health-schema",
             bad=not (schema and schema["at_head"])),
        card("Last event received", moment(events.get("last_received_at"), tz),
             id="health-last-event"),
        card("Events per minute", f"{events.get('per_minute', 0):,}",
             f"{count(events.get('last_5_minutes', 0))} in the last 5 minutes",
             id="health-events-per-minute"),
        card("Stripe fees", "unknown" if trust.fees_unknown is None
             else f"{count(trust.fees_unknown)} charges pending",
             "set STRIPE_API_KEY to fetch them" if trust.fees_unknown is None
             else "fetched from the Stripe API in the background", id="health-fees",
             bad=trust.fees_unknown is None),
        card("Failed events", count(trust.failed_events),
             "stored with their error; `roi replay --failed` reprocesses them",
             id="health-failed", bad=trust.failed_events > 0),
        card("Webhooks since start", count(webhooks["received"]),
             f"processed {count(webhooks['processed'])} · ignored {count(webhooks['ignored'])}"
             f" · duplicates {count(webhooks['duplicate'])} · failed {count(webhooks['failed'])}"
             f" · rejected {count(webhooks['rejected'])}", id="health-webhooks"),
        card("Unattributed revenue", money(trust.unattributed_net_revenue, currency),
             "in this period; tag charges with a stream", id="health-unattributed"),
        card("Not converted", unconverted or "nothing",
             "net revenue without an FX rate, in this period", id="health-unconverted",
             bad=bool(unconverted)),
        card("Unpriced tasks", count(trust.unpriced_tasks),
             "in this period; never priced at 0", id="health-unpriced",
             bad=trust.unpriced_tasks > 0),
        card("Pre-aggregation lag", f"{lag.get('oldest_pending_age_seconds', 0):,.1f} s",
             f"{count(lag.get('pending_rows', 0))} rollup rows waiting for compaction",
             id="health-lag"),
    ]  # fmt: skip


def register(app: Dash, ctx: DashboardContext) -> None:
    @app.callback(
        Output("health", "children"),
        Input("view", "data"),
        Input("data-version", "data"),
        Input("fallback-refresh", "n_intervals"),
        websocket=True,
    )
    @keep_figures_on_error
    def show_health(view_data: dict[str, Any], *_: Any) -> list[Any]:
        timeout = ctx.settings.db_timeout_seconds
        snapshot = health_snapshot(ctx.source.engine, timeout_seconds=timeout)
        trust = ctx.source.streams(ctx.metrics_filter(view_data)).trust
        return health_cards(snapshot, trust, ctx.currency, view_data["tz"])
