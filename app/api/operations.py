"""Operations endpoints: GET /metrics (Prometheus), GET /readyz, GET /api/health."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from app.observability.health import DatabaseFigures, health_snapshot, readiness
from app.observability.prometheus import CONTENT_TYPE_LATEST, render_metrics

router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    summary="Prometheus metrics of the whole server (all workers)",
    response_class=Response,
)
def prometheus_metrics(request: Request) -> Response:
    settings = request.app.state.settings
    figures = DatabaseFigures(request.app.state.engine, settings.db_timeout_seconds)
    return Response(content=render_metrics(figures), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/readyz",
    summary="Ready to serve: the database answers and its schema is at head",
    responses={503: {"description": "Which check failed: database or schema, and why."}},
)
async def readyz(request: Request) -> JSONResponse:
    timeout = request.app.state.settings.db_timeout_seconds
    try:
        # A hard bound: a connection attempt or a query that hangs still gets an answer.
        ready = await asyncio.wait_for(
            asyncio.to_thread(readiness, request.app.state.engine), timeout=timeout
        )
    except TimeoutError:
        detail = f"database unreachable: no answer within ROI_DB_TIMEOUT ({timeout:g} s)"
        return JSONResponse(
            status_code=503,
            content={"status": "unavailable", "failed": "database", "detail": detail},
        )
    return JSONResponse(status_code=200 if ready.ready else 503, content=ready.body)


@router.get("/api/health", summary="Data health: the figures of the dashboard's health page")
def data_health(request: Request) -> dict[str, Any]:
    return health_snapshot(
        request.app.state.engine, timeout_seconds=request.app.state.settings.db_timeout_seconds
    )
