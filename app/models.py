"""The schema, as SQLAlchemy Core tables.

The migrations must produce exactly this; `roi migrate --check` fails when they do not.

Money columns are integers in the currency's minor unit with a lower-case ISO 4217 code beside
them. Stripe facts (charges, refunds, disputes, balance transactions, attribution hints) are
merged from events with order-independent rules (see app/ledger.py); `ledger_entries` is
derived from them and is what every figure is summed from. An `event_id` column on a fact or an
entry holds the smallest id among the events that announced it: deterministic, whatever the
arrival order.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ColumnElement,
    Computed,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
    func,
    literal_column,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from app.money import implied_rate_text, major_units_text

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _ts(name: str, nullable: bool = True) -> Column[object]:
    return Column(name, DateTime(timezone=True), nullable=nullable)


# Every Stripe event as received, kept whatever happens to it.
stripe_events = Table(
    "stripe_events",
    metadata,
    Column("id", Text, primary_key=True),
    Column("type", Text, nullable=False),
    Column("api_version", Text),
    _ts("created", nullable=False),
    Column("livemode", Boolean, nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("status", Text, nullable=False),
    Column("error", Text),
    Column("attempts", Integer, nullable=False, server_default=text("1")),
    _ts("processed_at"),
    CheckConstraint("status IN ('processed', 'ignored', 'failed')", name="status"),
    Index("ix_stripe_events_status_failed", "status", postgresql_where=text("status = 'failed'")),
    Index("ix_stripe_events_created", "created"),
    Index("ix_stripe_events_received_at", "received_at"),
)

# Merged state of each charge. A row may exist before the charge itself is seen (a refund or
# dispute arrived first, or a payment intent pointed at it): then `created` is null and the
# charge is not revenue yet. Its stream is resolved when its ledger entries are rebuilt.
charges = Table(
    "charges",
    metadata,
    Column("id", Text, primary_key=True),
    Column("currency", Text),
    Column("amount", BigInteger),
    Column("amount_captured", BigInteger),
    Column("captured", Boolean, nullable=False, server_default=text("false")),
    Column("succeeded", Boolean, nullable=False, server_default=text("false")),
    _ts("created"),
    Column("payment_intent", Text),
    Column("invoice", Text),
    Column("customer", Text),
    Column("balance_transaction", Text),
    # The stream named in the charge's own metadata, from the newest event that carried the
    # charge; (meta_event_created, meta_event_id) orders observations deterministically.
    Column("meta_stream", Text),
    _ts("meta_event_created"),
    Column("meta_event_id", Text),
    # High-water mark of the cumulative amount_refunded, and when it was first reached.
    Column("amount_refunded", BigInteger, nullable=False, server_default=text("0")),
    _ts("amount_refunded_at"),
    Column("event_id", Text),
    Index("ix_charges_payment_intent", "payment_intent"),
    Index("ix_charges_invoice", "invoice"),
)

refunds = Table(
    "refunds",
    metadata,
    Column("id", Text, primary_key=True),
    Column("charge_id", Text, nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("currency", Text, nullable=False),
    _ts("created", nullable=False),
    Column("status", Text, nullable=False),
    # pending < succeeded < failed/canceled: a refund only ever moves up this order.
    Column("status_rank", SmallInteger, nullable=False),
    _ts("reversed_at"),
    Column("balance_transaction", Text),
    Column("event_id", Text),
    Index("ix_refunds_charge_id", "charge_id"),
)

disputes = Table(
    "disputes",
    metadata,
    Column("id", Text, primary_key=True),
    Column("charge_id", Text, nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("currency", Text, nullable=False),
    _ts("created", nullable=False),
    Column("withdrawn", Boolean, nullable=False, server_default=text("false")),
    _ts("withdrawn_at"),
    Column("reinstated", Boolean, nullable=False, server_default=text("false")),
    _ts("reinstated_at"),
    Column("event_id", Text),
    Index("ix_disputes_charge_id", "charge_id"),
)

# Stripe balance transactions: the settlement amount and the fee of a movement. Filled from
# disputes (which embed them) and, with an API key, fetched for charges and refunds.
balance_transactions = Table(
    "balance_transactions",
    metadata,
    Column("id", Text, primary_key=True),
    Column("charge_id", Text, nullable=False),
    Column("source_id", Text, nullable=False),
    Column("type", Text, nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("fee", BigInteger, nullable=False),
    Column("net", BigInteger, nullable=False),
    Column("currency", Text, nullable=False),
    Column("exchange_rate", Numeric(24, 12)),
    _ts("created", nullable=False),
    Index("ix_balance_transactions_charge_id", "charge_id"),
)

# What a charge came from: metadata and ids seen on payment intents, invoices, checkout
# sessions, subscriptions, prices and products, anchored at the charge, payment intent or
# invoice id through which they reach a charge. `priority` orders sources for attribution.
attribution_hints = Table(
    "attribution_hints",
    metadata,
    Column("anchor_id", Text, primary_key=True),
    Column("source_id", Text, primary_key=True),
    Column("priority", SmallInteger, nullable=False),
    Column("stream", Text),
    _ts("event_created", nullable=False),
    Column("event_id", Text, nullable=False),
)

# Admin-edited: Stripe product, price or customer id -> stream.
stream_mappings = Table(
    "stream_mappings",
    metadata,
    Column("stripe_id", Text, primary_key=True),
    Column("stream", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint(
        "stripe_id ~ '^(prod|price|cus)_'",
        name="stripe_id_kind",
    ),
)

# The columns the ledger's generated columns are computed from, by name.
_amount: ColumnElement[int] = literal_column("amount")
_currency: ColumnElement[str] = literal_column("currency")
_settled: ColumnElement[int] = literal_column("settlement_amount")
_settlement_currency: ColumnElement[str] = literal_column("settlement_currency")

# The revenue ledger: one row per money movement, signed, in minor units.
ledger_entries = Table(
    "ledger_entries",
    metadata,
    Column("entry_key", Text, primary_key=True),
    Column("kind", Text, nullable=False),
    Column("charge_id", Text, nullable=False),
    Column("object_id", Text, nullable=False),
    Column("stream", Text, nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("currency", Text, nullable=False),
    _ts("booked_at", nullable=False),
    Column("balance_transaction", Text),
    Column("event_id", Text),
    # What the movement settled as in the Stripe balance, when its balance transaction is known.
    Column("settlement_amount", BigInteger),
    Column("settlement_currency", Text),
    # The CSV export's cells that depend on nothing but the row, written once by PostgreSQL
    # when the row is (generated columns, migration 0015) instead of on every export.
    Column("amount_major", Text, Computed(major_units_text(_amount, _currency), persisted=True)),
    Column(
        "settlement_major",
        Text,
        Computed(major_units_text(_settled, _settlement_currency), persisted=True),
    ),
    Column(
        "settlement_rate",
        Text,
        Computed(
            implied_rate_text(_amount, _currency, _settled, _settlement_currency), persisted=True
        ),
    ),
    CheckConstraint("kind IN ('charge', 'refund', 'dispute', 'fee')", name="kind"),
    Index("ix_ledger_entries_charge_id", "charge_id"),
    Index("ix_ledger_entries_booked_at", "booked_at"),
    # Movements whose balance transaction is not known yet (migration 0010): the fee fetcher's
    # work list and the `fees_unknown` count, small once fees are caught up.
    Index(
        "ix_ledger_entries_settlement_unknown",
        "booked_at",
        "entry_key",
        postgresql_where=text("settlement_amount IS NULL"),
    ),
)

# Balance transactions whose fetch from the Stripe API gave up (ingest/stripe_catchup.py): kept
# so the next round tries again, after `next_attempt_at`. A row goes once the fetch succeeds.
stripe_fee_fetches = Table(
    "stripe_fee_fetches",
    metadata,
    Column("balance_transaction", Text, primary_key=True),
    Column("charge_id", Text, nullable=False),
    Column("source_id", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("last_error", Text, nullable=False),
    _ts("next_attempt_at", nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# How far the event catch-up got (`roi reconcile`): every listed event created up to
# `high_water` is stored (processed or ignored), so a run without --since starts there.
stripe_catchup_state = Table(
    "stripe_catchup_state",
    metadata,
    Column("name", Text, primary_key=True),
    _ts("high_water"),
    Column("high_water_event_id", Text),
    _ts("last_run_at"),
    Column("last_error", Text),
    CheckConstraint("name IN ('events')", name="name"),
)

# AI task costs. Filled by the task intake; see docs/ for the table contract.
execution_tasks = Table(
    "execution_tasks",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("external_id", Text, nullable=False, unique=True),
    Column("stream", Text, nullable=False),
    Column("task_type", Text, nullable=False),
    Column("ai_model", Text),
    Column("status", Text, nullable=False),
    _ts("started_at", nullable=False),
    _ts("finished_at"),
    Column("duration_ms", BigInteger),
    Column("tokens_in", BigInteger),
    Column("tokens_out", BigInteger),
    Column("gpu_seconds", Numeric(18, 6)),
    # Sub-cent AI costs are common, so this minor-unit amount keeps six decimals (never float).
    Column("cost_amount", Numeric(24, 6)),
    Column("cost_currency", Text),
    # The cost from the model price valid at started_at (app/pricing.py), same unit as
    # cost_amount; null when a cost was sent or no price applies. Owned by the app.
    Column("priced_amount", Numeric(24, 6)),
    Column("priced_currency", Text),
    Column("price_id", BigInteger, ForeignKey("model_prices.id")),
    Column(
        "cost_source",
        Text,
        Computed(
            "CASE WHEN cost_amount IS NOT NULL THEN 'sent' "
            "WHEN priced_amount IS NOT NULL THEN 'priced' ELSE 'unpriced' END",
            persisted=True,
        ),
        nullable=False,
    ),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint(
        "status IN ('queued', 'running', 'succeeded', 'failed', 'canceled')", name="status"
    ),
    CheckConstraint(
        "finished_at IS NULL OR finished_at >= started_at", name="finished_after_start"
    ),
    CheckConstraint(
        "duration_ms >= 0 AND tokens_in >= 0 AND tokens_out >= 0 AND gpu_seconds >= 0",
        name="usage_non_negative",
    ),
    CheckConstraint(
        "(cost_amount IS NULL) = (cost_currency IS NULL) AND cost_amount >= 0 "
        "AND cost_currency ~ '^[a-z]{3}$'",
        name="cost",
    ),
    CheckConstraint(
        "(priced_amount IS NULL) = (priced_currency IS NULL) "
        "AND (priced_amount IS NULL) = (price_id IS NULL) "
        "AND (cost_amount IS NULL OR priced_amount IS NULL)",
        name="priced",
    ),
    Index("ix_execution_tasks_started_at", "started_at"),
    Index("ix_execution_tasks_updated_at", "updated_at"),
    Index("ix_execution_tasks_ai_model_started_at", "ai_model", "started_at"),
)

# Model prices with validity periods [valid_from, valid_to) (valid_to null = open-ended), in
# MAJOR units of `currency`: per million input tokens, per million output tokens, per
# GPU-second. A null component is not charged. Periods of one model never overlap; the app
# (app/pricing.py) checks that under a lock, as it is the only writer.
model_prices = Table(
    "model_prices",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("ai_model", Text, nullable=False),
    Column("currency", Text, nullable=False),
    Column("per_million_in", Numeric(24, 12)),
    Column("per_million_out", Numeric(24, 12)),
    Column("per_gpu_second", Numeric(24, 12)),
    _ts("valid_from", nullable=False),
    _ts("valid_to"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("currency ~ '^[a-z]{3}$'", name="currency"),
    CheckConstraint(
        "per_million_in IS NOT NULL OR per_million_out IS NOT NULL OR per_gpu_second IS NOT NULL",
        name="some_component",
    ),
    CheckConstraint(
        "per_million_in >= 0 AND per_million_out >= 0 AND per_gpu_second >= 0",
        name="components_non_negative",
    ),
    CheckConstraint("valid_to IS NULL OR valid_to > valid_from", name="period"),
    Index("ix_model_prices_ai_model_valid_from", "ai_model", "valid_from", unique=True),
)

# The audit log of price changes: what changed (old and new values of the price row), how many
# tasks' priced costs changed with it, who (for now only the channel: 'cli' or 'api') and when.
model_price_changes = Table(
    "model_price_changes",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("price_id", BigInteger, ForeignKey("model_prices.id")),
    Column("ai_model", Text),
    Column("action", Text, nullable=False),
    Column("old_values", JSONB),
    Column("new_values", JSONB),
    Column("tasks_recomputed", BigInteger, nullable=False),
    Column("actor", Text, nullable=False),
    Column("changed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("action IN ('create', 'update', 'end', 'reprice')", name="action"),
    CheckConstraint("actor IN ('cli', 'api')", name="actor"),
    Index("ix_model_price_changes_price_id", "price_id"),
)

# FX rates by day: one unit (major) of `currency` is worth `rate` units of `quote_currency`.
# Used when no settlement amount is known (accounting.md, "Money"); see app/fx.py.
fx_rates = Table(
    "fx_rates",
    metadata,
    Column("day", Date, primary_key=True),
    Column("currency", Text, primary_key=True),
    Column("quote_currency", Text, primary_key=True),
    Column("rate", Numeric(24, 12), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint(
        "currency ~ '^[a-z]{3}$' AND quote_currency ~ '^[a-z]{3}$' AND currency <> quote_currency",
        name="currencies",
    ),
    CheckConstraint("rate > 0", name="rate_positive"),
)
# Trend alerts (app/alerts, docs/alerts.md). One row per stream, metric, direction and day of
# detection: the unique key is what makes evaluating again, or in several processes at once,
# store and send each alert once. `sent_at` is null until the outgoing webhook accepted it.
alerts = Table(
    "alerts",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("stream", Text, nullable=False),
    Column("metric", Text, nullable=False),
    Column("direction", Text, nullable=False),
    Column("detected_on", Date, nullable=False),
    Column("change_started_on", Date, nullable=False),
    Column("baseline_value", Numeric, nullable=False),
    Column("recent_value", Numeric, nullable=False),
    Column("change", Numeric, nullable=False),
    Column("relative_change", Numeric),
    Column("currency", Text),
    Column("message", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    _ts("sent_at"),
    Column("send_attempts", Integer, nullable=False, server_default=text("0")),
    Column("last_error", Text),
    CheckConstraint("metric IN ('net_revenue', 'margin', 'roi')", name="metric"),
    CheckConstraint("direction IN ('drop', 'rise')", name="direction"),
    UniqueConstraint("stream", "metric", "direction", "detected_on"),
    Index("ix_alerts_detected_on", "detected_on"),
    Index("ix_alerts_unsent", "id", postgresql_where=text("sent_at IS NULL")),
)

# --- Pre-aggregated figures (migration 0004) ------------------------------------------------
# Append-only hourly rollups kept by statement triggers on ledger_entries and execution_tasks:
# a write appends its net change (an update: the old row negated, then the new one). Readers
# always sum every row of a key; compaction merges them in the background. `bucket` is the
# UTC hour. Ledger amounts are minor units of `currency`; settled_* are the settlement amounts
# of the same entries in `settlement_currency` ('' when not known).


def _counter(name: str) -> Column[int]:
    return Column(name, BigInteger, nullable=False, server_default=text("0"))


def _time_key(table: str, name: str, covering: tuple[str, ...] = ()) -> list[Any]:
    """The time column of a rollup (`bucket`: UTC hour, `day`: UTC day), its index, and the
    partial index compaction finds new rows by. `covering`: columns the index also holds, so
    the metrics read them from the index alone (migration 0012)."""
    kind = DateTime(timezone=True) if name == "bucket" else Date
    return [
        Column(name, kind, nullable=False),
        Index(f"ix_{table}_{name}", name, postgresql_include=list(covering)),
        Index(f"ix_{table}_pending", name, postgresql_where=text("NOT compacted")),
    ]


def _compacted() -> list[Column[Any]]:
    """`compacted`, and when the row was appended: the age of the oldest uncompacted row is
    the pre-aggregation lag (migration 0009)."""
    return [
        Column("compacted", Boolean, nullable=False, server_default=text("false")),
        Column("appended_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    ]


# What the per-stream metrics read from the hourly rollups (app/metrics/sources.py): in the
# index, those reads skip the table, whose rows compaction scatters over many pages.
LEDGER_ROLLUP_COVERING = (
    "stream", "currency", "settlement_currency", "gross", "refunds", "disputes", "fees",
    "settled_gross", "settled_refunds", "settled_disputes", "settled_fees", "entries",
)  # fmt: skip
TASK_STREAM_ROLLUP_COVERING = ("stream", "currency", "tasks", "unpriced", "cost")


def _ledger_rollup(name: str, time_key: str, covering: tuple[str, ...] = ()) -> Table:
    return Table(
        name,
        metadata,
        *_time_key(name, time_key, covering),
        Column("stream", Text, nullable=False),
        Column("currency", Text, nullable=False),
        Column("settlement_currency", Text, nullable=False),
        *[_counter(m) for m in ("gross", "refunds", "disputes", "fees")],
        *[_counter("settled_" + m) for m in ("gross", "refunds", "disputes", "fees")],
        _counter("entries"),
        *_compacted(),
    )


def _task_rollup(
    name: str, time_key: str, *detail: Column[object], covering: tuple[str, ...] = ()
) -> Table:
    return Table(
        name,
        metadata,
        *_time_key(name, time_key, covering),
        Column("stream", Text, nullable=False),
        *detail,
        Column("currency", Text, nullable=False),
        _counter("tasks"),
        _counter("unpriced"),
        # Effective cost (as sent, else as priced) in minor units of `currency`.
        Column("cost", Numeric(30, 6), nullable=False, server_default=text("0")),
        *(
            [
                _counter("succeeded"),
                _counter("failed"),
                _counter("duration_ms"),
                _counter("durations"),
            ]
            if detail
            else []
        ),
        *_compacted(),
    )


ledger_rollup = _ledger_rollup("ledger_rollup", "bucket", LEDGER_ROLLUP_COVERING)


# Per stream, model and task type: for the models view and for filtered summaries.
task_rollup = _task_rollup(
    "task_rollup",
    "bucket",
    Column("ai_model", Text, nullable=False),
    Column("task_type", Text, nullable=False),
)
# Per stream only: what the per-stream summary needs, 1/(models x task types) of the rows.
task_stream_rollup = _task_rollup(
    "task_stream_rollup", "bucket", covering=TASK_STREAM_ROLLUP_COVERING
)


# Daily (UTC day) twins of ledger_rollup and task_stream_rollup (migration 0006), kept by the
# same triggers: a period reads them for the UTC days it covers whole, hourly rows at its ends.
ledger_rollup_daily = _ledger_rollup("ledger_rollup_daily", "day")
task_stream_rollup_daily = _task_rollup("task_stream_rollup_daily", "day")

# Converted daily figures (migrations 0013, 0014): per reporting currency, UTC day, piece of
# it and stream, the per-stream hourly rollup rows above already converted by the rules of
# app/metrics/conversion.py and summed (ledger and task costs in one row). A day is cut in
# pieces where `split_zone` (the app's ROI_TIMEZONE) starts a local day; `piece_start` is a
# piece's first instant. Money in minor units of the reporting currency (`group_currency` ''),
# or, where no rule converts it, of `group_currency`. A cache of the *compacted* hourly rows of
# the days listed in `converted_days`, kept by compaction (app/metrics/rollups.py); an FX rate
# change drops the days it affects (trigger). Readers add the rest (rows not compacted yet,
# days not listed) converted as they read them, so the figures never depend on it being up to
# date.
converted_daily = Table(
    "converted_daily",
    metadata,
    Column("reporting_currency", Text, primary_key=True),
    Column("day", Date, primary_key=True),
    Column("piece_start", DateTime(timezone=True), primary_key=True),
    Column("stream", Text, primary_key=True),
    Column("group_currency", Text, primary_key=True),
    Column("split_zone", Text, nullable=False),
    *[Column(m, Numeric, nullable=False) for m in ("gross", "refunds", "disputes", "fees")],
    Column("task_cost", Numeric, nullable=False),
    Column("tasks", BigInteger, nullable=False),
    Column("unpriced", BigInteger, nullable=False),
    Column("entries", BigInteger, nullable=False),
)
# The days `converted_daily` holds, per reporting currency, and the zone they were cut in.
converted_days = Table(
    "converted_days",
    metadata,
    Column("reporting_currency", Text, primary_key=True),
    Column("day", Date, primary_key=True),
    Column("split_zone", Text, nullable=False),
)


# --- Access control (migration 0008) ----------------------------------------------------------
# API tokens: only a SHA-256 of each token is kept (app/auth/tokens.py says why that hash), with
# its first characters for people to tell tokens apart. Revoked tokens stay, so the audit log
# keeps naming them and a revoked name can be reused by a new token.
api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("name", Text, nullable=False),
    Column("role", Text, nullable=False),
    Column("token_hash", Text, nullable=False),
    Column("prefix", Text, nullable=False),
    Column("created_by", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    _ts("last_used_at"),
    _ts("revoked_at"),
    CheckConstraint("role IN ('viewer', 'finance', 'admin', 'ingest')", name="role"),
    CheckConstraint("token_hash ~ '^[0-9a-f]{64}$'", name="token_hash_sha256"),
    Index("ix_api_tokens_token_hash", "token_hash", unique=True),
    Index(
        "ix_api_tokens_name_active",
        "name",
        unique=True,
        postgresql_where=text("revoked_at IS NULL"),
    ),
)

# Who changed or exported what, and when. `actor` is the token's name at the time (or
# `cli:<os user>`), so a row still says who after the token is revoked.
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("token_id", BigInteger, ForeignKey("api_tokens.id")),
    Column("actor", Text, nullable=False),
    Column("role", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("target", Text, nullable=False),
    Column("details", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("client_address", Text),
    Index("ix_audit_log_at", "at"),
)

# Secrets the app generates for itself when no setting provides them (the session signing key
# when ROI_SECRET_KEY is unset): kept here so every web worker and every restart agree.
app_secrets = Table(
    "app_secrets",
    metadata,
    Column("name", Text, primary_key=True),
    Column("value", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
