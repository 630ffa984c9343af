"""Webhook ingest benchmark: signed Stripe events/s against PostgreSQL's own insert rate.

    .venv/bin/python bench/ingest.py --events 30000

One run, all on this machine over 127.0.0.1, bounded in requests and time (bench/README.md
says more):

1. a scratch database on the server (DATABASE_URL, default postgresql://postgres@127.0.0.1:5432/
   postgres, is only the admin connection), migrated with `roi migrate`, holding --history
   earlier events written through the app's own EventWriter;
2. the reference: pgbench, 8 clients, one durable `INSERT ... ON CONFLICT DO NOTHING` of a
   unique key per transaction, for --reference-seconds;
3. `roi serve --workers 2` on a free port against the scratch database;
4. --events realistic Stripe events (charge.succeeded across 20 streams, plus charge.updated,
   refund.created and payment_intent.succeeded referring to those charges), signed the way
   Stripe signs, each sent exactly once by wrk (bench/ingest_wrk.lua) over 16 keep-alive
   connections, after --warmup other events that are not counted;
5. the figures (events/s, p50/p99, the reference, the ratio, CPU per event and where it went)
   with PASS/FAIL against shared/docs/performance.md, and the exactly-once check: every
   request answered 2xx, exactly the events sent in stripe_events, one charge ledger entry per
   charge sent (with its stream and amount), one refund entry per refund;
6. the app stopped and the scratch database dropped, whatever happened.

Exit status: 0 when every target passed, 1 when one missed, 2 when the run could not be made.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import stripe

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
LUA_SCRIPT = BENCH / "ingest_wrk.lua"
VENV_BIN = Path(sys.executable).parent

RATIO_TARGET = 0.6
P99_TARGET_MS = 20.0
PY_CPU_BUDGET_US = 150  # shared/docs/performance.md: Python CPU one event may cost
SEQ_ROWS_WARN = 10  # rows read by sequential scans per event that say a plan went wrong
OUTSIDE_LOAD_WARN = 0.25  # cores busy with other processes that make a run untrustworthy
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
WEBHOOK_SECRET = "whsec_bench_" + "0123456789abcdef" * 2
SIGNATURE_TOLERANCE_S = 300  # the app's default ROI_WEBHOOK_TOLERANCE
API_VERSION = "2024-06-20"

STREAMS = [
    "newsletter-pro",
    "seo-audits",
    "ai-copywriter",
    "course-python",
    "course-sql",
    "consulting",
    "templates",
    "community",
    "podcast-ads",
    "affiliate-tools",
    "ebook-growth",
    "workshops",
    "api-credits",
    "chatbot-saas",
    "design-kits",
    "job-board",
    "sponsorships",
    "coaching",
    "plugin-store",
    "data-reports",
]
# Shares of the event types after the first charge; the rest are charge.succeeded.
SHARE_UPDATED, SHARE_REFUND, SHARE_PI = 0.10, 0.08, 0.12
RECENT_CHARGES = 400  # follow-up events refer to one of the most recent charges, as in life


def say(message: str = "") -> None:
    print(message, flush=True)


class BenchError(RuntimeError):
    """The run could not be made (a tool is missing, the app did not start, ...)."""


# --------------------------------------------------------------------------------------------
# realistic Stripe events


@dataclass
class Charge:
    id: str
    payment_intent: str
    customer: str
    stream: str
    amount: int
    currency: str
    created: int
    email: str
    name: str
    last4: str
    refunded: int = 0
    pi_event_sent: bool = False


@dataclass
class Workload:
    """The events to send and what the ledger must show once they are in."""

    events: list[tuple[str, str]] = field(default_factory=list)  # (event id, JSON body)
    types: Counter[str] = field(default_factory=Counter)
    charges: dict[str, Charge] = field(default_factory=dict)
    refunds: dict[str, tuple[str, int]] = field(default_factory=dict)  # id -> (charge, amount)


class EventFactory:
    """Stripe-shaped events: API 2024-06-20 fields, pretty-printed as Stripe sends them, trimmed
    to about 1 KB each (a real charge event carries more fields of the same kinds)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.recent: list[Charge] = []
        self.now = int(time.time())

    def _id(self, prefix: str, n: int = 24) -> str:
        alphabet = string.ascii_letters + string.digits
        return prefix + "".join(self.rng.choices(alphabet, k=n))

    def _envelope(self, event_type: str, obj: dict[str, Any], **extra: Any) -> tuple[str, str]:
        event_id = self._id("evt_3")
        data: dict[str, Any] = {"object": obj}
        if "previous_attributes" in extra:
            data["previous_attributes"] = extra.pop("previous_attributes")
        event = {
            "id": event_id,
            "object": "event",
            "api_version": API_VERSION,
            "created": self.now,
            "data": data,
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": self._id("req_", 14), "idempotency_key": self._uuid()},
            "type": event_type,
        }
        # Stripe sends its bodies pretty-printed with two spaces.
        return event_id, json.dumps(event, indent=2)

    def _uuid(self) -> str:
        h = "".join(self.rng.choices("0123456789abcdef", k=32))
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"

    def new_charge(self) -> Charge:
        first = self.rng.choice(["Ada", "Grace", "Alan", "Linus", "Barbara", "Ken", "Edsger"])
        last = self.rng.choice(["Lovelace", "Hopper", "Turing", "Liskov", "Thompson", "Knuth"])
        charge = Charge(
            id=self._id("ch_3"),
            payment_intent=self._id("pi_3"),
            customer=self._id("cus_", 14),
            stream=self.rng.choice(STREAMS),
            amount=self.rng.choice([900, 1900, 2900, 4900, 9900, 19900]) + self.rng.randint(0, 99),
            currency=self.rng.choice(["usd"] * 8 + ["eur", "gbp"]),
            created=self.now - self.rng.randint(0, 5),
            email=f"{first.lower()}.{last.lower()}{self.rng.randint(1, 999)}@example.com",
            name=f"{first} {last}",
            last4=f"{self.rng.randint(0, 9999):04d}",
        )
        return charge

    def charge_object(self, c: Charge, description: str) -> dict[str, Any]:
        return {
            "id": c.id,
            "object": "charge",
            "amount": c.amount,
            "amount_captured": c.amount,
            "amount_refunded": 0,
            "balance_transaction": "txn_3" + c.id[4:],
            "billing_details": {"email": c.email, "name": c.name},
            "captured": True,
            "created": c.created,
            "currency": c.currency,
            "customer": c.customer,
            "description": description,
            "invoice": None,
            "livemode": False,
            "metadata": {"stream": c.stream, "order_id": str(self.rng.randint(10**5, 10**6))},
            "paid": True,
            "payment_intent": c.payment_intent,
            "payment_method_details": {
                "card": {"brand": "visa", "last4": c.last4},
                "type": "card",
            },
            "refunded": False,
            "status": "succeeded",
        }

    def charge_succeeded(self) -> tuple[str, str, Charge]:
        c = self.new_charge()
        self.recent.append(c)
        if len(self.recent) > RECENT_CHARGES:
            self.recent.pop(0)
        event_id, body = self._envelope("charge.succeeded", self.charge_object(c, c.stream))
        return event_id, body, c

    def charge_updated(self, c: Charge) -> tuple[str, str]:
        obj = self.charge_object(c, f"{c.stream} (order updated)")
        return self._envelope("charge.updated", obj, previous_attributes={"description": c.stream})

    def refund_created(self, c: Charge) -> tuple[str, str, str, int]:
        amount = max(1, (c.amount - c.refunded) // self.rng.choice([1, 2, 4]))
        c.refunded += amount
        refund_id = self._id("re_3")
        obj = {
            "id": refund_id,
            "object": "refund",
            "amount": amount,
            "balance_transaction": self._id("txn_3"),
            "charge": c.id,
            "created": self.now,
            "currency": c.currency,
            "destination_details": {"card": {"type": "refund"}, "type": "card"},
            "metadata": {},
            "payment_intent": c.payment_intent,
            "reason": self.rng.choice(["requested_by_customer", "duplicate", None]),
            "status": "succeeded",
        }
        event_id, body = self._envelope("refund.created", obj)
        return event_id, body, refund_id, amount

    def payment_intent_succeeded(self, c: Charge) -> tuple[str, str]:
        c.pi_event_sent = True
        obj = {
            "id": c.payment_intent,
            "object": "payment_intent",
            "amount": c.amount,
            "amount_received": c.amount,
            "capture_method": "automatic",
            "client_secret": c.payment_intent + "_secret_" + self._id("", 25),
            "created": c.created,
            "currency": c.currency,
            "customer": c.customer,
            "description": c.stream,
            "latest_charge": c.id,
            "livemode": False,
            "metadata": {"stream": c.stream},
            "payment_method": "pm_1" + c.id[4:],
            "payment_method_types": ["card"],
            "status": "succeeded",
        }
        return self._envelope("payment_intent.succeeded", obj)

    def workload(self, count: int) -> Workload:
        w = Workload()
        for _ in range(count):
            r = self.rng.random()
            target = self.rng.choice(self.recent) if self.recent else None
            if target and r < SHARE_UPDATED:
                event_type, (event_id, body) = "charge.updated", self.charge_updated(target)
            elif target and r < SHARE_UPDATED + SHARE_REFUND and target.refunded < target.amount:
                event_id, body, refund_id, amount = self.refund_created(target)
                event_type = "refund.created"
                w.refunds[refund_id] = (target.id, amount)
            elif (
                target and r < SHARE_UPDATED + SHARE_REFUND + SHARE_PI and not target.pi_event_sent
            ):
                event_type = "payment_intent.succeeded"
                event_id, body = self.payment_intent_succeeded(target)
            else:
                event_type = "charge.succeeded"
                event_id, body, charge = self.charge_succeeded()
                w.charges[charge.id] = charge
            w.events.append((event_id, body))
            w.types[event_type] += 1
        return w


def write_requests(
    events: list[tuple[str, str]], out_dir: Path, port: int, threads: int
) -> tuple[float, int]:
    """Sign the events now and write them as raw HTTP requests, one file per wrk thread.

    Returns the signing time (for the tolerance window) and the mean body size."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("done.*"):
        stale.unlink()
    signed_at = time.time()
    timestamp = int(signed_at)
    files = [(out_dir / f"requests.{i}.bin").open("wb") for i in range(threads)]
    size = 0
    try:
        for n, (_, body) in enumerate(events):
            header = stripe.WebhookSignature.generate_signature_header(
                body, WEBHOOK_SECRET, timestamp=timestamp
            )
            raw = body.encode()
            size += len(raw)
            request = (
                f"POST /webhooks/stripe HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{port}\r\n"
                f"User-Agent: Stripe/1.0 (+https://stripe.com/docs/webhooks)\r\n"
                f"Accept: */*; q=0.5, application/xml\r\n"
                f"Cache-Control: no-cache\r\n"
                f"Content-Type: application/json; charset=utf-8\r\n"
                f"Stripe-Signature: {header}\r\n"
                f"Content-Length: {len(raw)}\r\n\r\n"
            ).encode() + raw
            files[n % threads].write(b"%d\n" % len(request) + request)
    finally:
        for f in files:
            f.close()
    return signed_at, size // max(1, len(events))


# --------------------------------------------------------------------------------------------
# database, reference, app


def with_database(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


def admin_execute(admin_url: str, sql: str) -> None:
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


def pg_facts(url: str) -> dict[str, str]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit',"
            " 'wal_sync_method', 'shared_buffers', 'max_connections', 'commit_delay',"
            " 'autovacuum')"
        ).fetchall()
        version = conn.execute("SHOW server_version").fetchone()
    facts = {name: setting for name, setting in rows}
    facts["server_version"] = version[0] if version else "?"
    return facts


def checkpoint(url: str) -> None:
    """Start each measured phase with a clean WAL so a checkpoint does not land in one only."""
    with contextlib.suppress(psycopg.Error), psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def run_reference(
    url: str, out_dir: Path, clients: int, seconds: int, label: str
) -> dict[str, Any]:
    """pgbench: `clients` connections, one durable single-row upsert per transaction."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE bench_reference (client_id int NOT NULL, k bigint NOT NULL,"
            " PRIMARY KEY (client_id, k))"
        )
    script = out_dir / "reference.sql"
    script.write_text(
        "\\set k random(1, 9000000000000000000)\n"
        "INSERT INTO bench_reference (client_id, k) VALUES (:client_id, :k)"
        " ON CONFLICT DO NOTHING;\n"
    )
    parts = urlsplit(url)
    env = dict(os.environ)
    if parts.password:
        env["PGPASSWORD"] = parts.password
    host = ["-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 5432)]
    cmd = [
        "pgbench",
        *f"-n -M prepared -c {clients} -j 2 -T {seconds}".split(),
        *["-f", str(script), *host, "-U", parts.username or "postgres", parts.path.lstrip("/")],
    ]
    checkpoint(url)
    machine_before, outside = machine_cpu(), OutsideLoad(postmaster_pid(url))
    done = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    busy = busy_cores(machine_before, machine_cpu())
    outside_cores, outside_top = outside.measure()
    (out_dir / f"reference-{label}.log").write_text(done.stdout + done.stderr)
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", done.stdout)
    latency = re.search(r"latency average = ([\d.]+) ms", done.stdout)
    if done.returncode != 0 or not tps:
        raise BenchError(f"pgbench failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE bench_reference")
    return {
        "tps": float(tps[1]),
        "latency_ms": float(latency[1]) if latency else float("nan"),
        "machine_busy_cores": busy,
        "outside_cores": outside_cores,
        "outside_top": outside_top,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def children_of(pid: int) -> list[int]:
    """The processes below `pid` (uvicorn's workers and multiprocessing's helpers)."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                parent[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        kids = [p for p, pp in parent.items() if pp == current]
        found += kids
        frontier += kids
    return found


def cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    return ""


class App:
    """`roi serve` in its own process group, stopped (and its group killed) in every case."""

    def __init__(self, database_url: str, port: int, workers: int, log_path: Path) -> None:
        self.port = port
        self.workers = workers
        self.log_path = log_path
        self.env = dict(os.environ)
        self.env.update(DATABASE_URL=database_url, STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET)
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [
            str(VENV_BIN / "roi"),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
        ]

    def start(self, timeout: float = 60.0) -> None:
        cmd = self.command()
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.port}/healthz"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"the app exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200 and len(self.worker_pids()) >= self.workers:
                    return
            time.sleep(0.2)
        raise BenchError(f"the app did not answer {url} within {timeout:.0f} s:\n{self.log_tail()}")

    def worker_pids(self) -> list[int]:
        """The uvicorn worker processes (those serving the app), not the supervisor's helpers."""
        if not self.proc:
            return []
        kids = children_of(self.proc.pid)
        return [p for p in kids if "multiprocessing.resource_tracker" not in cmdline(p)]

    def all_pids(self) -> list[int]:
        return [self.proc.pid, *children_of(self.proc.pid)] if self.proc else []

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        if not self.proc:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=25)
            except subprocess.TimeoutExpired:
                say("the app did not stop on SIGTERM within 25 s; killing its process group")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # our own group: workers left behind
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)


