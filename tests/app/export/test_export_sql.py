"""The SQL pieces the CSV exports format cells with, against their Python twins, over inputs
the end-to-end export tests do not reach (Stripe times are whole seconds; ids rarely start
with a formula character)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Connection, cast, column, func, literal, select, text, values
from sqlalchemy.types import DateTime, Integer
from sqlalchemy.types import Text as TextType

from app.exports import _iso_time, _neutralised_sql, _prepare_session, neutralised
from app.metrics.filters import build_filter
from tests.conftest import TestDatabase

ZONES = (
    "UTC",
    "America/New_York",  # -05:00 / -04:00
    "Asia/Kolkata",  # +05:30
    "America/St_Johns",  # -03:30 / -02:30: a negative offset with minutes
    "Pacific/Chatham",  # +12:45 / +13:45
)
# A whole second, and fractions whose digits end in zeros, start with zeros, or neither; three
# digits (123_000) with a +HH:MM offset are as long as six with +HH (`_iso_time`).
MICROSECONDS = (0, 1, 10, 120, 123_000, 123_450, 250_000, 500_000, 999_999, 100_001)


def instants() -> list[datetime]:
    base = datetime(2024, 3, 10, 6, 59, 59, tzinfo=UTC)  # New York's DST change at 07:00 UTC
    moments = [base + timedelta(hours=h, microseconds=us) for h in (0, 1) for us in MICROSECONDS]
    return [*moments, datetime(1970, 1, 1, tzinfo=UTC), datetime(1999, 12, 31, 23, 59, 59, 1)]


def in_zone(conn: Connection, zone: str) -> Connection:
    """`conn` with the export's session settings (`_prepare_session`), in `zone`."""
    _prepare_session(conn, build_filter(start="2024-01-01", end="2024-01-02", tz=zone), jit=True)
    return conn


@pytest.mark.parametrize("text_from_inner_level", [False, True])
@pytest.mark.parametrize("zone", ZONES)
def test_iso_time_is_what_python_isoformat_writes(
    db: TestDatabase, zone: str, text_from_inner_level: bool
) -> None:
    moments = [m if m.tzinfo else m.replace(tzinfo=UTC) for m in instants()]
    table = values(column("i", Integer), column("ts", DateTime(timezone=True)), name="t").data(
        list(enumerate(moments))
    )
    if text_from_inner_level:  # as the ledger export has it
        inner = select(table, cast(table.c.ts, TextType).label("ts_text")).subquery()
        time = _iso_time(inner.c.ts, inner.c.ts_text)
    else:
        inner, time = table, _iso_time(table.c.ts)
    with db.engine.begin() as conn:
        got = in_zone(conn, zone).execute(select(inner.c.i, time).order_by(inner.c.i))
        written = [row[1] for row in got]

    assert written == [m.astimezone(ZoneInfo(zone)).isoformat() for m in moments]


@pytest.mark.parametrize("datestyle", ["SQL, DMY", "German"])
def test_iso_time_whatever_the_servers_datestyle(db: TestDatabase, datestyle: str) -> None:
    # `_iso_time` starts from PostgreSQL's text of the instant, which DateStyle shapes (these
    # two give texts of the lengths it takes from): the times are right whatever the server or
    # the role defaults to.
    moments = [datetime(2024, 3, 10, 6, 59, 59, us, tzinfo=UTC) for us in MICROSECONDS]
    table = values(column("i", Integer), column("ts", DateTime(timezone=True)), name="t").data(
        list(enumerate(moments))
    )
    with db.engine.begin() as conn:
        conn.execute(text("SELECT set_config('DateStyle', :style, true)"), {"style": datestyle})
        got = in_zone(conn, "Asia/Kolkata").execute(
            select(table.c.i, _iso_time(table.c.ts)).order_by(table.c.i)
        )
        written = [row[1] for row in got]

    assert written == [m.astimezone(ZoneInfo("Asia/Kolkata")).isoformat() for m in moments]


def test_export_session_settings_end_with_the_transaction(db: TestDatabase) -> None:
    # A pooled connection goes back as it was: the zone, DateStyle and JIT of an export are
    # LOCAL to its transaction.
    names = ("TimeZone", "DateStyle", "jit", "jit_optimize_above_cost")
    shown = select(*[func.current_setting(literal(name)) for name in names])
    with db.engine.connect() as conn:
        before = conn.execute(shown).one()
        conn.commit()
        with conn.begin():
            in_zone(conn, "Asia/Kolkata")
            inside = conn.execute(shown).one()
        after = conn.execute(shown).one()

    zone, datestyle, jit, optimize = inside
    assert (zone, datestyle.split(",")[0], jit, optimize) == ("Asia/Kolkata", "ISO", "on", "-1")
    assert after == before


def test_iso_time_past_year_9999(db: TestDatabase) -> None:
    # Beyond Python's datetime, so spelled out: a five- or six-digit year makes a text as long
    # as six digits of fraction do, with fewer digits (`_iso_time`).
    moments = {
        "10000-01-01 00:00:00.12345+00": "10000-01-01T00:00:00.123450+00:00",
        "100000-01-01 00:00:00.1234+00": "100000-01-01T00:00:00.123400+00:00",
        "10000-01-01 00:00:00+00": "10000-01-01T00:00:00+00:00",
        "9999-12-31 23:00:00.123456+00": "9999-12-31T23:00:00.123456+00:00",
    }
    table = values(column("i", Integer), column("ts", TextType), name="t").data(
        list(enumerate(moments))
    )
    instant = cast(table.c.ts, DateTime(timezone=True))
    with db.engine.begin() as conn:
        got = in_zone(conn, "UTC").execute(
            select(table.c.i, _iso_time(instant)).order_by(table.c.i)
        )
        written = [row[1] for row in got]

    assert written == list(moments.values())


CELLS: tuple[str | None, ...] = (
    "=1+1",
    "+41",
    "-12.34",
    "@SUM(A1)",
    "\tx",
    "\rx",
    "",
    "'=already quoted",
    " =leading space",
    "é=accented",
    "€100",
    "ch_123",
    "0",
    None,
)


def test_neutralised_sql_is_neutralised(db: TestDatabase) -> None:
    table = values(column("i", Integer), column("cell", TextType), name="t").data(
        list(enumerate(CELLS))
    )
    with db.engine.connect() as conn:
        got: list[Any] = [
            row[1]
            for row in conn.execute(
                select(table.c.i, _neutralised_sql(table.c.cell)).order_by(table.c.i)
            )
        ]

    assert got == [None if c is None else neutralised(c) for c in CELLS]
    # The cases that matter, spelled out.
    assert got[:6] == ["'=1+1", "'+41", "'-12.34", "'@SUM(A1)", "'\tx", "'\rx"]
    assert got[6:] == ["", "'=already quoted", " =leading space", "é=accented", "€100", "ch_123",
                       "0", None]  # fmt: skip


def test_neutralised_sql_of_a_literal(db: TestDatabase) -> None:
    # A constant goes through the same expression (the export's text of a CASE, say).
    with db.engine.connect() as conn:
        assert conn.execute(select(_neutralised_sql(literal("=x")))).scalar_one() == "'=x"
