"""Overview: which streams make money, at a glance."""

from __future__ import annotations

from typing import Any

from dash import Dash, Input, Output, dcc, html

from app.alerts.store import StoredAlert
from app.api.metrics import StreamsResponse
from dashboards import figures
from dashboards.components import figure_cell, graph, kpi_card, panel, table
from dashboards.context import DashboardContext, keep_figures_on_error
from dashboards.format import change, count, money, percent
from dashboards.view import View

PATH = "/dashboard/"
TITLE = "Overview"
WEBHOOK_EVENTS = (
    "charge.succeeded, charge.captured, charge.updated, charge.refunded, charge.refund.updated, "
    "refund.created, refund.updated, refund.failed, charge.dispute.*, payment_intent.succeeded, "
    "invoice.paid, checkout.session.completed"
)


def layout() -> html.Div:
    return html.Div(
        [
            html.Div(id="overview-empty"),
            html.Div(id="overview-kpis", className="kpis"),
            html.Div(id="overview-alerts"),
            html.Div(
                className="row",
                children=[graph("overview-revenue-cost"), graph("overview-roi-margin")],
            ),
            html.Div(
                className="row",
                children=[graph("overview-revenue-time"), graph("overview-margin-time")],
            ),
            panel("Streams", html.Div(id="overview-streams")),
            html.Div(id="overview-trust", className="trust"),
        ]
    )


def empty_state() -> html.Section:
    """What a new user sees before the first event: how to connect Stripe."""
    return panel(
        "No revenue yet: connect a Stripe webhook",
        html.Ol(
            [
                html.Li(
                    [
                        "In the Stripe dashboard, Developers → Webhooks, add an endpoint ",
                        html.Code("https://<this host>/webhooks/stripe"),
                        " sending: ",
                        html.Code(WEBHOOK_EVENTS),
                        ".",
                    ]
                ),
                html.Li(
                    [
                        "Put its signing secret (",
                        html.Code("whsec_..."),
                        ") in ",
                        html.Code("STRIPE_WEBHOOK_SECRET"),
                        " and restart.",
                    ]
                ),
                html.Li(
                    [
                        "Tag revenue with a stream: ",
                        html.Code("stream=<name>"),
                        " in the metadata of charges, payment intents, invoices, subscriptions, "
                        "prices or products (or map ids with ",
                        html.Code("roi streams map"),
                        ").",
                    ]
                ),
                html.Li(
                    [
                        "Locally: ",
                        html.Code("stripe listen --forward-to localhost:8000/webhooks/stripe"),
                        ". AI task costs arrive through ",
                        html.Code("POST /api/tasks"),
                        " or ",
                        html.Code("roi import-tasks"),
                        ".",
                    ]
                ),
            ]
        ),
        html.P("This page updates by itself as soon as the first event arrives."),
        id="empty-state",
    )


def kpis(report: StreamsResponse) -> list[html.Div]:
    now, before, cur = report.total, report.previous_total, report.currency
    return [
        kpi_card("net_revenue", "Net revenue", money(now.net_revenue, cur), now.net_revenue,
                 change(now.net_revenue, before.net_revenue)),
        kpi_card("cost", "Cost", money(now.cost, cur), now.cost,
                 change(now.cost, before.cost), up_is_good=False),
        kpi_card("margin", "Margin", money(now.margin, cur), now.margin,
                 change(now.margin, before.margin)),
        kpi_card("margin_pct", "Margin %", percent(now.margin_pct), now.margin_pct,
                 change(now.margin_pct, before.margin_pct, is_ratio=True)),
        kpi_card("roi", "ROI", percent(now.roi), now.roi,
                 change(now.roi, before.roi, is_ratio=True)),
    ]  # fmt: skip


def stream_href(view: View, stream: str) -> str:
    return "/dashboard/stream" + view.with_streams((stream,)).to_query()


