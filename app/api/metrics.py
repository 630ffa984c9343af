"""GET /api/metrics/{streams,timeseries,models}: the metrics layer as JSON.

Money is a decimal string in major units of the reporting currency; ratios are decimal
strings (0.2500 = 25 %) or null where undefined (margin % without net revenue, ROI without
cost). Periods are [start, end), cut in `tz`.
"""

from __future__ import annotations

import functools
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy import Connection

from app.metrics.figures import BaseFigures, Figures, derive, present_money, present_ratio
from app.metrics.filters import GRANULARITIES, MetricsFilter, build_filter
from app.metrics.queries import (
    BreakdownRow,
    SumsText,
    base_of,
    model_breakdown,
    stream_summary,
    stream_timeseries,
)
from app.money import format_major

router = APIRouter(prefix="/api/metrics", tags=["metrics"])

Money = Annotated[str, Field(description="Decimal string, major units of the currency")]
Ratio = Annotated[str | None, Field(description="Decimal string (0.2500 = 25 %), or null")]


class FigureSet(BaseModel):
    gross: Money
    refunds: Money = Field(description="Refunded, positive")
    disputes: Money = Field(description="Lost to disputes net of reinstatements, positive")
    fees: Money = Field(description="Stripe fees, positive")
    net_revenue: Money = Field(description="gross - refunds - disputes")
    task_cost: Money
    cost: Money = Field(description="task cost + fees")
    margin: Money = Field(description="net revenue - cost")
    margin_pct: Ratio = Field(description="margin / net revenue; null when net revenue is 0")
    roi: Ratio = Field(description="margin / cost; null when cost is 0")
    tasks: int
    unpriced_tasks: int


class StreamFigures(FigureSet):
    stream: str


class Trust(BaseModel):
    unattributed_net_revenue: Money
    unconverted_revenue: dict[str, Money] = Field(
        description="Net revenue that could not be converted, by currency, in that currency"
    )
    unconverted_cost: dict[str, Money] = Field(
        description="Costs (tasks, fees) that could not be converted, by currency"
    )
    unpriced_tasks: int
    failed_events: int = Field(description="Stripe events stored as failed (all time)")
    fees_unknown: int | None = Field(
        description="Charges in the period whose Stripe fee is not known yet (fetched from the "
        "Stripe API when STRIPE_API_KEY is set); fees and cost leave theirs out. null without "
        "STRIPE_API_KEY: no fee is known then, and counting them would cost a scan of the period"
    )
    as_of: datetime | None = Field(description="Newest event or task included")


class Period(BaseModel):
    start: datetime
    end: datetime
    tz: str


class StreamsResponse(BaseModel):
    period: Period
    previous_period: Period
    currency: str
    streams: list[StreamFigures]
    total: FigureSet
    previous_total: FigureSet
    trust: Trust
    source: str = Field(description="rollup, or raw where rollups cannot be exact")


class SeriesPoint(FigureSet):
    bucket: datetime = Field(description="Bucket start, ISO 8601 with the zone's offset")
    stream: str


class TimeseriesResponse(BaseModel):
    period: Period
    granularity: str
    currency: str
    points: list[SeriesPoint]


class Breakdown(BaseModel):
    key: str | None = Field(description="The AI model or task type (null: none recorded)")
    tasks: int
    succeeded: int
    failed: int
    success_rate: Ratio = Field(description="succeeded / (succeeded + failed)")
    avg_duration_ms: str | None
    p95_duration_ms: str | None
    cost: Money
    cost_per_successful_task: Money | None
    net_revenue_per_task: Money | None
    unpriced_tasks: int
    unconverted_cost: dict[str, Money]


class ModelsResponse(BaseModel):
    period: Period
    currency: str
    ai_models: list[Breakdown]
    task_types: list[Breakdown]


def figure_set(figures: Figures, base: BaseFigures, currency: str) -> dict[str, Any]:
    """The presented form of one set of figures; the dashboard and CSV use the same."""
    f = figures
    return {
        "gross": present_money(f.gross, currency),
        "refunds": present_money(f.refunds, currency),
        "disputes": present_money(f.disputes, currency),
        "fees": present_money(f.fees, currency),
        "net_revenue": present_money(f.net_revenue, currency),
        "task_cost": present_money(f.task_cost, currency),
        "cost": present_money(f.cost, currency),
        "margin": present_money(f.margin, currency),
        "margin_pct": present_ratio(f.margin_pct),
        "roi": present_ratio(f.roi),
        "tasks": base.tasks,
        "unpriced_tasks": base.unpriced_tasks,
    }


