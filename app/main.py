"""The app factory: one FastAPI process serving the webhook, the API (and later the dashboard)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from app.api import fx, ledger, metrics, prices, tasks
from app.database import libpq_url, make_engine
from app.metrics.rollups import compact_now
from app.periods import BadParameter
from app.schema import ensure_schema
from app.settings import Settings, get_settings
from ingest.event_writer import EventWriter
from ingest.stripe_webhook import StripeWebhookEndpoint

log = logging.getLogger(__name__)


ROLLUP_COMPACTION_SECONDS = 10.0


async def compact_rollups_forever(engine: Engine) -> None:
    """Keep the rollups small. Figures do not wait for this: readers sum uncompacted rows."""
    while True:
        await asyncio.sleep(ROLLUP_COMPACTION_SECONDS)
        try:
            await asyncio.to_thread(compact_now, engine)
        except Exception as exc:  # the database may be briefly away; try again next round
            log.warning("rollup compaction failed: %s", exc)


def create_app(settings: Settings | None = None, *, check_schema: bool = True) -> FastAPI:
    """Build the app. With `check_schema`, refuse to build against an unexpected schema."""
    settings = settings or get_settings()
    engine = make_engine(settings)
    if check_schema:
        ensure_schema(engine, settings)
    writer = EventWriter(
        libpq_url(settings), writers=settings.ingest_writers, timeout=settings.db_timeout_seconds
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await writer.start()
        compactor = asyncio.create_task(compact_rollups_forever(engine))
        try:
            yield
        finally:
            compactor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await compactor
            await writer.stop()
            engine.dispose()

    app = FastAPI(
        title="ROI analytics",
        summary="Revenue from Stripe joined with AI task costs, per income stream.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.event_writer = writer

    @app.exception_handler(BadParameter)
    async def bad_parameter(request: Request, exc: BadParameter) -> JSONResponse:
        return JSONResponse(
            status_code=422,
            content={"detail": [{"loc": ["query", exc.field], "msg": exc.message}]},
        )

    @app.exception_handler(OperationalError)
    async def database_down(request: Request, exc: OperationalError) -> JSONResponse:
        log.warning("database unavailable: %s", exc.orig)
        return JSONResponse(status_code=503, content={"error": "database unavailable"})

    @app.get("/healthz", tags=["operations"], summary="The process is alive")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.add_middleware(StripeWebhookEndpoint, settings=settings, writer=writer)
    app.include_router(ledger.router)
    app.include_router(metrics.router)
    app.include_router(tasks.router)
    app.include_router(prices.router)
    app.include_router(fx.router)
    return app
