"""The `alerts` table: store each alert once, list them, and track their delivery.

Callers own the transactions (the evaluation in app/alerts/evaluate.py, a request, the CLI).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

from sqlalchemy import Connection, and_, func, select, text, update
from sqlalchemy.dialects.postgresql import insert

from app.alerts.detect import QUIET_DAYS, Alert
from app.models import alerts

# Serialises the inserting step of concurrent evaluations, so that the "no alert of the same
# kind in the last QUIET_DAYS" check and the insert see the same table.
INSERT_LOCK_KEY = 7_311_402_011


@dataclass(frozen=True)
class StoredAlert:
    """An alert as stored; what the API, the CLI and the dashboard show."""

    id: int
    stream: str
    metric: str  # net_revenue, margin or roi
    direction: str  # drop or rise
    detected_on: date
    change_started_on: date
    baseline_value: Decimal
    recent_value: Decimal
    change: Decimal
    relative_change: Decimal | None
    currency: str | None  # None for ROI
    message: str
    created_at: datetime
    sent_at: datetime | None


_COLUMNS = [alerts.c[name] for name in StoredAlert.__dataclass_fields__]


def store_new_alerts(conn: Connection, found: list[Alert]) -> list[StoredAlert]:
    """Insert the alerts not stored yet; returns those this call inserted (and only those).

    An alert is skipped when one of the same stream, metric and direction was detected within
    QUIET_DAYS of it: late data can move a detection by a day, and that is the same change."""
    if not found:
        return []
    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": INSERT_LOCK_KEY})
    inserted: list[StoredAlert] = []
    for alert in found:
        a = alerts.c
        nearby = conn.execute(
            select(func.count()).where(
                a.stream == alert.stream,
                a.metric == alert.metric,
                a.direction == alert.direction,
                a.detected_on != alert.detected_on,
                a.detected_on.between(
                    alert.detected_on - timedelta(days=QUIET_DAYS),
                    alert.detected_on + timedelta(days=QUIET_DAYS),
                ),
            )
        ).scalar_one()
        if nearby:
            continue
        row = conn.execute(
            insert(alerts)
            .values(
                stream=alert.stream,
                metric=alert.metric,
                direction=alert.direction,
                detected_on=alert.detected_on,
                change_started_on=alert.change_started_on,
                baseline_value=alert.baseline_value,
                recent_value=alert.recent_value,
                change=alert.change,
                relative_change=alert.relative_change,
                currency=alert.currency,
                message=alert.message,
            )
            .on_conflict_do_nothing(index_elements=["stream", "metric", "direction", "detected_on"])
            .returning(*_COLUMNS)
        ).one_or_none()
        if row is not None:
            inserted.append(StoredAlert(**row._mapping))
    return inserted


def recent_alerts(conn: Connection, limit: int = 50) -> list[StoredAlert]:
    """The newest alerts first (by day of detection, then by insertion)."""
    rows = conn.execute(
        select(*_COLUMNS).order_by(alerts.c.detected_on.desc(), alerts.c.id.desc()).limit(limit)
    )
    return [StoredAlert(**row._mapping) for row in rows]


def unsent_alert_ids(conn: Connection, limit: int) -> list[int]:
    """Alerts the webhook has not accepted yet, oldest first."""
    query = select(alerts.c.id).where(alerts.c.sent_at.is_(None)).order_by(alerts.c.id)
    return list(conn.execute(query.limit(limit)).scalars())


def claim_unsent(conn: Connection, alert_id: int) -> StoredAlert | None:
    """Lock an alert for sending; None when it was sent meanwhile or another process is
    sending it right now (it holds the lock until it records the outcome)."""
    row = conn.execute(
        select(*_COLUMNS)
        .where(and_(alerts.c.id == alert_id, alerts.c.sent_at.is_(None)))
        .with_for_update(skip_locked=True)
    ).one_or_none()
    return None if row is None else StoredAlert(**row._mapping)


def record_delivery(conn: Connection, alert_id: int, error: str | None) -> None:
    """After an attempt: sent now when `error` is None, otherwise the error is kept for the
    next evaluation's retry."""
    values: dict[str, object] = {"send_attempts": alerts.c.send_attempts + 1, "last_error": error}
    if error is None:
        values["sent_at"] = func.now()
    conn.execute(update(alerts).where(alerts.c.id == alert_id).values(**values))
