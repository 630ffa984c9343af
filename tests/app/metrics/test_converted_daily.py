"""`converted_daily`: built by compaction, read by the metrics, dropped where it would be stale.

The property test (test_rollups_match_raw.py) checks that figures are exact with it; these
check that it is really read, and when it is not, and how a day is cut in pieces.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import insert

from app.metrics import rollups
from app.metrics.filters import MetricsFilter
from app.metrics.queries import stream_summary, stream_timeseries
from app.metrics.rollups import VACUUM_AFTER_DAYS, compact_now
from app.models import execution_tasks, fx_rates, ledger_entries
from tests.conftest import TestDatabase

# These tests compact themselves, in other zones too, and look at the table in between.
pytestmark = pytest.mark.usefixtures("no_background_compaction")

DAY = date(2024, 5, 6)
F = MetricsFilter(
    start=datetime(2024, 5, 1, tzinfo=UTC),
    end=datetime(2024, 5, 11, tzinfo=UTC),
    tz=ZoneInfo("UTC"),
)


def _write(db: TestDatabase, at: datetime, amount: int, currency: str = "usd") -> None:
    with db.engine.begin() as conn:
        n = db.rows("SELECT count(*) AS n FROM ledger_entries")[0]["n"]
        conn.execute(
            insert(ledger_entries).values(
                entry_key=f"k{n}", kind="charge", charge_id=f"ch_{n}", object_id=f"obj_{n}",
                stream="api", amount=amount, currency=currency, booked_at=at,
            )
        )  # fmt: skip
        conn.execute(
            insert(execution_tasks).values(
                external_id=f"t{n}", stream="api", task_type="summarise", ai_model="m",
                status="succeeded", started_at=at, cost_amount=Decimal("12.5"),
                cost_currency=currency,
            )
        )  # fmt: skip


def _gross(db: TestDatabase) -> Decimal:
    with db.engine.connect() as conn:
        return stream_summary(conn, F, "usd", count_unknown_fees=False).total_base.gross


def _days(db: TestDatabase, reporting: str = "usd") -> list[date]:
    rows = db.rows(
        "SELECT day FROM converted_days WHERE reporting_currency = :r ORDER BY day", r=reporting
    )
    return [r["day"] for r in rows]


def test_compaction_builds_the_days_and_the_metrics_read_them(db: TestDatabase) -> None:
    _write(db, datetime(2024, 5, 6, 9, tzinfo=UTC), 1_000)
    _write(db, datetime(2024, 5, 7, 9, tzinfo=UTC), 2_000)
    assert _gross(db) == 3_000  # nothing built yet: converted as read
    compact_now(db.engine, "usd", split_zone="UTC")
    assert _days(db) == [DAY, DAY + timedelta(days=1)]
    built = db.rows("SELECT gross, task_cost, tasks, entries FROM converted_daily WHERE day = :d",
                    d=DAY)  # fmt: skip
    assert built == [{"gross": 1_000, "task_cost": Decimal("12.5"), "tasks": 1, "entries": 1}]
    # Read from it: a change made there (never done outside compaction) shows in the figures.
    db.execute("UPDATE converted_daily SET gross = gross + 7 WHERE day = :d", d=DAY)
    assert _gross(db) == 3_007
    with db.engine.connect() as conn:
        points = {p.bucket.date(): p.base.gross for p in stream_timeseries(conn, F, "usd")}
    assert points == {DAY: 1_007, DAY + timedelta(days=1): 2_000}


def test_rows_written_after_the_build_are_added_until_compaction_folds_them_in(
    db: TestDatabase,
) -> None:
    _write(db, datetime(2024, 5, 6, 9, tzinfo=UTC), 1_000)
    compact_now(db.engine, "usd", split_zone="UTC")
    _write(db, datetime(2024, 5, 6, 10, tzinfo=UTC), 500)  # a built day, not compacted yet
    assert _gross(db) == 1_500
    compact_now(db.engine, "usd", split_zone="UTC")
    assert _days(db) == [DAY]
    assert db.rows("SELECT gross FROM converted_daily WHERE day = :d", d=DAY) == [{"gross": 1_500}]
    assert _gross(db) == 1_500


def test_a_changed_fx_rate_drops_its_day_until_compaction_builds_it_again(
    db: TestDatabase,
) -> None:
    db.execute(
        "INSERT INTO fx_rates (day, currency, quote_currency, rate) VALUES (:d, 'eur', 'usd', 1.1)",
        d=DAY,
    )
    _write(db, datetime(2024, 5, 6, 9, tzinfo=UTC), 1_000, currency="eur")
    compact_now(db.engine, "usd", split_zone="UTC")
    assert _days(db) == [DAY]
    assert _gross(db) == 1_100
    db.execute("UPDATE fx_rates SET rate = 1.2 WHERE day = :d", d=DAY)
    assert _days(db) == []  # the trigger dropped it: converted as read
    assert _gross(db) == 1_200
    compact_now(db.engine, "usd", split_zone="UTC")  # nothing to compact; the day built again
    assert _days(db) == [DAY]
    assert _gross(db) == 1_200
    # Imported again unchanged: nothing is dropped.
    db.execute("UPDATE fx_rates SET rate = 1.2, updated_at = now() WHERE day = :d", d=DAY)
    assert _days(db) == [DAY]
    with db.engine.begin() as conn:
        conn.execute(fx_rates.delete())
    assert _days(db) == []
    with db.engine.connect() as conn:
        summary = stream_summary(conn, F, "usd", count_unknown_fees=False)
    assert summary.total_base.gross == 0
    assert summary.trust.unconverted_revenue == {"eur": 1_000}


def test_each_reporting_currency_has_its_own_days(db: TestDatabase) -> None:
    _write(db, datetime(2024, 5, 6, 9, tzinfo=UTC), 1_000)
    compact_now(db.engine, None, split_zone="UTC")  # no reporting currency: builds nothing
    assert _days(db) == []
    compact_now(db.engine, "usd", split_zone="UTC")
    compact_now(db.engine, "eur", split_zone="UTC")
    assert _days(db, "usd") == [DAY] and _days(db, "eur") == [DAY]
    with db.engine.connect() as conn:
        in_eur = stream_summary(conn, F, "eur", count_unknown_fees=False)
    assert in_eur.total_base.gross == 0  # no usd->eur rate: unconverted, in usd
    assert in_eur.trust.unconverted_revenue == {"usd": 1_000}
    # Compaction that rewrites a day drops it in every currency, and builds its own again.
    _write(db, datetime(2024, 5, 6, 10, tzinfo=UTC), 500)
    compact_now(db.engine, "usd", split_zone="UTC")
    assert _days(db, "usd") == [DAY] and _days(db, "eur") == []


NEW_YORK = ZoneInfo("America/New_York")


def _series(db: TestDatabase, zone: str) -> dict[date, Decimal]:
    tz = ZoneInfo(zone)
    f = MetricsFilter(
        start=datetime(2024, 5, 1, tzinfo=tz), end=datetime(2024, 5, 11, tzinfo=tz), tz=tz
    )
    with db.engine.connect() as conn:
        return {
            p.bucket.astimezone(tz).date(): p.base.gross for p in stream_timeseries(conn, f, "usd")
        }


def test_days_are_cut_at_the_apps_local_midnights_and_read_so_in_its_zone(
    db: TestDatabase,
) -> None:
    # 02:00 UTC is 22:00 of the day before in New York (EDT); 09:00 UTC is 05:00 the same day.
    _write(db, datetime(2024, 5, 6, 2, tzinfo=UTC), 1_000)
    _write(db, datetime(2024, 5, 6, 9, tzinfo=UTC), 2_000)
    compact_now(db.engine, "usd", split_zone="America/New_York")
    pieces = db.rows(
        "SELECT piece_start, split_zone, gross FROM converted_daily WHERE day = :d"
        " ORDER BY piece_start",
        d=DAY,
    )
    assert pieces == [
        {"piece_start": datetime(2024, 5, 6, 0, tzinfo=UTC), "split_zone": "America/New_York",
         "gross": 1_000},
        {"piece_start": datetime(2024, 5, 6, 4, tzinfo=UTC), "split_zone": "America/New_York",
         "gross": 2_000},
    ]  # fmt: skip
    # A mark in the later piece shows where the pieces are read: in New York, in UTC and in
    # the summary; not in Berlin, whose local days they do not fit (read from the rollups).
    db.execute("UPDATE converted_daily SET gross = gross + 7 WHERE gross = 2000")
    assert _series(db, "America/New_York") == {DAY - timedelta(days=1): 1_000, DAY: 2_007}
    assert _series(db, "UTC") == {DAY: 3_007}
    assert _gross(db) == 3_007
    assert _series(db, "Europe/Berlin") == {DAY: 3_000}
    # A row written after the build, in a built day, goes to its own local day.
    _write(db, datetime(2024, 5, 6, 3, tzinfo=UTC), 500)
    assert _series(db, "America/New_York") == {DAY - timedelta(days=1): 1_500, DAY: 2_007}


def test_a_new_zone_has_the_days_cut_again(db: TestDatabase) -> None:
    _write(db, datetime(2024, 5, 6, 2, tzinfo=UTC), 1_000)
    compact_now(db.engine, "usd", split_zone="America/New_York")
    db.execute("UPDATE converted_daily SET gross = gross + 7")
    assert _series(db, "America/New_York") == {DAY - timedelta(days=1): 1_007}
    compact_now(db.engine, "usd", split_zone="Europe/Berlin")  # the app restarted in another zone
    assert db.rows("SELECT day, split_zone FROM converted_days") == [
        {"day": DAY, "split_zone": "Europe/Berlin"}
    ]
    assert _series(db, "America/New_York") == {DAY - timedelta(days=1): 1_000}
    assert _series(db, "Europe/Berlin") == {DAY: 1_000}


def _vacuums(db: TestDatabase) -> int:
    rows = db.rows("SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'converted_daily'")
    return int(rows[0]["vacuum_count"])


def test_a_large_build_vacuums_the_tables(db: TestDatabase) -> None:
    _write(db, datetime(2024, 5, 6, 9, tzinfo=UTC), 1_000)
    before = _vacuums(db)
    compact_now(db.engine, "usd", split_zone="UTC")  # one day: left to autovacuum
    assert _vacuums(db) == before
    for day in range(VACUUM_AFTER_DAYS):
        _write(db, datetime(2024, 6, 1, 9, tzinfo=UTC) + timedelta(days=day), 100)
    compact_now(db.engine, "usd", split_zone="UTC")
    assert _vacuums(db) == before + 1


def test_a_zone_whose_midnight_is_not_on_the_hour_cuts_at_the_next_hour(
    db: TestDatabase,
) -> None:
    # Kolkata's midnight is 18:30 UTC: the 18:00 hour holds both days, so it stays in the
    # first piece, and the second piece starts at its first hour, 19:00.
    for hour in (18, 20):
        _write(db, datetime(2024, 5, 6, hour, 10, tzinfo=UTC), 1_000 * hour)
    compact_now(db.engine, "usd", split_zone="Asia/Kolkata")
    assert db.rows(
        "SELECT piece_start, gross FROM converted_daily WHERE day = :d ORDER BY piece_start",
        d=DAY,
    ) == [
        {"piece_start": datetime(2024, 5, 6, 0, tzinfo=UTC), "gross": 18_000},
        {"piece_start": datetime(2024, 5, 6, 19, tzinfo=UTC), "gross": 20_000},
    ]
    assert _series(db, "UTC") == {DAY: 38_000}
    assert _series(db, "Asia/Kolkata") == {DAY: 18_000, DAY + timedelta(days=1): 20_000}


def test_a_row_committed_while_compaction_runs_is_counted_once(
    db: TestDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compaction runs statement by statement (READ COMMITTED): a row committed after the
    hourly rollups were compacted but before the daily ones is compacted in the daily rollup
    only. The built day must not count it, nor lose it."""
    _write(db, datetime(2024, 5, 6, 2, tzinfo=UTC), 1_000)
    order = dict(rollups.COMPACTIONS)

    class CommitBeforeTheDaily(dict[str, str]):
        def items(self) -> Iterator[tuple[str, str]]:  # type: ignore[override]
            for table, sql in order.items():
                if table == "ledger_rollup_daily":
                    _write(db, datetime(2024, 5, 6, 3, tzinfo=UTC), 500)  # its own transaction
                yield table, sql

    monkeypatch.setattr(rollups, "COMPACTIONS", CommitBeforeTheDaily())
    compact_now(db.engine, "usd", split_zone="America/New_York")
    monkeypatch.undo()
    assert db.rows("SELECT count(*) AS n FROM ledger_rollup_daily WHERE NOT compacted") == [
        {"n": 0}
    ]  # the daily rollup took the late row: the race happened
    expected_ny = {DAY - timedelta(days=1): 1_500}
    assert _series(db, "America/New_York") == expected_ny
    assert _series(db, "UTC") == {DAY: 1_500}
    assert _series(db, "Europe/Berlin") == {DAY: 1_500}
    assert _gross(db) == 1_500
    compact_now(db.engine, "usd", split_zone="America/New_York")  # folds it in
    assert _series(db, "America/New_York") == expected_ny
    assert _gross(db) == 1_500
