"""What every page's callbacks share: the figure source, settings and the clock."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

from dash.exceptions import PreventUpdate
from sqlalchemy.exc import DBAPIError

from app.metrics.filters import MetricsFilter
from app.periods import BadParameter
from app.settings import Settings
from dashboards.data import FigureSource
from dashboards.view import View

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class DashboardContext:
    source: FigureSource
    settings: Settings
    clock: Callable[[], datetime] = utc_now

    @property
    def currency(self) -> str:
        return self.settings.reporting_currency

    def metrics_filter(
        self, view_data: dict[str, Any], *, streams: tuple[str, ...] | None = None
    ) -> MetricsFilter:
        return View.from_store(view_data).metrics_filter(self.clock(), streams=streams)


def keep_figures_on_error(callback: Callable[P, R]) -> Callable[P, R]:
    """While the database is away or the view is invalid, a page keeps what it shows: the
    status bar says why (dashboards/app.py), instead of every chart turning into an error."""

    @functools.wraps(callback)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return callback(*args, **kwargs)
        except DBAPIError as exc:
            log.warning("dashboard: database unavailable: %s", exc.orig)
            raise PreventUpdate from exc
        except BadParameter as exc:
            raise PreventUpdate from exc

    return guarded
