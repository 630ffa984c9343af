"""`roi demo`: the product working in one command.

Starts the app (on the embedded PostgreSQL unless DATABASE_URL is set), seeds a year of a
small company's figures through the real front doors (signed Stripe events to the webhook,
model prices, FX rates and AI tasks to the API), then keeps sending a payment every few
seconds so the dashboard moves. Nothing is written behind the app's back, so what the demo
shows is what production would show for the same events.

The year is generated from a fixed seed: ids are stable, so running the demo again sends
duplicates that the app recognises (nothing is counted twice), and seeding is skipped
altogether when the demo's events are already there.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import typer
import uvicorn
from sqlalchemy import select
from tqdm import tqdm

from app.audit import record_audit
from app.auth.principal import Role, cli_principal
from app.auth.tokens import create_token, find_token, revoke_token
from app.models import stripe_events
from app.money import format_major
from app.settings import Settings, get_settings
from ingest import stripe_samples as se

DEMO_SECRET = "whsec_roi_demo_only_for_the_local_demo"
MARKER_EVENT = "evt_demo_0000000"  # the first event of the year: present means seeded
SEED = 20_260_101
POSTERS = 12  # concurrent webhook deliveries while seeding, as Stripe's would be
TASK_BATCH = 10_000  # the most POST /api/tasks takes at once
EUR_USD = 1.08


@dataclass(frozen=True)
class StreamPlan:
    """One income stream's economics over the demo year."""

    name: str
    currency: str
    price: int  # minor units per payment
    per_day: float  # payments a day at the start of the year...
    growth: float  # ...times this by its end
    refund_rate: float
    tasks_per_payment: int
    ai_model: str
    cost_share: float  # AI cost as a share of the payment at the start of the year...
    cost_growth: float  # ...times this by its end (the chatbot's costs run away late)


STREAMS = [
    StreamPlan("api-credits", "usd", 4_900, 4, 2.2, 0.01, 4, "gpt-4o", 0.35, 1.0),
    StreamPlan("saas-pro", "usd", 1_900, 6, 1.3, 0.04, 2, "claude-sonnet", 0.25, 1.1),
    StreamPlan("consulting", "eur", 250_000, 0.25, 1.0, 0.0, 25, "gpt-4o", 0.10, 1.0),
    StreamPlan("chatbot", "usd", 900, 5, 1.6, 0.02, 6, "claude-sonnet", 0.55, 3.2),
    StreamPlan("templates", "usd", 2_900, 2, 1.1, 0.03, 1, "llama-70b-selfhosted", 0.15, 1.0),
]
TASK_TYPES = ("generate", "classify", "summarize")
PRICES = [  # per million tokens in / out, per GPU-second; in usd
    {"ai_model": "gpt-4o", "per_million_in": "2.50", "per_million_out": "10.00"},
    {"ai_model": "claude-sonnet", "per_million_in": "3.00", "per_million_out": "15.00"},
    {"ai_model": "llama-70b-selfhosted", "per_gpu_second": "0.0011"},
]
INPUT_PER_OUTPUT_TOKEN = 3  # prompts are longer than answers
GPU_SECOND_USD = 0.0011


@dataclass
class Year:
    events: list[dict[str, Any]]
    tasks: list[dict[str, Any]]


