"""Health figures read from the database: readiness, pre-aggregation lag, recent events; and
`health_snapshot`, the one function behind both GET /api/health and the dashboard's data-health
page, so they show the same numbers as /metrics.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from app.metrics.rollups import COMPACTIONS
from app.observability.prometheus import webhook_counts
from app.schema import SchemaStatus, schema_status

ROLLUP_TABLES = tuple(COMPACTIONS)

# One pass over the partial "pending" index of each rollup: it holds only the rows appended
# since the last compaction (seconds' worth), so this stays cheap at any table size. The age
# is taken on the database's clock, the one `appended_at` was written with.
_LAG_SQL = " UNION ALL ".join(
    f"SELECT '{table}' AS rollup, count(*) AS pending,"
    " coalesce(extract(epoch FROM now() - min(appended_at)), 0)::float8 AS oldest_age"
    f" FROM {table} WHERE NOT compacted"
    for table in ROLLUP_TABLES
)

_RECENT_EVENTS_SQL = """
    SELECT (SELECT max(received_at) FROM stripe_events) AS last_received_at,
           array(
               SELECT count(e.id) FROM generate_series(4, 0, -1) AS m(ago)
               LEFT JOIN stripe_events e
                 ON e.received_at > now() - (m.ago + 1) * interval '1 minute'
                AND e.received_at <= now() - m.ago * interval '1 minute'
               GROUP BY m.ago ORDER BY m.ago DESC
           ) AS per_minute
"""


def _bounded(conn: Connection, seconds: float) -> Connection:
    """Let no statement of this transaction run longer than `seconds`: a probe or a scrape must
    answer even when the database is slow."""
    conn.execute(text(f"SET LOCAL statement_timeout = {max(1, int(seconds * 1000))}"))
    return conn


@dataclass(frozen=True)
class RollupLag:
    pending_rows: dict[str, int]  # per rollup table
    oldest_pending_age_seconds: dict[str, float]  # 0 when nothing is pending

    def as_json(self) -> dict[str, Any]:
        return {
            "pending_rows": sum(self.pending_rows.values()),
            "oldest_pending_age_seconds": round(max(self.oldest_pending_age_seconds.values()), 3),
            "by_rollup": {
                table: {
                    "pending_rows": self.pending_rows[table],
                    "oldest_pending_age_seconds": round(self.oldest_pending_age_seconds[table], 3),
                }
                for table in ROLLUP_TABLES
            },
        }


def rollup_lag(conn: Connection) -> RollupLag:
    """How far compaction is behind: rows not yet compacted and the age of the oldest of them."""
    rows = conn.execute(text(_LAG_SQL)).all()
    return RollupLag(
        pending_rows={r.rollup: int(r.pending) for r in rows},
        oldest_pending_age_seconds={r.rollup: float(r.oldest_age) for r in rows},
    )


class DatabaseFigures(Collector):
    """Gauges read from the database at each scrape (see app/observability/prometheus.py on why
    not per-process gauges). A database that does not answer gives roi_database_up 0 and no
    lag series, instead of a failed scrape."""

    def __init__(self, engine: Engine, timeout_seconds: float) -> None:
        self.engine = engine
        self.timeout_seconds = timeout_seconds

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("roi_database_up", "1 when the database answered this scrape.")
        try:
            with self.engine.begin() as conn:
                lag = rollup_lag(_bounded(conn, self.timeout_seconds))
        except DBAPIError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        pending = GaugeMetricFamily(
            "roi_rollup_pending_rows", "Rollup rows not compacted yet.", labels=["rollup"]
        )
        age = GaugeMetricFamily(
            "roi_rollup_oldest_pending_age_seconds",
            "Age of the oldest rollup row not compacted yet (0 when none).",
            labels=["rollup"],
        )
        for table in ROLLUP_TABLES:
            pending.add_metric([table], lag.pending_rows[table])
            age.add_metric([table], lag.oldest_pending_age_seconds[table])
        yield pending
        yield age


@dataclass(frozen=True)
class Readiness:
    ready: bool
    body: dict[str, Any]


def _schema_json(status: SchemaStatus) -> dict[str, Any]:
    return {
        "at_head": status.at_head,
        "current": list(status.current),
        "head": status.head,
        "pending": list(status.pending),
    }


def readiness(engine: Engine) -> Readiness:
    """Ready when the database answers and its schema is at the migration head."""
    try:
        status = schema_status(engine)
    except DBAPIError as exc:
        return Readiness(
            False, {"status": "unavailable", "failed": "database", "detail": _reason(exc)}
        )
    except Exception as exc:  # e.g. a revision unknown to this code: a newer release migrated
        return Readiness(
            False, {"status": "unavailable", "failed": "schema", "detail": f"schema unknown: {exc}"}
        )
    if not status.at_head:
        current = ", ".join(status.current) or "an empty database (no revision)"
        detail = (
            f"schema behind: the database is at {current}, the code expects {status.head}; "
            f"pending: {', '.join(status.pending)}"
        )
        return Readiness(
            False,
            {
                "status": "unavailable",
                "failed": "schema",
                "detail": detail,
                "schema": _schema_json(status),
            },
        )
    return Readiness(True, {"status": "ready", "schema": _schema_json(status)})


def _reason(exc: DBAPIError) -> str:
    return f"database unreachable: {str(exc.orig).strip() or type(exc.orig).__name__}"


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def health_snapshot(engine: Engine, *, timeout_seconds: float = 2.0) -> dict[str, Any]:
    """What the data-health page shows: webhook counters (as /metrics, all workers), schema
    status, pre-aggregation lag, the last event received and events per minute over the last 5
    minutes. Database figures are None, with `database.error` saying why, when it is away."""
    snapshot: dict[str, Any] = {"webhooks": webhook_counts()}
    try:
        status = schema_status(engine)
        with engine.begin() as conn:
            _bounded(conn, timeout_seconds)
            lag = rollup_lag(conn)
            recent = conn.execute(text(_RECENT_EVENTS_SQL)).one()
            now = conn.execute(text("SELECT now()")).scalar_one()
    except DBAPIError as exc:
        return {
            **snapshot,
            "as_of": None,
            "database": {"ok": False, "error": _reason(exc)},
            "schema": None,
            "preaggregation": None,
            "events": None,
        }
    per_minute = [int(n) for n in recent.per_minute]
    return {
        **snapshot,
        "as_of": _iso(now),
        "database": {"ok": True, "error": None},
        "schema": _schema_json(status),
        "preaggregation": lag.as_json(),
        "events": {
            "last_received_at": _iso(recent.last_received_at),
            "last_5_minutes": sum(per_minute),
            "per_minute": round(sum(per_minute) / 5, 2),
            "per_minute_oldest_first": per_minute,
        },
    }