def json_response(body: BaseModel) -> Response:
    """`body` serialised by pydantic in one pass. Returned as a Response, FastAPI does not
    validate and serialise it again: a year of daily points per stream is thousands of
    objects, and that second pass cost more than the query. `response_model` on the route
    still documents the shape."""
    return Response(body.model_dump_json(), media_type="application/json")


def _period(f: MetricsFilter) -> Period:
    return Period(start=f.start.astimezone(f.tz), end=f.end.astimezone(f.tz), tz=f.tz.key)


Start = Annotated[str, Query(description="YYYY-MM-DD or ISO 8601 datetime, inclusive")]
End = Annotated[str, Query(description="YYYY-MM-DD or ISO 8601 datetime, exclusive")]
Tz = Annotated[str | None, Query(description="IANA time zone (default ROI_TIMEZONE)")]
Granularity = Annotated[str, Query(description=f"One of {', '.join(GRANULARITIES)}")]
Streams = Annotated[list[str] | None, Query(description="Only these streams (repeatable)")]
Models = Annotated[list[str] | None, Query(description="Only tasks of these AI models")]
TaskTypes = Annotated[list[str] | None, Query(description="Only tasks of these types")]


def metrics_filter(
    request: Request,
    start: Start,
    end: End,
    tz: Tz = None,
    granularity: Granularity = "day",
    stream: Streams = None,
    ai_model: Models = None,
    task_type: TaskTypes = None,
) -> MetricsFilter:
    """The query parameters every metrics endpoint takes, validated (422 naming the field)."""
    return build_filter(
        start=start,
        end=end,
        tz=tz or request.app.state.settings.timezone,
        granularity=granularity,
        streams=stream,
        ai_models=ai_model,
        task_types=task_type,
    )


Filter = Annotated[MetricsFilter, Depends(metrics_filter)]


def streams_report(
    conn: Connection, f: MetricsFilter, currency: str, *, count_unknown_fees: bool = True
) -> StreamsResponse:
    """The per-stream summary as the API presents it; the dashboard shows this very object."""
    summary = stream_summary(conn, f, currency, count_unknown_fees=count_unknown_fees)
    trust = summary.trust
    return StreamsResponse(
        period=_period(f),
        previous_period=_period(f.previous()),
        currency=currency,
        streams=[
            StreamFigures(stream=r.stream, **figure_set(r.figures, r.base, currency))
            for r in summary.streams
        ],
        total=FigureSet(**figure_set(summary.total, summary.total_base, currency)),
        previous_total=FigureSet(
            **figure_set(summary.previous_total, summary.previous_base, currency)
        ),
        trust=Trust(
            unattributed_net_revenue=present_money(trust.unattributed_net_revenue, currency),
            unconverted_revenue={
                c: format_major(a, c) for c, a in sorted(trust.unconverted_revenue.items())
            },
            unconverted_cost={
                c: present_money(a, c) for c, a in sorted(trust.unconverted_cost.items())
            },
            unpriced_tasks=trust.unpriced_tasks,
            failed_events=trust.failed_events,
            fees_unknown=trust.fees_unknown,
            as_of=trust.as_of,
        ),
        source=summary.source,
    )


@router.get("/streams", response_model=StreamsResponse, summary="Figures per stream")
def streams(request: Request, f: Filter) -> Response:
    settings = request.app.state.settings
    with request.app.state.engine.connect() as conn:
        report = streams_report(
            conn, f, settings.reporting_currency, count_unknown_fees=bool(settings.stripe_api_key)
        )
    return json_response(report)


# Presented figure sets kept by `_presented`, about 1.7 KB each with their key (14 MB in all):
# four views of a 90-day daily series of 20 streams (1,800 points each), or two of a week's
# hourly one.
PRESENTED_MEMO_SIZE = 8_192


@functools.lru_cache(maxsize=PRESENTED_MEMO_SIZE)
def _presented(sums: SumsText, currency: str) -> dict[str, Any]:
    """`figure_set` of a point's sums as read (`SumsText`), memoised: a pure function of exact
    values, and a dashboard redraws the same points over and over (only the newest buckets
    change), so most points of a series are presented once and then looked up by their text,
    without a Decimal made. Read-only: callers copy it."""
    base = base_of(sums)
    return figure_set(derive(base), base, currency)


