"""Metrics benchmark: the 90-day per-stream summary and daily series at 10M + 10M rows.

    .venv/bin/python bench/metrics.py --ledger-rows 10000000 --tasks 10000000

One run, all on this machine over 127.0.0.1, bounded, stopping by itself:

1. a scratch database on the server (DATABASE_URL, default postgresql://postgres@127.0.0.1:5432/
   postgres, is only the admin connection), migrated with `roi migrate`;
2. seeded through the project's own tables, so the statement triggers (migrations 0004 and
   on) keep the hourly and daily rollups exactly as in production: `INSERT ... SELECT FROM
   generate_series` into ledger_entries (charges, fees, refunds, disputes; 20 streams; usd
   and some eur, part of them with a usd settlement amount) and execution_tasks (20 streams,
   6 models, 3 task types, succeeded / failed / canceled, sent costs in usd or eur with 6
   decimals, a few unpriced), booked over one year ending now, --chunk rows per statement,
   the two tables at once on two connections; the app's own compaction
   (app.metrics.rollups.compact_now) after every statement, as its background task would;
   one eur->usd FX rate per day; VACUUM ANALYZE;
3. `roi serve` (one worker) on a free port; GET /api/metrics/streams and
   GET /api/metrics/timeseries?granularity=day for the latest --period-days days (dates, in UTC
   and in a zone with daylight saving), --warmup then --requests timed requests each over one
   keep-alive connection; the same functions in-process (raw=False) with their SQL time;
4. the reference in the same run: the same functions with raw=True (plain SQL over
   ledger_entries and execution_tasks), --raw-runs runs each; rollup and raw figures compared
   (and the API's JSON against the raw figures as the API presents them): EQUAL or the
   differences;
5. a table with PASS/FAIL (p95 <= 50 ms over HTTP, for the summary and for the daily series),
   EXPLAIN ANALYZE of every statement one rollup call runs (bench/out/metrics/), and the
   scratch database dropped (--keep keeps it).

Exit status: 0 when every target passed, 1 when one missed, 2 when the run could not be made.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit
from zoneinfo import ZoneInfo

import psycopg

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python bench/metrics.py` from anywhere
    sys.path.insert(0, str(ROOT))

from sqlalchemy import Engine, event  # noqa: E402

from app.api.metrics import figure_set  # noqa: E402
from app.database import make_engine  # noqa: E402
from app.metrics.converted import unbuilt_days  # noqa: E402
from app.metrics.figures import BaseFigures  # noqa: E402
from app.metrics.filters import build_filter, rollups_are_exact  # noqa: E402
from app.metrics.queries import stream_summary, stream_timeseries  # noqa: E402
from app.metrics.rollups import compact_now  # noqa: E402
from app.settings import Settings  # noqa: E402

VENV_BIN = Path(sys.executable).parent
OUT = ROOT / "bench" / "out" / "metrics"
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REPORTING = "usd"
P95_TARGET_MS = 50.0
OTHER_BENCH_MARKERS = ("bench/ingest.py",)  # other benchmarks that must not run beside us
OTHER_BENCH_PROGRAMS = ("wrk", "pgbench")
BUSY_CORES_WARN = 0.25

STREAMS = [
    "newsletter-pro", "seo-audits", "ai-copywriter", "course-python", "course-sql",
    "consulting", "templates", "community", "podcast-ads", "affiliate-tools",
    "ebook-growth", "workshops", "api-credits", "chatbot-saas", "design-kits",
    "job-board", "sponsorships", "coaching", "plugin-store", "data-reports",
]  # fmt: skip
MODELS = [
    "gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet", "claude-3-haiku", "llama-3-70b",
    "mistral-large",
]  # fmt: skip
TASK_TYPES = ["content_generation", "lead_scoring", "support_reply"]
EUR_USD = 1.08  # the FX rate moves around this, by day


def say(message: str = "") -> None:
    print(message, flush=True)


class BenchError(RuntimeError):
    """The run could not be made (the app did not start, a query failed, ...)."""


# --------------------------------------------------------------------------------------------
# seeding: generate_series through the project's own tables (the triggers keep the rollups)


def _u(n: int) -> str:
    """A uniform number in [0, 1) from the row number `i` and salt `n`: deterministic, so every
    run (and both sources of one run) sees the same data."""
    return f"((hashint8extended(i, {n}) & 4294967295)::float8 / 4294967296.0)"


def _pick(values: list[str], u: str, skew: float) -> str:
    """One of `values`, the first ones more often (skew > 1), as a SQL expression."""
    array = "ARRAY[" + ", ".join(f"'{v}'" for v in values) + "]"
    return f"({array})[1 + floor({len(values)} * power({u}, {skew}))::int]"


# Booked in the order of i over [t0, t0 + span): data arrives in time order, as in life, so
# each statement's trigger aggregates a couple of weeks of hours (not the whole year).
def _time(n: int) -> str:
    return f"%(t0)s::timestamptz + ((i - 1) + {_u(n)}) * %(step)s::interval"


LEDGER_INSERT = f"""
INSERT INTO ledger_entries (entry_key, kind, charge_id, object_id, stream, amount, currency,
    booked_at, balance_transaction, event_id, settlement_amount, settlement_currency)
