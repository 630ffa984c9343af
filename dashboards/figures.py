"""Charts as pure functions: metrics rows in, a plotly figure (its JSON spec) out.

Figures are built as plain dicts, the form dcc.Graph sends to the browser: building them
through plotly.graph_objects validates every property and cost hundreds of milliseconds per
chart at a year of daily buckets, on every live redraw.

Values come from the metrics API's decimal strings. They are turned into floats only as
plotting coordinates; every number a person reads in a hover label is the formatted decimal
string.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from app.api.metrics import SeriesPoint, StreamFigures
from dashboards.format import money, percent

Figure = dict[str, Any]
PALETTE = [
    "#2563eb", "#16a34a", "#d97706", "#9333ea", "#0891b2", "#db2777", "#65a30d", "#dc2626",
    "#4f46e5", "#0d9488", "#ca8a04", "#7c3aed", "#059669", "#e11d48", "#2dd4bf", "#a16207",
]  # fmt: skip
REVENUE, COST, LOSS, GAIN = "#2563eb", "#f97316", "#dc2626", "#16a34a"
# Beyond this many points a series is drawn without a marker per point, and stacked revenue as
# areas rather than bars: 20 streams x 90 days as SVG bars and markers took the browser over a
# second per chart to draw, on every live redraw.
DENSE = 40
GRID = "#eef0f3"


def stream_colors(streams: Sequence[str]) -> dict[str, str]:
    """A stable colour per stream name (sorted), so a stream keeps its colour on every chart."""
    return {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(sorted(set(streams)))}


def _figure(title: str, data: list[dict[str, Any]], currency: str | None = None,
            **layout: Any) -> Figure:  # fmt: skip
    yaxis: dict[str, Any] = {"gridcolor": GRID, "zerolinecolor": "#d1d5db"}
    if currency is not None:
        # The currency goes in the axis title: a tick prefix would print "$-200".
        yaxis |= {"title": {"text": currency.upper()}, "tickformat": ",~s"}
    return {
        "data": data,
        "layout": {
            "title": {"text": title, "x": 0, "font": {"size": 15}},
            "margin": {"l": 60, "r": 16, "t": 48, "b": 40},
            "height": 340,
            "paper_bgcolor": "white",
            "plot_bgcolor": "white",
            "font": {"family": "system-ui, sans-serif", "color": "#1f2937"},
            "legend": {"orientation": "h", "y": -0.18},
            "hovermode": "closest",
            "xaxis": {"gridcolor": GRID},
            "yaxis": yaxis,
            **layout,
        },
    }


def _empty(title: str, message: str = "No figures in this period") -> Figure:
    return _figure(
        title,
        [],
        annotations=[{"text": message, "showarrow": False, "font": {"size": 14, "color": "#6b7280"},
                      "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5}],
        xaxis={"visible": False},
        yaxis={"visible": False},
    )  # fmt: skip


def _num(value: str | None) -> float | None:
    return None if value is None else float(Decimal(value))


def revenue_vs_cost(streams: Sequence[StreamFigures], currency: str) -> Figure:
    """Net revenue and cost side by side per stream, best margin first."""
    title = "Revenue against cost per stream"
    if not streams:
        return _empty(title)
    rows = sorted(streams, key=lambda s: Decimal(s.margin), reverse=True)
    names = [s.stream for s in rows]
    data = [
        {
            "type": "bar",
            "name": label,
            "x": names,
            "y": [_num(getattr(s, attr)) for s in rows],
            "marker": {"color": color},
            "customdata": [[money(getattr(s, attr), currency), money(s.margin, currency)]
                           for s in rows],
            "hovertemplate": f"%{{x}}<br>{label}: %{{customdata[0]}}<br>"
                             "Margin: %{customdata[1]}<extra></extra>",
        }
        for label, attr, color in (("Net revenue", "net_revenue", REVENUE), ("Cost", "cost", COST))
    ]  # fmt: skip
    return _figure(title, data, currency, barmode="group")


def roi_and_margin(streams: Sequence[StreamFigures]) -> Figure:
    """Margin % and ROI per stream, side by side; losses in red. Undefined ratios (no revenue,
    no cost) are left out rather than drawn as zero."""
    title = "Margin % and ROI per stream"
    if not streams:
        return _empty(title)
    rows = sorted(streams, key=lambda s: Decimal(s.margin_pct or "-1e9"))
    data = []
    for axis, attr in (("", "margin_pct"), ("2", "roi")):
        values = [getattr(s, attr) for s in rows]
        data.append({
            "type": "bar",
            "orientation": "h",
            "x": [_num(v) for v in values],
            "y": [s.stream for s in rows],
            "xaxis": "x" + axis,
            "yaxis": "y",
            "marker": {"color": [LOSS if v is not None and Decimal(v) < 0 else GAIN
                                 for v in values]},
            "customdata": [percent(v) for v in values],
            "hovertemplate": "%{y}: %{customdata}<extra></extra>",
            "showlegend": False,
        })  # fmt: skip
    return _figure(
        title,
        data,
        xaxis={"domain": [0, 0.46], "tickformat": ".0%", "gridcolor": GRID,
               "title": {"text": "Margin %"}},
        xaxis2={"domain": [0.54, 1], "tickformat": ".0%", "gridcolor": GRID,
                "title": {"text": "ROI"}},
        yaxis={"automargin": True},
    )  # fmt: skip


def revenue_by_stream_over_time(points: Sequence[SeriesPoint], currency: str) -> Figure:
    title = "Net revenue by stream"
    if not points:
        return _empty(title)
    colors = stream_colors([p.stream for p in points])
    by_stream = _by_stream(points)
    dense = max(len(rows) for rows in by_stream.values()) > DENSE
    data = []
    for stream, rows in by_stream.items():
        trace: dict[str, Any] = {
            "name": stream,
            "x": [p.bucket.isoformat() for p in rows],
            "y": [_num(p.net_revenue) for p in rows],
            "customdata": [money(p.net_revenue, currency) for p in rows],
            "hovertemplate": f"{stream}<br>%{{x}}<br>%{{customdata}}<extra></extra>",
        }
        if dense:  # stacked areas; a stream's missing bucket is a zero, as it is in money
            trace |= {"type": "scatter", "mode": "lines", "stackgroup": "revenue",
                      "line": {"color": colors[stream], "width": 0.5}}  # fmt: skip
        else:
            trace |= {"type": "bar", "marker": {"color": colors[stream]}}
        data.append(trace)
    return _figure(title, data, currency, barmode="relative")


def margin_pct_over_time(points: Sequence[SeriesPoint]) -> Figure:
    """Each stream's margin % per bucket (gaps where a bucket had no revenue)."""
    title = "Margin % over time"
    if not points:
        return _empty(title)
    colors = stream_colors([p.stream for p in points])
    by_stream = _by_stream(points)
    mode = "lines" if max(len(rows) for rows in by_stream.values()) > DENSE else "lines+markers"
    data = [
        {
            "type": "scatter",
            "mode": mode,
            "name": stream,
            "x": [p.bucket.isoformat() for p in rows],
            "y": [_num(p.margin_pct) for p in rows],
            "line": {"color": colors[stream]},
            "customdata": [percent(p.margin_pct) for p in rows],
            "hovertemplate": f"{stream}<br>%{{x}}<br>%{{customdata}}<extra></extra>",
        }
        for stream, rows in by_stream.items()
    ]
    zero = {"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": 0, "y1": 0,
            "line": {"color": "#9ca3af", "dash": "dot"}}  # fmt: skip
    return _figure(title, data, shapes=[zero],
                   yaxis={"tickformat": ".0%", "gridcolor": GRID})  # fmt: skip


