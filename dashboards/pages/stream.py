"""Stream detail: one stream's figures over time, its models and task types, its refunds and
disputes."""

from __future__ import annotations

from typing import Any

from dash import Dash, Input, Output, dcc, html, no_update

from dashboards import figures
from dashboards.components import graph, panel
from dashboards.context import DashboardContext, keep_figures_on_error
from dashboards.format import money
from dashboards.pages.models import breakdown_table
from dashboards.pages.overview import kpis, stream_href
from dashboards.view import View

PATH = "/dashboard/stream"
TITLE = "Stream detail"


def layout() -> html.Div:
    return html.Div(
        [
            html.Div(id="stream-picker"),
            html.Div(id="stream-detail", children=[
                html.H2(id="stream-title"),
                html.Div(id="stream-kpis", className="kpis"),
                html.Div(className="row", children=[
                    graph("stream-over-time"), graph("stream-refunds-disputes"),
                ]),
                html.Div(id="stream-money-lost", className="trust"),
                html.Div(className="row", children=[
                    panel("AI models", html.Div(id="stream-models")),
                    panel("Task types", html.Div(id="stream-task-types")),
                ]),
            ]),
        ]
    )  # fmt: skip


def picker(view: View, streams: list[str]) -> html.Section:
    return panel(
        "Pick a stream",
        html.Ul(
            [html.Li(dcc.Link(s, href=stream_href(view, s))) for s in streams] or
            [html.Li("No streams yet.")],
            className="stream-list",
        ),
    )  # fmt: skip


def register(app: Dash, ctx: DashboardContext) -> None:
    @app.callback(
        Output("stream-picker", "children"),
        Output("stream-detail", "style"),
        Output("stream-title", "children"),
        Output("stream-kpis", "children"),
        Output("stream-over-time", "figure"),
        Output("stream-refunds-disputes", "figure"),
        Output("stream-money-lost", "children"),
        Output("stream-models", "children"),
        Output("stream-task-types", "children"),
        Input("view", "data"),
        Input("data-version", "data"),
        Input("fallback-refresh", "n_intervals"),
        websocket=True,
    )
    @keep_figures_on_error
    def show_stream(view_data: dict[str, Any], *_: Any) -> tuple[Any, ...]:
        view = View.from_store(view_data)
        if len(view.streams) != 1:
            hidden = {"display": "none"}
            return (picker(view, ctx.source.stream_names()), hidden, *([no_update] * 7))
        f = ctx.metrics_filter(view_data)
        report = ctx.source.streams(f)
        series = ctx.source.timeseries(f)
        models = ctx.source.models(f)
        cur = report.currency
        total = report.total
        return (
            None,
            {},
            view.streams[0],
            kpis(report),
            figures.stream_over_time(series.points, cur),
            figures.refunds_and_disputes(series.points, cur),
            f"Gross {money(total.gross, cur)} · refunds {money(total.refunds, cur)} · "
            f"disputes {money(total.disputes, cur)} · fees {money(total.fees, cur)} · "
            f"task cost {money(total.task_cost, cur)}",
            breakdown_table(models.ai_models, cur, "AI model", "stream-model-table"),
            breakdown_table(models.task_types, cur, "Task type", "stream-task-type-table"),
        )