SELECT 'le_bench_' || lpad(i::text, 10, '0'),
       kind,
       'ch_bench_' || lpad((i / 2)::text, 10, '0'),
       CASE kind WHEN 'charge' THEN 'ch_bench_' || lpad((i / 2)::text, 10, '0')
                 WHEN 'refund' THEN 're_bench_' || i
                 WHEN 'dispute' THEN 'dp_bench_' || i
                 ELSE 'txn_bench_' || i END,
       stream, amount, currency, booked_at,
       CASE WHEN settled THEN 'txn_bench_' || i END,
       'evt_bench_' || lpad(i::text, 10, '0'),
       CASE WHEN settled THEN
           CASE currency WHEN 'usd' THEN amount ELSE round(amount * {EUR_USD})::bigint END
       END,
       CASE WHEN settled THEN 'usd' END
FROM (
    SELECT i,
           CASE WHEN u1 < 0.64 THEN 'charge' WHEN u1 < 0.94 THEN 'fee'
                WHEN u1 < 0.99 THEN 'refund' ELSE 'dispute' END AS kind,
           {_pick(STREAMS, _u(2), 1.6)} AS stream,
           CASE WHEN u1 < 0.64 THEN 500 + floor(power(u5, 2) * 49500)::bigint
                WHEN u1 < 0.94 THEN -(30 + floor(u5 * 1500)::bigint)
                WHEN u1 < 0.99 THEN -(500 + floor(u5 * 20000)::bigint)
                ELSE -(1500 + floor(u5 * 30000)::bigint) END AS amount,
           CASE WHEN {_u(4)} < 0.85 THEN 'usd' ELSE 'eur' END AS currency,
           {_time(3)} AS booked_at,
           {_u(6)} < 0.4 AS settled
    FROM (SELECT i, {_u(1)} AS u1, {_u(5)} AS u5
          FROM generate_series(%(lo)s::bigint, %(hi)s::bigint - 1) AS i) AS g
) AS e
"""

TASK_INSERT = f"""
INSERT INTO execution_tasks (external_id, stream, task_type, ai_model, status, started_at,
    finished_at, duration_ms, tokens_in, tokens_out, cost_amount, cost_currency)
SELECT 'task_bench_' || lpad(i::text, 10, '0'),
       stream, task_type, ai_model, status, started_at,
       started_at + duration_ms * interval '1 millisecond',
       duration_ms, tokens_in, tokens_out,
       CASE WHEN uc >= 0.01 THEN round((power(uv, 3) * 200)::numeric, 6) END,
       CASE WHEN uc >= 0.11 THEN 'usd' WHEN uc >= 0.01 THEN 'eur' END
FROM (
    SELECT i,
           {_pick(STREAMS, _u(12), 1.6)} AS stream,
           {_pick(TASK_TYPES, _u(13), 1.3)} AS task_type,
           {_pick(MODELS, _u(14), 1.4)} AS ai_model,
           CASE WHEN us < 0.92 THEN 'succeeded' WHEN us < 0.99 THEN 'failed'
                ELSE 'canceled' END AS status,
           {_time(11)} AS started_at,
           200 + floor(power({_u(16)}, 2) * 60000)::bigint AS duration_ms,
           floor({_u(17)} * 8000)::bigint AS tokens_in,
           floor({_u(18)} * 2000)::bigint AS tokens_out,
           {_u(19)} AS uc,
           {_u(20)} AS uv
    FROM (SELECT i, {_u(15)} AS us
          FROM generate_series(%(lo)s::bigint, %(hi)s::bigint - 1) AS i) AS g
) AS t
"""

FX_INSERT = f"""
INSERT INTO fx_rates (day, currency, quote_currency, rate)
SELECT d::date, 'eur', 'usd',
       round(({EUR_USD} + 0.04 * sin(extract(epoch FROM d) / 86400 / 29))::numeric, 6)
FROM generate_series(%(first)s::date, %(last)s::date, interval '1 day') AS d
"""

BASE_TABLES = ("ledger_entries", "execution_tasks", "fx_rates")


def rollup_tables(url: str) -> list[str]:
    """The rollup tables the migrations made (whatever their number: the schema moves on)."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            " AND tablename LIKE '%rollup%' ORDER BY tablename"
        ).fetchall()
    return [r[0] for r in rows]


def build_converted(url: str, zone: str, max_rounds: int = 30) -> str:
    """Compact until `converted_daily` holds every day in the app's zone; what it took."""
    compactor = Compactor(url, zone)
    try:
        for _ in range(max_rounds):
            compactor.run()
            with compactor.engine.connect() as conn:
                if not unbuilt_days(conn, REPORTING, zone, limit=1):
                    break
        else:
            raise BenchError(f"converted_daily not built after {max_rounds} compactions")
    finally:
        compactor.engine.dispose()
    return f"{compactor.runs} compaction(s), {compactor.seconds:.2f} s"