def stream_over_time(points: Sequence[SeriesPoint], currency: str) -> Figure:
    """One stream: net revenue and cost per bucket, margin as a line."""
    title = "Revenue, cost and margin"
    if not points:
        return _empty(title)
    buckets = [p.bucket.isoformat() for p in points]

    def series(kind: str, label: str, attr: str, color: str) -> dict[str, Any]:
        trace: dict[str, Any] = {
            "type": kind, "name": label, "x": buckets,
            "y": [_num(getattr(p, attr)) for p in points],
            "customdata": [money(getattr(p, attr), currency) for p in points],
            "hovertemplate": f"%{{x}}<br>{label} %{{customdata}}<extra></extra>",
        }  # fmt: skip
        if kind == "bar":
            trace["marker"] = {"color": color}
        else:
            trace |= {"mode": "lines+markers", "line": {"color": color}}
        return trace

    data = [series("bar", "Net revenue", "net_revenue", REVENUE),
            series("bar", "Cost", "cost", COST),
            series("scatter", "Margin", "margin", "#111827")]  # fmt: skip
    return _figure(title, data, currency, barmode="group")


def refunds_and_disputes(points: Sequence[SeriesPoint], currency: str) -> Figure:
    title = "Refunds and disputes"
    if not points or all(Decimal(p.refunds) == 0 and Decimal(p.disputes) == 0 for p in points):
        return _empty(title, "No refunds or disputes in this period")
    buckets = [p.bucket.isoformat() for p in points]
    data = [
        {
            "type": "bar",
            "name": label,
            "x": buckets,
            "y": [_num(getattr(p, attr)) for p in points],
            "marker": {"color": color},
            "customdata": [money(getattr(p, attr), currency) for p in points],
            "hovertemplate": f"%{{x}}<br>{label} %{{customdata}}<extra></extra>",
        }
        for label, attr, color in (("Refunds", "refunds", COST), ("Disputes", "disputes", LOSS))
    ]
    return _figure(title, data, currency, barmode="stack")


def _by_stream(points: Sequence[SeriesPoint]) -> dict[str, list[SeriesPoint]]:
    grouped: dict[str, list[SeriesPoint]] = defaultdict(list)
    for point in points:
        grouped[point.stream].append(point)
    return dict(sorted(grouped.items()))