def plan_year(today: date, days: int = 365, seed: int = SEED) -> Year:
    """The demo's year, ending yesterday: payments, refunds, one lost and one won dispute,
    and the AI tasks behind the payments. Pure: the same arguments give the same year."""
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    tasks: list[dict[str, Any]] = []
    first = today - timedelta(days=days)
    counter = iter(range(10**9))

    def next_id(prefix: str) -> str:
        return f"{prefix}_demo_{next(counter):07d}"

    for day_index in range(days):
        day = first + timedelta(days=day_index)
        progress = day_index / max(days - 1, 1)
        midnight = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())
        for plan in STREAMS:
            expected = plan.per_day * (1 + (plan.growth - 1) * progress)
            for _ in range(_poisson(rng, expected)):
                at = midnight + rng.randrange(86_400)
                charge = se.charge(id=next_id("ch"), amount=plan.price, currency=plan.currency,
                                   created=at, metadata={"stream": plan.name})  # fmt: skip
                events.append(se.charge_succeeded(id=next_id("evt"), charge=charge, created=at))
                if rng.random() < plan.refund_rate:
                    later = at + rng.randrange(3_600, 5 * 86_400)
                    refund = se.refund(id=next_id("re"), charge=charge["id"], created=later,
                                       amount=plan.price // rng.choice((1, 2)),
                                       currency=plan.currency)  # fmt: skip
                    events.append(se.refund_created(id=next_id("evt"), refund=refund,
                                                    created=later))  # fmt: skip
                tasks += _tasks_for(rng, plan, at, progress, next_id)
    events += _disputes(events, next_id)
    events.sort(key=lambda e: e["created"])
    # The first event carries the marker id: present means the year is already in.
    events[0] = {**events[0], "id": MARKER_EVENT}
    return Year(events, tasks)


def _poisson(rng: random.Random, mean: float) -> int:
    """Payments a day: Poisson by counting exponential gaps (mean is small)."""
    count, total = 0, rng.expovariate(1.0)
    while total < mean:
        count += 1
        total += rng.expovariate(1.0)
    return count


def _usd_per_token(ai_model: str) -> float:
    """Cost of one output token with its input tokens, at the demo's prices."""
    (price,) = [p for p in PRICES if p["ai_model"] == ai_model]
    return (
        float(price["per_million_out"]) + INPUT_PER_OUTPUT_TOKEN * float(price["per_million_in"])
    ) / 1e6


def _tasks_for(
    rng: random.Random, plan: StreamPlan, at: int, progress: float, next_id: Any
) -> Iterator[dict[str, Any]]:
    """The tasks behind one payment, sized so that they cost `cost_share` of it."""
    share = plan.cost_share * (1 + (plan.cost_growth - 1) * progress**3)
    payment_usd = plan.price / 100 * (EUR_USD if plan.currency == "eur" else 1)
    per_task_usd = payment_usd * share / plan.tasks_per_payment
    for _ in range(plan.tasks_per_payment):
        started = datetime.fromtimestamp(at - rng.randrange(0, 3_600), UTC)
        status = rng.choices(("succeeded", "failed", "canceled"), (0.93, 0.05, 0.02))[0]
        task: dict[str, Any] = {
            "external_id": next_id("task"),
            "stream": plan.name,
            "task_type": rng.choice(TASK_TYPES),
            "ai_model": plan.ai_model,
            "status": status,
            "started_at": started.isoformat(),
            "duration_ms": int(rng.lognormvariate(7.5, 0.6)),
        }
        noise = rng.uniform(0.6, 1.4)
        if plan.ai_model.endswith("selfhosted"):
            task["gpu_seconds"] = f"{per_task_usd * noise / GPU_SECOND_USD:.3f}"
        else:
            tokens_out = int(per_task_usd * noise / _usd_per_token(plan.ai_model))
            task["tokens_out"] = tokens_out
            task["tokens_in"] = tokens_out * INPUT_PER_OUTPUT_TOKEN
        yield task