class Compactor:
    """The app's own compaction, run after every seeding statement as the app's background
    task would (it compacts every few seconds): compacted rows land in time order, as in
    production, rather than all at once in hash order at the end."""

    def __init__(self, url: str, zone: str) -> None:
        self.engine = make_engine(Settings(database_url=url))
        self.zone = zone
        self.lock = threading.Lock()
        self.seconds = 0.0
        self.runs = 0

    def run(self) -> bool:
        t = time.perf_counter()
        # False when the other connection's compaction runs. In the reporting currency and
        # zone, as the app's: it also builds converted_daily for the days it compacts.
        done = compact_now(self.engine, REPORTING, split_zone=self.zone)  # vacuums a large build
        with self.lock:
            self.seconds += time.perf_counter() - t
            self.runs += done
        return done


def seed_table(
    url: str,
    sql: str,
    rows: int,
    chunk: int,
    params: dict[str, Any],
    label: str,
    compactor: Compactor,
) -> float:
    """Insert rows 1..rows in statements of `chunk` rows; each one fires the triggers once."""
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")  # durability is not what is measured here
        done = 0
        for lo in range(1, rows + 1, chunk):
            hi = min(lo + chunk, rows + 1)
            conn.execute(sql, {**params, "lo": lo, "hi": hi})  # type: ignore[arg-type]
            compactor.run()
            done += hi - lo
            if done == rows or (done // chunk) % 4 == 0:
                elapsed = time.perf_counter() - started
                say(f"  {label}: {done:,} / {rows:,} rows, {elapsed:.0f} s")
    return time.perf_counter() - started


def seed(url: str, args: argparse.Namespace, now: datetime, zone: str = "UTC") -> dict[str, Any]:
    span = timedelta(days=args.days)
    t0 = now - span
    facts: dict[str, Any] = {"data_from": t0.isoformat(), "data_to": now.isoformat()}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(FX_INSERT, {"first": t0.date() - timedelta(days=1), "last": now.date()})
    jobs = [
        ("ledger_entries", LEDGER_INSERT, args.ledger_rows),
        ("execution_tasks", TASK_INSERT, args.tasks),
    ]
    seconds: dict[str, float] = {}
    errors: list[BaseException] = []

    compactor = Compactor(url, zone)  # the app's ROI_TIMEZONE

    def run(name: str, sql: str, rows: int) -> None:
        try:
            step = span / max(rows, 1)
            params = {"t0": t0, "step": step}
            seconds[name] = seed_table(url, sql, rows, args.chunk, params, name, compactor)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    started = time.perf_counter()
    if args.seed_jobs > 1:
        threads = [threading.Thread(target=run, args=job, daemon=True) for job in jobs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    else:
        for job in jobs:
            run(*job)
    if errors:
        raise BenchError(f"seeding failed: {errors[0]}")
    try:
        if not compactor.run():  # the last one: nothing left uncompacted
            raise BenchError("compaction did not run: another compaction holds the lock")
    finally:
        compactor.engine.dispose()
    facts["insert_seconds"] = time.perf_counter() - started  # compactions included
    facts["insert_seconds_by_table"] = seconds
    facts["compaction_seconds"] = compactor.seconds
    facts["compactions"] = compactor.runs
    t = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        conn.execute("CHECKPOINT")
    facts["vacuum_seconds"] = time.perf_counter() - t
    facts["seed_seconds"] = time.perf_counter() - started
    return facts


def table_facts(url: str) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        for table in (*BASE_TABLES, *rollup_tables(url)):
            rows, heap, total = conn.execute(
                f"SELECT count(*), pg_table_size('{table}'), pg_total_relation_size('{table}')"  # type: ignore[arg-type]
                f" FROM {table}"
            ).fetchone() or (0, 0, 0)
            out[table] = {"rows": int(rows), "table_bytes": int(heap), "total_bytes": int(total)}
    return out


def data_shape(url: str) -> list[str]:
    """A few lines that show the seeded data is what it should be."""
    with psycopg.connect(url, autocommit=True) as conn:
        kinds = conn.execute(
            "SELECT kind, count(*), sum(amount), min(amount), max(amount) FROM ledger_entries"
            " GROUP BY kind ORDER BY kind"
        ).fetchall()
        currencies = conn.execute(
            "SELECT currency, coalesce(settlement_currency, '-'), count(*) FROM ledger_entries"
            " GROUP BY 1, 2 ORDER BY 1, 2"
        ).fetchall()
        tasks = conn.execute(
            "SELECT count(DISTINCT stream), count(DISTINCT ai_model), count(DISTINCT task_type),"
            " count(*) FILTER (WHERE status = 'succeeded'), count(*) FILTER (WHERE status ="
            " 'failed'), count(*) FILTER (WHERE cost_source = 'unpriced'),"
            " count(*) FILTER (WHERE cost_currency = 'eur'), min(started_at), max(started_at)"
            " FROM execution_tasks"
        ).fetchone()
        streams, first, last = conn.execute(
            "SELECT count(DISTINCT stream), min(booked_at), max(booked_at) FROM ledger_entries"
        ).fetchone() or (0, None, None)
    lines = [
        "ledger kinds: "
        + ", ".join(f"{k} {n:,} (sum {s:,}, {lo}..{hi})" for k, n, s, lo, hi in kinds)
    ]
    lines.append(
        "ledger currency/settlement: " + ", ".join(f"{c}/{s} {n:,}" for c, s, n in currencies)
    )
    lines.append(f"ledger: {streams} streams, booked {first} .. {last}")
    if tasks:
        lines.append(
            f"tasks: {tasks[0]} streams, {tasks[1]} models, {tasks[2]} task types; succeeded"
            f" {tasks[3]:,}, failed {tasks[4]:,}, unpriced {tasks[5]:,}, eur {tasks[6]:,};"
            f" started {tasks[7]} .. {tasks[8]}"
        )
    return lines


# --------------------------------------------------------------------------------------------
# the app over HTTP


def with_database(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


def local_admin_url() -> str:
    """The admin connection that creates and drops scratch databases: `DATABASE_URL`, else the
    machine's server; refused unless it is on this machine (benchmarks stay on loopback)."""
    admin_url = os.environ.get("DATABASE_URL") or DEFAULT_ADMIN_URL
    if urlsplit(admin_url).hostname not in ("127.0.0.1", "localhost", "::1"):
        raise BenchError(f"DATABASE_URL must point at this machine (127.0.0.1), not {admin_url}")
    return admin_url


def admin_execute(admin_url: str, sql: str) -> None:
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


@contextlib.contextmanager
def scratch_database(admin_url: str, keep: bool, reuse: str | None) -> Iterator[tuple[str, str]]:
    if reuse:  # a database kept by an earlier run (--keep): measured again, never dropped
        yield reuse, with_database(admin_url, reuse)
        return
    name = f"roi_bench_metrics_{os.getpid()}_{int(time.time())}"
    admin_execute(admin_url, f'CREATE DATABASE "{name}"')
    try:
        yield name, with_database(admin_url, name)
    finally:
        if keep:
            say(f'kept scratch database {name} (--keep): DROP DATABASE "{name}" when done')
        else:
            try:
                admin_execute(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                say(f"dropped scratch database {name}")
            except psycopg.Error as exc:
                say(f"could not drop scratch database {name}: {exc}")


def migrate(url: str, log_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": url}
    done = subprocess.run(
        [str(VENV_BIN / "roi"), "migrate"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    log_path.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise BenchError(f"roi migrate failed ({done.returncode}):\n{done.stdout}{done.stderr}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class App:
    """`roi serve` in its own process group, stopped (and its group killed) in every case."""

    def __init__(self, database_url: str, port: int, log_path: Path, zone: str = "UTC") -> None:
        self.port = port
        self.log_path = log_path
        self.env = {**os.environ, "DATABASE_URL": database_url, "ROI_TIMEZONE": zone}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        cmd = [str(VENV_BIN / "roi"), "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.port}/healthz"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"the app exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return
            time.sleep(0.2)
        raise BenchError(f"the app did not answer {url} within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        if not self.proc:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=25)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # our own group: anything left behind
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)


@dataclass
class Timing:
    label: str
    samples_ms: list[float] = field(default_factory=list)
    sql_ms: list[float] = field(default_factory=list)  # in-process: time inside cursor.execute
    bytes: int = 0
    note: str = ""

    def pct(self, q: float, values: list[float] | None = None) -> float:
        data = sorted(self.samples_ms if values is None else values)
        if not data:
            return float("nan")
        if len(data) == 1:
            return data[0]
        # Linear interpolation between closest ranks (numpy's default, Excel's PERCENTILE.INC).
        rank = q * (len(data) - 1)
        lo = int(rank)
        hi = min(lo + 1, len(data) - 1)
        return data[lo] + (data[hi] - data[lo]) * (rank - lo)

    @property
    def p50(self) -> float:
        return self.pct(0.5)

    @property
    def p95(self) -> float:
        return self.pct(0.95)


def viewer_token(url: str) -> str:
    """A viewer token for this run (the metrics API and the dashboard need one), made before
    the app starts, so it prints no first-admin token into its log."""
    from sqlalchemy import create_engine

    from app.auth.principal import Role
    from app.auth.tokens import create_token

    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.begin() as conn:
            _, token = create_token(conn, name=f"bench-{time.time_ns()}", role=Role.VIEWER,
                                    created_by="bench")  # fmt: skip
    finally:
        engine.dispose()
    return token


def time_http(
    port: int,
    path: str,
    params: dict[str, str],
    warmup: int,
    requests: int,
    label: str,
    token: str,
) -> tuple[Timing, dict[str, Any]]:
    """`warmup` then `requests` sequential GETs over one keep-alive connection; wall time from
    sending the request to having read the whole body."""
    target = f"{path}?{urlencode(params)}"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    timing = Timing(label)
    body = b""
    try:
        for n in range(warmup + requests):
            t = time.perf_counter()
            conn.request("GET", target, headers={"Authorization": f"Bearer {token}"})
            answer = conn.getresponse()
            body = answer.read()
            elapsed = (time.perf_counter() - t) * 1000
            if answer.status != 200:
                raise BenchError(f"GET {target} answered {answer.status}: {body[:500]!r}")
            if n >= warmup:
                timing.samples_ms.append(elapsed)
    finally:
        conn.close()
    timing.bytes = len(body)
    return timing, json.loads(body)


# --------------------------------------------------------------------------------------------
# in-process: the same functions, with the time spent in SQL


class SqlClock:
    """Sums the time spent inside cursor.execute (the query and fetching its rows: psycopg
    fetches a whole result set on execute) and keeps the statements of the current call."""

    def __init__(self, engine: Engine) -> None:
        self.total = 0.0
        self.statements: list[tuple[str, Any]] = []
        self._started: float = 0.0
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)

    def _before(self, conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        self.statements.append((statement, parameters))
        self._started = time.perf_counter()

    def _after(self, *_: Any) -> None:
        self.total += time.perf_counter() - self._started

    def reset(self) -> None:
        self.total = 0.0
        self.statements = []


# The API counts charges with unknown fees only when STRIPE_API_KEY is set (the served app
# here has none): in-process calls do as it does, so the two are the same work.
AS_THE_API: dict[str, Any] = {"count_unknown_fees": False}


def time_calls(
    engine: Engine, clock: SqlClock, call: Callable[[Any], Any], warmup: int, runs: int, label: str
) -> tuple[Timing, Any]:
    timing = Timing(label)
    result: Any = None
    with engine.connect() as conn:
        for n in range(warmup + runs):
            clock.reset()
            t = time.perf_counter()
            result = call(conn)
            elapsed = (time.perf_counter() - t) * 1000
            conn.rollback()  # as the API does: one connection checkout per request
            if n >= warmup:
                timing.samples_ms.append(elapsed)
                timing.sql_ms.append(clock.total * 1000)
    return timing, result


def explain_statements(
    engine: Engine, statements: list[tuple[str, Any]], out_file: Path
) -> list[tuple[str, float, float, str]]:
    """EXPLAIN (ANALYZE, BUFFERS) of each statement one call ran, with its parameters: the
    execution time and JIT time of each, and the plans written to `out_file`."""
    rows: list[tuple[str, float, float, str]] = []
    parts: list[str] = []
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        for statement, parameters in statements:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters)
            plan = "\n".join(r[0] for r in cursor.fetchall())
            execution = planning = jit = 0.0
            for line in plan.splitlines():
                stripped = line.strip()
                if stripped.startswith("Execution Time:"):
                    execution = float(stripped.split()[2])
                elif stripped.startswith("Planning Time:"):
                    planning = float(stripped.split()[2])
                elif stripped.startswith("Timing:") and "Total" in stripped:
                    jit = float(stripped.rsplit("Total", 1)[1].split()[0].rstrip(","))
            first = " ".join(statement.split())
            what = (
                "trust" if "stripe_events" in first else "ledger" if "ledger_" in first else "tasks"
            )
            rows.append((what, planning, execution, f"{jit:.1f}" if jit else "-"))
            parts.append(f"-- {what}\n{statement}\n-- parameters: {parameters}\n{plan}\n")
        raw.rollback()
    finally:
        raw.close()
    out_file.write_text("\n".join(parts))
    return rows


# --------------------------------------------------------------------------------------------
# equality


def _base_key(base: BaseFigures) -> tuple[Any, ...]:
    return (
        base.gross, base.refunds, base.disputes, base.fees, base.task_cost, base.tasks,
        base.unpriced_tasks,
        tuple(sorted((k, v) for k, v in base.unconverted_revenue.items() if v)),
        tuple(sorted((k, v) for k, v in base.unconverted_cost.items() if v)),
    )  # fmt: skip


def compare(left: dict[Any, BaseFigures], right: dict[Any, BaseFigures]) -> list[str]:
    diffs = []
    for key in sorted(set(left) | set(right), key=str):
        a, b = left.get(key), right.get(key)
        if a is None or b is None or _base_key(a) != _base_key(b):
            diffs.append(f"{key}: rollup {a and _base_key(a)} != raw {b and _base_key(b)}")
    return diffs


def summary_map(summary: Any) -> dict[Any, BaseFigures]:
    out: dict[Any, BaseFigures] = {r.stream: r.base for r in summary.streams}
    out["(total)"] = summary.total_base
    out["(previous total)"] = summary.previous_base
    return out


def series_map(points: list[Any]) -> dict[Any, BaseFigures]:
    return {(p.bucket.isoformat(), p.stream): p.base for p in points}


def compare_api_summary(body: dict[str, Any], raw: Any) -> list[str]:
    """The API's JSON against the raw figures as the API presents them."""
    diffs = []
    got = {s["stream"]: {k: v for k, v in s.items() if k != "stream"} for s in body["streams"]}
    want = {r.stream: figure_set(r.figures, r.base, REPORTING) for r in raw.streams}
    got["(total)"], want["(total)"] = body["total"], figure_set(raw.total, raw.total_base, "usd")
    got["(previous total)"] = body["previous_total"]
    want["(previous total)"] = figure_set(raw.previous_total, raw.previous_base, REPORTING)
    for key in sorted(set(got) | set(want)):
        if got.get(key) != want.get(key):
            diffs.append(f"{key}: api {got.get(key)} != raw {want.get(key)}")
    if body.get("source") != "rollup":
        diffs.append(f"the API answered from {body.get('source')!r}, not from the rollups")
    return diffs


def compare_api_series(body: dict[str, Any], raw: list[Any], tz: ZoneInfo) -> list[str]:
    got = {
        (datetime.fromisoformat(p["bucket"]), p["stream"]): {
            k: v for k, v in p.items() if k not in ("bucket", "stream")
        }
        for p in body["points"]
    }
    want = {
        (p.bucket.astimezone(tz), p.stream): figure_set(p.figures, p.base, REPORTING) for p in raw
    }
    diffs = []
    for key in sorted(set(got) | set(want)):
        if got.get(key) != want.get(key):
            diffs.append(f"{key}: api {got.get(key)} != raw {want.get(key)}")
    return diffs


# --------------------------------------------------------------------------------------------
# the machine


def other_benchmarks() -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            line = b" ".join(argv).decode(errors="replace")
            program = Path(argv[0].decode(errors="replace")).name if argv and argv[0] else ""
            if any(m in line for m in OTHER_BENCH_MARKERS) or program in OTHER_BENCH_PROGRAMS:
                found.append(f"{entry.name} {line.strip()[:80]}")
    return found


def machine_cpu() -> tuple[float, float]:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [float(v) for v in fields]
    idle = values[3] + values[4]
    return sum(values), idle


def busy_cores(before: tuple[float, float], after: tuple[float, float]) -> float:
    total, idle = after[0] - before[0], after[1] - before[1]
    return 0.0 if total <= 0 else (total - idle) / total * (os.cpu_count() or 1)


def wait_for_quiet(patience: float) -> str:
    """Wait (at most `patience` s) until no other benchmark runs and the machine is idle."""
    deadline = time.monotonic() + patience
    while True:
        others = other_benchmarks()
        before = machine_cpu()
        time.sleep(2)
        busy = busy_cores(before, machine_cpu())
        if (not others and busy <= BUSY_CORES_WARN) or time.monotonic() >= deadline:
            return f"{busy:.2f} cores busy" + (
                f"; other benchmarks running: {'; '.join(others)}" if others else ""
            )
        say(
            f"waiting for the machine to be quiet: {busy:.2f} cores busy"
            + (f", other benchmarks: {len(others)}" if others else "")
        )


# --------------------------------------------------------------------------------------------
# the run


def mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB" if n >= 10e6 else f"{n / 1e6:,.1f} MB"


def period_for(tz: ZoneInfo, days: int, now: datetime) -> tuple[str, str]:
    """The latest `days` days in `tz`, today included: [today - days + 1, tomorrow)."""
    end = now.astimezone(tz).date() + timedelta(days=1)
    return (end - timedelta(days=days)).isoformat(), end.isoformat()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--ledger-rows", type=int, default=10_000_000)
    p.add_argument("--tasks", type=int, default=10_000_000)
    p.add_argument("--days", type=int, default=365, help="the data spans this many days")
    p.add_argument("--period-days", type=int, default=90, help="the measured period")
    p.add_argument("--chunk", type=int, default=500_000, help="rows per INSERT statement")
    p.add_argument("--seed-jobs", type=int, default=2, choices=(1, 2),
                   help="2: ledger and tasks seeded at once on two connections")  # fmt: skip
    p.add_argument("--zones", default="UTC,America/New_York")
    p.add_argument(
        "--app-zone",
        default="America/New_York",
        help="the app's ROI_TIMEZONE: compaction cuts converted_daily's days at its midnights",
    )
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--requests", type=int, default=30)
    p.add_argument("--raw-runs", type=int, default=3)
    p.add_argument("--quiet-wait", type=float, default=600,
                   help="wait up to this many seconds for other benchmarks to end")  # fmt: skip
    p.add_argument("--max-minutes", type=float, default=45, help="the whole run's bound")
    p.add_argument("--keep", action="store_true", help="keep the scratch database")
    p.add_argument(
        "--reuse", metavar="DBNAME", help="measure a database kept by --keep, without seeding"
    )
    p.add_argument("--json", type=Path, help="write the figures to this file")
    args = p.parse_args(argv)
    if min(args.ledger_rows, args.tasks, args.chunk, args.requests, args.raw_runs) < 1:
        p.error("row counts, --chunk, --requests and --raw-runs must be positive")
    if args.period_days * 2 > args.days:
        p.error("--days must cover the period and the previous one (2 x --period-days)")
    return args


def bounded(seconds: float) -> None:
    """The whole run's bound: SIGALRM ends it (the cleanup still runs)."""

    def expire(signum: int, frame: Any) -> None:
        raise BenchError(f"the run took longer than its bound ({seconds / 60:.0f} min)")

    signal.signal(signal.SIGALRM, expire)
    signal.alarm(int(seconds))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    admin_url = local_admin_url()
    OUT.mkdir(parents=True, exist_ok=True)
    zones = [z.strip() for z in args.zones.split(",") if z.strip()]
    bounded(args.max_minutes * 60)
    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    say(f"metrics benchmark: {args.ledger_rows:,} ledger rows + {args.tasks:,} tasks, "
        f"{len(STREAMS)} streams, {len(MODELS)} models, {len(TASK_TYPES)} task types, "
        f"{args.days} days; period {args.period_days} days; {os.cpu_count()} cores")  # fmt: skip
    say(f"before seeding: {wait_for_quiet(args.quiet_wait)}")
    now = datetime.now(UTC).replace(microsecond=0)
    with scratch_database(admin_url, args.keep, args.reuse) as (dbname, url):
        say(f"scratch database {dbname}; roi migrate")
        migrate(url, OUT / "migrate.log")
        if args.reuse:
            say("reusing its data (--reuse): not seeded again")
            seeded: dict[str, Any] = {"reused": args.reuse}
        else:
            say(f"seeding in chunks of {args.chunk:,} rows ({args.seed_jobs} connections)")
            seeded = seed(url, args, now, args.app_zone)
        facts = table_facts(url)
        results["seed"], results["tables"] = seeded, facts
        say()
        if not args.reuse:
            by_table = seeded["insert_seconds_by_table"]
            say(
                f"seeded in {seeded['seed_seconds']:.0f} s: inserts"
                f" {seeded['insert_seconds']:.0f} s (ledger {by_table['ledger_entries']:.0f} s,"
                f" tasks {by_table['execution_tasks']:.0f} s, on two connections at once;"
                f" triggers and {seeded['compactions']} compactions"
                f" ({seeded['compaction_seconds']:.0f} s) included), VACUUM ANALYZE"
                f" {seeded['vacuum_seconds']:.0f} s"
            )
        say(f"{'table':<26} {'rows':>12} {'heap':>10} {'total':>10}")
        for table, f in facts.items():
            say(
                f"{table:<26} {f['rows']:>12,} {mb(f['table_bytes']):>10}"
                f" {mb(f['total_bytes']):>10}"
            )
        for line in data_shape(url):
            say("  " + line)

        say()
        say(f"before timing: {wait_for_quiet(args.quiet_wait)}")
        timings: list[Timing] = []
        raw_timings: list[Timing] = []
        equal: dict[str, list[str]] = {}
        explains: dict[str, list[tuple[str, float, float, str]]] = {}
        migrate(url, OUT / "migrate.log")  # again: the code may have moved on since seeding
        # As the app's first compactions would, in its first minute: build converted_daily
        # where a database seeded by older code (or in another zone) has none.
        say(f"compaction before timing (builds converted_daily if missing): "
            f"{build_converted(url, args.app_zone)}")  # fmt: skip
        token = viewer_token(url)
        app = App(url, free_port(), OUT / "app.log", args.app_zone)
        machine_before = machine_cpu()
        try:
            app.start()
            for zone_name in zones:
                tz = ZoneInfo(zone_name)
                start, end = period_for(tz, args.period_days, now)
                base = {"start": start, "end": end, "tz": zone_name}
                say(f"{zone_name}: [{start}, {end}) over HTTP, {args.warmup} + {args.requests}")
                t, streams_body = time_http(
                    app.port, "/api/metrics/streams", base, args.warmup, args.requests,
                    f"API streams {zone_name}", token,
                )  # fmt: skip
                timings.append(t)
                t, series_body = time_http(
                    app.port, "/api/metrics/timeseries", {**base, "granularity": "day"},
                    args.warmup, args.requests, f"API timeseries day {zone_name}", token,
                )  # fmt: skip
                t.note = f"{len(series_body['points'])} points, {t.bytes / 1e3:.0f} KB"
                timings.append(t)
                results.setdefault("api_bodies", {})[zone_name] = {
                    "streams": streams_body, "points": len(series_body["points"]),
                }  # fmt: skip

                engine = make_engine(Settings(database_url=url))
                clock = SqlClock(engine)
                # As the app does once started (app/main.py): what is loaded by now stays out
                # of the collector's full passes, which would otherwise land in the timings.
                gc.collect()
                gc.freeze()
                f = build_filter(start=start, end=end, tz=zone_name, granularity="day")
                if not rollups_are_exact(f):
                    raise BenchError(f"{zone_name}: the rollups cannot answer this period")
                try:
                    say(f"{zone_name}: in-process (raw=False), {args.warmup} + {args.requests}")
                    t, summary = time_calls(
                        engine, clock,
                        lambda c, f=f: stream_summary(c, f, REPORTING, raw=False, **AS_THE_API),
                        args.warmup, args.requests, f"in-process stream_summary {zone_name}",
                    )  # fmt: skip
                    timings.append(t)
                    explains[f"summary {zone_name}"] = explain_statements(
                        engine, clock.statements, OUT / f"explain-summary-{tz_file(zone_name)}.txt"
                    )
                    t, series = time_calls(
                        engine, clock, lambda c, f=f: stream_timeseries(c, f, REPORTING, raw=False),
                        args.warmup, args.requests, f"in-process stream_timeseries {zone_name}",
                    )  # fmt: skip
                    timings.append(t)
                    explains[f"timeseries {zone_name}"] = explain_statements(
                        engine, clock.statements, OUT / f"explain-series-{tz_file(zone_name)}.txt"
                    )
                    say(f"{zone_name}: plain SQL over the raw tables (raw=True), {args.raw_runs}")
                    t, raw_summary = time_calls(
                        engine, clock,
                        lambda c, f=f: stream_summary(c, f, REPORTING, raw=True, **AS_THE_API),
                        0, args.raw_runs, f"raw stream_summary {zone_name}",
                    )  # fmt: skip
                    raw_timings.append(t)
                    t, raw_series = time_calls(
                        engine, clock, lambda c, f=f: stream_timeseries(c, f, REPORTING, raw=True),
                        0, args.raw_runs, f"raw stream_timeseries {zone_name}",
                    )  # fmt: skip
                    raw_timings.append(t)
                finally:
                    engine.dispose()
                equal[f"summary {zone_name}: rollup vs raw"] = compare(
                    summary_map(summary), summary_map(raw_summary)
                )
                equal[f"timeseries {zone_name}: rollup vs raw"] = compare(
                    series_map(series), series_map(raw_series)
                )
                equal[f"summary {zone_name}: API JSON vs raw"] = compare_api_summary(
                    streams_body, raw_summary
                )
                equal[f"timeseries {zone_name}: API JSON vs raw"] = compare_api_series(
                    series_body, raw_series, tz
                )
                if not series:
                    equal[f"timeseries {zone_name}: rollup vs raw"].append("no points at all")
        finally:
            app.stop()
        busy = busy_cores(machine_before, machine_cpu())
        verdict = report(timings, raw_timings, equal, explains, zones, busy, args)
        results.update(
            timings={t.label: timing_json(t) for t in timings + raw_timings},
            equal={k: (v or "EQUAL") for k, v in equal.items()},
            busy_cores_while_timing=busy,
            passed=verdict,
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0 if verdict else 1


def tz_file(zone_name: str) -> str:
    return zone_name.replace("/", "_")


def timing_json(t: Timing) -> dict[str, Any]:
    return {
        "p50_ms": t.p50, "p95_ms": t.p95, "n": len(t.samples_ms), "samples_ms": t.samples_ms,
        "sql_p50_ms": t.pct(0.5, t.sql_ms) if t.sql_ms else None,
        "sql_p95_ms": t.pct(0.95, t.sql_ms) if t.sql_ms else None, "bytes": t.bytes,
    }  # fmt: skip


def report(
    timings: list[Timing],
    raw_timings: list[Timing],
    equal: dict[str, list[str]],
    explains: dict[str, list[tuple[str, float, float, str]]],
    zones: list[str],
    busy: float,
    args: argparse.Namespace,
) -> bool:
    say()
    say(
        "statements of one rollup call, by EXPLAIN ANALYZE (its per-node timing adds to the"
        " times; plans in bench/out/metrics/explain-*.txt):"
    )
    for name, rows in explains.items():
        cells = ", ".join(f"{w} {e:.1f} ms (plan {p:.1f}, JIT {j})" for w, p, e, j in rows)
        say(f"  {name}: {cells}")
    say()
    say(f"{'':<46} {'p50 ms':>9} {'p95 ms':>9} {'n':>4}  {'SQL p50/p95 ms':>16}  note")
    for t in timings + raw_timings:
        sql = f"{t.pct(0.5, t.sql_ms):.1f} / {t.pct(0.95, t.sql_ms):.1f}" if t.sql_ms else ""
        note = t.note or (f"{t.bytes / 1e3:.0f} KB" if t.bytes else "")
        say(f"{t.label:<46} {t.p50:>9.1f} {t.p95:>9.1f} {len(t.samples_ms):>4}  {sql:>16}  {note}")
    say(f"(machine: {busy:.2f} cores busy on average while timing, ours included)")
    say()
    say("where the API's time goes (p50 ms): SQL | Python metrics layer | FastAPI+JSON+HTTP")
    by_label = {t.label: t for t in timings}
    for zone_name in zones:
        for what, api_label, call_label in (
            ("summary", "API streams", "in-process stream_summary"),
            ("daily series", "API timeseries day", "in-process stream_timeseries"),
        ):
            api = by_label.get(f"{api_label} {zone_name}")
            call = by_label.get(f"{call_label} {zone_name}")
            if not api or not call:
                continue
            sql = call.pct(0.5, call.sql_ms)
            say(
                f"  {what + ' ' + zone_name:<32} {sql:>7.1f} | {call.p50 - sql:>7.1f} |"
                f" {api.p50 - call.p50:>7.1f}   (API p50 {api.p50:.1f})"
            )
    say()
    say("equality (figures of the rollups and of the API against plain SQL over the raw tables):")
    all_equal = True
    for name, diffs in equal.items():
        if diffs:
            all_equal = False
            say(f"  DIFFERENT {name}: {len(diffs)} difference(s)")
            for d in diffs[:5]:
                say(f"    {d}")
        else:
            say(f"  EQUAL     {name}")
    say()
    by_label = {t.label: t for t in timings + raw_timings}
    passed = all_equal
    for zone_name in zones:
        for what, api_label, raw_label in (
            ("summary", f"API streams {zone_name}", f"raw stream_summary {zone_name}"),
            (
                "daily series",
                f"API timeseries day {zone_name}",
                f"raw stream_timeseries {zone_name}",
            ),
        ):
            api, raw = by_label[api_label], by_label[raw_label]
            ok = api.p95 <= P95_TARGET_MS
            passed = passed and ok
            say(
                f"{'PASS' if ok else 'FAIL'} {what} {zone_name}: API p95 {api.p95:.1f} ms"
                f" (target <= {P95_TARGET_MS:.0f} ms); plain SQL p95 {raw.p95:,.0f} ms,"
                f" {raw.p95 / api.p95:,.0f}x the API"
            )
    say(f"{'PASS' if all_equal else 'FAIL'} equal results (rollups, API and plain SQL)")
    return passed


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        say(f"FAIL benchmark could not run: {exc}")
        sys.exit(2)
    except KeyboardInterrupt:
        say("interrupted")
        sys.exit(130)
