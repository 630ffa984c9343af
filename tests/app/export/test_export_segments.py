"""Segmented exports (app/exports.py, `_segmented_csv`): a large ledger or tasks export COPYed
in consecutive periods on two connections at once must be the very bytes of one COPY, in any
zone, with rows tied on the time at a cut; closing it early or an error in a later segment
must cancel every COPY and give every connection back."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, Select, case, func, literal, literal_column

from app import exports
from app.database import make_engine
from app.exports import ExportRequest, SegmentPlan, equal_row_cuts, export_csv
from app.metrics.filters import MetricsFilter, build_filter
from app.models import ledger_entries
from tests.conftest import LiveServer, TestDatabase, WebhookClient, app_settings
from tests.task_costs import task

# 2024-03-10: New York moves from -05:00 to -04:00 at 07:00 UTC.
DAY0 = datetime(2024, 3, 10, tzinfo=UTC)
# Instants with several rows booked at exactly that time: the cuts of the tests.
TIE_1 = datetime(2024, 3, 10, 7, 0, 0, tzinfo=UTC)  # the DST change itself
TIE_2 = datetime(2024, 3, 10, 16, 30, 0, 250_000, tzinfo=UTC)  # a fraction of a second
ZONES = ("UTC", "America/New_York", "America/St_Johns", "Asia/Kolkata")
PERIOD = {"start": "2024-03-09", "end": "2024-03-12"}  # every row below, in every zone


@pytest.fixture
def engine(db: TestDatabase) -> Iterator[Engine]:
    """The app's own engine (pool and settings as `roi serve` makes it)."""
    engine = make_engine(app_settings(db.url))
    yield engine
    engine.dispose()


def ledger_row(
    key: str,
    booked_at: datetime,
    *,
    kind: str = "charge",
    amount: int = 1_234,
    currency: str = "usd",
    stream: str = "api",
    settled: tuple[int, str] | None = None,
) -> dict[str, Any]:
    return {
        "entry_key": key, "kind": kind, "charge_id": f"ch_{key}", "object_id": f"ch_{key}",
        "stream": stream, "amount": amount, "currency": currency, "booked_at": booked_at,
        "balance_transaction": f"txn_{key}" if settled else None, "event_id": f"evt_{key}",
        "settlement_amount": settled[0] if settled else None,
        "settlement_currency": settled[1] if settled else None,
    }  # fmt: skip


def insert_ledger(db: TestDatabase, rows: list[dict[str, Any]]) -> None:
    with db.engine.begin() as conn:
        conn.execute(ledger_entries.insert(), rows)


def a_day_with_ties(db: TestDatabase) -> None:
    """About 300 movements over 2024-03-10, every 5 minutes, in four currencies (FX, settled,
    unconverted), some with fractions of a second and formula characters; five rows booked at
    exactly TIME_1 and at TIE_2 each (keys inserted out of order), and one a microsecond on
    either side of each."""
    currencies = ["usd", "eur", "jpy", "kwd"]
    rows = [
        ledger_row(
            f"le_{i:04d}",
            DAY0 + timedelta(minutes=5 * i, microseconds=(i * 7919) % 3 * 125_000),
            kind=("charge", "fee", "refund", "dispute")[i % 4],
            amount=(1 if i % 4 == 0 else -1) * (100 + i * 37),
            currency=currencies[i % 4],
            stream=("api", "=cmd", 'lab, "quoted"', "-neg")[i % 3],
            settled=(90 + i, "usd") if i % 5 == 0 else None,
        )
        for i in range(288)
        if DAY0 + timedelta(minutes=5 * i) not in (TIE_1, TIE_2)
    ]
    for tie in (TIE_1, TIE_2):
        stamp = tie.strftime("%H%M%S%f")
        rows += [ledger_row(f"tie_{stamp}_{k}", tie) for k in ("e", "a", "d", "b", "c")]
        rows += [
            ledger_row(f"z_before_{stamp}", tie - timedelta(microseconds=1), currency="eur"),
            ledger_row(f"a_after_{stamp}", tie + timedelta(microseconds=1), currency="jpy"),
        ]
    insert_ledger(db, rows)
    db.execute(
        "INSERT INTO fx_rates (day, currency, quote_currency, rate) VALUES"
        " ('2024-03-10', 'eur', 'usd', 1.0931), ('2024-03-10', 'jpy', 'usd', 0.0066667)"
    )


