"""The dashboard's one door to the metrics layer, shared by every open dashboard in a process.

Results are cached by (report, filter, data version): when a change is announced, each distinct
view is recomputed once, however many people look at it; concurrent requests for the same
view wait for the one computation in flight. The reports are the metrics API's own response
objects, so the dashboard cannot show a number the API would contradict.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine

from app.alerts.store import StoredAlert, recent_alerts
from app.api.metrics import (
    ModelsResponse,
    StreamsResponse,
    TimeseriesResponse,
    models_report,
    streams_report,
    timeseries_report,
)
from app.metrics.catalog import known_streams
from app.metrics.filters import MetricsFilter

T = TypeVar("T")
CACHE_SIZE = 256


class FigureSource:
    def __init__(
        self,
        engine: Engine,
        currency: str,
        version: Callable[[], int],
        *,
        count_unknown_fees: bool = True,
    ) -> None:
        self.engine = engine
        self.currency = currency
        self.count_unknown_fees = count_unknown_fees  # as the API: only with a Stripe API key
        self._version = version
        self._cache: OrderedDict[Hashable, Any] = OrderedDict()
        self._in_flight: dict[Hashable, threading.Lock] = {}
        self._lock = threading.Lock()

    def streams(self, f: MetricsFilter) -> StreamsResponse:
        return self._cached(
            ("streams", f),
            lambda c: streams_report(
                c, f, self.currency, count_unknown_fees=self.count_unknown_fees
            ),
        )

    def timeseries(self, f: MetricsFilter) -> TimeseriesResponse:
        return self._cached(("timeseries", f), lambda c: timeseries_report(c, f, self.currency))

    def models(self, f: MetricsFilter) -> ModelsResponse:
        return self._cached(("models", f), lambda c: models_report(c, f, self.currency))

    def stream_names(self) -> list[str]:
        return self._cached(("stream_names",), known_streams)

    def alerts(self, streams: tuple[str, ...], limit: int = 5) -> list[StoredAlert]:
        """The newest trend alerts (of these streams, when given)."""

        def newest(conn: Connection) -> list[StoredAlert]:
            found = recent_alerts(conn, limit=200)
            return [a for a in found if not streams or a.stream in streams][:limit]

        return self._cached(("alerts", streams, limit), newest)

    def _cached(self, key: tuple[Hashable, ...], compute: Callable[[Connection], T]) -> T:
        versioned = (*key, self._version())
        with self._lock:
            if versioned in self._cache:
                self._cache.move_to_end(versioned)
                return self._cache[versioned]  # type: ignore[no-any-return]
            gate = self._in_flight.setdefault(versioned, threading.Lock())
        with gate:  # one computation per key; the others wait for it and read the cache
            with self._lock:
                if versioned in self._cache:
                    return self._cache[versioned]  # type: ignore[no-any-return]
            try:
                with self.engine.connect() as conn:
                    result = compute(conn)
                with self._lock:
                    self._cache[versioned] = result
                    while len(self._cache) > CACHE_SIZE:
                        self._cache.popitem(last=False)
            finally:
                with self._lock:
                    self._in_flight.pop(versioned, None)
            return result
