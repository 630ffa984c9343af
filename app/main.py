"""The app factory: one FastAPI process serving the webhook, the API and the dashboard."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from app.alerts.evaluate import evaluate_alerts_forever
from app.api import alerts, fx, ledger, metrics, operations, prices, tasks
from app.api.export import router as export_router
from app.auth.setup import announce_first_admin, install_access_control
from app.changes import ChangeFeed
from app.database import libpq_url, make_engine
from app.metrics.rollups import compact_now
from app.observability.logs import RequestContext
from app.observability.prometheus import count_api_unavailable, mark_this_process_dead
from app.periods import BadParameter
from app.schema import ensure_schema
from app.settings import Settings, get_settings
from dashboards.app import create_dashboard
from dashboards.context import DashboardContext
from dashboards.data import FigureSource
from ingest.event_writer import EventWriter
from ingest.stripe_catchup import fetch_fees_forever
from ingest.stripe_webhook import StripeWebhookEndpoint

log = logging.getLogger(__name__)


ROLLUP_COMPACTION_SECONDS = 10.0


async def compact_rollups_forever(engine: Engine, reporting: str, zone: str) -> None:
    """Keep the rollups small and `converted_daily` built in the reporting currency, its days
    cut at the app's zone's midnights. Figures do not wait for this: readers sum uncompacted
    rows and convert days not built."""
    while True:
        await asyncio.sleep(ROLLUP_COMPACTION_SECONDS)
        try:
            await asyncio.to_thread(compact_now, engine, reporting, split_zone=zone)
        except Exception as exc:  # the database may be briefly away; try again next round
            log.warning("rollup compaction failed: %s", exc)


def create_app(settings: Settings | None = None, *, check_schema: bool = True) -> FastAPI:
    """Build the app. With `check_schema`, refuse to build against an unexpected schema."""
    settings = settings or get_settings()
    engine = make_engine(settings)
    if check_schema:
        ensure_schema(engine, settings)
        announce_first_admin(engine)  # printed once, on the very first start
    writer = EventWriter(
        libpq_url(settings), writers=settings.ingest_writers, timeout=settings.db_timeout_seconds
    )
    feed = ChangeFeed(libpq_url(settings), timeout=settings.db_timeout_seconds)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await writer.start()
        feed.start()
        compactor = asyncio.create_task(
            compact_rollups_forever(engine, settings.reporting_currency, settings.timezone)
        )
        # Returns at once without STRIPE_API_KEY: fees then stay unknown (trust.fees_unknown).
        fee_fetcher = asyncio.create_task(fetch_fees_forever(settings))
        alerter = asyncio.create_task(evaluate_alerts_forever(engine, settings))
        # Everything built so far (Dash, plotly, the models: about 150,000 objects) lives as
        # long as the process. Frozen, the collector stops walking it on every full
        # collection: those pauses were 100+ ms in the middle of metrics requests.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await feed.stop()
            for task in (compactor, fee_fetcher, alerter):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await writer.stop()
            engine.dispose()
            mark_this_process_dead()

    app = FastAPI(
        title="ROI analytics",
        summary="Revenue from Stripe joined with AI task costs, per income stream.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.event_writer = writer
    app.state.change_feed = feed

    @app.exception_handler(BadParameter)
    async def bad_parameter(request: Request, exc: BadParameter) -> JSONResponse:
        return JSONResponse(
            status_code=422,
            content={"detail": [{"loc": ["query", exc.field], "msg": exc.message}]},
        )

    @app.exception_handler(OperationalError)
    async def database_down(request: Request, exc: OperationalError) -> JSONResponse:
        log.warning("database unavailable: %s", exc.orig)
        count_api_unavailable()
        return JSONResponse(status_code=503, content={"error": "database unavailable"})

    @app.get("/healthz", tags=["operations"], summary="The process is alive")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.add_middleware(StripeWebhookEndpoint, settings=settings, writer=writer)
    app.include_router(operations.router)
    app.include_router(ledger.router)
    app.include_router(metrics.router)
    app.include_router(tasks.router)
    app.include_router(prices.router)
    app.include_router(fx.router)
    app.include_router(export_router)
    app.include_router(alerts.router)
    source = FigureSource(
        engine,
        settings.reporting_currency,
        version=lambda: feed.version,
        count_unknown_fees=bool(settings.stripe_api_key),
    )
    create_dashboard(app, DashboardContext(source=source, settings=settings), feed)
    # Last, so its middleware runs first: every route, Dash's included, is behind the policy.
    install_access_control(app, settings, engine)
    # After access control, so it runs before it: refused requests get an id and an access
    # line too, and so does the webhook fast path.
    app.add_middleware(RequestContext)
    return app