class Spooled:
    """Counts the later segments the exports start (so a test knows it was segmented)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.started: list[exports._SpooledSegment] = []
        original = exports._SpooledSegment
        spy = self

        class Counted(original):  # type: ignore[misc, valid-type]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                spy.started.append(self)
                super().__init__(*args, **kwargs)

        monkeypatch.setattr(exports, "_SpooledSegment", Counted)


def cut_at(monkeypatch: pytest.MonkeyPatch, *cuts: datetime) -> Spooled:
    """Exports are cut at `cuts` (none: one COPY), whatever the statistics say."""

    def plan(*args: Any) -> SegmentPlan:
        return SegmentPlan(cuts, 1_000_000)

    monkeypatch.setattr(exports, "plan_segments", plan)
    return Spooled(monkeypatch)


def export_bytes(engine: Engine, name: str, f: MetricsFilter) -> bytes:
    return b"".join(export_csv(engine, ExportRequest(name=name, filter=f, reporting="usd")))


def plain_and_segmented(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, name: str, f: MetricsFilter,
    cuts: tuple[datetime, ...],
) -> tuple[bytes, bytes, int]:  # fmt: skip
    """The export as one COPY, as segments cut at `cuts`, and how many later segments ran."""
    cut_at(monkeypatch)
    plain = export_bytes(engine, name, f)
    spooled = cut_at(monkeypatch, *cuts)
    segmented = export_bytes(engine, name, f)
    return plain, segmented, len(spooled.started)


@pytest.mark.parametrize("zone", ZONES)
@pytest.mark.parametrize(
    "cuts",
    [
        (TIE_1,),
        (TIE_1, TIE_2),
        # The first segment empty (header only), and an empty one in the middle.
        (DAY0 - timedelta(hours=1), TIE_2, TIE_2 + timedelta(microseconds=1)),
    ],
    ids=["one cut", "two cuts", "empty segments"],
)
def test_segmented_ledger_is_the_bytes_of_one_copy(
    db: TestDatabase, engine: Engine, monkeypatch: pytest.MonkeyPatch, zone: str,
    cuts: tuple[datetime, ...],
) -> None:  # fmt: skip
    a_day_with_ties(db)
    f = build_filter(**PERIOD, tz=zone)

    plain, segmented, later = plain_and_segmented(engine, monkeypatch, "ledger", f, cuts)

    assert later == len(cuts)
    assert segmented == plain
    lines = plain.decode().splitlines()
    assert lines[0].startswith("time,stream,kind,") and lines.count(lines[0]) == 1
    assert len(lines) == 1 + db.count("ledger_entries")
    # The tied rows, in entry_key order, right after the row a microsecond before.
    at_tie = [line.split(",")[3] for line in lines if "tie_070000" in line or "_070000" in line]
    assert at_tie == ["z_before_070000000000", *[f"tie_070000000000_{k}" for k in "abcde"],
                      "a_after_070000000000"]  # fmt: skip
    assert plain.count(b"'=cmd") > 0  # the cells are the export's, neutralised


def test_segmented_tasks_are_the_bytes_of_one_copy(
    webhook: WebhookClient, db: TestDatabase, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    fx_rates = [{"day": "2024-03-10", "currency": "eur", "rate": "1.0931"}]
    assert webhook.http.post("/api/fx-rates", json=fx_rates).status_code == 200
    tie = "2024-03-10T07:00:00Z"
    batch = [
        task(
            external_id=f"t-{i:03d}",
            started_at=f"2024-03-10T{i % 24:02d}:{i % 60:02d}:01.5Z",
            cost=f"0.{i:03d}",
            cost_currency=("usd", "eur")[i % 2],
            stream=("api", "@lab")[i % 2],
        )
        for i in range(60)
    ] + [task(external_id=f"tie-{k}", started_at=tie, cost="1", cost_currency="eur") for k in "cab"]
    assert webhook.http.post("/api/tasks", json=batch).status_code == 200
    f = build_filter(**PERIOD, tz="America/St_Johns")
    cuts = (datetime(2024, 3, 10, 7, tzinfo=UTC), datetime(2024, 3, 10, 15, 15, 1, tzinfo=UTC))

    plain, segmented, later = plain_and_segmented(engine, monkeypatch, "tasks", f, cuts)

    assert later == 2
    assert segmented == plain
    assert len(plain.decode().splitlines()) == 1 + 63
    assert [line.split(",")[2] for line in plain.decode().splitlines()[1:] if "tie-" in line] == [
        "tie-a", "tie-b", "tie-c",
    ]  # fmt: skip


def test_the_api_answers_a_segmented_export_with_the_same_bytes(
    webhook: WebhookClient, db: TestDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    a_day_with_ties(db)
    params = {**PERIOD, "tz": "America/New_York"}
    plain = webhook.http.get("/api/export/ledger.csv", params=params).content
    monkeypatch.setattr(exports, "CHUNK_BYTES", 1000)  # several chunks per segment
    spooled = cut_at(monkeypatch, TIE_1, TIE_2)

    response = webhook.http.get("/api/export/ledger.csv", params=params)

    assert response.status_code == 200
    assert len(spooled.started) == 2
    assert response.content == plain


# ---------------------------------------------------------------------------------------------
# Cancelling, errors, and the connections


def with_column(monkeypatch: pytest.MonkeyPatch, column: Callable[[Any], Any]) -> None:
    """The ledger export with one more column, `column(booked_at)`."""

    def query(f: MetricsFilter, reporting: str) -> Select[Any]:
        return exports.ledger_query(f, reporting).add_columns(
            column(literal_column("movement.booked_at"))
        )

    monkeypatch.setitem(
        exports.TIME_ORDERED, "ledger", exports._TimeOrdered(ledger_entries.c.booked_at, query)
    )


FIRST_LATER_ROW = "tie_070000000000_a"  # at TIE_1, the lowest key


def sleeping(monkeypatch: pytest.MonkeyPatch) -> None:
    """The later segment's COPY (from TIE_1 on) sleeps a minute on its first row only (so a
    test that dies leaves no backend sleeping for long)."""
    entry_key = literal_column("movement.entry_key")
    with_column(
        monkeypatch,
        lambda booked_at: func.pg_sleep(case((entry_key == FIRST_LATER_ROW, 60))),
    )


def slow_first_segment(monkeypatch: pytest.MonkeyPatch) -> None:
    """As `sleeping`, and each row of the first segment takes 50 ms and 9 kB: more than what
    PostgreSQL gathers before it sends (8 kB), so every row leaves the server at once and the
    first segment streams for 4 s."""
    tie = TIE_1.isoformat()
    with_column(
        monkeypatch,
        lambda booked_at: literal_column(
            "(SELECT repeat('x', 9000) FROM pg_sleep(CASE"
            f" WHEN movement.entry_key = '{FIRST_LATER_ROW}' THEN 60"
            f" WHEN movement.booked_at < '{tie}' THEN 0.05 END))"
        ),
    )


def active_sleeps(db: TestDatabase) -> int:
    """Backends of the test database sleeping in `pg_sleep` (an export's COPY, here)."""
    return int(
        db.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND state = 'active' AND wait_event = 'PgSleep'"
        )
    )


