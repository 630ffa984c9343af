"""Reusable pieces of page layout: KPI cards, money cells, tables. Presentation only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dash import dcc, html

from dashboards.format import Change, is_negative


def kpi_card(
    key: str, label: str, text: str, raw: str | None, change: Change, *, up_is_good: bool = True
) -> html.Div:
    """One figure with its change against the previous period. `data-value` carries the exact
    decimal string from the metrics API, for tests and for anyone copying the figure."""
    good = (change.direction == "up") == up_is_good
    tone = "flat" if change.direction == "flat" else "good" if good else "bad"
    exact: dict[str, Any] = {"data-value": raw if raw is not None else ""}
    return html.Div(
        className="kpi",
        id=f"kpi-{key}",
        children=[
            html.Div(label, className="kpi-label"),
            html.Div(
                text,
                className="kpi-value negative" if is_negative(raw) else "kpi-value",
                id=f"kpi-{key}-value",
                **exact,
            ),
            html.Div(
                [change.text, html.Span(" vs previous period", className="muted")],
                className=f"kpi-change {tone}",
            ),
        ],
    )


def figure_cell(text: str, raw: str | None) -> html.Td:
    return html.Td(text, className="num negative" if is_negative(raw) else "num")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, id: str) -> html.Table:
    """Cells that are not components become plain cells; numeric columns are right-aligned by
    being built with `figure_cell`."""
    return html.Table(
        id=id,
        className="figures",
        children=[
            html.Thead(html.Tr([html.Th(h) for h in headers])),
            html.Tbody(
                [
                    html.Tr([c if isinstance(c, html.Td) else html.Td(c) for c in row])
                    for row in rows
                ]
            ),
        ],
    )


def graph(id: str) -> dcc.Graph:
    config: Any = {"displaylogo": False, "responsive": True, "displayModeBar": "hover"}
    return dcc.Graph(id=id, config=config, className="chart")


def panel(title: str, *children: Any, id: str | None = None) -> html.Section:
    props: dict[str, Any] = {"id": id} if id else {}
    return html.Section(className="panel", children=[html.H2(title), *children], **props)