def _disputes(events: list[dict[str, Any]], next_id: Any) -> list[dict[str, Any]]:
    """One dispute lost (the money and a fee withdrawn) and one won (given back)."""
    charges = [e["data"]["object"] for e in events if e["type"] == "charge.succeeded"]
    out: list[dict[str, Any]] = []
    for charge, won in ((charges[len(charges) // 3], False), (charges[len(charges) // 2], True)):
        opened = charge["created"] + 10 * 86_400
        dispute_id = next_id("dp")
        txns = [se.dispute_withdrawal(id=next_id("txn"), dispute_id=dispute_id,
                                      amount=charge["amount"], created=opened,
                                      currency=charge["currency"])]  # fmt: skip
        if won:
            txns.append(se.dispute_reinstatement(id=next_id("txn"), dispute_id=dispute_id,
                                                 amount=charge["amount"],
                                                 created=opened + 20 * 86_400,
                                                 currency=charge["currency"]))  # fmt: skip
        status = "won" if won else "lost"
        dispute = se.dispute(id=dispute_id, charge=charge["id"], amount=charge["amount"],
                             currency=charge["currency"], created=opened, status=status,
                             balance_transactions=txns)  # fmt: skip
        closed_at = opened + 25 * 86_400
        out.append(se.dispute_event(type="charge.dispute.closed", id=next_id("evt"),
                                    dispute=dispute, created=closed_at))  # fmt: skip
    return out


def fx_rates(today: date, days: int) -> list[dict[str, str]]:
    """A daily eur->usd rate wandering around 1.08."""
    rng = random.Random(SEED + 1)
    rate, rates = EUR_USD, []
    for offset in range(days + 2):
        rate = min(1.2, max(0.98, rate + rng.gauss(0, 0.003)))
        day = today - timedelta(days=days + 1 - offset)
        rates.append({"day": day.isoformat(), "currency": "eur", "rate": f"{rate:.4f}"})
    return rates


class DemoServer:
    """The app in this process, on a background thread."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the app did not start (see the log above)")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def deliver(http: httpx.Client, event: dict[str, Any], secret: str) -> None:
    """Post one signed event as Stripe would, retrying as Stripe would on a 5xx."""
    body = se.encode(event)
    for attempt in range(5):
        answer = http.post(
            "/webhooks/stripe",
            content=body,
            headers={"Stripe-Signature": se.signature_header(body, secret=secret),
                     "Content-Type": "application/json"},
        )  # fmt: skip
        if answer.status_code == 200:
            return
        if answer.status_code < 500:
            raise RuntimeError(f"the webhook refused {event['id']}: {answer.text}")
        time.sleep(0.2 * 2**attempt)
    raise RuntimeError(f"the webhook kept failing for {event['id']}: {answer.text}")


def seed_year(http: httpx.Client, secret: str, today: date, days: int) -> tuple[int, int]:
    """Prices, FX rates, the year's events and tasks; returns (events, tasks) sent."""
    year = plan_year(today, days)
    valid_from = datetime.combine(today - timedelta(days=days + 1), datetime.min.time(), UTC)
    for price in PRICES:
        answer = http.post(
            "/api/prices", json={**price, "currency": "usd", "valid_from": valid_from.isoformat()}
        )
        if answer.status_code >= 300 and answer.status_code != 409:
            raise RuntimeError(f"POST /api/prices: {answer.status_code} {answer.text}")
    answer = http.post("/api/fx-rates", json=fx_rates(today, days))
    answer.raise_for_status()
    total = len(year.events) + len(year.tasks)
    with tqdm(total=total, unit=" items", desc="seeding a year") as bar:
        for start in range(0, len(year.tasks), TASK_BATCH):
            batch = year.tasks[start : start + TASK_BATCH]
            answer = http.post("/api/tasks", json=batch)
            if answer.status_code != 200:
                raise RuntimeError(f"POST /api/tasks: {answer.status_code} {answer.text[:500]}")
            bar.update(len(batch))
        # The marker first and alone: if seeding stops half-way, the rerun starts again.
        rest = year.events[1:]
        with ThreadPoolExecutor(POSTERS) as pool:
            for _ in pool.map(lambda e: deliver(http, e, secret), rest):
                bar.update(1)
        deliver(http, year.events[0], secret)
        bar.update(1)
    return len(year.events), len(year.tasks)


def live_payments(http: httpx.Client, secret: str, every: float, stop: threading.Event) -> None:
    """A payment every `every` seconds (on average), with its AI tasks, until stopped."""
    rng = random.Random()
    while not stop.wait(rng.expovariate(1 / every)):
        plan = rng.choices(STREAMS, [p.per_day * p.growth for p in STREAMS])[0]
        at = int(time.time())
        charge = se.charge(amount=plan.price, currency=plan.currency, created=at,
                           metadata={"stream": plan.name})  # fmt: skip
        deliver(http, se.charge_succeeded(charge=charge, created=at), secret)
        tasks = list(_tasks_for(rng, plan, at, 1.0, se.new_id))
        http.post("/api/tasks", json=tasks).raise_for_status()
        amount = format_major(plan.price, plan.currency)
        print(f"{datetime.now():%H:%M:%S}  {plan.name}: {amount} {plan.currency}", flush=True)


DEMO_TOKEN_NAME = "demo"


def demo_token(app: Any) -> str:
    """An admin token for the demo's own API calls and for signing in to its dashboard. Only
    hashes are kept, so each run revokes the previous run's token and makes a new one."""
    principal = cli_principal()
    with app.state.engine.begin() as conn:
        previous = find_token(conn, DEMO_TOKEN_NAME)
        if previous is not None:
            revoke_token(conn, DEMO_TOKEN_NAME)
            record_audit(conn, principal, "token.revoke", f"token:{previous.id}",
                         {"name": DEMO_TOKEN_NAME})  # fmt: skip
        info, token = create_token(
            conn, name=DEMO_TOKEN_NAME, role=Role.ADMIN, created_by=principal.name
        )
        record_audit(conn, principal, "token.create", f"token:{info.id}",
                     {"name": DEMO_TOKEN_NAME, "role": Role.ADMIN.value})  # fmt: skip
    return token


def already_seeded(app: Any) -> bool:
    with app.state.engine.connect() as conn:
        found = conn.scalar(select(stripe_events.c.id).where(stripe_events.c.id == MARKER_EVENT))
    return found is not None


def demo_settings(settings: Settings) -> tuple[Settings, str]:
    """The demo's webhook secret: the configured one, or a fixed local one."""
    if settings.webhook_secrets:
        return settings, settings.webhook_secrets[0]
    return settings.model_copy(update={"stripe_webhook_secret": DEMO_SECRET}), DEMO_SECRET


def run_demo(host: str, port: int, days: int, every: float) -> None:
    """`roi demo` (app/demo_cli.py): start the app, seed a year through its webhook and API,
    then keep sending live payments until Ctrl-C."""
    from app.main import create_app

    settings, secret = demo_settings(get_settings())
    app = create_app(settings)
    server = DemoServer(app, host, port)
    server.start()
    stop = threading.Event()
    token = demo_token(app)
    auth = {"Authorization": f"Bearer {token}"}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60, headers=auth) as http:
            if already_seeded(app):
                typer.echo("the demo year is already in the database; not seeding again")
            else:
                started = time.monotonic()
                events, tasks = seed_year(http, secret, date.today(), days)
                typer.echo(f"seeded {events:,} Stripe events and {tasks:,} AI tasks "
                           f"in {time.monotonic() - started:.0f} s")  # fmt: skip
            typer.secho(f"\nDashboard: http://{host}:{port}/dashboard/", bold=True)
            typer.echo(f"Sign in with this admin token (valid until the next demo run):\n"
                       f"           {token}", err=True)  # fmt: skip
            typer.echo(f"Webhook:   http://{host}:{port}/webhooks/stripe (secret {secret})")
            if every > 0:
                typer.echo(f"Sending a live payment about every {every:g} s; Ctrl-C stops.\n")
                live_payments(http, secret, every, stop)
            else:
                typer.echo("Serving; Ctrl-C stops.")
                stop.wait()
    except KeyboardInterrupt:
        typer.echo("stopping")
    finally:
        stop.set()
        server.stop()
