"""Models and tasks: what each AI model and task type costs, and what it earns."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from dash import Dash, Input, Output, html

from app.api.metrics import Breakdown
from dashboards.components import figure_cell, panel, table
from dashboards.context import DashboardContext, keep_figures_on_error
from dashboards.format import DASH, count, money, percent

PATH = "/dashboard/models"
TITLE = "Models and tasks"


def layout() -> html.Div:
    return html.Div(
        [
            panel("Per AI model", html.Div(id="models-by-model")),
            panel("Per task type", html.Div(id="models-by-task-type")),
        ]
    )


def duration(ms: str | None) -> str:
    if ms is None:
        return DASH
    seconds = Decimal(ms) / 1000
    return f"{seconds:,.2f} s"


def breakdown_table(rows: Sequence[Breakdown], currency: str, key_label: str, id: str) -> Any:
    if not rows:
        return html.P("No tasks in this period.", className="muted")
    headers = [key_label, "Tasks", "Success rate", "Avg duration", "p95 duration", "Cost",
               "Cost per successful task", "Net revenue per task", "Unpriced"]  # fmt: skip
    body = [
        [
            r.key or "(none recorded)",
            figure_cell(count(r.tasks), None),
            figure_cell(percent(r.success_rate), None),
            figure_cell(duration(r.avg_duration_ms), None),
            figure_cell(duration(r.p95_duration_ms), None),
            figure_cell(money(r.cost, currency), r.cost),
            figure_cell(money(r.cost_per_successful_task, currency), r.cost_per_successful_task),
            figure_cell(money(r.net_revenue_per_task, currency), r.net_revenue_per_task),
            figure_cell(count(r.unpriced_tasks), None),
        ]
        for r in rows
    ]
    return table(headers, body, id=id)


def register(app: Dash, ctx: DashboardContext) -> None:
    @app.callback(
        Output("models-by-model", "children"),
        Output("models-by-task-type", "children"),
        Input("view", "data"),
        Input("data-version", "data"),
        Input("fallback-refresh", "n_intervals"),
        websocket=True,
    )
    @keep_figures_on_error
    def show_models(view_data: dict[str, Any], *_: Any) -> tuple[Any, ...]:
        report = ctx.source.models(ctx.metrics_filter(view_data))
        return (
            breakdown_table(report.ai_models, report.currency, "AI model", "model-table"),
            breakdown_table(report.task_types, report.currency, "Task type", "task-type-table"),
        )
