"""Every Prometheus metric of the app, defined once, with the small functions the code that
counts calls (the webhook, the writer, the task API, and the exports and Stripe catch-up code).

Several worker processes (`roi serve --workers N`): a scrape reaches one of them, so
prometheus-client runs in its multiprocess mode. `roi serve` points PROMETHEUS_MULTIPROC_DIR
at an emptied directory before the workers start; each process then keeps its values in
memory-mapped files there, and a scrape merges the files of every process, live or dead
(counters and histograms are summed, so a restarted worker loses nothing). With one process
and no directory set (tests, `--workers 1`) the ordinary in-memory registry is used.

Gauges in multiprocess mode have no single value: each process writes its own, and
`multiprocess_mode` says how the scrape combines them: `all` (one series per pid, the
default), `sum`, `min`, `max`, `mostrecent`, and `live*` variants of each that drop the files
of processes marked dead (`mark_process_dead`, called by each worker as it stops).
`set_function` and custom collectors are not merged across processes. So the one gauge kept
per process here is requests in flight (`livesum`), and the figures that belong to the
database rather than to a process (pre-aggregation lag) are read from the database at scrape
time by a collector of the scrape's own registry: one value, whichever worker answers.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from app.ledger.facts import HANDLED_EVENTS

__all__ = ["CONTENT_TYPE_LATEST"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# ---------------------------------------------------------------------------------------------
# Stripe webhook

# Event types get their own series only when we book them; every other type is counted as
# "other". Stripe has some 250 types and adds more with API versions, and an endpoint set to
# "all events" (or anyone holding a signing secret) can send any string as a type: each new
# label value is a new series in every worker's file and in Prometheus, forever. The raw type
# of every event is kept in stripe_events for the one who needs it.
KNOWN_EVENT_TYPES = frozenset(HANDLED_EVENTS)
OTHER_EVENT_TYPE = "other"

WEBHOOK_RECEIVED = Counter(
    "roi_webhooks_received",
    "Stripe events received with a valid signature, by event type.",
    ["event_type"],
)
WEBHOOK_EVENTS = Counter(
    "roi_webhook_events",
    "Stripe events by outcome (processed, ignored, duplicate, failed, unstored, unavailable) "
    "and event type.",
    ["event_type", "outcome"],
)
WEBHOOK_REJECTED = Counter(
    "roi_webhooks_rejected",
    "Webhook requests refused before an event could be read, by reason.",
    ["reason"],
)
WEBHOOK_DURATION = Histogram(
    "roi_webhook_duration_seconds",
    "Time from a webhook request's arrival to its answer.",
    # Typical answers take 1-100 ms (one group commit); the upper buckets show the stalls.
    buckets=(0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5,
             1.0, 2.5),
)  # fmt: skip

WebhookRejection = Literal["not_configured", "too_large", "bad_signature", "bad_body"]

# ---------------------------------------------------------------------------------------------
# Database and availability

DB_RETRIES = Counter(
    "roi_db_retries",
    "Transactions the event writer ran again after a conflict, by reason.",
    ["reason"],
)
UNAVAILABLE_RESPONSES = Counter(
    "roi_unavailable_responses",
    "503 answers given, by endpoint kind (webhook, api).",
    ["endpoint"],
)
REQUESTS_IN_FLIGHT = Gauge(
    "roi_http_requests_in_flight",
    "HTTP requests being handled, over all live workers.",
    multiprocess_mode="livesum",
)

# The writer retries conflicts only: an unreachable database is answered 503 at once (Stripe
# redelivers), so there is no connection retry to count; those show as 503s below.
DbRetryReason = Literal["deadlock", "serialization", "connection"]

# ---------------------------------------------------------------------------------------------
# AI tasks, exports, Stripe API

TASKS_RECEIVED = Counter(
    "roi_tasks_received",
    "AI tasks received through POST /api/tasks, by result (inserted, updated, unchanged, "
    "superseded, rejected).",
    ["result"],
)
EXPORTS = Counter("roi_exports", "Exports served, by kind.", ["kind"])
EXPORT_ROWS = Counter("roi_export_rows", "Rows written by exports, by kind.", ["kind"])
EXPORT_BYTES = Counter("roi_export_bytes", "Bytes written by exports, by kind.", ["kind"])
STRIPE_API_CALLS = Counter(
    "roi_stripe_api_calls",
    "Stripe API calls by operation and final outcome (success, gave_up, error), retries included.",
    ["operation", "outcome"],
)
STRIPE_API_RETRIES = Counter(
    "roi_stripe_api_retries",
    "Attempts of a Stripe API call repeated after a network error, 429 or 5xx.",
    ["operation"],
)

StripeOutcome = Literal["success", "gave_up", "error"]  # final outcome, retries included

# Label values passed by other modules must be names from the code, never user input: a
# label value per customer or per file name would grow the series without bound.
_LABEL_NAME = re.compile(r"[a-z][a-z0-9_.]{0,63}")


def _code_name(value: str, what: str) -> str:
    if not _LABEL_NAME.fullmatch(value):
        raise ValueError(f"{what} must be a short lower-case name from the code, got {value!r}")
    return value


def event_type_label(event_type: str) -> str:
    return event_type if event_type in KNOWN_EVENT_TYPES else OTHER_EVENT_TYPE


def count_webhook_received(event_type: str) -> None:
    WEBHOOK_RECEIVED.labels(event_type_label(event_type)).inc()


def count_webhook_outcome(event_type: str, outcome: str) -> None:
    WEBHOOK_EVENTS.labels(event_type_label(event_type), outcome).inc()
    if outcome == "unavailable":
        UNAVAILABLE_RESPONSES.labels("webhook").inc()


def count_webhook_rejected(reason: WebhookRejection) -> None:
    WEBHOOK_REJECTED.labels(reason).inc()
    if reason == "not_configured":
        UNAVAILABLE_RESPONSES.labels("webhook").inc()


def count_db_retry(reason: DbRetryReason) -> None:
    DB_RETRIES.labels(reason).inc()


def count_api_unavailable() -> None:
    UNAVAILABLE_RESPONSES.labels("api").inc()


def count_tasks(
    *, inserted: int = 0, updated: int = 0, unchanged: int = 0, superseded: int = 0,
    rejected: int = 0,
) -> None:  # fmt: skip
    for result, n in (
        ("inserted", inserted),
        ("updated", updated),
        ("unchanged", unchanged),
        ("superseded", superseded),
        ("rejected", rejected),
    ):
        if n:
            TASKS_RECEIVED.labels(result).inc(n)


def record_export(kind: str, *, rows: int, size_bytes: int) -> None:
    """One export served: `kind` is the export's name in the code (e.g. "ledger_csv")."""
    kind = _code_name(kind, "export kind")
    EXPORTS.labels(kind).inc()
    EXPORT_ROWS.labels(kind).inc(rows)
    EXPORT_BYTES.labels(kind).inc(size_bytes)


