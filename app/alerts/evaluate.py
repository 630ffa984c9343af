"""Evaluate trend alerts against the database: daily figures in, new alerts stored and sent.

The figures are the metrics layer's own, as the API presents them (`timeseries_report`, day
buckets cut in ROI_TIMEZONE): an alert never states a number the dashboard would contradict.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Literal
from zoneinfo import ZoneInfo

from sqlalchemy import Engine

from app.alerts.detect import (
    HISTORY_DAYS,
    METRICS,
    MIN_RATIO_CHANGE,
    MONEY_METRICS,
    Alert,
    Metric,
    detect_alerts,
    ratio_is_material,
)
from app.alerts.notify import AlertWebhook, DeliveryFailed
from app.alerts.store import (
    StoredAlert,
    claim_unsent,
    record_delivery,
    store_new_alerts,
    unsent_alert_ids,
)
from app.api.metrics import timeseries_report
from app.changes import ANNOUNCE_SQL
from app.metrics.filters import build_filter
from app.settings import Settings

log = logging.getLogger(__name__)

LOOKBACK_DAYS = 90  # read this many complete days; HISTORY_DAYS (49) is what detection needs
ALERT_MAX_AGE_DAYS = 7  # store only alerts detected this recently: no flood of old news
SEND_BATCH = 50  # alerts sent per evaluation at most
DAY_SETTLE = timedelta(hours=1)  # a day is judged once it has been over for this long

assert LOOKBACK_DAYS >= HISTORY_DAYS + ALERT_MAX_AGE_DAYS


@dataclass
class Evaluation:
    new: list[StoredAlert] = field(default_factory=list)
    sent: int = 0
    unsent: int = 0  # left for the next evaluation (receiver down or refusing)


Series = dict[Metric | Literal["cost"], dict[date, Decimal | None]]
# What a day without figures holds: no revenue and no cost are facts (0); ROI has no value.
_ZERO_WHEN_ABSENT: tuple[Literal["net_revenue", "margin", "cost"], ...] = (
    "net_revenue",
    "margin",
    "cost",
)


def daily_series(
    engine: Engine, settings: Settings, first_day: date, last_day: date
) -> dict[str, Series]:
    """stream -> metric (and cost) -> day -> value, for every stream with figures in the period.

    A day without figures is a day without revenue or cost: net revenue, margin and cost 0, ROI
    none (its cost is 0). Money is in major units of the reporting currency, as presented."""
    f = build_filter(
        start=first_day.isoformat(),
        end=(last_day + timedelta(days=1)).isoformat(),
        tz=settings.timezone,
        granularity="day",
    )
    with engine.connect() as conn:
        report = timeseries_report(conn, f, settings.reporting_currency)
    series: dict[str, Series] = {}
    for point in report.points:
        per_metric = series.setdefault(
            point.stream, {"net_revenue": {}, "margin": {}, "roi": {}, "cost": {}}
        )
        day = point.bucket.date()  # the bucket start in ROI_TIMEZONE
        per_metric["net_revenue"][day] = Decimal(point.net_revenue)
        per_metric["margin"][day] = Decimal(point.margin)
        per_metric["roi"][day] = None if point.roi is None else Decimal(point.roi)
        per_metric["cost"][day] = Decimal(point.cost)
    for per_metric in series.values():
        for day in _days(first_day, last_day):
            for name in _ZERO_WHEN_ABSENT:
                per_metric[name].setdefault(day, Decimal(0))
    return series


def find_alerts(engine: Engine, settings: Settings, today: date) -> list[Alert]:
    """Alerts detected on the complete days before `today`, at most ALERT_MAX_AGE_DAYS old."""
    last_day = today - timedelta(days=1)
    first_day = today - timedelta(days=LOOKBACK_DAYS)
    found: list[Alert] = []
    for stream, per_metric in sorted(daily_series(engine, settings, first_day, last_day).items()):
        cost = {d: v for d, v in per_metric["cost"].items() if v is not None}
        for metric in METRICS:
            money = metric in MONEY_METRICS
            if not money and not ratio_is_material(cost, settings.alert_min_daily_change):
                continue
            found.extend(
                detect_alerts(
                    stream,
                    metric,
                    per_metric[metric],
                    first_day=first_day,
                    last_day=last_day,
                    min_change=settings.alert_min_daily_change if money else MIN_RATIO_CHANGE,
                    currency=settings.reporting_currency if money else None,
                )
            )
    oldest = today - timedelta(days=ALERT_MAX_AGE_DAYS)
    return [a for a in found if a.detected_on >= oldest]


def evaluate_alerts(
    engine: Engine, settings: Settings, today: date, *, webhook: AlertWebhook | None = None
) -> Evaluation:
    """Detect, store what is new, and send every alert not sent yet.

    Safe to run repeatedly and in several processes at once: the table's unique key stores each
    alert once, and an alert is sent only by whoever holds its row lock and only while its
    `sent_at` is empty, so it is never sent twice once its sending was recorded."""
    result = Evaluation()
    found = find_alerts(engine, settings, today)
    with engine.begin() as conn:
        result.new = store_new_alerts(conn, found)
        if result.new:
            conn.exec_driver_sql(ANNOUNCE_SQL)  # open dashboards redraw, on commit
    for alert in result.new:
        log.warning("trend alert: %s", alert.message)
    if webhook is None and settings.alert_webhook_url:
        webhook = AlertWebhook(settings.alert_webhook_url)
    if webhook is not None:
        result.sent, result.unsent = send_unsent(engine, webhook)
    return result


def send_unsent(engine: Engine, webhook: AlertWebhook) -> tuple[int, int]:
    """Send the alerts not sent yet, oldest first; returns (sent, left unsent). Stops at the
    first failure: a receiver that is down would only cost every other alert its retries."""
    sent = 0
    with engine.connect() as conn:
        ids = unsent_alert_ids(conn, SEND_BATCH)
    for position, alert_id in enumerate(ids):
        # One transaction per alert, holding its row lock while posting: another process skips
        # it, and sent_at is committed right after the receiver's 2xx.
        with engine.begin() as conn:
            alert = claim_unsent(conn, alert_id)
            if alert is None:
                continue
            try:
                webhook.send(alert)
            except DeliveryFailed as exc:
                log.warning("alert %s not delivered, will retry: %s", alert_id, exc)
                record_delivery(conn, alert_id, str(exc))
                return sent, len(ids) - position
            record_delivery(conn, alert_id, None)
            sent += 1
    return sent, 0


def today_in(settings: Settings, now: datetime | None = None) -> date:
    """The day being lived in ROI_TIMEZONE, less DAY_SETTLE: yesterday is judged only once
    late webhooks and task reports for it have had time to arrive."""
    moment = (now or datetime.now(ZoneInfo("UTC"))) - DAY_SETTLE
    return moment.astimezone(ZoneInfo(settings.timezone)).date()


async def evaluate_alerts_forever(engine: Engine, settings: Settings) -> None:
    """Evaluate every ROI_ALERT_INTERVAL seconds (0 disables). Each process may run this: the
    store and the sending are safe to race."""
    if settings.alert_interval_seconds <= 0:
        return
    while True:
        await asyncio.sleep(settings.alert_interval_seconds)
        try:
            await asyncio.to_thread(evaluate_alerts, engine, settings, today_in(settings))
        except Exception as exc:  # the database may be briefly away; try again next round
            log.warning("alert evaluation failed: %s", exc)


def _days(first_day: date, last_day: date) -> list[date]:
    return [first_day + timedelta(days=i) for i in range((last_day - first_day).days + 1)]
