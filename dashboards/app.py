"""The Dash app on the API's own FastAPI server, under /dashboard/.

The shell holds what every page shares: navigation, the filter bar (kept in the URL), the
"data as of" line, the status banner, and the live link. Pages live one per file in
dashboards/pages and are routed here by path.
"""

from __future__ import annotations

import asyncio
import logging
import pkgutil
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

from dash import Dash, Input, Output, State, ctx, dcc, html, no_update, set_props
from dash.backends._fastapi import reset_current_request, set_current_request
from dash.exceptions import PreventUpdate
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.exc import DBAPIError

from app.changes import ChangeFeed
from app.periods import BadParameter
from dashboards.context import DashboardContext
from dashboards.pages import health, models, overview, stream
from dashboards.view import DEFAULT_GRANULARITY, PERIODS, View, view_from_query

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent / "assets"
BASE = "/dashboard/"
PAGES = [overview, stream, models, health]
FALLBACK_REFRESH_MS = 30_000  # only matters when the live link is down
ICON_CACHING = {"Cache-Control": "public, max-age=86400"}
MIN_REDRAW_SECONDS = 0.25  # a burst of payments redraws a dashboard at most 4 times a second
LIVE_HEARTBEAT_SECONDS = 15.0
EXPORTS = [("ledger", "Ledger"), ("streams", "Streams"), ("tasks", "Tasks")]
GRANULARITY_LABELS = {"hour": "Hourly", "day": "Daily", "week": "Weekly", "month": "Monthly",
                      "quarter": "Quarterly"}  # fmt: skip


def create_dashboard(server: FastAPI, context: DashboardContext, feed: ChangeFeed | None) -> Dash:
    dash_app = Dash(
        "roi-dashboard",
        server=server,  # type: ignore[arg-type]  # Dash 4 takes a FastAPI app; its hints lag
        url_base_pathname=BASE,
        assets_folder=str(ASSETS),
        title="ROI analytics",
        update_title=None,  # type: ignore[arg-type]  # no "Updating..." tab title while live
        suppress_callback_exceptions=True,  # page components exist only on their page
    )
    # Dash would answer every unknown path of the whole server with its page (a 200 for a
    # mistyped API URL). Only paths under /dashboard/ are pages.
    dash_app.backend._setup_catchall = lambda: None  # type: ignore[attr-defined]

    async def page(request: Request, path: str) -> HTMLResponse:
        # Dash reads the request from its own context variable, as its catch-all does.
        token = set_current_request(request)  # type: ignore[no-untyped-call]
        try:
            return HTMLResponse(dash_app.index())  # type: ignore[no-untyped-call]
        finally:
            reset_current_request(token)  # type: ignore[no-untyped-call]

    server.add_api_route(BASE + "{path:path}", page, methods=["GET"], include_in_schema=False)
    server.add_api_route(
        "/", lambda: RedirectResponse(BASE), methods=["GET"], include_in_schema=False
    )
    # Browsers ask every page's /favicon.ico, the sign-in page's too: Dash's icon, open (an
    # icon tells nothing), rather than a 401 in every console.
    icon = pkgutil.get_data("dash", "favicon.ico")
    server.add_api_route(
        "/favicon.ico",
        lambda: Response(icon, media_type="image/x-icon", headers=ICON_CACHING),
        methods=["GET"],
        include_in_schema=False,
    )
    dash_app.layout = shell(context.settings.timezone)
    register_shell(dash_app, context)
    register_live(dash_app, feed)
    for module in PAGES:
        module.register(dash_app, context)
    return dash_app


def shell(default_tz: str) -> html.Div:
    return html.Div(
        className="shell",
        children=[
            dcc.Location(id="url", refresh=False),
            dcc.Store(id="view"),
            dcc.Store(id="data-version", data=0),
            dcc.Interval(id="fallback-refresh", interval=FALLBACK_REFRESH_MS),
            html.Header(
                className="top",
                children=[
                    html.Div("ROI analytics", className="brand"),
                    html.Nav(id="nav", className="nav"),
                    html.Div(id="as-of", className="as-of"),
                ],
            ),
            html.Div(id="banner"),
            filter_bar(default_tz),
            html.Main(id="page", className="page"),
            # An empty chart in the shell, so plotly.js starts loading with the page instead of
            # after the router has drawn the first chart (it is the largest download).
            dcc.Graph(id="plotly-preload", style={"display": "none"}),
        ],
    )


