"""Nothing is lost when the database restarts or the app is killed mid-load.

A bounded load of N unique signed charges goes over loopback to `roi serve` (a real process),
the sender resending every event that did not get a 2xx, as Stripe does. Meanwhile the
PostgreSQL behind the app (a private embedded one, so no other test is disturbed) is restarted
once, and the app is killed with SIGKILL and started again once. At the end the ledger holds
exactly the N charges: none lost, none twice.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg
import pytest

from app import schema
from app.database import embedded_database_url
from app.settings import Settings
from tests import stripe_events as se
from tests.conftest import PRIMARY_SECRET, embedded_pg_ctl, engine_for, stop_embedded_postgres
from tests.serve import free_port, start_serve, wait_until_healthy

N = 400
SENDERS = 8
DEADLINE_SECONDS = 180  # the whole load, faults included; the test fails past it


@pytest.fixture
def private_postgres() -> Iterator[tuple[str, Path]]:
    """An embedded PostgreSQL of this test's own, which it may restart: (URL, data dir)."""
    data_dir = Path(tempfile.mkdtemp(prefix="roi-fault-pg-"))
    try:
        url = embedded_database_url(Settings(database_url=None, data_dir=data_dir))
        engine = engine_for(url)
        try:
            schema.upgrade(engine)
        finally:
            engine.dispose()
        yield url, data_dir
    finally:
        stop_embedded_postgres(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)


class AppProcess:
    def __init__(self, url: str, port: int, log: Path) -> None:
        self.port = port
        self.log = log
        self.env = {**os.environ, "DATABASE_URL": url, "STRIPE_WEBHOOK_SECRET": PRIMARY_SECRET,
                    "ROI_DB_TIMEOUT": "1"}  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = start_serve(self.port, self.env, self.log, new_session=True)
        wait_until_healthy(self.proc, f"http://127.0.0.1:{self.port}", self.log)

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


def test_no_event_is_lost_or_doubled_through_a_database_restart_and_an_app_kill(
    private_postgres: tuple[str, Path],
) -> None:
    url, data_dir = private_postgres
    app = AppProcess(url, free_port(), data_dir / "serve.log")
    app.start()
    events = [
        se.charge_succeeded(charge=se.charge(amount=1_000 + i, metadata={"stream": "api"}))
        for i in range(N)
    ]
    answered = [0]
    attempts = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + DEADLINE_SECONDS

    def send(event: dict[str, object]) -> None:
        """Resend until a 2xx, as Stripe does (here: quickly, and bounded)."""
        body = se.encode(event)
        with httpx.Client(base_url=f"http://127.0.0.1:{app.port}", timeout=10) as http:
            while time.monotonic() < deadline:
                with lock:
                    attempts[0] += 1
                try:
                    answer = http.post(
                        "/webhooks/stripe",
                        content=body,
                        headers={
                            "Stripe-Signature": se.signature_header(body, secret=PRIMARY_SECRET)
                        },
                    )
                    if 200 <= answer.status_code < 300:
                        with lock:
                            answered[0] += 1
                        return
                except httpx.HTTPError:
                    pass  # the app is down or restarting: try again, as Stripe would
                time.sleep(0.2)
        raise TimeoutError(f"event {event['id']} never got a 2xx")

    def faults() -> None:
        while answered[0] < N // 3:
            time.sleep(0.01)
        embedded_pg_ctl(data_dir, "restart")
        while answered[0] < 2 * N // 3:
            time.sleep(0.01)
        app.kill()
        app.start()

    injector = threading.Thread(target=faults)
    injector.start()
    try:
        with ThreadPoolExecutor(SENDERS) as pool:
            list(pool.map(send, events))
        injector.join(timeout=120)
        assert not injector.is_alive()
    finally:
        app.stop()

    with psycopg.connect(url) as conn:
        stored = conn.execute("SELECT count(*) FROM stripe_events").fetchone()
        charges = conn.execute(
            "SELECT count(*), count(DISTINCT charge_id), sum(amount) FROM ledger_entries"
            " WHERE kind = 'charge'"
        ).fetchone()
    assert stored == (N,)
    assert charges == (N, N, sum(1_000 + i for i in range(N)))
    assert attempts[0] > N  # the faults did cost retries: they really happened