def record_stripe_call(operation: str, outcome: StripeOutcome) -> None:
    """One Stripe API call answered (or given up): `operation` as "charges.list"."""
    STRIPE_API_CALLS.labels(_code_name(operation, "Stripe operation"), outcome).inc()


def record_stripe_retry(operation: str) -> None:
    """A Stripe API call about to be made again (count it before each new attempt)."""
    STRIPE_API_RETRIES.labels(_code_name(operation, "Stripe operation")).inc()


# ---------------------------------------------------------------------------------------------
# Multiprocess bookkeeping and exposition


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def prepare_multiprocess_dir(workers: int) -> tuple[Path | None, bool]:
    """Set up PROMETHEUS_MULTIPROC_DIR before the workers start: (the directory or None, whether
    it was created here and is to be removed at exit).

    An operator's directory is used and emptied (values of an earlier run would be added to
    this one's); with several workers and none set, a temporary one is created. The variable
    is set in this process's environment, which the workers (spawned) inherit."""
    configured = multiprocess_dir()
    if configured is None and workers <= 1:
        return None, False
    if configured is None:
        path = Path(tempfile.mkdtemp(prefix="roi-prometheus-"))
        os.environ[MULTIPROC_ENV] = str(path)
        return path, True
    path = Path(configured)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    return path, False


def remove_multiprocess_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def mark_this_process_dead() -> None:
    """Drop this process's live gauges (requests in flight) from later scrapes."""
    directory = multiprocess_dir()
    if directory is not None:
        multiprocess.mark_process_dead(os.getpid(), directory)  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def reap_dead_workers(directory: str) -> None:
    """Drop the live gauges of worker processes that are gone without saying so.

    uvicorn's supervisor kills a worker that misses its health check (a busy machine is
    enough) and starts another, with no hook to tell us: the killed worker's requests in
    flight would otherwise be counted at every scrape until the next restart."""
    for path in Path(directory).glob("gauge_live*_*.db"):
        pid = path.stem.rsplit("_", 1)[1]
        if pid.isdigit() and not _alive(int(pid)):
            multiprocess.mark_process_dead(int(pid), directory)  # type: ignore[no-untyped-call]


def _process_metrics() -> Iterable[Metric]:
    """The app's metrics, summed over every worker when there are several."""
    directory = multiprocess_dir()
    if directory is None:
        return REGISTRY.collect()
    reap_dead_workers(directory)
    collector = multiprocess.MultiProcessCollector(None, directory)  # type: ignore[no-untyped-call]
    metrics: Iterable[Metric] = collector.collect()  # type: ignore[no-untyped-call]
    return metrics


def render_metrics(*extra: Collector) -> bytes:
    """The Prometheus text exposition: the process (or all workers') metrics, then `extra`
    collectors (read per scrape, e.g. from the database)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ProcessMetrics())
    for collector in extra:
        registry.register(collector)
    return generate_latest(registry)


class _ProcessMetrics(Collector):
    def collect(self) -> Iterator[Metric]:
        yield from _process_metrics()


def webhook_counts() -> dict[str, Any]:
    """The webhook counters as /metrics shows them (all workers): totals and per event type."""
    received: dict[str, float] = defaultdict(float)
    outcomes: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    rejected: dict[str, float] = defaultdict(float)
    for metric in _process_metrics():
        for sample in metric.samples:
            if sample.name == "roi_webhooks_received_total":
                received[sample.labels["event_type"]] += sample.value
            elif sample.name == "roi_webhook_events_total":
                outcomes[sample.labels["outcome"]][sample.labels["event_type"]] += sample.value
            elif sample.name == "roi_webhooks_rejected_total":
                rejected[sample.labels["reason"]] += sample.value
    totals = {"received": int(sum(received.values()))}
    for outcome in ("processed", "ignored", "duplicate", "failed", "unstored", "unavailable"):
        totals[outcome] = int(sum(outcomes[outcome].values()))
    totals["rejected"] = int(sum(rejected.values()))
    return {
        **totals,
        "received_by_event_type": {k: int(v) for k, v in sorted(received.items())},
        "by_outcome_and_event_type": {
            outcome: {k: int(v) for k, v in sorted(by_type.items())}
            for outcome, by_type in sorted(outcomes.items())
        },
        "rejected_by_reason": {k: int(v) for k, v in sorted(rejected.items())},
    }