def presented_points(conn: Connection, f: MetricsFilter, currency: str) -> list[dict[str, Any]]:
    """Figures per stream and bucket as the API presents them (`SeriesPoint`'s fields, in its
    order), ordered by bucket, then stream: the one presentation of the series, which the JSON
    API, the dashboard, the alerts and the CSV export share."""
    points = []
    zoned: dict[datetime, datetime] = {}  # each bucket in the zone, once (20 points share one)
    for p in stream_timeseries(conn, f, currency):
        text = p.text
        presented = (
            _presented(text, currency)
            if text is not None
            else figure_set(p.figures, p.base, currency)  # amounts left unconverted: rare
        )
        bucket = zoned.get(p.bucket)
        if bucket is None:
            bucket = zoned[p.bucket] = p.bucket.astimezone(f.tz)
        points.append({**presented, "bucket": bucket, "stream": p.stream})
    return points


def _timeseries_body(conn: Connection, f: MetricsFilter, currency: str) -> dict[str, Any]:
    """The `/timeseries` body as plain values, in `TimeseriesResponse`'s shape and order."""
    return {
        "period": _period(f).model_dump(),
        "granularity": f.granularity,
        "currency": currency,
        "points": presented_points(conn, f, currency),
    }


def timeseries_report(conn: Connection, f: MetricsFilter, currency: str) -> TimeseriesResponse:
    """Figures per stream and bucket as the API presents them, as objects (the dashboard's and
    the alerts' form of the `/timeseries` body)."""
    return TimeseriesResponse.model_validate(_timeseries_body(conn, f, currency))


def timeseries_json(conn: Connection, f: MetricsFilter, currency: str) -> bytes:
    """The `/timeseries` body: the same bytes pydantic writes for `timeseries_report` (a test
    holds them equal), written by orjson from the presented points. A 90-day daily series of
    20 streams is 1,800 points; building and validating a model for each cost about 8 ms of a
    request's 50 ms budget, for figures this module has just presented itself."""
    # OPT_UTC_Z: a UTC instant ends in "Z", as pydantic writes it.
    return orjson.dumps(_timeseries_body(conn, f, currency), option=orjson.OPT_UTC_Z)


@router.get(
    "/timeseries", response_model=TimeseriesResponse, summary="Figures per stream and bucket"
)
def timeseries(request: Request, f: Filter) -> Response:
    with request.app.state.engine.connect() as conn:
        body = timeseries_json(conn, f, request.app.state.settings.reporting_currency)
    return Response(body, media_type="application/json")


def _breakdown(row: BreakdownRow, currency: str) -> Breakdown:
    def money(value: Decimal | None) -> str | None:
        return None if value is None else present_money(value, currency)

    def number(value: Decimal | None) -> str | None:
        return None if value is None else f"{value.quantize(Decimal('0.1')):.1f}"

    return Breakdown(
        key=row.key or None,
        tasks=row.tasks,
        succeeded=row.succeeded,
        failed=row.failed,
        success_rate=present_ratio(row.success_rate),
        avg_duration_ms=number(row.avg_duration_ms),
        p95_duration_ms=number(row.p95_duration_ms),
        cost=present_money(row.cost, currency),
        cost_per_successful_task=money(row.cost_per_successful_task),
        net_revenue_per_task=money(row.net_revenue_per_task),
        unpriced_tasks=row.unpriced_tasks,
        unconverted_cost={c: present_money(a, c) for c, a in sorted(row.unconverted_cost.items())},
    )


def models_report(conn: Connection, f: MetricsFilter, currency: str) -> ModelsResponse:
    """Figures per AI model and task type as the API presents them."""
    breakdown = model_breakdown(conn, f, currency)
    return ModelsResponse(
        period=_period(f),
        currency=currency,
        ai_models=[_breakdown(r, currency) for r in breakdown["ai_model"]],
        task_types=[_breakdown(r, currency) for r in breakdown["task_type"]],
    )


@router.get("/models", response_model=ModelsResponse, summary="Figures per AI model and task type")
def models(request: Request, f: Filter) -> Response:
    with request.app.state.engine.connect() as conn:
        report = models_report(conn, f, request.app.state.settings.reporting_currency)
    return json_response(report)
