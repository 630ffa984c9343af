"""End to end: `roi serve` with no DATABASE_URL runs on the embedded PostgreSQL (pgserver)
under ROI_DATA_DIR, migrates it, takes a signed event and reports it."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from app.database import embedded_database_url
from app.settings import Settings
from tests import stripe_events as se
from tests.conftest import HEAD, WebhookClient, engine_for, stop_embedded_postgres
from tests.serve import free_port, start_serve, wait_until_healthy

SECRET = "whsec_test_e2e"
T = 1_710_072_000  # 2024-03-10 12:00:00 UTC


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="roi-test-e2e-"))
    try:
        yield path
    finally:
        stop_embedded_postgres(path)  # in case the test stopped early
        shutil.rmtree(path, ignore_errors=True)


def test_roi_serve_on_the_embedded_database(data_dir: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "ROI_AUTO_MIGRATE")}
    env.update(ROI_DATA_DIR=str(data_dir), STRIPE_WEBHOOK_SECRET=SECRET)
    log = data_dir / "serve.log"
    proc = start_serve(port, env, log)
    client = WebhookClient(url)
    try:
        wait_until_healthy(proc, url, log)
        ch = se.charge(amount=4900, currency="eur", created=T, metadata={"stream": "e2e"})
        event = se.charge_succeeded(charge=ch, created=T)

        response = client.post(event, secret=SECRET)
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "processed"

        # The first start printed an admin token, once: the way in to everything else.
        assert client.totals(start="2024-03-10", end="2024-03-11").status_code == 401
        printed = re.findall(r"roi_[A-Za-z0-9_-]{43}", log.read_text())
        assert len(printed) == 1, log.read_text()
        client.http.headers["Authorization"] = f"Bearer {printed[0]}"
        totals = client.totals(start="2024-03-10", end="2024-03-11")
        assert totals.status_code == 200
        assert totals.json()["totals"] == [
            {"stream": "e2e", "currency": "eur", "exponent": 2, "gross": 4900,
             "refunds": 0, "disputes": 0, "fees": 0, "net": 4900},
        ]  # fmt: skip

        # The data is in the embedded database under ROI_DATA_DIR, migrated to the head.
        assert (data_dir / "pgdata" / "PG_VERSION").exists()
        engine = engine_for(embedded_database_url(Settings(database_url=None, data_dir=data_dir)))
        try:
            with engine.connect() as conn:
                version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
                stored = conn.execute(text("SELECT id, status FROM stripe_events")).all()
        finally:
            engine.dispose()
        assert version == HEAD
        assert [tuple(row) for row in stored] == [(event["id"], "processed")]
    finally:
        client.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    assert proc.returncode in (0, 130), log.read_text()  # a graceful stop, not a kill
    output = log.read_text()
    assert f"schema at {HEAD} on the embedded PostgreSQL" in output

    # The embedded server outlives `roi serve` (by design, for the next run): stop it here.
    stop_embedded_postgres(data_dir)
    assert not (data_dir / "pgdata" / "postmaster.pid").exists()