def filter_bar(default_tz: str) -> html.Div:
    def labelled(label: str, control: Any, **props: Any) -> html.Label:
        return html.Label([html.Span(label), control], className="filter", **props)

    return html.Div(
        className="filters",
        children=[
            labelled("Period", dcc.Dropdown(
                id="period", options=[{"label": v, "value": k} for k, v in PERIODS.items()],
                clearable=False, searchable=False)),
            labelled("Dates (end included)", dcc.DatePickerRange(
                id="dates", display_format="YYYY-MM-DD", first_day_of_week=1,
                minimum_nights=0)),
            labelled("Streams", dcc.Dropdown(
                id="streams", multi=True, placeholder="All streams"), id="streams-filter"),
            labelled("Granularity", dcc.Dropdown(
                id="granularity", clearable=False, searchable=False,
                options=[{"label": v, "value": k} for k, v in GRANULARITY_LABELS.items()])),
            labelled("Time zone", dcc.Dropdown(
                id="tz", clearable=False, options=sorted(available_timezones()),
                value=default_tz)),
            html.Div(className="downloads", children=[
                html.Span("CSV"),
                *[html.A(label, id=f"download-{name}", download=f"{name}.csv", href="")
                  for name, label in EXPORTS],
            ]),
        ],
    )  # fmt: skip


def register_shell(app: Dash, context: DashboardContext) -> None:
    default_tz = context.settings.timezone

    @app.callback(
        Output("url", "search"),
        Output("period", "value"),
        Output("dates", "start_date"),
        Output("dates", "end_date"),
        Output("streams", "value"),
        Output("streams", "options"),
        Output("granularity", "value"),
        Output("tz", "value"),
        Output("view", "data"),
        Input("url", "search"),
        Input("period", "value"),
        Input("dates", "start_date"),
        Input("dates", "end_date"),
        Input("streams", "value"),
        Input("granularity", "value"),
        Input("tz", "value"),
        State("view", "data"),
    )
    def sync_view(
        search: str | None,
        period: str | None,
        start: str | None,
        end: str | None,
        streams: list[str] | None,
        granularity: str | None,
        tz: str | None,
        current: dict[str, Any] | None,
    ) -> tuple[Any, ...]:
        """The URL and the filter bar kept in step: a URL (opened, shared, back button) sets
        the filters; a filter change rewrites the URL without reloading."""
        trigger = ctx.triggered_id
        if trigger in (None, "url"):
            view, problems = view_from_query(search, default_tz)
            canonical = view.to_query()
            data = {**view.to_store(), "problems": problems}
        else:
            view = view_from_controls(trigger, period, start, end, streams, granularity, tz,
                                      default_tz)  # fmt: skip
            if current and View.from_store(current) == view:
                # A control echoing the value it was just given (the date picker and the
                # dropdowns do, once mounted): nothing changed, so nothing is recomputed.
                raise PreventUpdate
            canonical = view.to_query()
            data = {**view.to_store(), "problems": []}
        first, last = view.dates(context.clock().astimezone(ZoneInfo(view.tz)).date())
        return (
            canonical if canonical != search else no_update,
            view.period,
            first.isoformat(),
            (last - timedelta(days=1)).isoformat(),
            list(view.streams),
            # With the value: a dropdown drops a value it has no option for.
            stream_choices(context, view.streams),
            view.granularity,
            view.tz,
            data,
        )

    @app.callback(Output("page", "children"), Input("url", "pathname"))
    def route(pathname: str | None) -> Any:
        for module in PAGES:
            if pathname in (module.PATH, module.PATH.rstrip("/")):
                return module.layout()
        return html.Div(
            [html.H2("Page not found"), dcc.Link("Go to the overview", href=BASE)],
            className="panel",
        )

    @app.callback(
        [Output(f"download-{name}", "href") for name, _ in EXPORTS], Input("view", "data")
    )
    def download_links(view_data: dict[str, Any] | None) -> list[str]:
        """The exports of exactly what is on screen: same period, zone, granularity, streams."""
        if not view_data:
            raise PreventUpdate
        view = View.from_store(view_data)
        query = view.api_query(context.clock().astimezone(ZoneInfo(view.tz)).date())
        return [f"/api/export/{name}.csv{query}" for name, _ in EXPORTS]

    @app.callback(Output("nav", "children"), Input("view", "data"), Input("url", "pathname"))
    def nav(view_data: dict[str, Any] | None, pathname: str | None) -> list[Any]:
        query = View.from_store(view_data).to_query() if view_data else ""
        return [
            dcc.Link(
                module.TITLE,
                href=module.PATH + query,
                className="active" if pathname == module.PATH else "",
            )
            for module in PAGES
        ]

    @app.callback(
        Output("streams", "options", allow_duplicate=True),
        Input("data-version", "data"),
        State("view", "data"),
        prevent_initial_call=True,
        websocket=True,
    )
    def new_stream_options(_: Any, view_data: dict[str, Any] | None) -> list[str]:
        return stream_choices(context, tuple(view_data["streams"]) if view_data else ())

    @app.callback(
        Output("as-of", "children"),
        Output("banner", "children"),
        Input("view", "data"),
        Input("data-version", "data"),
        Input("fallback-refresh", "n_intervals"),
        websocket=True,
    )
    def status(view_data: dict[str, Any] | None, *_: Any) -> tuple[Any, Any]:
        """'Data as of' and, instead of a traceback, a banner saying what is wrong."""
        if not view_data:
            raise PreventUpdate
        notes = [banner("warning", f"Ignored in the link: {p}.") for p in view_data["problems"]]
        try:
            report = context.source.streams(context.metrics_filter(view_data))
        except BadParameter as exc:
            return no_update, [*notes, banner("error", f"{exc.field}: {exc.message}")]
        except DBAPIError as exc:
            log.warning("dashboard: database unavailable: %s", exc.orig)
            return no_update, [*notes, banner(
                "error", "The database is unreachable: the figures shown may be out of date. "
                "They refresh by themselves once it is back.")]  # fmt: skip
        as_of = report.trust.as_of
        text = (
            "No data yet"
            if as_of is None
            else f"Data as of {as_of.astimezone(ZoneInfo(view_data['tz'])):%Y-%m-%d %H:%M:%S %Z}"
        )
        return html.Span(text, id="as-of-text"), notes


