"""Compaction of the append-only rollups (see migration 0004).

Triggers append one row per key and statement; readers sum all rows of a key, so figures are
exact without compaction. Compaction only keeps the tables small: it replaces every key that
has new rows with one row holding the sum. One compaction runs at a time per database.

It also keeps `converted_daily` (app/metrics/converted.py): the days whose per-stream hourly
rows it rewrites are dropped there and built again, in the same transaction.
"""

from __future__ import annotations

import logging
from datetime import date

from sqlalchemy import Connection, Engine, text

from app.fx import rate_day
from app.metrics.converted import refresh

log = logging.getLogger(__name__)

COMPACTION_LOCK_KEY = 7_311_402_002  # also taken by the fx_rates trigger of migration 0013

_KEYS = {
    "ledger_rollup": ("bucket", "stream", "currency", "settlement_currency"),
    "task_rollup": ("bucket", "stream", "ai_model", "task_type", "currency"),
    "task_stream_rollup": ("bucket", "stream", "currency"),
    "ledger_rollup_daily": ("day", "stream", "currency", "settlement_currency"),
    "task_stream_rollup_daily": ("day", "stream", "currency"),
}
_SUMS = {
    "ledger_rollup": (
        "gross", "refunds", "disputes", "fees",
        "settled_gross", "settled_refunds", "settled_disputes", "settled_fees", "entries",
    ),
    "task_rollup": (
        "tasks", "unpriced", "cost", "succeeded", "failed", "duration_ms", "durations",
    ),
    "task_stream_rollup": ("tasks", "unpriced", "cost"),
}  # fmt: skip
_SUMS["ledger_rollup_daily"] = _SUMS["ledger_rollup"]
_SUMS["task_stream_rollup_daily"] = _SUMS["task_stream_rollup"]


def _compaction_sql(table: str) -> str:
    keys, sums = _KEYS[table], _SUMS[table]
    time_key = keys[0]  # bucket or day: the indexed column
    key_list = ", ".join(keys)
    match = " AND ".join(f"r.{k} = d.{k}" for k in keys)
    # A key whose sums all cancel out (e.g. a charge moved to another stream) disappears.
    nonzero = " OR ".join(f"sum({s}) <> 0" for s in sums)
    return f"""
        WITH dirty AS (SELECT DISTINCT {key_list} FROM {table} WHERE NOT compacted),
        moved AS (
            -- Only the dirty buckets are read, through their index (the = ANY(ARRAY())
            -- form keeps that plan whatever the table's statistics say).
            DELETE FROM {table} r USING dirty d
            WHERE r.{time_key} = ANY(ARRAY(SELECT DISTINCT {time_key} FROM dirty)) AND {match}
            RETURNING r.*
        )
        , merged AS (
            INSERT INTO {table} ({key_list}, {", ".join(sums)}, compacted)
            SELECT {key_list}, {", ".join(f"sum({s})" for s in sums)}, true
            FROM moved GROUP BY {key_list} HAVING {nonzero}
        )
        SELECT DISTINCT {time_key} FROM moved  -- the buckets or days it rewrote
    """


COMPACTIONS = {table: _compaction_sql(table) for table in _KEYS}


# The rollups `converted_daily` is built from: a day whose hours these rewrite is built again.
CONVERTED_FROM = ("ledger_rollup", "task_stream_rollup")


def compact(conn: Connection, reporting: str | None = None, split_zone: str = "UTC") -> int | None:
    """Compact every rollup in the caller's transaction, then bring `converted_daily` up to
    date with it (`app.metrics.converted.refresh`; built in `reporting`, the app's reporting
    currency, when given, cut in `split_zone`, the app's zone). Returns the number of days it
    built there, or None if another compaction runs."""
    got = conn.execute(
        text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": COMPACTION_LOCK_KEY}
    ).scalar_one()
    if not got:
        return None
    # The tables it writes last, locked first: in the order of a TRUNCATE of every table
    # (tests), which would otherwise hold them while waiting for the rollups this holds.
    conn.execute(text("LOCK TABLE converted_daily, converted_days IN ROW EXCLUSIVE MODE"))
    changed_days: set[date] = set()
    for table, sql in COMPACTIONS.items():
        rewritten = conn.execute(text(sql)).scalars().all()
        if table in CONVERTED_FROM:
            changed_days.update(rate_day(hour) for hour in rewritten)
    return refresh(conn, changed_days, reporting, split_zone=split_zone)


# A round that built this many days of `converted_daily` (a first build, or the days cut again
# in a new zone, which leaves as many dead rows as live ones) is followed by VACUUM (ANALYZE) of
# the two tables: fresh statistics and visibility at once, rather than whenever autovacuum
# comes by (if it is on at all). The steady state, today's day rebuilt every round, is left to
# autovacuum, as the rollups are.
VACUUM_AFTER_DAYS = 20


def compact_now(engine: Engine, reporting: str | None, *, split_zone: str) -> bool:
    """`compact` in a transaction of its own; False if another compaction runs. `split_zone`:
    the app's zone (ROI_TIMEZONE); every process of a database must give the same one."""
    with engine.begin() as conn:
        built = compact(conn, reporting, split_zone=split_zone)
    if built is not None and built >= VACUUM_AFTER_DAYS:
        _vacuum_converted(engine)
    return built is not None


def _vacuum_converted(engine: Engine) -> None:
    """After the compaction has committed: a failure here is only logged, it undoes nothing.
    (Run by a role that does not own the tables, PostgreSQL skips them with a warning.)"""
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM (ANALYZE) converted_daily, converted_days")
    except Exception as exc:  # the next large build tries again; autovacuum may come first
        log.warning("vacuum of converted_daily after a large build failed: %s", exc)
