"""The metrics layer: rollups equal the raw tables, and both equal an independent oracle.

Random ledger entries and tasks are written through the project's own tables (so the rollup
triggers see them exactly as they see ingestion), partly updated, deleted and compacted; then
every figure, per stream and per bucket, in zones with daylight-saving changes, must be the
same whether read from the rollups, from the raw tables, or computed here in plain Python.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from unittest.mock import patch
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import insert, text

from app.metrics import converted
from app.metrics.figures import BaseFigures
from app.metrics.filters import (
    MetricsFilter,
    constant_offset,
    daily_span,
    moved_hours,
    rollups_are_exact,
)
from app.metrics.queries import stream_summary, stream_timeseries
from app.metrics.rollups import compact_now
from app.models import execution_tasks, fx_rates, ledger_entries
from tests.conftest import TestDatabase

REPORTING = "usd"
STREAMS = ["api", "newsletter", "unattributed"]
ZONES = ["UTC", "America/New_York", "Europe/Berlin", "Australia/Sydney"]
# Around the 2024 DST changes of New York (Mar 10), Berlin (Mar 31) and Sydney (Apr 7).
WINDOW_START = datetime(2024, 3, 1, tzinfo=UTC)
WINDOW_HOURS = 24 * 45
KINDS = ["charge", "refund", "dispute", "fee"]
SIGN = {"charge": 1, "refund": -1, "dispute": -1, "fee": -1}
FX = {"eur": Decimal("1.085000000000"), "jpy": Decimal("0.006700000000")}
# A rate changed after `converted_daily` was built (the trigger must drop that day from it).
CHANGED_DAY = WINDOW_START.date() + timedelta(days=10)
CHANGED_RATE = Decimal("1.201234567890")

entry_strategy = st.fixed_dictionaries(
    {
        "hour": st.integers(0, WINDOW_HOURS - 1),
        "minute": st.integers(0, 59),
        "stream": st.sampled_from(STREAMS),
        "kind": st.sampled_from(KINDS),
        "amount": st.integers(1, 500_000),
        "currency": st.sampled_from(["usd", "usd", "eur", "jpy", "gbp"]),
        "settled": st.booleans(),
    }
)
task_strategy = st.fixed_dictionaries(
    {
        "hour": st.integers(0, WINDOW_HOURS - 1),
        "minute": st.integers(0, 59),
        "stream": st.sampled_from(STREAMS),
        "ai_model": st.sampled_from(["gpt-x", "claude-y", None]),
        "task_type": st.sampled_from(["summarise", "classify"]),
        "status": st.sampled_from(["succeeded", "failed", "running"]),
        "duration_ms": st.one_of(st.none(), st.integers(0, 90_000)),
        "cost": st.one_of(st.none(), st.decimals("0", "25", places=6)),
        "currency": st.sampled_from(["usd", "eur", "chf"]),
    }
)


def _at(item: dict[str, object]) -> datetime:
    return WINDOW_START + timedelta(hours=int(item["hour"]), minutes=int(item["minute"]))  # type: ignore[arg-type]


def _write(
    db: TestDatabase,
    entries: list[dict[str, object]],
    tasks: list[dict[str, object]],
    compact_again: bool,
    split_zone: str,
    second_zone: str,
) -> list[dict[str, object]]:
    ledger_rows = []
    for i, e in enumerate(entries):
        amount = SIGN[str(e["kind"])] * int(e["amount"])  # type: ignore[call-overload]
        settled = e["settled"] and e["currency"] != REPORTING
        ledger_rows.append(
            {
                "entry_key": f"k{i}",
                "kind": e["kind"],
                "charge_id": f"ch_{i}",
                "object_id": f"obj_{i}",
                "stream": e["stream"],
                "amount": amount,
                "currency": e["currency"],
                "booked_at": _at(e),
                "settlement_amount": amount * 2 if settled else None,
                "settlement_currency": REPORTING if settled else None,
            }
        )
    task_rows = []
    for i, t in enumerate(tasks):
        cost = t["cost"]
        task_rows.append(
            {
                "external_id": f"t{i}",
                "stream": t["stream"],
                "task_type": t["task_type"],
                "ai_model": t["ai_model"],
                "status": t["status"],
                "started_at": _at(t),
                "duration_ms": t["duration_ms"],
                "cost_amount": None if cost is None else Decimal(str(cost)) * 100,
                "cost_currency": None if cost is None else t["currency"],
            }
        )
    with db.engine.begin() as conn:
        for day in range(WINDOW_HOURS // 24 + 2):
            for currency, rate in FX.items():
                conn.execute(
                    insert(fx_rates).values(
                        day=WINDOW_START.date() + timedelta(days=day),
                        currency=currency,
                        quote_currency=REPORTING,
                        rate=rate,
                    )
                )
        # In several statements, with compaction between, so rollups hold many delta rows.
        half = len(ledger_rows) // 2
        for chunk in (ledger_rows[:half], ledger_rows[half:]):
            if chunk:
                conn.execute(insert(ledger_entries), chunk)
        if task_rows:
            conn.execute(insert(execution_tasks), task_rows)
    # Also builds `converted_daily` in the reporting currency, cut in `split_zone`: the reads
    # below then take its days from it where its pieces fit their buckets, and the rows written
    # after it (not compacted) converted as they read them.
    compact_now(db.engine, REPORTING, split_zone=split_zone)
    with db.engine.begin() as conn:
        # Re-attribution and removal, as rebuilding a charge's ledger does.
        conn.execute(text("UPDATE ledger_entries SET stream = 'api' WHERE entry_key LIKE '%3'"))
        conn.execute(text("DELETE FROM ledger_entries WHERE entry_key LIKE '%7'"))
        conn.execute(
            text("UPDATE execution_tasks SET stream = 'newsletter' WHERE external_id LIKE '%5'")
        )
        # A corrected rate: its day must no longer be read from `converted_daily`.
        conn.execute(
            text("UPDATE fx_rates SET rate = :rate WHERE day = :day AND currency = 'eur'"),
            {"rate": CHANGED_RATE, "day": CHANGED_DAY},
        )
    if compact_again:  # the changed days and the corrected one built again, maybe in a new
        # zone (the app restarted in it): with few days per round, days cut in two zones.
        compact_now(db.engine, REPORTING, split_zone=second_zone)
    for row in ledger_rows:
        if str(row["entry_key"]).endswith("3"):
            row["stream"] = "api"
    for row in task_rows:
        if str(row["external_id"]).endswith("5"):
            row["stream"] = "newsletter"
    return [r for r in ledger_rows if not str(r["entry_key"]).endswith("7")], task_rows  # type: ignore[return-value]


def _exponent(currency: str) -> int:
    return 0 if currency == "jpy" else 2


def _oracle(
    f: MetricsFilter,
    ledger_rows: list[dict[str, object]],
    task_rows: list[dict[str, object]],
    by_bucket: bool,
) -> dict[tuple[datetime | None, str], BaseFigures]:
    out: dict[tuple[datetime | None, str], BaseFigures] = defaultdict(BaseFigures)

    def bucket_of(ts: datetime) -> datetime | None:
        if not by_bucket:
            return None
        if f.granularity == "hour":  # whole-hour zones: local hours are UTC hours
            return ts.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        start = ts.astimezone(f.tz).replace(hour=0, minute=0, second=0, microsecond=0)
        if f.granularity == "week":
            start -= timedelta(days=start.weekday())
        elif f.granularity == "month":
            start = start.replace(day=1)
        elif f.granularity == "quarter":
            start = start.replace(month=3 * ((start.month - 1) // 3) + 1, day=1)
        # Local midnight is never ambiguous in these zones.
        return start.replace(tzinfo=None).replace(tzinfo=f.tz).astimezone(UTC)

    def convert(amount: Decimal, currency: str, ts: datetime) -> Decimal | None:
        if currency == REPORTING:
            return amount
        rate = FX.get(currency)
        if currency == "eur" and ts.astimezone(UTC).date() == CHANGED_DAY:
            rate = CHANGED_RATE
        if rate is None:
            return None
        return amount * rate * Decimal(10) ** (2 - _exponent(currency))

    for row in ledger_rows:
        ts = row["booked_at"]
        assert isinstance(ts, datetime)
        if not (f.start <= ts < f.end) or (f.streams and row["stream"] not in f.streams):
            continue
        base = out[(bucket_of(ts), str(row["stream"]))]
        if row["settlement_currency"] == REPORTING:
            value: Decimal | None = Decimal(int(row["settlement_amount"]))  # type: ignore[call-overload]
        else:
            value = convert(Decimal(int(row["amount"])), str(row["currency"]), ts)  # type: ignore[call-overload]
        name = {"charge": "gross", "refund": "refunds", "dispute": "disputes", "fee": "fees"}[
            str(row["kind"])
        ]
        if value is None:
            if name == "fees":
                base.unconverted_cost[str(row["currency"])] = base.unconverted_cost.get(
                    str(row["currency"]), Decimal(0)
                ) - int(row["amount"])  # type: ignore[call-overload]
            else:
                base.unconverted_revenue[str(row["currency"])] = base.unconverted_revenue.get(
                    str(row["currency"]), 0
                ) + int(row["amount"])  # type: ignore[call-overload]
            continue
        setattr(base, name, getattr(base, name) + value)
    for row in task_rows:
        ts = row["started_at"]
        assert isinstance(ts, datetime)
        if not (f.start <= ts < f.end) or (f.streams and row["stream"] not in f.streams):
            continue
        base = out[(bucket_of(ts), str(row["stream"]))]
        base.tasks += 1
        if row["cost_amount"] is None:
            base.unpriced_tasks += 1
            continue
        value = convert(Decimal(row["cost_amount"]), str(row["cost_currency"]), ts)  # type: ignore[arg-type]
        if value is None:
            c = str(row["cost_currency"])
            base.unconverted_cost[c] = base.unconverted_cost.get(c, Decimal(0)) + Decimal(
                row["cost_amount"]
            )  # type: ignore[arg-type]
        else:
            base.task_cost += value
    return out


def _normal(
    figures: dict[tuple[datetime | None, str], BaseFigures],
) -> dict[tuple[datetime | None, str], tuple[object, ...]]:
    """Comparable form: exact Decimals, empty groups dropped, zero entries dropped."""
    result = {}
    for key, b in figures.items():
        unconverted_revenue = {c: a for c, a in b.unconverted_revenue.items() if a}
        unconverted_cost = {c: a for c, a in b.unconverted_cost.items() if a}
        values = (
            b.gross,
            b.refunds,
            b.disputes,
            b.fees,
            b.task_cost,
            b.tasks,
            b.unpriced_tasks,
            unconverted_revenue,
            unconverted_cost,
        )
        if any(values):
            bucket = key[0].astimezone(UTC) if key[0] is not None else None
            result[(bucket, key[1])] = tuple(
                Decimal(v) if isinstance(v, int | Decimal) else v for v in values
            )
    return result


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    entries=st.lists(entry_strategy, max_size=40),
    tasks=st.lists(task_strategy, max_size=30),
    zone=st.sampled_from(ZONES),
    granularity=st.sampled_from(["hour", "day", "week", "month", "quarter"]),
    first_day=st.integers(0, 30),
    days=st.integers(1, 20),
    only_api=st.booleans(),
    compact_again=st.booleans(),
    # Cut in the zone read (None), or in another, and again in a second one (None: the same);
    # all days built per round, or some.
    split_zone=st.sampled_from([None, *ZONES]),
    second_zone=st.sampled_from([None, *ZONES]),
    days_per_round=st.sampled_from([converted.MAX_DAYS_PER_ROUND, 20, 4]),
)
# Always tried, as chance rarely puts rows in the hours a daily bucket in New York takes from
# the next UTC day: every day's 02:00 and 09:00 UTC, days cut in that zone, all or some built.
@example(
    entries=[
        {
            "hour": 24 * day + hour,
            "minute": 30,
            "stream": "api",
            "kind": "charge",
            "amount": 1_000 + day,
            "currency": currency,
            "settled": False,
        }
        for day in range(14)
        for hour, currency in ((2, "usd"), (9, "eur"))
    ],
    tasks=[
        {
            "hour": 24 * day + 3,
            "minute": 0,
            "stream": "api",
            "ai_model": "gpt-x",
            "task_type": "classify",
            "status": "succeeded",
            "duration_ms": 10,
            "cost": Decimal("1.5"),
            "currency": "usd",
        }
        for day in range(14)
    ],
    zone="America/New_York",
    granularity="day",
    first_day=2,
    days=10,
    only_api=False,
    compact_again=False,
    split_zone=None,
    second_zone=None,
    days_per_round=4,
).via("New York days")
@example(
    entries=[
        {"hour": 24 * day + 2, "minute": 30, "stream": "api", "kind": "charge",
         "amount": 1_000 + day, "currency": "usd", "settled": False}
        for day in range(14)
    ],
    tasks=[], zone="America/New_York", granularity="week", first_day=2, days=20,
    only_api=False, compact_again=True, split_zone=None, second_zone=None,
    days_per_round=converted.MAX_DAYS_PER_ROUND,
).via("New York weeks")  # fmt: skip
@example(
    entries=[
        {"hour": 24 * day + hour, "minute": 30, "stream": "api", "kind": "charge",
         "amount": 1_000 + day, "currency": "usd", "settled": False}
        for day in range(14) for hour in (2, 9)
    ],
    tasks=[], zone="America/New_York", granularity="day", first_day=0, days=14,
    only_api=False, compact_again=True, split_zone=None, second_zone="Europe/Berlin",
    days_per_round=4,
).via("New York days, some cut again in Berlin")  # fmt: skip
def test_rollups_and_raw_tables_agree_with_an_oracle(
    db: TestDatabase,
    entries: list[dict[str, object]],
    tasks: list[dict[str, object]],
    zone: str,
    granularity: str,
    first_day: int,
    days: int,
    only_api: bool,
    compact_again: bool,
    split_zone: str | None,
    second_zone: str | None,
    days_per_round: int,
) -> None:
    db.truncate()
    with patch.object(converted, "MAX_DAYS_PER_ROUND", days_per_round):
        first_zone = split_zone or zone
        ledger_rows, task_rows = _write(
            db, entries, tasks, compact_again, first_zone, second_zone or first_zone
        )
    tz = ZoneInfo(zone)
    start_day = date(2024, 3, 1) + timedelta(days=first_day)
    start = datetime.combine(start_day, datetime.min.time(), tzinfo=tz)
    end = datetime.combine(start_day + timedelta(days=days), datetime.min.time(), tzinfo=tz)
    f = MetricsFilter(
        start=start, end=end, tz=tz, granularity=granularity, streams=("api",) if only_api else ()
    )
    assert rollups_are_exact(f)
    with db.engine.connect() as conn:
        from_rollups = {
            (p.bucket, p.stream): p.base for p in stream_timeseries(conn, f, REPORTING, raw=False)
        }
        from_raw = {
            (p.bucket, p.stream): p.base for p in stream_timeseries(conn, f, REPORTING, raw=True)
        }
        summary_rollups = stream_summary(conn, f, REPORTING, raw=False)
        summary_raw = stream_summary(conn, f, REPORTING, raw=True)
    expected = _normal(_oracle(f, ledger_rows, task_rows, by_bucket=True))
    # The same points, not only the same non-zero ones: hours moved between daily buckets
    # (zones off UTC) must not leave an empty point behind.
    assert set(from_rollups) == set(from_raw)
    assert _normal(from_rollups) == expected
    assert _normal(from_raw) == expected
    expected_total = _normal(_oracle(f, ledger_rows, task_rows, by_bucket=False))
    assert _normal({(None, r.stream): r.base for r in summary_rollups.streams}) == expected_total
    assert _normal({(None, r.stream): r.base for r in summary_raw.streams}) == expected_total
    assert summary_rollups.total == summary_raw.total
    assert summary_rollups.previous_total == summary_raw.previous_total


def test_zones_with_fractional_offsets_are_read_from_raw_tables() -> None:
    utc = ZoneInfo("UTC")
    whole = MetricsFilter(
        start=datetime(2024, 3, 1, tzinfo=utc),
        end=datetime(2024, 4, 1, tzinfo=utc),
        tz=ZoneInfo("Europe/Berlin"),
    )
    assert rollups_are_exact(whole)
    for zone in ("Asia/Kolkata", "Asia/Kathmandu", "America/St_Johns", "Australia/Lord_Howe"):
        tz = ZoneInfo(zone)
        f = MetricsFilter(
            start=datetime(2024, 3, 1, tzinfo=tz), end=datetime(2024, 6, 1, tzinfo=tz), tz=tz
        )
        assert not rollups_are_exact(f), zone
    half_hour = MetricsFilter(
        start=datetime(2024, 3, 1, 0, 30, tzinfo=utc), end=datetime(2024, 3, 2, tzinfo=utc), tz=utc
    )
    assert not rollups_are_exact(half_hour)


def _moved(zone: str, granularity: str, start: date, end: date) -> list[str]:
    tz = ZoneInfo(zone)
    f = MetricsFilter(
        start=datetime.combine(start, datetime.min.time(), tzinfo=tz),
        end=datetime.combine(end, datetime.min.time(), tzinfo=tz),
        tz=tz,
        granularity=granularity,
    )
    span = daily_span(f, by_bucket=True)
    assert span is not None
    moved = moved_hours(f, span)
    # Each moved hour comes with the first moved hour of its day and bucket.
    for hour, first in moved:
        assert first.date() == hour.date() and first <= hour
    return [f"{hour:%m-%d %H}" for hour, _ in moved]


def test_daily_rows_go_to_their_noons_bucket_and_the_hours_of_another_bucket_move() -> None:
    # UTC: every hour of a UTC day is in its noon's bucket.
    assert _moved("UTC", "day", date(2024, 3, 1), date(2024, 4, 1)) == []
    # New York, daily buckets: the hours before local midnight (5 in winter, 4 in summer; the
    # spring-forward day of 2024-03-10 is 23 hours long).
    moved = _moved("America/New_York", "day", date(2024, 3, 9), date(2024, 3, 12))
    assert moved == [
        *[f"03-10 0{h}" for h in range(5)],  # 10 March before 05:00 UTC: still 9 March
        *[f"03-11 0{h}" for h in range(4)],  # from then on EDT: midnight is 04:00 UTC
    ]
    # Monthly buckets: only the hours around the first local midnight of a month move.
    assert _moved("America/New_York", "month", date(2024, 3, 1), date(2024, 5, 1)) == [
        f"04-01 0{h}" for h in range(4)
    ]
    # East of UTC the other end of the day moves: Berlin's midnight is 23:00 UTC in winter.
    assert _moved("Europe/Berlin", "day", date(2024, 1, 10), date(2024, 1, 13)) == [
        "01-10 23",
        "01-11 23",
    ]


def test_a_constant_offset_is_told_from_a_changing_one() -> None:
    def offset(zone: str, start: datetime, end: datetime) -> int | None:
        tz = ZoneInfo(zone)
        return constant_offset(
            MetricsFilter(start=start.replace(tzinfo=tz), end=end.replace(tzinfo=tz), tz=tz)
        )

    assert offset("UTC", datetime(2024, 1, 1), datetime(2025, 1, 1)) == 0
    assert offset("America/New_York", datetime(2024, 1, 1), datetime(2024, 3, 1)) == -5 * 3600
    assert offset("Asia/Kolkata", datetime(2024, 1, 1), datetime(2024, 12, 1)) == 19800
    # Over a change, even one that a period of half a day just covers.
    assert offset("America/New_York", datetime(2024, 3, 1), datetime(2024, 4, 1)) is None
    assert offset("America/New_York", datetime(2024, 3, 10), datetime(2024, 3, 10, 12)) is None