# --------------------------------------------------------------------------------------------
# load


CLK_TCK = os.sysconf("SC_CLK_TCK")


class BareApp(App):
    """bench/bare_webhook.py on uvicorn, as `roi serve` runs the app: the HTTP layer's ceiling."""

    def command(self) -> list[str]:
        return [
            str(VENV_BIN / "uvicorn"),
            "bench.bare_webhook:app",
            *("--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers)),
            *("--no-access-log", "--log-level", "warning"),
        ]


def cpu_times(pids: list[int]) -> dict[int, tuple[float, float]]:
    """(user, system) CPU seconds of each process, from /proc."""
    out: dict[int, tuple[float, float]] = {}
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            out[pid] = (int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK)
    return out


@dataclass(frozen=True)
class Proc:
    name: str
    ppid: int
    cpu_s: float


def all_processes() -> dict[int, Proc]:
    """Every process on the machine, with its own CPU seconds (not its children's)."""
    out: dict[int, Proc] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()
                name = stat[stat.index("(") + 1 : stat.rindex(")")]
                cpu_s = (int(fields[11]) + int(fields[12])) / CLK_TCK
                out[int(entry.name)] = Proc(name, int(fields[1]), cpu_s)
    return out


class OutsideLoad:
    """CPU used during a phase by user-space processes that are not part of the benchmark:
    not this script or what it started (the app, wrk, pgbench), not the PostgreSQL server,
    not kernel threads. Another session's test run on this shared machine shows up here.
    Processes that start and end between the two readings are not seen."""

    def __init__(self, postmaster: int) -> None:
        self.postmaster = postmaster
        self.before = all_processes()
        self.started = time.monotonic()

    def measure(self) -> tuple[float, list[tuple[float, str]]]:
        """(cores, the three biggest as (cores, name))."""
        after = all_processes()
        wall = max(1e-6, time.monotonic() - self.started)
        mine = {os.getpid(), self.postmaster, 2}
        ours = {pid for pid, p in {**self.before, **after}.items() if self._ours(pid, p, mine)}
        usage = []
        for pid, p in after.items():
            if pid in ours:
                continue
            earlier = self.before.get(pid)
            spent = p.cpu_s - (earlier.cpu_s if earlier and earlier.name == p.name else 0.0)
            usage.append((spent / wall, f"{p.name} (pid {pid})"))
        usage.sort(reverse=True)
        return sum(c for c, _ in usage), [(round(c, 2), n) for c, n in usage[:3] if c >= 0.02]

    def _ours(self, pid: int, proc: Proc, mine: set[int]) -> bool:
        # descendants of this script (app workers, wrk), of the postmaster, of kthreadd (2)
        table = {**self.before}
        seen = 0
        while pid not in mine and pid > 1 and seen < 64:
            if proc.ppid in mine:
                return True
            pid, seen = proc.ppid, seen + 1
            parent = table.get(pid)
            if parent is None:
                return False
            proc = parent
        return pid in mine


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def busy_cores(before: tuple[float, float], after: tuple[float, float]) -> float:
    """How many cores were busy on average between two machine_cpu() readings."""
    share = (after[0] - before[0]) / max(1, after[1] - before[1])
    return share * (os.cpu_count() or 1)


def postmaster_pid(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    stat = Path(f"/proc/{row[0]}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def postgres_pids(url: str, dbname: str) -> list[int]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE (datname = %s AND pid <> pg_backend_pid())"
            " OR backend_type IN ('walwriter', 'checkpointer', 'background writer')",
            (dbname,),
        ).fetchall()
    return [r[0] for r in rows]


def connections_per_worker(port: int, workers: list[int]) -> dict[int, int]:
    """How the kernel spread wrk's connections over the workers (ss -tnp)."""
    if not shutil.which("ss"):
        return {}
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    counts = {pid: len(re.findall(rf"pid={pid},", out)) for pid in workers}
    return counts


@dataclass
class LoadResult:
    sent: int
    received: int
    ok: int
    bad: int
    seconds: float
    latency_us: dict[str, float]
    errors: dict[str, int]
    bad_sample: str
    wrk_output: str
    cpu: dict[str, Any] = field(default_factory=dict)
    spread: dict[int, int] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Every request answered, and no connection broke (a broken one loses its request)."""
        broken = sum(self.errors.get(k, 0) for k in ("connect", "read", "write"))
        return self.received == self.sent and self.sent > 0 and not broken

    @property
    def rate(self) -> float:
        return self.received / self.seconds if self.seconds > 0 else 0.0


def run_wrk(
    req_dir: Path,
    port: int,
    threads: int,
    connections: int,
    max_seconds: int,
    watch: App | None = None,
    pg_pids: Callable[[], list[int]] | None = None,
    postmaster: int = 0,
    capture: bool = False,
) -> LoadResult:
    """Send every request in req_dir once; wrk stops itself when all are answered.

    With `capture`, a Lua response hook counts 2xx answers and keeps samples of the others
    (costs wrk CPU); otherwise wrk's own count of answers >= 400 stands for the non-2xx."""
    url = f"http://127.0.0.1:{port}/webhooks/stripe"
    cmd = [
        "wrk",
        *f"-t {threads} -c {connections} -d {max_seconds}s --timeout 30s".split(),
        *["-s", str(LUA_SCRIPT), url, "--", str(req_dir), str(threads), str(connections)],
        *(["statuses"] if capture else []),
    ]
    app_pids = watch.all_pids() if watch else []
    worker_pids = watch.worker_pids() if watch else []
    pg_before = pg_pids() if pg_pids else []
    cpu_before = cpu_times(app_pids + pg_before)
    machine_before = machine_cpu()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    outside = OutsideLoad(postmaster) if postmaster else None
    wall_before = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    spread: dict[int, int] = {}
    deadline = time.monotonic() + max_seconds + 30
    try:
        if watch:
            time.sleep(0.5)
            if proc.poll() is None:
                spread = connections_per_worker(port, watch.worker_pids())
        while proc.poll() is None:  # wrk's output is small: it cannot fill the pipe
            if watch and watch.proc and watch.proc.poll() is not None:
                raise BenchError(f"the app exited during the load:\n{watch.log_tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"wrk did not stop within {max_seconds + 30} s")
            time.sleep(0.05)
        output, _ = proc.communicate()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    wall = time.monotonic() - wall_before
    # the app's pools may have opened connections during the run: their backends count too
    pg_all = sorted(set(pg_before) | set(pg_pids() if pg_pids else []))
    cpu_after = cpu_times(app_pids + pg_all)
    outside_cores, outside_top = outside.measure() if outside else (0.0, [])
    machine_after = machine_cpu()
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    (req_dir / "wrk.log").write_text(output)
    line = next((ln for ln in output.splitlines() if ln.startswith("BENCH_RESULT ")), None)
    if line is None:
        raise BenchError(f"wrk printed no result:\n{output}")
    result = json.loads(line.removeprefix("BENCH_RESULT "))
    per_thread = result["threads"]
    first = min(t["first_us"] for t in per_thread if t["first_us"])
    last = max(t["last_us"] for t in per_thread)
    if last < first:  # some thread never finished: time to the end of wrk
        last = first + wall * 1e6

    def spent(pids: list[int], which: tuple[int, ...] = (0, 1)) -> float:
        zero = (0.0, 0.0)
        return sum(
            cpu_after.get(p, zero)[i] - cpu_before.get(p, zero)[i] for p in pids for i in which
        )

    busy = busy_cores(machine_before, machine_after)
    cpu = {
        "outside_cores": outside_cores,
        "outside_top": outside_top,
        "app_s": spent(app_pids),
        "app_user_s": spent(app_pids, (0,)),
        "app_sys_s": spent(app_pids, (1,)),
        **{f"worker_{p}_s": spent([p]) for p in worker_pids},
        "postgres_s": spent(pg_all),
        "wrk_s": children_after.ru_utime
        + children_after.ru_stime
        - children_before.ru_utime
        - children_before.ru_stime,
        "machine_busy_cores": busy,
        "wall_s": wall,
    }
    received = sum(max(0, t["received"]) for t in per_thread)
    bad = sum(t["bad"] for t in per_thread) if capture else result["errors"]["status"]
    return LoadResult(
        sent=sum(t["sent"] for t in per_thread),
        received=received,
        ok=received - bad,
        bad=bad,
        seconds=(last - first) / 1e6,
        latency_us=result["latency_us"],
        errors=result["errors"],
        bad_sample="".join(t["bad_sample"] for t in per_thread),
        wrk_output=output,
        cpu=cpu,
        spread=spread,
    )


# --------------------------------------------------------------------------------------------
# exactly-once


def verify(
    url: str, workload: Workload, loads: list[LoadResult], over_http: int
) -> list[tuple[bool, str]]:
    """The database against everything sent (history included), and every request's answer."""
    checks: list[tuple[bool, str]] = []
    sent = sum(load.sent for load in loads)
    ok = sum(load.ok for load in loads)
    expected_ids = {event_id for event_id, _ in workload.events}
    checks.append(
        (
            sent == over_http and ok == sent,
            f"requests answered 2xx: {ok:,} of {sent:,} sent ({over_http:,} events over HTTP)",
        )
    )
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT id, status FROM stripe_events").fetchall()
        stored = Counter(r[0] for r in rows)
        statuses = Counter(r[1] for r in rows)
        charges = conn.execute(
            "SELECT charge_id, stream, amount, currency FROM ledger_entries WHERE kind = 'charge'"
        ).fetchall()
        refunds = conn.execute(
            "SELECT object_id, charge_id, amount FROM ledger_entries"
            " WHERE kind = 'refund' AND entry_key = object_id"
        ).fetchall()
        other = conn.execute(
            "SELECT kind, count(*) FROM ledger_entries WHERE kind NOT IN ('charge', 'refund')"
            " OR (kind = 'refund' AND entry_key <> object_id) GROUP BY kind"
        ).fetchall()
    missing = len(expected_ids - stored.keys())
    extra = len(stored.keys() - expected_ids)
    doubled = sum(1 for n in stored.values() if n > 1)
    checks.append(
        (
            len(rows) == len(expected_ids) and not (missing or extra or doubled),
            f"stripe_events rows: {len(rows)} for {len(expected_ids)} events sent "
            f"(missing {missing}, unexpected {extra}, duplicated {doubled}; "
            f"status {dict(statuses)})",
        )
    )
    checks.append(
        (
            statuses.get("failed", 0) == 0,
            f"events stored as failed: {statuses.get('failed', 0)}",
        )
    )
    booked = Counter(r[0] for r in charges)
    wrong = sum(
        1
        for charge_id, stream, amount, currency in charges
        if charge_id in workload.charges
        and (
            workload.charges[charge_id].stream != stream
            or workload.charges[charge_id].amount != amount
            or workload.charges[charge_id].currency != currency
        )
    )
    lost = len(workload.charges.keys() - booked.keys())
    unknown = len(booked.keys() - workload.charges.keys())
    twice = sum(1 for n in booked.values() if n > 1)
    checks.append(
        (
            len(charges) == len(workload.charges) and not (lost or unknown or twice or wrong),
            f"ledger entries of kind charge: {len(charges)} for {len(workload.charges)} distinct "
            f"charges sent (lost {lost}, unknown {unknown}, twice {twice}, "
            f"wrong stream/amount {wrong})",
        )
    )
    refund_rows = {r[0]: (r[1], -r[2]) for r in refunds}
    checks.append(
        (
            refund_rows == workload.refunds,
            f"ledger refund entries: {len(refunds)} for {len(workload.refunds)} refunds sent"
            + ("" if refund_rows == workload.refunds else " (differ in ids, charges or amounts)"),
        )
    )
    if other:
        checks.append((False, f"unexpected ledger entries: {dict(other)}"))
    return checks


def table_scans(url: str) -> dict[str, tuple[int, int, int]]:
    """(sequential scans, rows they read, index scans) so far, per table."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT relname, seq_scan, seq_tup_read, coalesce(idx_scan, 0) FROM pg_stat_user_tables"
        ).fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def commit_sizes(url: str, event_ids: list[str]) -> dict[str, float]:
    """How many events each transaction wrote: the writer stamps an event's processed_at with
    now(), its transaction's start time, so events of one commit share it."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*), avg(n), percentile_disc(0.5) WITHIN GROUP (ORDER BY n), max(n)"
            " FROM (SELECT count(*) AS n FROM stripe_events WHERE id = ANY(%s)"
            " GROUP BY processed_at) s",
            (event_ids,),
        ).fetchone()
    assert row is not None
    return {
        "transactions": row[0] or 0,
        "mean": float(row[1] or 0),
        "p50": row[2] or 0,
        "max": row[3] or 0,
    }


# --------------------------------------------------------------------------------------------
# profiling (optional)


def start_py_spy(
    pids: list[int], out_dir: Path, rate: int, extra: list[str]
) -> list[subprocess.Popen[bytes]]:
    exe = shutil.which("py-spy") or str(VENV_BIN / "py-spy")
    if not Path(exe).exists():
        raise BenchError("--py-spy needs py-spy: .venv/bin/pip install py-spy (not a project dep)")
    # --native needs py-spy to pause the process for each sample; otherwise do not.
    mode = [] if "--native" in extra else ["--nonblocking"]
    procs = []
    for pid in pids:
        with (out_dir / f"py-spy-{pid}.log").open("wb") as log:
            procs.append(
                subprocess.Popen(
                    [
                        exe,
                        "record",
                        "--pid",
                        str(pid),
                        "--rate",
                        str(rate),
                        "--format",
                        "raw",
                        "--output",
                        str(out_dir / f"py-spy-{pid}.txt"),
                        *mode,
                        *extra,
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    time.sleep(1.0)  # py-spy attaches
    return procs


def stop_py_spy(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()


# Layers of a worker, innermost first: a sample counts for the first layer (from the innermost
# frame outwards) that one of its frames belongs to.
PROFILE_LAYERS = [
    ("signature check (stripe verify_header, hmac)", ("stripe/_webhook", "hmac.py")),
    ("JSON parse/dump (json module)", ("json/",)),
    ("facts_from_event", ("app/ledger/facts",)),
    ("psycopg: array/param dumping", ("psycopg/types/", "psycopg/_queries", "re/")),
    ("psycopg: protocol, pipeline, waiting", ("psycopg",)),
    ("psycopg_pool + tenacity", ("psycopg_pool", "tenacity")),
    ("app/ledger/store.py write_events", ("app/ledger/store",)),
    ("ingest/event_writer.py", ("ingest/event_writer",)),
    ("ingest/stripe_webhook.py (handler's own code)", ("ingest/stripe_webhook",)),
    ("FastAPI/Starlette routing, middleware, response", ("fastapi/", "starlette/")),
    ("uvicorn + httptools (HTTP parsing, ASGI glue)", ("uvicorn/", "httptools")),
    ("event loop, sockets (uvloop/asyncio, C)", ("asyncio/", "uvloop", "selectors")),
]


def summarize_profile(out_dir: Path, us_per_event: float) -> str:
    """Where the workers' CPU goes, by layer, from the py-spy samples (idle excluded)."""
    own: Counter[str] = Counter()
    total = 0
    for path in out_dir.glob("py-spy-*.txt"):
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue  # py-spy --nonblocking may write a torn line
            n = int(count)
            total += n
            frames = stack.split(";")
            layer = "other"
            for frame in reversed(frames):
                hit = next(
                    (name for name, keys in PROFILE_LAYERS if any(k in frame for k in keys)), None
                )
                if hit:
                    layer = hit
                    break
            own[layer] += n
    if not total:
        return "py-spy: no samples (see bench/out/ingest/py-spy-*.log)"
    lines = [f"py-spy: {total} samples over the workers; share, and us of worker CPU per event"]
    for name, _ in [*PROFILE_LAYERS, ("other", ())]:
        share = own[name] / total
        lines.append(f"  {share:6.1%} {share * us_per_event:6.0f} us  {name}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# main


@contextlib.contextmanager
def scratch_database(admin_url: str) -> Iterator[tuple[str, str]]:
    name = f"roi_bench_{os.getpid()}_{int(time.time())}"
    admin_execute(admin_url, f'CREATE DATABASE "{name}"')
    try:
        yield name, with_database(admin_url, name)
    finally:
        try:
            admin_execute(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            say(f"dropped scratch database {name}")
        except psycopg.Error as exc:
            say(f"could not drop scratch database {name}: {exc}")


def seed_history(url: str, events: list[tuple[str, str]]) -> float:
    """Write earlier events straight through the app's own EventWriter, so the tables hold a
    history when the load starts, as a live ingester's do: sizes the planner and the indexes
    see at steady state, instead of a few thousand rows that grow 10x during the run."""
    if sys.path and Path(sys.path[0] or ".").resolve() == BENCH:
        sys.path.pop(0)  # this file, bench/ingest.py, would shadow the `ingest` package
    sys.path.insert(0, str(ROOT))
    from app.settings import Settings
    from ingest.event_writer import EventWriter
    from ingest.stripe_webhook import parse_event, stored_event

    settings = Settings(database_url=url, stripe_webhook_secret=WEBHOOK_SECRET)

    async def write_all() -> None:
        writer = EventWriter(url, writers=2)
        await writer.start()
        try:
            for i in range(0, len(events), 4000):
                chunk = events[i : i + 4000]
                outcomes = await asyncio.gather(
                    *(writer.submit(stored_event(parse_event(b), b, settings)) for _, b in chunk)
                )
                failed = [o for o in outcomes if o.value not in ("processed", "ignored")]
                if failed:
                    raise BenchError(f"seeding the history failed: {Counter(failed)}")
                # as autovacuum would as the tables grow (it may be off on a dev server)
                async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                    await conn.execute("ANALYZE")
        finally:
            await writer.stop()

    started = time.monotonic()
    asyncio.run(write_all())
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    return time.monotonic() - started


def send_all(
    args: argparse.Namespace,
    events: list[tuple[str, str]],
    req_dir: Path,
    port: int,
    **load: Any,
) -> tuple[LoadResult, int]:
    """Sign `events` now and send each once with wrk (`run_wrk`, with `load` passed on); the
    result and the mean body size."""
    signed_at, size = write_requests(events, req_dir, port, args.wrk_threads)
    bound = load_bound(args.max_seconds, signed_at)
    return run_wrk(req_dir, port, args.wrk_threads, args.connections, bound, **load), size


def http_ceiling(args: argparse.Namespace, events: list[tuple[str, str]], out: Path) -> LoadResult:
    """The measured phase's events sent the same way to `BareApp`: what the HTTP layer alone
    answers per second here, now (no signature, no JSON, no database)."""
    bare = BareApp("", free_port(), args.workers, out / "bare.log")
    try:
        bare.start()
        result, _ = send_all(args, events, out / "ceiling", bare.port, watch=bare)
    finally:
        bare.stop()
    if not result.complete or result.bad:
        raise BenchError(
            f"the HTTP ceiling run failed: {result.received}/{result.sent} answered, "
            f"{result.bad} non-2xx, wrk errors {result.errors}"
        )
    say(
        f"HTTP ceiling (bench/bare_webhook.py, same uvicorn, same wrk load): "
        f"{result.rate:.0f} requests/s, p99 {result.latency_us['p99'] / 1000:.1f} ms"
    )
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=30000, help="events measured (default 30000)")
    p.add_argument(
        "--warmup",
        type=int,
        default=5000,
        help="events sent first, not measured; then ANALYZE (default 5000: enough rows that "
        "the planner prefers the indexes)",
    )
    p.add_argument(
        "--history",
        type=int,
        default=50000,
        help="events written before the run, straight through the app's EventWriter "
        "(default 50000; 0 for an empty database)",
    )
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1)")
    p.add_argument(
        "--capture-errors",
        action="store_true",
        help="count 2xx in Lua and keep the bodies of other answers (costs wrk CPU)",
    )
    p.add_argument("--workers", type=int, default=2, help="roi serve --workers (default 2)")
    p.add_argument("--reference-seconds", type=int, default=15)
    p.add_argument("--reference-clients", type=int, default=8)
    p.add_argument(
        "--reference-runs",
        type=int,
        choices=(1, 2),
        default=2,
        help="pgbench before the load, and (2, the default) after it too; the higher counts",
    )
    p.add_argument("--max-seconds", type=int, default=200, help="hard bound on the load phase")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=60,
        help="seconds to wait at the start for other processes to leave the CPU (default 60)",
    )
    p.add_argument("--out", type=Path, default=BENCH / "out" / "ingest", help="logs, requests")
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    p.add_argument(
        "--ceiling",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure the HTTP layer alone (bench/bare_webhook.py) under the same load",
    )
    p.add_argument("--py-spy", action="store_true", help="profile the workers during the load")
    p.add_argument("--py-spy-rate", type=int, default=250)
    p.add_argument("--py-spy-args", default="", help="more py-spy record options, e.g. --native")
    args = p.parse_args(argv)
    if args.events < args.wrk_threads or args.warmup < args.wrk_threads:
        p.error("--events and --warmup must be at least --wrk-threads")
    if args.connections < args.wrk_threads or args.connections % args.wrk_threads:
        p.error("--connections must be a multiple of --wrk-threads")
    if args.max_seconds > SIGNATURE_TOLERANCE_S - 30:
        p.error(f"--max-seconds must stay under the {SIGNATURE_TOLERANCE_S} s signature tolerance")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool, hint in (
        ("wrk", "apt-get update && apt-get install -y wrk"),
        ("pgbench", "apt-get install -y postgresql-client (pgbench ships with it)"),
    ):
        if not shutil.which(tool):
            say(f"{tool} not found; install it with: {hint}")
            return 2
    admin_url = os.environ.get("DATABASE_URL") or DEFAULT_ADMIN_URL
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up as on Ctrl-C
    out = args.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    nproc = os.cpu_count()
    background = wait_for_quiet(args.quiet_wait)
    commit = git_commit()
    say(f"machine: nproc {nproc}, {platform_cpu()}; busy before the run: {background:.2f} cores")
    say(f"code: {commit}")
    say(
        f"app: roi serve --workers {args.workers}; load: wrk -t{args.wrk_threads} "
        f"-c{args.connections}, {args.events} events measured after {args.warmup} warm-up"
    )

    factory = EventFactory(args.seed)
    t0 = time.monotonic()
    history = factory.workload(args.history)
    warm = factory.workload(args.warmup)
    measured = factory.workload(args.events)
    parts = (history, warm, measured)
    workload = Workload(
        events=[e for w in parts for e in w.events],
        types=sum((w.types for w in parts), Counter()),
        charges={k: v for w in parts for k, v in w.charges.items()},
        refunds={k: v for w in parts for k, v in w.refunds.items()},
    )
    say(
        f"generated {len(workload.events)} events in {time.monotonic() - t0:.1f} s: "
        f"{dict(measured.types)} measured; {len(workload.charges)} distinct charges, "
        f"{len(workload.refunds)} refunds in all"
    )

    figures: dict[str, Any] = {"nproc": nproc, "workers": args.workers, "events": args.events}
    with scratch_database(admin_url) as (dbname, url):
        facts = pg_facts(url)
        say(
            f"postgres {facts.get('server_version')} at {urlsplit(url).netloc}: fsync "
            f"{facts.get('fsync')}, synchronous_commit {facts.get('synchronous_commit')}, "
            f"wal_sync_method {facts.get('wal_sync_method')}, shared_buffers "
            f"{facts.get('shared_buffers')} x 8kB, autovacuum {facts.get('autovacuum')}; "
            f"scratch database {dbname}"
        )
        migrate = subprocess.run(
            [str(VENV_BIN / "roi"), "migrate"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, "DATABASE_URL": url},
            check=False,
            timeout=120,
        )
        if migrate.returncode != 0:
            raise BenchError(f"roi migrate failed:\n{migrate.stdout}{migrate.stderr}")
        say(f"migrated: {migrate.stdout.strip()}")
        if history.events:
            seconds = seed_history(url, history.events)
            say(
                f"history: {len(history.events):,} earlier events written through the app's "
                f"EventWriter (no HTTP) in {seconds:.1f} s"
            )

        def reference_run(when: str) -> dict[str, Any]:
            say(
                f"reference {when}: pgbench -c {args.reference_clients} -T "
                f"{args.reference_seconds}, one INSERT ... ON CONFLICT DO NOTHING per "
                "transaction ..."
            )
            done = run_reference(
                url, out, args.reference_clients, args.reference_seconds, when.split()[0]
            )
            say(
                f"reference {when}: {done['tps']:.0f} tps (latency average "
                f"{done['latency_ms']:.2f} ms, other load {done['outside_cores']:.2f} cores)"
            )
            return done

        references = [reference_run("before the load")]

        app = App(url, free_port(), args.workers, out / "app.log")
        try:
            app.start()
            workers = app.worker_pids()
            say(f"app up on 127.0.0.1:{app.port}, worker pids {workers}")

            warm_load, size = send_all(
                args, warm.events, out / "warmup", app.port, capture=args.capture_errors
            )
            if not warm_load.complete:
                raise BenchError(
                    f"the warm-up did not finish: {warm_load.received} of {warm_load.sent} "
                    f"answered, wrk errors {warm_load.errors}"
                )
            say(
                f"warm-up: {warm_load.received}/{warm_load.sent} answered "
                f"({warm_load.ok} 2xx) at {warm_load.rate:.0f}/s, mean body {size} B"
            )
            # Planner statistics for the tables the warm-up filled, as autovacuum keeps them
            # on a live server (it may be off on a dev server: see the facts above). A plan
            # made on a table the statistics call tiny is a sequential scan, and it stays
            # cached in the app's prepared statements while the table grows.
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("ANALYZE")

            signed_at, size = write_requests(
                measured.events, out / "measured", app.port, args.wrk_threads
            )
            bound = load_bound(args.max_seconds, signed_at)
            checkpoint(url)
            time.sleep(1.5)  # idle backends publish their table statistics within a second
            scans_before = table_scans(url)
            spies = (
                start_py_spy(workers, out, args.py_spy_rate, args.py_spy_args.split())
                if args.py_spy
                else []
            )
            try:
                load = run_wrk(
                    out / "measured",
                    app.port,
                    args.wrk_threads,
                    args.connections,
                    bound,
                    watch=app,
                    pg_pids=lambda: postgres_pids(url, dbname),
                    postmaster=postmaster_pid(url),
                    capture=args.capture_errors,
                )
            finally:
                stop_py_spy(spies)
            say(
                f"measured: {load.received}/{load.sent} answered ({load.ok} 2xx) in "
                f"{load.seconds:.2f} s, mean body {size} B; wrk errors {load.errors}"
            )
            for phase, result in (("warm-up", warm_load), ("measured", load)):
                if result.bad_sample:
                    say(f"{phase}: non-2xx answers (sample):\n" + result.bad_sample.rstrip())
                elif result.bad:
                    say(
                        f"{phase}: {result.bad} answers with a status >= 400; rerun with "
                        f"--capture-errors to see them, or read {out / 'app.log'}"
                    )
        finally:
            app.stop()
            if app.proc and app.proc.returncode not in (0, None, -signal.SIGTERM):
                say(f"app exit status {app.proc.returncode}; log tail:\n{app.log_tail(15)}")
        ceiling = http_ceiling(args, measured.events, out) if args.ceiling else None
        if args.reference_runs > 1:
            references.append(reference_run("after the load"))
        # Noise on a shared machine only ever lowers a rate: the higher run is the reference.
        reference = max(references, key=lambda r: r["tps"])

        scans = {
            table: tuple(
                a - b for a, b in zip(after, scans_before.get(table, (0, 0, 0)), strict=True)
            )
            for table, after in table_scans(url).items()
        }
        over_http = len(warm.events) + len(measured.events)
        checks = verify(url, workload, [warm_load, load], over_http)
        batches = commit_sizes(url, [event_id for event_id, _ in measured.events])

    lat = load.latency_us
    ratio = load.rate / reference["tps"] if reference["tps"] else 0.0
    p50, p99 = lat["p50"] / 1000, lat["p99"] / 1000
    cpu = load.cpu
    n = max(1, load.received)

    def per_event(key: str) -> float:
        return cpu[key] / n * 1e6

    worker_cpu = {int(k.split("_")[1]): v for k, v in cpu.items() if k.startswith("worker_")}
    workers_us = sum(worker_cpu.values()) / n * 1e6
    exactly_once = all(ok for ok, _ in checks) and load.complete
    seq_rows = sum(v[1] for v in scans.values())
    figures.update(
        events_per_s=round(load.rate, 1),
        seconds=round(load.seconds, 3),
        p50_ms=round(p50, 2),
        p90_ms=round(lat["p90"] / 1000, 2),
        p99_ms=round(p99, 2),
        max_ms=round(lat["max"] / 1000, 2),
        reference_tps=reference["tps"],
        reference_runs_tps=[r["tps"] for r in references],
        ratio=round(ratio, 3),
        app_cpu_us_per_event=round(per_event("app_s"), 1),
        postgres_cpu_us_per_event=round(per_event("postgres_s"), 1),
        wrk_cpu_us_per_event=round(per_event("wrk_s"), 1),
        machine_busy_cores=round(cpu["machine_busy_cores"], 2),
        reference_machine_busy_cores=round(reference["machine_busy_cores"], 2),
        outside_cores_load=round(cpu["outside_cores"], 2),
        outside_cores_reference=round(reference["outside_cores"], 2),
        background_busy_cores=round(background, 2),
        events_per_transaction=round(batches["mean"], 2),
        seq_scan_rows_per_event=round(seq_rows / n, 2),
        commit=commit,
        connections_per_worker=load.spread,
        worker_cpu_s={str(p): round(v, 2) for p, v in worker_cpu.items()},
        exactly_once=exactly_once,
    )
    say("")
    say("=" * 78)
    say(
        f"machine: nproc {nproc}; app: roi serve --workers {args.workers} (ROI_INGEST_WRITERS "
        f"{os.environ.get('ROI_INGEST_WRITERS', '2, the default')}); load: wrk "
        f"-t{args.wrk_threads} -c{args.connections}, keep-alive, 127.0.0.1"
    )
    say(
        f"events measured:   {load.received:,} in {load.seconds:.2f} s, after {args.warmup:,} "
        "warm-up events (not counted)"
    )
    say(f"ingest rate:       {load.rate:,.0f} events/s")
    say(
        f"latency:           p50 {p50:.2f} ms, p90 {lat['p90'] / 1000:.2f} ms, p99 {p99:.2f} ms, "
        f"p99.9 {lat['p999'] / 1000:.2f} ms, max {lat['max'] / 1000:.2f} ms"
    )
    runs = " and ".join(f"{r['tps']:,.0f}" for r in references)
    say(
        f"reference:         {reference['tps']:,.0f} tps, the higher of {runs} (pgbench, "
        f"{args.reference_clients} clients, one durable INSERT ... ON CONFLICT DO NOTHING per "
        f"transaction; machine busy {reference['machine_busy_cores']:.2f} cores)"
    )
    say(f"ratio:             {ratio:.3f} of the reference")
    if ceiling is not None:
        ceiling_ratio = ceiling.rate / reference["tps"] if reference["tps"] else 0.0
        figures.update(
            ceiling_requests_per_s=round(ceiling.rate, 1), ceiling_ratio=round(ceiling_ratio, 3)
        )
        say(
            f"HTTP ceiling:      {ceiling.rate:,.0f} requests/s = {ceiling_ratio:.3f} of the "
            f"reference: the same load answered by a FastAPI endpoint that only reads the body "
            f"(bench/bare_webhook.py), p99 {ceiling.latency_us['p99'] / 1000:.2f} ms; the app "
            f"reaches {load.rate / ceiling.rate:.2f} of it"
        )
    say(
        f"group commit:      {batches['transactions']:,} transactions for the measured events, "
        f"{batches['mean']:.1f} events each on average (median {batches['p50']}, "
        f"max {batches['max']})"
    )
    say(
        f"CPU per event:     app workers {workers_us:.0f} us (app processes user "
        f"{per_event('app_user_s'):.0f} + system {per_event('app_sys_s'):.0f} us), postgres "
        f"{per_event('postgres_s'):.0f} us, wrk {per_event('wrk_s'):.0f} us; machine busy "
        f"{cpu['machine_busy_cores']:.2f} of {nproc} cores"
    )
    outside = max(cpu["outside_cores"], reference["outside_cores"])
    say(
        f"other load:        {cpu['outside_cores']:.2f} cores busy outside the benchmark during "
        f"the load, {reference['outside_cores']:.2f} during the reference"
        + (
            "; biggest: " + ", ".join(f"{name} {c:.2f}" for c, name in top)
            if (top := cpu["outside_top"] or reference["outside_top"])
            else ""
        )
    )
    if outside > OUTSIDE_LOAD_WARN:
        say(
            "WARNING: the machine was not quiet (another process used CPU): the figures, the "
            "reference above all, are low; rerun when the machine is idle"
        )
    worst = sorted(((v[1], t) for t, v in scans.items() if v[1]), reverse=True)[:3]
    say(
        f"sequential scans:  {sum(v[0] for v in scans.values()):,} during the load, reading "
        f"{seq_rows:,} rows ({seq_rows / n:.1f} per event)"
        + (": " + ", ".join(f"{t} {rows:,}" for rows, t in worst) if worst else "")
    )
    if seq_rows / n > SEQ_ROWS_WARN:
        say(
            "WARNING: the write path scans whole tables: its cost grows with the table "
            "(a plan cached while the table was small, or a missing index)"
        )
    if load.spread:
        say(
            "per worker:        "
            + ", ".join(
                f"pid {p}: {load.spread.get(p, '?')} connections, {worker_cpu.get(p, 0):.1f} CPU-s"
                for p in worker_cpu
            )
        )
        counts = list(load.spread.values())
        if counts and max(counts) > 2 * max(1, min(counts)):
            say(
                "                   (uneven: the kernel gave most keep-alive connections to one "
                "worker; see bench/README.md)"
            )
    for ok, text in checks:
        say(f"  {'ok  ' if ok else 'FAIL'} {text}")
    if args.py_spy:
        say(summarize_profile(out, workers_us))
        say("(py-spy took CPU during this run: its figures are low; rerun without it for them)")
    # Speed only counts for answers that did the work: not for 4xx/5xx, nor an unfinished run.
    valid = load.complete and load.bad == 0
    invalid = "" if valid else " (not valid: not every request was answered 2xx)"
    results = [
        (
            valid and ratio >= RATIO_TARGET,
            f"throughput: {load.rate:,.0f} events/s = {ratio:.3f} of "
            f"{reference['tps']:,.0f} tps reference (target >= {RATIO_TARGET}){invalid}",
        ),
        (
            valid and p99 <= P99_TARGET_MS,
            f"latency: p99 {p99:.2f} ms with {args.connections} connections "
            f"(target <= {P99_TARGET_MS:.0f} ms){invalid}",
        ),
        (
            exactly_once,
            f"exactly-once: {over_http:,} events over HTTP all 2xx; {len(workload.events):,} "
            f"events stored once each; {len(workload.charges):,} charges, as many charge "
            "ledger entries"
            if exactly_once
            else "exactly-once: see the FAIL checks above",
        ),
    ]
    for ok, text in results:
        say(f"{'PASS' if ok else 'FAIL'} {text}")
    say(
        f"(Python CPU budget per event at the target: about {PY_CPU_BUDGET_US} us; "
        f"here the workers used {workers_us:.0f} us)"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if all(ok for ok, _ in results) else 1


def load_bound(max_seconds: int, signed_at: float) -> int:
    """Seconds a load phase may take: its signatures must stay within the tolerance."""
    return min(max_seconds, int(SIGNATURE_TOLERANCE_S - (time.time() - signed_at)) - 30)


def wait_for_quiet(patience: float) -> float:
    """Wait (at most `patience` seconds) for the machine to be idle; return the busy cores."""
    deadline = time.monotonic() + patience
    while True:
        before = machine_cpu()
        time.sleep(2)
        busy = busy_cores(before, machine_cpu())
        if busy <= OUTSIDE_LOAD_WARN or time.monotonic() >= deadline:
            return busy
        say(f"waiting for the machine to be quiet: {busy:.2f} cores busy")


def git_commit() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
        return done.stdout.strip()

    head = git("log", "-1", "--format=%h %s") or "not a git checkout"
    dirty = git("status", "--porcelain", "--", "app", "ingest", "migrations", "pyproject.toml")
    return head + (" (+ uncommitted changes in app/ingest/migrations)" if dirty else "")


def platform_cpu() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "cpu unknown"


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        say(f"FAIL benchmark could not run: {exc}")
        sys.exit(2)
    except KeyboardInterrupt:
        say("interrupted")
        sys.exit(130)