def wait_until(condition: Callable[[], bool], seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def no_segment_threads() -> bool:
    return not [t for t in threading.enumerate() if t.name == "export-segment"]


def test_closing_a_segmented_export_early_cancels_every_copy_and_returns_the_connections(
    db: TestDatabase, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    a_day_with_ties(db)
    sleeping(monkeypatch)
    monkeypatch.setattr(exports, "CHUNK_BYTES", 100)
    cut_at(monkeypatch, TIE_1)
    chunks = export_csv(engine, ExportRequest("ledger", build_filter(**PERIOD, tz="UTC"), "usd"))

    assert next(chunks).startswith(b"time,")
    assert engine.pool.checkedout() == 2  # type: ignore[attr-defined]
    assert wait_until(lambda: active_sleeps(db) == 1)  # the later COPY runs (and sleeps)
    started = time.monotonic()
    chunks.close()

    assert time.monotonic() - started < 10  # cancelled, not waited for
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert no_segment_threads()
    assert active_sleeps(db) == 0
    # Both connections went back usable: the next export on them works.
    assert export_bytes(engine, "streams", build_filter(**PERIOD, tz="UTC")).startswith(b"bucket")


def hang_up_after_the_first_chunk(
    webhook: WebhookClient, db: TestDatabase, live_server: LiveServer, *, sleeping_copies: int
) -> None:
    """Download the ledger export, hang up after its first chunk once `sleeping_copies` COPYs
    sleep in the database, then check every COPY ended and every connection came back."""
    engine = live_server.app.state.engine
    before = engine.pool.checkedout()
    with (
        httpx.Client(base_url=webhook.base_url, headers=webhook.http.headers) as http,
        http.stream("GET", "/api/export/ledger.csv", params=PERIOD) as response,
    ):
        assert response.status_code == 200
        next(response.iter_raw())
        assert wait_until(lambda: active_sleeps(db) == sleeping_copies)
    assert wait_until(lambda: engine.pool.checkedout() == before)
    assert active_sleeps(db) == 0
    assert wait_until(no_segment_threads)


def test_a_download_of_a_segmented_export_cut_short_gives_its_connections_back(
    webhook: WebhookClient,
    db: TestDatabase,
    live_server: LiveServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a_day_with_ties(db)
    # The download is still in the first segment when the client hangs up; the later segment
    # sleeps a minute.
    slow_first_segment(monkeypatch)
    monkeypatch.setattr(exports, "CHUNK_BYTES", 100)
    cut_at(monkeypatch, TIE_1)

    # Hung up while the first segment streams and the later one sleeps: the server notices,
    # and both COPYs are cancelled (the later one instead of sleeping out its minute).
    hang_up_after_the_first_chunk(webhook, db, live_server, sleeping_copies=2)


def test_a_client_hanging_up_while_the_export_waits_for_a_later_segment_is_not_waited_for(
    webhook: WebhookClient,
    db: TestDatabase,
    live_server: LiveServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a_day_with_ties(db)
    sleeping(monkeypatch)  # the first segment is sent at once; the later one sleeps a minute
    cut_at(monkeypatch, TIE_1)

    # The server was waiting for the later segment, inside the generator, where it cannot be
    # closed: the hang-up sets `abandoned`, so it stops waiting instead of sleeping it out.
    hang_up_after_the_first_chunk(webhook, db, live_server, sleeping_copies=1)


def test_an_error_in_a_later_segment_is_raised_and_the_connections_return(
    db: TestDatabase, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    a_day_with_ties(db)
    # A division by zero on the later segment's first row: after its COPY started.
    with_column(monkeypatch, lambda booked_at: literal(1) / case((booked_at >= TIE_1, 0), else_=1))
    spooled = cut_at(monkeypatch, TIE_1)
    chunks = export_csv(engine, ExportRequest("ledger", build_filter(**PERIOD, tz="UTC"), "usd"))

    got = []
    with pytest.raises(psycopg.errors.DivisionByZero):
        for chunk in chunks:
            got.append(chunk)

    assert len(spooled.started) == 1
    assert b"tie_070000" not in b"".join(got)  # nothing of the failed segment
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert no_segment_threads()


def test_an_error_in_a_streamed_copy_is_raised_as_psycopg_raises_it(
    db: TestDatabase, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One COPY, read row by row from libpq (`_copy_rows`): its end is an error here.
    a_day_with_ties(db)
    with_column(monkeypatch, lambda booked_at: literal(1) / case((booked_at >= TIE_1, 0), else_=1))
    cut_at(monkeypatch)
    f = build_filter(**PERIOD, tz="UTC")

    with pytest.raises(psycopg.errors.DivisionByZero) as raised:
        export_bytes(engine, "ledger", f)

    assert raised.value.diag.sqlstate == "22012"
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    monkeypatch.undo()
    assert export_bytes(engine, "ledger", f).count(b"\n") == 1 + db.count("ledger_entries")


def test_a_later_segment_failing_to_start_is_an_error_status_not_a_cut_download(
    webhook: WebhookClient, db: TestDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    a_day_with_ties(db)
    cut_at(monkeypatch, TIE_1)

    class NoSuchSnapshot(exports._SpooledSegment):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args[:-1], "00000003-0000001B-1", **kwargs)

    monkeypatch.setattr(exports, "_SpooledSegment", NoSuchSnapshot)

    response = webhook.http.get("/api/export/ledger.csv", params=PERIOD)

    assert response.status_code == 500
    assert db.count("audit_log") == 0  # an export that did not start is not audited


def test_a_second_export_at_the_same_time_is_one_copy(
    db: TestDatabase, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    a_day_with_ties(db)
    f = build_filter(**PERIOD, tz="UTC")
    whole = export_bytes(engine, "ledger", f)
    spooled = cut_at(monkeypatch, TIE_1)
    monkeypatch.setattr(exports, "CHUNK_BYTES", 100)
    first = export_csv(engine, ExportRequest("ledger", f, "usd"))
    head = next(first)  # segmented, and running: two connections

    second = export_bytes(engine, "ledger", f)

    assert len(spooled.started) == 1  # the first export's only: the second was one COPY
    assert second == whole
    assert head + b"".join(first) == whole
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------
# Where the cuts go


def test_cuts_come_from_the_statistics_and_split_the_rows_evenly(
    db: TestDatabase, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Three quarters of the rows on the second day: the cut is not the period's middle.
    day1 = [ledger_row(f"a{i:04d}", DAY0 + timedelta(seconds=86_400 * i / 500)) for i in range(500)]
    day2 = [
        ledger_row(f"b{i:04d}", DAY0 + timedelta(days=1, seconds=86_400 * i / 1500))
        for i in range(1500)
    ]
    insert_ledger(db, day1 + day2)
    db.execute("ANALYZE ledger_entries")
    monkeypatch.setattr(exports, "SEGMENTED_MIN_ROWS", 1_000)
    f = build_filter(start="2024-03-10", end="2024-03-12", tz="UTC")
    with engine.connect() as conn:
        sql, params = exports._compiled(conn, exports.ledger_query(f, "usd"))
        plan = exports.plan_segments(conn, ledger_entries.c.booked_at, sql, params, f)
        (cut,) = plan.cuts

    assert 1_800 <= plan.estimated_rows <= 2_200
    before = db.scalar("SELECT count(*) FROM ledger_entries WHERE booked_at < :cut", cut=cut)
    assert 800 <= before <= 1_200
    # Below the threshold (or a filter leaving few rows): one COPY.
    monkeypatch.setattr(exports, "SEGMENTED_MIN_ROWS", 2_500)
    with engine.connect() as conn:
        assert exports.plan_segments(conn, ledger_entries.c.booked_at, sql, params, f).cuts == ()
    # And the export planned so is still the same bytes.
    estimates: list[int] = []
    monkeypatch.setattr(exports, "SEGMENTED_MIN_ROWS", 1_000)
    spooled = Spooled(monkeypatch)
    request = ExportRequest("ledger", f, "usd")
    segmented = b"".join(export_csv(engine, request, on_row_estimate=estimates.append))
    assert len(spooled.started) == 1 and estimates == [plan.estimated_rows]
    monkeypatch.setattr(exports, "SEGMENTED_MIN_ROWS", 10**9)
    assert segmented == export_bytes(engine, "ledger", f)


def test_equal_row_cuts_follow_the_histogram() -> None:
    hours = [DAY0 + timedelta(hours=h) for h in (0, 1, 2, 4, 8, 16)]  # 5 buckets, 20% each

    assert equal_row_cuts(hours, hours[0], hours[-1], 2) == (DAY0 + timedelta(hours=3),)
    assert equal_row_cuts(hours, hours[0], hours[-1], 5) == tuple(hours[1:-1])
    # Only part of the histogram in the period: its rows are split.
    assert equal_row_cuts(hours, DAY0 + timedelta(hours=4), DAY0 + timedelta(days=1), 2) == (
        DAY0 + timedelta(hours=8),
    )
    # Nothing known of the period, or no histogram: no cut.
    assert equal_row_cuts(hours, DAY0 + timedelta(days=1), DAY0 + timedelta(days=2), 2) == ()
    assert equal_row_cuts([], DAY0, DAY0 + timedelta(days=1), 2) == ()


instants = st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2020, 1, 3), timezones=st.just(UTC)
)


@given(
    bounds=st.lists(instants, min_size=2, max_size=12).map(sorted),
    period=st.tuples(instants, instants).filter(lambda p: p[0] < p[1]),
    parts=st.integers(min_value=2, max_value=5),
)
def test_equal_row_cuts_are_increasing_and_inside_the_period(
    bounds: list[datetime], period: tuple[datetime, datetime], parts: int
) -> None:
    start, end = period

    cuts = equal_row_cuts(bounds, start, end, parts)

    assert len(cuts) <= parts - 1
    assert all(start < cut < end for cut in cuts)
    assert list(cuts) == sorted(set(cuts))
