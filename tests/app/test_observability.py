"""Observability: /metrics as webhooks and tasks come in, /readyz, /api/health (the dashboard's
data-health figures), request ids and JSON logs, and the multiprocess mode of `roi serve`."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app import schema
from app.auth.principal import Role
from app.main import create_app
from app.metrics.rollups import COMPACTION_LOCK_KEY, compact_now
from app.observability import health_snapshot
from app.observability.logs import (
    ACCESS_LOGGER,
    TEXT_FORMAT,
    JsonFormatter,
    RequestContext,
    RequestIdFilter,
    request_id,
    request_id_from,
    resolved_log_format,
)
from app.observability.prometheus import record_export, record_stripe_call
from tests import stripe_events as se
from tests import task_costs as tc
from tests.conftest import (
    HEAD,
    REVISIONS,
    WEBHOOK_SECRETS,
    LiveServer,
    TestDatabase,
    WebhookClient,
    app_settings,
    auth_header,
    create_database,
    drop_database,
)
from tests.serve import free_port, start_serve, wait_until_healthy

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(base_url: str) -> Samples:
    response = httpx.get(f"{base_url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


# ---------------------------------------------------------------------------------------------
# /metrics


def test_webhook_counters_follow_the_events_posted(webhook: WebhookClient) -> None:
    base = webhook.base_url
    before = scrape(base)
    charge = se.charge(metadata={"stream": "pro"})
    booked = se.charge_succeeded(charge=charge)
    webhook.deliver(booked, booked)  # processed, then duplicate
    webhook.deliver(se.customer_created())  # a type we do not book: ignored
    odd = se.event(type=f"attacker.{uuid.uuid4().hex}", object=se.customer())
    webhook.deliver(odd)  # signed, any type: ignored, and counted as "other"
    refused = webhook.post_body(se.encode(booked), signature="t=1,v1=00")
    assert refused.status_code == 400
    after = scrape(base)

    received = "roi_webhooks_received_total"
    events = "roi_webhook_events_total"
    assert delta(before, after, received, event_type="charge.succeeded") == 2
    assert delta(before, after, received, event_type="other") == 2
    assert delta(before, after, events, event_type="charge.succeeded", outcome="processed") == 1
    assert delta(before, after, events, event_type="charge.succeeded", outcome="duplicate") == 1
    assert delta(before, after, events, event_type="other", outcome="ignored") == 2
    assert delta(before, after, "roi_webhooks_rejected_total", reason="bad_signature") == 1
    # No series is made for a type we do not know.
    assert not any(odd["type"] in str(labels) for _, labels in after)
    # Every webhook request is timed, refused ones included, in buckets that split 1-100 ms.
    assert delta(before, after, "roi_webhook_duration_seconds_count") == 5
    assert delta(before, after, "roi_webhook_duration_seconds_bucket", le="+Inf") == 5
    assert ("roi_webhook_duration_seconds_bucket", (("le", "0.005"),)) in after
    assert ("roi_webhook_duration_seconds_bucket", (("le", "0.1"),)) in after


def test_a_failed_event_is_counted_as_failed(webhook: WebhookClient, db: TestDatabase) -> None:
    before = scrape(webhook.base_url)
    charge = se.charge()
    webhook.deliver(se.charge_succeeded(charge=charge))
    refund = se.refund_created(refund=se.refund(charge=charge["id"], amount=800))
    with db.failing_refunds():
        assert webhook.post(refund).status_code == 500
    after = scrape(webhook.base_url)
    failed = delta(
        before, after, "roi_webhook_events_total", event_type="refund.created", outcome="failed"
    )
    assert failed == 1


def test_a_serialization_conflict_is_retried_and_counted(
    webhook: WebhookClient, db: TestDatabase
) -> None:
    """A real conflict from the database (SQLSTATE 40001, raised once by a trigger): the writer
    runs the transaction again, the event is booked, and the retry shows in /metrics."""
    db.execute("CREATE SEQUENCE roi_test_conflict_once")
    db.execute(
        "CREATE FUNCTION roi_test_conflict_once() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF nextval('roi_test_conflict_once') = 1 THEN "
        "RAISE EXCEPTION 'conflict staged by the test' USING ERRCODE = 'serialization_failure';"
        " END IF; RETURN NEW; END $$"
    )
    db.execute(
        "CREATE TRIGGER roi_test_conflict_once BEFORE INSERT ON stripe_events "
        "FOR EACH ROW EXECUTE FUNCTION roi_test_conflict_once()"
    )
    try:
        before = scrape(webhook.base_url)
        assert webhook.deliver(se.charge_succeeded(charge=se.charge())) == ["processed"]
        after = scrape(webhook.base_url)
    finally:
        db.execute("DROP TRIGGER roi_test_conflict_once ON stripe_events")
        db.execute("DROP FUNCTION roi_test_conflict_once()")
        db.execute("DROP SEQUENCE roi_test_conflict_once")
    assert delta(before, after, "roi_db_retries_total", reason="serialization") == 1


def test_tasks_received_are_counted(webhook: WebhookClient) -> None:
    before = scrape(webhook.base_url)
    task = tc.task(external_id=f"task-{uuid.uuid4().hex}", cost="0.25", cost_currency="usd")
    assert webhook.http.post("/api/tasks", json=[task]).status_code == 200
    assert webhook.http.post("/api/tasks", json=[task]).status_code == 200
    assert webhook.http.post("/api/tasks", json=[{"external_id": ""}]).status_code == 422
    after = scrape(webhook.base_url)
    assert delta(before, after, "roi_tasks_received_total", result="inserted") == 1
    assert delta(before, after, "roi_tasks_received_total", result="unchanged") == 1
    assert delta(before, after, "roi_tasks_received_total", result="rejected") == 1


def test_exports_and_stripe_calls_are_counted_through_their_functions(
    live_server: LiveServer,
) -> None:
    before = scrape(live_server.url)
    record_export("ledger_csv", rows=3, size_bytes=120)
    record_stripe_call("charges.retrieve", "gave_up")
    after = scrape(live_server.url)
    assert delta(before, after, "roi_exports_total", kind="ledger_csv") == 1
    assert delta(before, after, "roi_export_rows_total", kind="ledger_csv") == 3
    assert delta(before, after, "roi_export_bytes_total", kind="ledger_csv") == 120
    calls = "roi_stripe_api_calls_total"
    assert delta(before, after, calls, operation="charges.retrieve", outcome="gave_up") == 1
    # A label from user input would grow the series without bound: refused.
    with pytest.raises(ValueError, match="export kind"):
        record_export("Report for ACME.csv", rows=1, size_bytes=1)


@contextmanager
def compaction_paused(db: TestDatabase) -> Iterator[None]:
    """Hold the compaction lock, so the live server's compaction loop (every 10 s) cannot
    compact the rows a test expects to find pending."""
    with db.engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": COMPACTION_LOCK_KEY})
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": COMPACTION_LOCK_KEY})
            conn.commit()


@pytest.mark.usefixtures("no_background_compaction")
def test_preaggregation_lag_is_read_from_the_database(
    webhook: WebhookClient, db: TestDatabase
) -> None:
    compact_now(db.engine, None, split_zone="UTC")
    with compaction_paused(db):
        webhook.deliver(se.charge_succeeded(charge=se.charge(metadata={"stream": "pro"})))
        pending = scrape(webhook.base_url)
        assert compact_now(db.engine, None, split_zone="UTC") is False  # the pause holds
    assert value(pending, "roi_database_up") == 1
    assert value(pending, "roi_rollup_pending_rows", rollup="ledger_rollup") >= 1
    assert value(pending, "roi_rollup_oldest_pending_age_seconds", rollup="ledger_rollup") > 0
    assert compact_now(db.engine, None, split_zone="UTC") is True
    compacted = scrape(webhook.base_url)
    for rollup in ("ledger_rollup", "ledger_rollup_daily"):
        assert value(compacted, "roi_rollup_pending_rows", rollup=rollup) == 0
        assert value(compacted, "roi_rollup_oldest_pending_age_seconds", rollup=rollup) == 0


# ---------------------------------------------------------------------------------------------
# /api/health: the same numbers as /metrics


@pytest.mark.usefixtures("no_background_compaction")
def test_health_snapshot_agrees_with_metrics(webhook: WebhookClient, db: TestDatabase) -> None:
    compact_now(db.engine, None, split_zone="UTC")
    with compaction_paused(db):
        webhook.deliver(*(se.charge_succeeded(charge=se.charge()) for _ in range(3)))
        samples = scrape(webhook.base_url)
        body = webhook.http.get("/api/health").json()
        # The dashboard calls the function, the API serves it: the same figures.
        assert health_snapshot(db.engine)["webhooks"] == body["webhooks"]
    hooks = body["webhooks"]
    processed = value(
        samples, "roi_webhook_events_total", event_type="charge.succeeded", outcome="processed"
    )
    assert hooks["by_outcome_and_event_type"]["processed"]["charge.succeeded"] == processed
    assert hooks["received"] == sum(
        v for (name, _), v in samples.items() if name == "roi_webhooks_received_total"
    )
    assert body["database"] == {"ok": True, "error": None}
    assert body["schema"] == {"at_head": True, "current": [HEAD], "head": HEAD, "pending": []}
    assert body["events"]["last_5_minutes"] == 3  # the database was emptied for this test
    assert sum(body["events"]["per_minute_oldest_first"]) == 3
    assert body["events"]["per_minute"] == 0.6
    assert body["events"]["last_received_at"] is not None
    assert body["preaggregation"]["pending_rows"] >= 1
    assert body["preaggregation"]["oldest_pending_age_seconds"] > 0


def test_health_snapshot_says_when_the_database_is_away() -> None:
    settings = app_settings(f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere")
    app = create_app(settings, check_schema=False)
    snapshot = health_snapshot(app.state.engine)
    assert snapshot["database"]["ok"] is False
    assert snapshot["database"]["error"].startswith("database unreachable")
    assert snapshot["events"] is None and snapshot["preaggregation"] is None
    assert "received" in snapshot["webhooks"]


# ---------------------------------------------------------------------------------------------
# /readyz


def test_readyz_when_ready(live_server: LiveServer) -> None:
    response = httpx.get(f"{live_server.url}/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "schema": {"at_head": True, "current": [HEAD], "head": HEAD, "pending": []},
    }


@pytest.fixture
def behind_database(postgres_server: str) -> Iterator[str]:
    """A database one migration behind the head."""
    name = f"roi_test_behind_{os.getpid()}"
    url = create_database(postgres_server, name)
    engine = TestDatabase(url).engine
    try:
        schema.upgrade(engine, REVISIONS[-2])
        yield url
    finally:
        engine.dispose()
        drop_database(postgres_server, name)


def test_readyz_when_the_schema_is_behind(behind_database: str) -> None:
    app = create_app(app_settings(behind_database), check_schema=False)
    with LiveServer(app) as server:
        response = httpx.get(f"{server.url}/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["failed"] == "schema"
    assert body["schema"] == {
        "at_head": False,
        "current": [REVISIONS[-2]],
        "head": HEAD,
        "pending": [HEAD],
    }
    assert f"at {REVISIONS[-2]}, the code expects {HEAD}" in body["detail"]


def test_readyz_when_the_database_is_unreachable() -> None:
    settings = app_settings(f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere")
    with LiveServer(create_app(settings, check_schema=False)) as server:
        response = httpx.get(f"{server.url}/readyz")
    assert response.status_code == 503
    assert response.json()["failed"] == "database"
    assert response.json()["detail"].startswith("database unreachable")


# ---------------------------------------------------------------------------------------------
# Request ids and JSON logs


@pytest.fixture
def access_lines() -> Iterator[io.StringIO]:
    """The access log as the server writes it: JSON lines through the app's formatter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    logger = logging.getLogger(ACCESS_LOGGER)
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def wait_for_line(stream: io.StringIO, rid: str) -> dict[str, Any]:
    """The access line is written as the response completes, just after the client has it."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = [line for line in lines(stream) if line["request_id"] == rid]
        if found:
            assert len(found) == 1, found
            return found[0]
        time.sleep(0.01)
    raise AssertionError(f"no access line for {rid}: {stream.getvalue()}")


def test_request_id_is_kept_echoed_and_logged(
    webhook: WebhookClient, access_lines: io.StringIO
) -> None:
    event = se.charge_succeeded(charge=se.charge())
    payload = se.encode(event)
    signature = se.signature_header(payload, secret=WEBHOOK_SECRETS.split(",")[0])
    answer = webhook.post_body(payload, signature=signature, headers={"X-Request-ID": "req-42.a"})
    assert answer.status_code == 200
    assert answer.headers["x-request-id"] == "req-42.a"
    line = wait_for_line(access_lines, "req-42.a")
    assert {k: line[k] for k in ("level", "logger", "method", "path", "status")} == {
        "level": "INFO",
        "logger": ACCESS_LOGGER,
        "method": "POST",
        "path": "/webhooks/stripe",
        "status": 200,
    }
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    assert line["time"].endswith("+00:00")
    # Neither the signature nor the body is ever logged.
    written = access_lines.getvalue()
    assert signature not in written and event["id"] not in written


@pytest.mark.parametrize("sent", ["", "a" * 129, "two words", "tab\tinside", "caf\u00e9"])
def test_an_unusable_request_id_is_replaced(live_server: LiveServer, sent: str) -> None:
    headers = {"X-Request-ID": sent.encode("utf-8")} if sent else {}
    response = httpx.get(f"{live_server.url}/healthz", headers=headers)  # type: ignore[arg-type]
    assert response.status_code == 200
    echoed = response.headers["x-request-id"]
    assert echoed != sent and uuid.UUID(echoed).version == 4


def test_every_request_gets_an_id(live_server: LiveServer, access_lines: io.StringIO) -> None:
    url = f"{live_server.url}/api/metrics/streams"
    # Refused by access control: still an id and an access line (the middleware runs first).
    refused = httpx.get(url)
    assert refused.status_code == 401
    line = wait_for_line(access_lines, refused.headers["x-request-id"])
    assert (line["path"], line["status"]) == ("/api/metrics/streams", 401)
    bad = httpx.get(url, params={"tz": "Nowhere/Zone"}, headers=auth_header(Role.VIEWER))
    assert bad.status_code == 422
    line = wait_for_line(access_lines, bad.headers["x-request-id"])
    assert (line["path"], line["status"]) == ("/api/metrics/streams", 422)
    assert auth_header(Role.VIEWER)["Authorization"].split()[1] not in access_lines.getvalue()


def test_an_unhandled_error_answers_500_with_the_request_id_and_logs_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(request: Request) -> Response:
        raise RuntimeError("boom")

    app = Starlette(routes=[Route("/", broken)])
    app.add_middleware(RequestContext)

    async def get() -> httpx.Response:
        # The app's exceptions would reach the client: the middleware must answer instead.
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return await client.get("/", headers={"X-Request-ID": "req-500"})

    answer = asyncio.run(get())
    assert answer.status_code == 500
    assert answer.headers["x-request-id"] == "req-500"
    assert answer.json() == {"error": "internal server error", "request_id": "req-500"}
    logged = [r for r in caplog.records if r.name == "roi.errors"]
    assert len(logged) == 1 and logged[0].exc_info is not None
    assert "RuntimeError: boom" in caplog.text


def test_records_logged_during_a_request_carry_its_id() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    logger = logging.getLogger("tests.observability")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        token = request_id.set("req-7")
        try:
            logger.warning("inside %s", "a request", extra={"charge": "ch_1"})
        finally:
            request_id.reset(token)
        logger.warning("outside")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    inside, outside = lines(stream)
    assert inside["request_id"] == "req-7" and inside["message"] == "inside a request"
    assert inside["charge"] == "ch_1" and inside["level"] == "WARNING"
    assert outside["request_id"] is None


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_text_logs_carry_the_request_id_too(monkeypatch: pytest.MonkeyPatch) -> None:
    record = logging.LogRecord("roi.test", logging.INFO, __file__, 1, "booked %s", ("ch_1",), None)
    token = request_id.set("req-9")
    try:
        RequestIdFilter().filter(record)
    finally:
        request_id.reset(token)
    line = logging.Formatter(TEXT_FORMAT).format(record)
    assert line.endswith(" INFO roi.test [req-9] booked ch_1")
    auto = app_settings(None, log_format="auto")
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert resolved_log_format(auto) == "json"  # a collector reads it
    assert resolved_log_format(app_settings(None, log_format="TEXT")) == "text"
    monkeypatch.setattr("sys.stderr", _Terminal())
    assert resolved_log_format(auto) == "text"  # a person reads it
    assert resolved_log_format(app_settings(None, log_format="json")) == "json"


def test_request_id_from_header() -> None:
    assert request_id_from(b"abc-123") == "abc-123"
    assert uuid.UUID(request_id_from(None)).version == 4
    assert uuid.UUID(request_id_from(b"x" * 200)).version == 4


# ---------------------------------------------------------------------------------------------
# `roi serve --workers 2`: one scrape, the whole server


def received_per_worker(metrics_dir: Path) -> dict[str, float]:
    """Events each worker process counted, from its own file."""
    counts = {}
    for path in metrics_dir.glob("counter_*.db"):
        metrics = MultiProcessCollector.merge([str(path)], accumulate=True)
        counts[path.stem.split("_", 1)[1]] = sum(
            s.value for m in metrics for s in m.samples if s.name == "roi_webhooks_received_total"
        )
    return counts


def process_exists(gauge_file: Path) -> bool:
    try:
        os.kill(int(gauge_file.stem.rsplit("_", 1)[1]), 0)
    except ProcessLookupError:
        return False
    return True


def test_metrics_are_summed_over_the_workers(database: TestDatabase, tmp_path: Path) -> None:
    database.truncate()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    (metrics_dir / "counter_999999.db").write_bytes(b"stale, from an earlier run")
    env = {
        **os.environ,
        "DATABASE_URL": database.url,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRETS,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "ROI_LOG_FORMAT": "json",
    }
    log = tmp_path / "serve.log"
    proc = start_serve(port, env, log, "--workers", "2")
    try:
        wait_until_healthy(proc, url, log)
        # A new connection per event, until both workers have taken some (bounded).
        sent = 0
        while len([n for n in received_per_worker(metrics_dir).values() if n]) < 2:
            assert sent < 200, (
                f"one worker took every connection: {received_per_worker(metrics_dir)}"
            )
            client = WebhookClient(url)
            try:
                assert client.deliver(se.charge_succeeded(charge=se.charge())) == ["processed"]
            finally:
                client.close()
            sent += 1
        # Whichever worker answers the scrape, it reports every event; and only the scrape is
        # in flight (a worker the supervisor killed and replaced does not count).
        for _ in range(6):
            samples = scrape(url)
            received = value(samples, "roi_webhooks_received_total", event_type="charge.succeeded")
            assert received == sent
            assert value(samples, "roi_webhook_duration_seconds_count") == sent
            assert value(samples, "roi_http_requests_in_flight") == 1
        live_workers = {p for p in metrics_dir.glob("gauge_live*.db") if process_exists(p)}
        assert live_workers
        assert (metrics_dir / "counter_999999.db").exists() is False  # emptied at start
        assert {p.name.split("_")[0] for p in metrics_dir.glob("*.db")} >= {"counter", "histogram"}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0, log.read_text()
    assert not [p for p in live_workers if p.exists()], "stopped workers marked themselves dead"
    records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    webhook_lines = [r for r in records if r.get("path") == "/webhooks/stripe"]
    assert len(webhook_lines) == sent, "one access line per request, no uvicorn duplicates"
    assert all(r["status"] == 200 and r["request_id"] for r in webhook_lines)