def stream_table(report: StreamsResponse, view: View) -> html.Table:
    cur = report.currency
    rows = [
        [
            html.Td(dcc.Link(s.stream, href=stream_href(view, s.stream))),
            figure_cell(money(s.net_revenue, cur), s.net_revenue),
            figure_cell(money(s.cost, cur), s.cost),
            figure_cell(money(s.margin, cur), s.margin),
            figure_cell(percent(s.margin_pct), s.margin_pct),
            figure_cell(percent(s.roi), s.roi),
            figure_cell(count(s.tasks), None),
        ]
        for s in report.streams
    ]  # fmt: skip
    headers = ["Stream", "Net revenue", "Cost", "Margin", "Margin %", "ROI", "Tasks"]
    return table(headers, rows, id="stream-table")


def trust_line(report: StreamsResponse) -> list[Any]:
    """The counts a reader needs before trusting the totals."""
    trust, cur = report.trust, report.currency
    items: list[Any] = [
        f"Unattributed revenue {money(trust.unattributed_net_revenue, cur)}",
        f"Unpriced tasks {count(trust.unpriced_tasks)}",
        f"Failed events {count(trust.failed_events)}",
        "Stripe fees unknown (no STRIPE_API_KEY)"
        if trust.fees_unknown is None
        else f"Charges with fees not known yet {count(trust.fees_unknown)}",
    ]
    unconverted = {**trust.unconverted_revenue}
    if unconverted:
        items.append(
            "Not converted (no FX rate): "
            + ", ".join(money(v, c) for c, v in sorted(unconverted.items()))
        )
    items.append(dcc.Link("Data health", href="/dashboard/health"))
    return [html.Span(item, className="trust-item") for item in items]


def alert_list(alerts: list[StoredAlert]) -> html.Section | None:
    """Trend alerts (app/alerts): a stream's margin, ROI or revenue leaving its own baseline."""
    if not alerts:
        return None
    return panel(
        "Trend alerts",
        html.Ul(
            [
                html.Li(
                    [html.Strong(f"{a.detected_on:%Y-%m-%d} "), a.message],
                    className=f"alert {a.direction}",
                )
                for a in alerts
            ],
            className="alerts",
        ),
        id="trend-alerts",
    )


def register(app: Dash, ctx: DashboardContext) -> None:
    @app.callback(
        Output("overview-empty", "children"),
        Output("overview-kpis", "children"),
        Output("overview-trust", "children"),
        Output("overview-alerts", "children"),
        Input("view", "data"),
        Input("data-version", "data"),
        Input("fallback-refresh", "n_intervals"),
        websocket=True,
    )
    @keep_figures_on_error
    def show_kpis(view_data: dict[str, Any], *_: Any) -> tuple[Any, ...]:
        """Alone in its callback: the headline figures redraw without waiting for charts."""
        report = ctx.source.streams(ctx.metrics_filter(view_data))
        empty = empty_state() if not ctx.source.stream_names() else None
        alerts = ctx.source.alerts(tuple(view_data["streams"]))
        return empty, kpis(report), trust_line(report), alert_list(alerts)

    @app.callback(
        Output("overview-revenue-cost", "figure"),
        Output("overview-roi-margin", "figure"),
        Output("overview-streams", "children"),
        Input("view", "data"),
        Input("data-version", "data"),
        Input("fallback-refresh", "n_intervals"),
        websocket=True,
    )
    @keep_figures_on_error
    def show_streams(view_data: dict[str, Any], *_: Any) -> tuple[Any, ...]:
        report = ctx.source.streams(ctx.metrics_filter(view_data))
        return (
            figures.revenue_vs_cost(report.streams, report.currency),
            figures.roi_and_margin(report.streams),
            stream_table(report, View.from_store(view_data)),
        )

    @app.callback(
        Output("overview-revenue-time", "figure"),
        Output("overview-margin-time", "figure"),
        Input("view", "data"),
        Input("data-version", "data"),
        Input("fallback-refresh", "n_intervals"),
        websocket=True,
    )
    @keep_figures_on_error
    def show_series(view_data: dict[str, Any], *_: Any) -> tuple[Any, ...]:
        series = ctx.source.timeseries(ctx.metrics_filter(view_data))
        return (
            figures.revenue_by_stream_over_time(series.points, series.currency),
            figures.margin_pct_over_time(series.points),
        )