def stream_choices(context: DashboardContext, selected: tuple[str, ...]) -> list[str]:
    """Every known stream, plus those a shared link names (even if unknown here)."""
    try:
        known = context.source.stream_names()
    except DBAPIError:
        known = []  # the status banner says the database is away
    return sorted(set(known) | set(selected))


def view_from_controls(
    trigger: str,
    period: str | None,
    start: str | None,
    end: str | None,
    streams: list[str] | None,
    granularity: str | None,
    tz: str | None,
    default_tz: str,
) -> View:
    """The view the filter bar now shows. Picking dates makes the period custom; picking a
    period resets the granularity to the one that suits it."""
    period = period or "30d"
    if trigger == "dates":
        period = "custom"
    if trigger == "period":
        granularity = DEFAULT_GRANULARITY.get(period, "day")
    first = last = None
    if period == "custom" and start and end:
        first = date.fromisoformat(start[:10])
        last = date.fromisoformat(end[:10]) + timedelta(days=1)
        if last <= first:
            last = first + timedelta(days=1)
    elif period == "custom":
        period = "30d"
    return View(
        period=period,
        tz=tz or default_tz,
        granularity=granularity or "day",
        streams=tuple(streams or ()),
        start=first,
        end=last,
    )


def banner(kind: str, text: str) -> html.Div:
    return html.Div(text, className=f"banner {kind}", role="alert")


def register_live(app: Dash, feed: ChangeFeed | None) -> None:
    """Push, over Dash's websocket, a new `data-version` whenever figures changed: every
    figure callback listens to it. One idle coroutine per open dashboard; no polling."""
    if feed is None:
        return

    @app.callback(websocket=True, persistent=True)
    async def follow_changes() -> None:
        websocket = ctx.websocket
        if websocket is None:  # not over a websocket: nothing to keep open
            raise PreventUpdate
        # This runs as the page connects, before its figures are first computed (they wait for
        # the view from the URL): any change after this point is pushed, none is missed.
        seen = feed.version
        while not websocket.is_shutdown:
            version = await feed.changed_since(seen, timeout=LIVE_HEARTBEAT_SECONDS)
            if version != seen:
                seen = version
                set_props("data-version", {"data": version})
                await asyncio.sleep(MIN_REDRAW_SECONDS)
        raise PreventUpdate
