"""Chart builders: metrics rows in, plotly figures out, no number invented on the way."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from app.api.metrics import SeriesPoint, StreamFigures
from dashboards import figures

ZERO = {"gross": "0.00", "refunds": "0.00", "disputes": "0.00", "fees": "0.00",
        "net_revenue": "0.00", "task_cost": "0.00", "cost": "0.00", "margin": "0.00",
        "margin_pct": None, "roi": None, "tasks": 0, "unpriced_tasks": 0}  # fmt: skip


def stream(name: str, **figures_: Any) -> StreamFigures:
    return StreamFigures(stream=name, **{**ZERO, **figures_})


def point(name: str, day: int, **figures_: Any) -> SeriesPoint:
    bucket = datetime(2026, 3, day, tzinfo=UTC)
    return SeriesPoint(stream=name, bucket=bucket, **{**ZERO, **figures_})


def test_revenue_against_cost_puts_the_best_margin_first_and_labels_exact_amounts() -> None:
    fig = figures.revenue_vs_cost(
        [
            stream("chatbot", net_revenue="10.00", cost="60.00", margin="-50.00"),
            stream("api", net_revenue="1234.56", cost="34.56", margin="1200.00"),
        ],
        "usd",
    )
    revenue, cost = fig["data"]
    assert revenue["x"] == ["api", "chatbot"]
    assert revenue["y"] == [1234.56, 10.0]
    assert cost["y"] == [34.56, 60.0]
    assert revenue["customdata"][0][0] == "$1,234.56"
    assert cost["customdata"][1][1] == "\u2212$50.00"  # the margin, with a visible minus


def test_losses_are_red_and_undefined_ratios_are_not_drawn_as_zero() -> None:
    fig = figures.roi_and_margin(
        [
            stream("api", margin_pct="0.5000", roi="1.0000"),
            stream("chatbot", margin_pct="-2.0000", roi="-0.6667"),
            stream("new", margin_pct=None, roi=None),  # no revenue, no cost yet
        ]
    )
    margin, roi = fig["data"]
    by_stream = dict(zip(margin["y"], margin["x"], strict=True))
    assert by_stream == {"new": None, "chatbot": -2.0, "api": 0.5}
    colors = dict(zip(margin["y"], margin["marker"]["color"], strict=True))
    assert colors["chatbot"] == figures.LOSS and colors["api"] == figures.GAIN
    assert dict(zip(roi["y"], roi["customdata"], strict=True))["new"] == "\u2014"
    assert roi["xaxis"] == "x2"  # side by side with margin %


def test_series_keep_one_colour_per_stream_across_charts() -> None:
    points = [
        point("b", 1, net_revenue="5.00", margin_pct="0.1000"),
        point("a", 1, net_revenue="7.00", margin_pct="0.2000"),
        point("a", 2, net_revenue="8.00", margin_pct=None),
    ]
    revenue = figures.revenue_by_stream_over_time(points, "eur")
    margin = figures.margin_pct_over_time(points)
    assert [t["name"] for t in revenue["data"]] == ["a", "b"]
    assert [t["marker"]["color"] for t in revenue["data"]] == [
        t["line"]["color"] for t in margin["data"]
    ]
    assert margin["data"][0]["y"] == [0.2, None]  # a gap, not a zero, without revenue
    assert revenue["data"][0]["customdata"][1] == "€8.00"


def test_an_empty_period_says_so_instead_of_drawing_nothing() -> None:
    for fig in (
        figures.revenue_vs_cost([], "usd"),
        figures.revenue_by_stream_over_time([], "usd"),
        figures.refunds_and_disputes([point("a", 1, net_revenue="1.00")], "usd"),
    ):
        assert fig["data"] == []
        assert "No " in fig["layout"]["annotations"][0]["text"]


def test_every_figure_is_a_valid_plotly_figure() -> None:
    """Built as plain dicts for speed; plotly's own validation accepts every one."""
    import plotly.graph_objects as go

    streams = [stream("api", net_revenue="5.00", cost="1.00", margin="4.00", margin_pct="0.8000",
                      roi="4.0000")]  # fmt: skip
    points = [point("api", 1, net_revenue="5.00", refunds="1.00", margin_pct="0.5000")]
    for fig in (
        figures.revenue_vs_cost(streams, "usd"),
        figures.roi_and_margin(streams),
        figures.revenue_by_stream_over_time(points, "usd"),
        figures.margin_pct_over_time(points),
        figures.stream_over_time(points, "usd"),
        figures.refunds_and_disputes(points, "usd"),
        figures.revenue_vs_cost([], "usd"),
    ):
        go.Figure(fig)  # raises on any unknown or invalid property


def test_long_series_are_drawn_as_areas_and_lines_so_the_browser_stays_fast() -> None:
    from datetime import timedelta

    start = datetime(2026, 1, 1, tzinfo=UTC)
    many = [
        SeriesPoint(stream="a", bucket=start + timedelta(days=d),
                    **{**ZERO, "net_revenue": "1.00", "margin_pct": "0.5000"})
        for d in range(figures.DENSE + 1)
    ]  # fmt: skip
    (area,) = figures.revenue_by_stream_over_time(many, "usd")["data"]
    assert (area["type"], area["stackgroup"]) == ("scatter", "revenue")
    assert figures.margin_pct_over_time(many)["data"][0]["mode"] == "lines"
    few = many[: figures.DENSE]
    assert figures.revenue_by_stream_over_time(few, "usd")["data"][0]["type"] == "bar"
    assert figures.margin_pct_over_time(few)["data"][0]["mode"] == "lines+markers"
