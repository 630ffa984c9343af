"""`roi serve` asked to stop (SIGTERM) while a webhook is being written: it stops taking new
connections, but the event in flight is still committed and answered 2xx, so Stripe has no
reason to send it again."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from tests import stripe_events as se
from tests.conftest import WEBHOOK_SECRETS, TestDatabase, WebhookClient
from tests.serve import free_port, start_serve, wait_until_healthy


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting until {what}")
        time.sleep(0.02)


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def test_an_event_in_flight_is_answered_2xx_on_sigterm(
    database: TestDatabase, tmp_path: Path
) -> None:
    database.truncate()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "DATABASE_URL": database.url, "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRETS}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = tmp_path / "serve.log"
    proc = start_serve(port, env, log)
    event = se.charge_succeeded(charge=se.charge())
    answers: list[httpx.Response] = []
    client = WebhookClient(url)
    failures: list[Exception] = []

    def post() -> None:
        try:
            answers.append(client.post(event))
        except httpx.HTTPError as exc:
            failures.append(exc)

    poster = threading.Thread(target=post, daemon=True)
    try:
        wait_until_healthy(proc, url, log)
        # Hold the event's row in an open transaction: the server's insert waits on its lock,
        # so the request is in flight for as long as the test wants.
        with database.engine.connect() as blocker:
            blocker.execute(
                text(
                    "INSERT INTO stripe_events (id, type, created, livemode, payload, status)"
                    " VALUES (:id, 'charge.succeeded', now(), false, '{}', 'ignored')"
                ),
                {"id": event["id"]},
            )
            poster.start()
            wait_for(
                lambda: bool(
                    database.scalar(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND wait_event_type = 'Lock'"
                    )
                ),
                "the server's write waits on the test's lock",
            )
            proc.send_signal(signal.SIGTERM)
            wait_for(lambda: refuses_connections(port), "the server stops taking connections")
            wait_for(
                lambda: "Waiting for connections to close" in log.read_text(),
                "the server waits for the request in flight",
            )
            # Stay in flight well into the grace period: a server that gave up on requests in
            # flight after a moment would cancel this one now.
            time.sleep(1.0)
            assert poster.is_alive() and not answers, "the request was answered too early"
            blocker.rollback()  # the write goes through now
        poster.join(timeout=30)
        assert not poster.is_alive(), "the request in flight got no answer"
        # uvicorn finishes its shutdown, then exits by the signal it was sent.
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM), log.read_text()
        assert "Application shutdown complete." in log.read_text()
    finally:
        client.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert not failures, f"the request in flight was dropped: {failures[0]!r}"
    assert answers[0].status_code == 200, answers[0].text
    assert answers[0].json()["status"] == "processed"
    stored = database.event(event["id"])
    assert stored is not None and stored["status"] == "processed"
